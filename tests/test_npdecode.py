"""The torch-free decoder against the torch one: the same symbols (the
file's CRCs) and the same pixels, bit for bit (both run the fixed-point
reconstruction); no torch imported."""
import subprocess
import sys

import numpy as np
import pytest

from convcodec import codec, npdecode
from convcodec.container import unpack

from .conftest import smooth_image


@pytest.mark.parametrize("hw", [(1, 1), (7, 13), (33, 65), (64, 48)])
@pytest.mark.parametrize("quality", [1, 60, 100])
def test_numpy_decoder_matches_torch(tiny_vr, hw, quality):
    rgb = smooth_image(*hw, seed=hw[0] + quality)
    cdr = unpack(codec.encode(rgb, model=tiny_vr, quality=quality).data)
    assert npdecode.can_decode(cdr, tiny_vr)
    for t in (0, 2, cdr.header.groups_total):
        a = npdecode.decode(cdr, model=tiny_vr, steps=t)
        b = codec.decode(cdr, model=tiny_vr, steps=t)
        assert a.shape == b.shape == rgb.shape
        assert np.array_equal(a, b)


def test_numpy_decoder_takes_only_what_it_can(tiny_vr, tiny_model, tiny_matnet):
    rgb = smooth_image(16, 16)
    vr = unpack(codec.encode(rgb, model=tiny_vr).data)
    assert not npdecode.can_decode(vr, tiny_vr, temperature=1.0)         # sampling: the torch decoder
    assert not npdecode.can_decode(vr, tiny_vr, device="cuda")
    for legacy in (tiny_model, tiny_matnet):                              # version-1 files
        assert not npdecode.can_decode(unpack(codec.encode(rgb, model=legacy).data), legacy)


def test_a_decode_imports_no_torch(tmp_path, tiny_vr):
    f = tmp_path / "a.cdr"
    f.write_bytes(codec.encode(smooth_image(24, 40), model=tiny_vr).data)
    code = (f"import sys\nfrom convcodec import npdecode\nfrom convcodec.container import unpack\n"
            f"img = npdecode.decode(unpack(open({str(f)!r}, 'rb').read()), model={tiny_vr!r})\n"
            f"assert img.shape == (24, 40, 3)\nassert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_command_line_decodes_without_torch(tmp_path, tiny_vr):
    f, out = tmp_path / "a.cdr", tmp_path / "a.png"
    f.write_bytes(codec.encode(smooth_image(24, 40), model=tiny_vr).data)
    code = ("import sys\nfrom convcodec.cli import main\n"
            f"main(['decompress', {str(f)!r}, '-o', {str(out)!r}, '--model', {tiny_vr!r}, '-q'], "
            "standalone_mode=False)\nassert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert out.stat().st_size > 0
