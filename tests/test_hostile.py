"""Hostile and unusual inputs: every one is coded correctly or refused with
one clear line; nothing is left behind."""
import io
import os
import random
import struct
import time
import zlib

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from convcodec import codec, container
from convcodec.cli import main
from convcodec.fuzz import mutate, refresh_crcs
from convcodec.image import ImageError, load_image
from convcodec.zoo import ModelError

from .conftest import smooth_image

EXPECTED = (container.ContainerError, ModelError, codec.DesyncError)


@pytest.fixture(scope="module")
def valid_files(tiny_model):
    files = []
    for i, (h, w, t) in enumerate([(21, 34, 4), (8, 8, 1), (40, 17, 2), (1, 1, 4)]):
        files.append(codec.encode(smooth_image(h, w, seed=i), model=tiny_model, steps=t).data)
    return files


@pytest.mark.parametrize("engine", ["torch", "numpy"])
def test_fuzz_portable_files_bounded(tiny_vr, engine, monkeypatch):
    """The same on version-2 files (exact scales, a quality byte), with both decoders."""
    if engine == "numpy":
        from convcodec import npdecode
        monkeypatch.setattr(codec, "decode", lambda data, model: npdecode.decode(container.unpack(data), model))
    files = [codec.encode(smooth_image(h, w, seed=i), model=tiny_vr, steps=t, quality=q).data
             for i, (h, w, t, q) in enumerate([(21, 34, 5, 40), (8, 8, 1, 1), (1, 1, 5, 100)])]
    rnd = random.Random(2027)
    outcomes = {"refused": 0, "decoded": 0}
    for i in range(3000):
        outcomes[hostile_decode(mutate(files[i % len(files)], rnd), tiny_vr)] += 1
    assert outcomes["refused"] > 1500 and outcomes["decoded"] > 0


def hostile_decode(data, model):
    t0 = time.perf_counter()
    try:
        out = codec.decode(data, model=model)
    except EXPECTED:
        return "refused"
    finally:
        assert time.perf_counter() - t0 < 10, "decoder took too long on a hostile file"
    hd = container.unpack(data).header
    assert out.shape == (hd.height, hd.width, 3)
    return "decoded"


def test_fuzz_decoder_bounded(valid_files, tiny_model):
    """Thousands of hostile variants (seconds on tiny models): none crashes."""
    rnd = random.Random(2026)
    outcomes = {"refused": 0, "decoded": 0}
    for i in range(8000):
        data = mutate(valid_files[i % len(valid_files)], rnd)
        outcomes[hostile_decode(data, tiny_model)] += 1
    assert outcomes["refused"] > 5000 and outcomes["decoded"] > 0


def test_every_truncation_of_a_real_file(valid_files, tiny_model):
    data = valid_files[0]
    for n in range(len(data)):
        with pytest.raises(container.ContainerError):
            codec.decode(data[:n], model=tiny_model)


def test_payload_damage_behind_valid_checksums_is_caught(valid_files, tiny_model):
    data = bytearray(valid_files[0])
    data[-10] ^= 0x55
    with pytest.raises(EXPECTED):
        codec.decode(refresh_crcs(bytes(data)), model=tiny_model)


@pytest.mark.parametrize("w,h", [(0, 5), (5, 0), (60000, 60000), (2 ** 16 + 1, 1), (2 ** 32 - 1, 2)])
def test_absurd_sizes_in_a_header_are_refused(valid_files, tiny_model, w, h):
    d = bytearray(valid_files[1])
    off = 7 + d[6] + 8
    d[off:off + 8] = struct.pack("<II", w, h)
    with pytest.raises(container.ContainerError, match="out of range"):
        codec.decode(refresh_crcs(bytes(d)), model=tiny_model)


# ---- images ----

MODES = ["L", "LA", "RGB", "RGBA", "P", "I;16", "I", "CMYK", "1", "F"]


def _in_mode(mode):
    base = Image.fromarray(smooth_image(13, 17, seed=3))
    if mode == "I;16":
        im = Image.fromarray(np.asarray(base.convert("L")).astype(np.uint16) * 257)
        assert im.mode == "I;16"
        return im
    return base.convert(mode)


@pytest.mark.parametrize("mode", MODES)
def test_colour_modes(mode):
    rgb = load_image(_in_mode(mode))
    assert rgb.shape == (13, 17, 3) and rgb.dtype == np.uint8


def test_16_bit_is_scaled_not_clipped():
    a = np.full((4, 4), 65535, np.uint16)
    a[0, 0] = 0
    rgb = load_image(Image.fromarray(a))
    assert rgb[1, 1, 0] == 255 and rgb[0, 0, 0] == 0
    mid = load_image(Image.fromarray(np.full((2, 2), 32896, np.uint16)))
    assert mid[0, 0, 0] == 128


def test_alpha_is_flattened_onto_white():
    a = np.zeros((2, 2, 4), np.uint8)          # fully transparent black
    assert (load_image(a) == 255).all()


@pytest.mark.parametrize("fmt,ext", [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp"),
                                     ("TIFF", "tif"), ("BMP", "bmp")])
def test_formats(tmp_path, fmt, ext):
    p = tmp_path / f"x.{ext}"
    Image.fromarray(smooth_image(10, 12)).save(p, format=fmt)
    assert load_image(p).shape == (10, 12, 3)


def test_exif_orientation_is_applied(tmp_path):
    p = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6                           # rotate 90 degrees clockwise on display
    Image.fromarray(smooth_image(10, 30)).save(p, exif=exif)
    assert load_image(p).shape == (30, 10, 3)


def _png_header_only(w, h):
    def chunk(t, b):
        return struct.pack(">I", len(b)) + t + b + struct.pack(">I", zlib.crc32(t + b) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("name,data,match", [
    ("empty.png", b"", "not an image"),
    ("text.png", b"hello world\n" * 10, "not an image"),
    ("bomb.png", _png_header_only(60000, 60000), "too large"),
])
def test_bad_image_files(tmp_path, tiny_model, name, data, match):
    p = tmp_path / name
    p.write_bytes(data)
    with pytest.raises(ImageError, match=match):
        load_image(p)
    r = CliRunner().invoke(main, ["compress", str(p), "-o", str(tmp_path / "o.cdr"), "--model", tiny_model])
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert not (tmp_path / "o.cdr").exists()


def test_truncated_image_file(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(smooth_image(64, 64)).save(buf, format="PNG")
    p = tmp_path / "cut.png"
    p.write_bytes(buf.getvalue()[:300])
    with pytest.raises(ImageError, match="cannot decode"):
        load_image(p)


def test_one_pixel_image(tiny_model):
    rgb = np.array([[[10, 200, 30]]], np.uint8)
    out = codec.decode(codec.encode(rgb, model=tiny_model).data, model=tiny_model)
    assert out.shape == (1, 1, 3)


def test_fuzz_tool_runs(tmp_path, tiny_model):
    import subprocess
    import sys
    tool = os.path.join(os.path.dirname(__file__), "..", "tools", "fuzz_decoder.py")
    r = subprocess.run([sys.executable, tool, "--model", tiny_model, "--seconds", "3", "--threads", "1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "mishandled 0" in r.stdout


@pytest.mark.parametrize("shape", [(1, 70000), (1, 70000, 3), (1, 70000, 4)])
def test_oversized_arrays_are_refused_in_every_layout(shape):
    with pytest.raises(ImageError, match="too large"):
        load_image(np.zeros(shape, np.uint8))
