"""The installed ``convcodec`` command as a user runs it: a fresh process for
every call (no state left by other tests, such as Pillow's lazily registered
plugins), its real stdin, stdout, stderr and exit code."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from convcodec import zoo

from .conftest import smooth_image

EXE = shutil.which("convcodec", path=os.path.dirname(sys.executable)) or shutil.which("convcodec")
pytestmark = pytest.mark.skipif(EXE is None, reason="convcodec is not installed")


def cli(*args, stdin: bytes | None = None, env: dict | None = None):
    """Run the installed command; returns (exit code, stdout bytes, stderr text)."""
    r = subprocess.run([EXE, *map(str, args)], input=stdin, capture_output=True, timeout=300,
                       env={**os.environ, **(env or {})})
    return r.returncode, r.stdout, r.stderr.decode()


def one_error_line(code, err):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def png(tmp_path):
    p = tmp_path / "in.png"
    Image.fromarray(smooth_image(37, 53)).save(p)
    return p


def test_round_trip_info_truncate(tmp_path, png, tiny_vr):
    cdr, out = tmp_path / "a.cdr", tmp_path / "a.png"
    code, _, err = cli("compress", png, "-o", cdr, "--model", tiny_vr, "--quality", 40)
    assert code == 0, err
    assert "quality 40" in err and "5/5 groups" in err
    code, _, err = cli("decompress", cdr, "-o", out, "--model", tiny_vr)
    assert code == 0, err
    assert Image.open(out).size == (53, 37)
    code, text, err = cli("info", cdr)
    text = text.decode()
    assert code == 0 and "version 2" in text and "quality         40" in text and "53x37" in text
    code, _, err = cli("truncate", cdr, "-o", tmp_path / "b.cdr", "--steps", 2)
    assert code == 0 and "2/5 groups" in err
    code, _, err = cli("decompress", tmp_path / "b.cdr", "-o", tmp_path / "b.bmp", "--model", tiny_vr)
    assert code == 0, err
    assert Image.open(tmp_path / "b.bmp").format == "BMP"


def test_pipes_both_ways(png, tiny_vr):
    """`compress - -o -` and `decompress - -o -` in a fresh process: the
    PNG writer must be found although nothing has opened a PNG yet."""
    code, cdr, err = cli("compress", "-", "-o", "-", "--model", tiny_vr, stdin=png.read_bytes())
    assert code == 0 and cdr[:4] == b"\x89CDR", err
    code, img, err = cli("decompress", "-", "-o", "-", "--model", tiny_vr, stdin=cdr)
    assert code == 0, err
    assert img[:8] == b"\x89PNG\r\n\x1a\n"
    code, img, err = cli("decompress", "-", "-o", "-", "--format", "tiff", "--model", tiny_vr, stdin=cdr)
    assert code == 0 and img[:2] in (b"II", b"MM"), err


def test_several_files_into_a_folder_with_one_failure(tmp_path, png, tiny_vr):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        Image.fromarray(smooth_image(16 + i, 24, seed=i)).save(src / f"{i}.png")
    (src / "bad.png").write_bytes(b"not an image at all")
    code, _, err = cli("compress", src, "-o", tmp_path / "out", "--model", tiny_vr, "--quality", 20)
    assert code == 1
    assert "bad.png" in err and "3 done, 1 failed" in err
    assert sorted(os.listdir(tmp_path / "out")) == ["0.cdr", "1.cdr", "2.cdr"]


def test_models_and_help():
    code, text, _ = cli("models")
    assert code == 0 and f"{zoo.DEFAULT_MODEL} (default".encode() in text and b"superseded by" not in text
    code, text, _ = cli("models", "--all")
    assert code == 0 and f"{zoo.DEFAULT_MODEL} (default".encode() in text
    code, text, _ = cli("--help")
    assert code == 0 and b"compress" in text and b"decompress" in text
    code, text, _ = cli("compress", "--help")
    assert code == 0 and b"--quality" in text


@pytest.mark.parametrize("bad", ["not-an-image", "truncated", "corrupted", "other-model", "absurd-size"])
def test_bad_input_is_one_line_and_leaves_the_old_output(tmp_path, png, tiny_vr, tiny_model, bad):
    out = tmp_path / "keep.png"
    out.write_bytes(b"the user's old file")
    good = tmp_path / "good.cdr"
    assert cli("compress", png, "-o", good, "--model", tiny_vr)[0] == 0
    data = good.read_bytes()
    src = tmp_path / "in.cdr"
    args = ["decompress", src, "-o", out, "--model", tiny_vr]
    if bad == "not-an-image":
        src = tmp_path / "x.png"
        src.write_bytes(b"hello")
        args = ["compress", src, "-o", out, "--model", tiny_vr]
    elif bad == "truncated":
        src.write_bytes(data[:len(data) // 2])
    elif bad == "corrupted":
        src.write_bytes(data[:40] + bytes([data[40] ^ 0xFF]) + data[41:])
    elif bad == "other-model":
        src.write_bytes(data)
        args = ["decompress", src, "-o", out, "--model", tiny_model]
    else:
        Image.new("L", (70000, 1)).save(tmp_path / "wide.png")
        src = tmp_path / "wide.png"
        args = ["compress", src, "-o", out, "--model", tiny_vr]
    before = set(os.listdir(tmp_path))
    code, _, err = cli(*args)
    one_error_line(code, err)
    assert out.read_bytes() == b"the user's old file"
    assert set(os.listdir(tmp_path)) == before          # no partial or temporary file left


def test_shipped_default_model_round_trip(tmp_path):
    """The default model, installed with the package, on a Kodak crop."""
    kodak = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "kodak", "kodim23.png")
    if not os.path.exists(kodak):
        pytest.skip("Kodak is not beside the checkout")
    crop = tmp_path / "crop.png"
    Image.open(kodak).crop((200, 100, 392, 292)).save(crop)
    cdr, out = tmp_path / "c.cdr", tmp_path / "c.png"
    code, _, err = cli("compress", crop, "-o", cdr, "--quality", 60)
    assert code == 0, err
    code, _, err = cli("decompress", cdr, "-o", out)
    assert code == 0, err
    a = np.asarray(Image.open(crop).convert("RGB")).astype(float)
    b = np.asarray(Image.open(out)).astype(float)
    psnr = 10 * np.log10(255 ** 2 / ((a - b) ** 2).mean())
    assert psnr > 25, psnr


# Other machines, simulated: oneDNN limited to AVX2 (most laptops), no vector
# kernels at all, one thread. Portable (version 2 to 4) files must decode to the
# same symbols (the per-group symbol CRCs check every one) and, through the
# fixed-point reconstruction (convcodec.nets.fixed), to the same pixels.
MACHINES = {
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "sse41": {"ONEDNN_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "default"},
    "1thread": {"OMP_NUM_THREADS": "1"},
}


def _portable_files(tmp_path, model, images, quality):
    from convcodec import codec
    files = []
    for i, rgb in enumerate(images):
        enc = codec.encode(rgb, model=model, quality=quality)
        assert enc.cdr.header.version >= 2
        f = tmp_path / f"{i}.cdr"
        f.write_bytes(enc.data)
        files.append(f)
    return files


def _decode_everywhere(tmp_path, files, model_args):
    """Decode natively with the torch engine, then with both engines on each
    simulated machine; how many decodes differ from the native one in any pixel."""
    native = {}
    for f in files:
        out = tmp_path / f"{f.stem}.native.png"
        code, _, err = cli("decompress", f, "-o", out, "--engine", "torch", *model_args)
        assert code == 0, err
        native[f] = np.asarray(Image.open(out)).astype(int)
    differ = 0
    for name, env in MACHINES.items():
        for engine in ("torch", "numpy"):
            for f in files:
                out = tmp_path / f"{f.stem}.{name}.{engine}.png"
                code, _, err = cli("decompress", f, "-o", out, "--engine", engine, *model_args, env=env)
                assert code == 0, f"{name} {engine}: {err}"          # every symbol decoded, CRCs intact
                differ += not np.array_equal(np.asarray(Image.open(out)).astype(int), native[f])
    return differ


@pytest.mark.parametrize("kind,version", [("tiny_vr", 2), ("tiny_tables", 3), ("tiny_ctx", 4)])
def test_portable_files_decode_on_simulated_machines(tmp_path, request, kind, version):
    model = request.getfixturevalue(kind)
    images = [smooth_image(40, 56, seed=s) for s in range(2)]
    files = _portable_files(tmp_path, model, images, 70)
    code, text, _ = cli("info", files[0])
    from convcodec.cli import FORMATS
    assert code == 0 and f"version {version} ({FORMATS[version]})" in text.decode()
    assert _decode_everywhere(tmp_path, files, ["--model", model]) == 0


def test_shipped_model_files_decode_on_simulated_machines(tmp_path):
    kodak = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "kodak")
    if not os.path.isdir(kodak):
        pytest.skip("Kodak is not beside the checkout")
    images = [np.asarray(Image.open(os.path.join(kodak, n)).convert("RGB"))[64:320, 128:448]
              for n in ("kodim01.png", "kodim14.png", "kodim23.png")]
    files = _portable_files(tmp_path, None, images, 90)
    assert _decode_everywhere(tmp_path, files, []) == 0
