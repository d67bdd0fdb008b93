"""Version-3 files: a model with code tables (convcodec.entropy.CodeTables)
stores the same offsets as the same networks without them and draws the
same pictures; only the bytes differ. Both decoders read them, cut files
too, and a header that claims the wrong version is refused."""
import json
import sys

import numpy as np
import pytest
from PIL import Image

from convcodec import codec, container, npdecode, zoo
from convcodec.container import ContainerError, unpack

from .conftest import make_tiny_vr, smooth_image
from .test_tools import _tool


@pytest.mark.parametrize("quality", [1, 60, 100])
def test_tables_change_the_bytes_not_the_picture(tiny_tables, tiny_vr, quality):
    rgb = smooth_image(40, 56, seed=quality)
    v3, pic3 = codec.encode(rgb, model=tiny_tables, quality=quality, reconstruct=True)
    v2, pic2 = codec.encode(rgb, model=tiny_vr, quality=quality, reconstruct=True)
    assert v3.cdr.header.version == 3 and v2.cdr.header.version == 2
    assert v3.cdr.symbol_crcs == v2.cdr.symbol_crcs          # the same offsets (none clamped here)
    assert v3.cdr.chunks != v2.cdr.chunks                    # coded under other probabilities
    assert np.array_equal(pic3, pic2)
    assert np.array_equal(codec.decode(v3.data, model=tiny_tables), pic3)
    assert len(v3.data) == pytest.approx(v3.estimated_bytes, rel=0.05, abs=16)


def test_both_decoders_read_version_3_and_its_cuts(tiny_tables):
    rgb = smooth_image(33, 65, seed=3)
    full = codec.encode(rgb, model=tiny_tables, quality=70)
    for t in (0, 2, full.cdr.header.groups_total):
        cut = unpack(container.pack(container.truncate(full.cdr, t)))
        assert npdecode.can_decode(cut, tiny_tables)
        a = npdecode.decode(cut, model=tiny_tables)
        b = codec.decode(cut, model=tiny_tables)
        assert np.array_equal(a, b)
        assert container.pack(cut) == codec.encode(rgb, model=tiny_tables, quality=70, steps=t).data


def test_a_header_that_claims_another_version_is_refused(tiny_tables, tiny_vr):
    rgb = smooth_image(16, 24)
    for model, wrong in ((tiny_vr, 3), (tiny_tables, 2)):
        cdr = unpack(codec.encode(rgb, model=model).data)
        cdr.header.version = wrong
        data = container.pack(cdr)                          # checksums recomputed: only the claim is wrong
        with pytest.raises(ContainerError, match=f"version {wrong}, but the model writes version"):
            codec.decode(data, model=model)
        with pytest.raises(ContainerError, match="version"):
            npdecode.decode(unpack(data), model=model)


def test_fit_tables_learns_the_offsets_and_keeps_the_networks(tmp_path, monkeypatch):
    """tools/fit_tables.py: a new model whose tables moved away from the
    Gaussian towards the offsets it counted, with the source's networks (the
    same pictures), a card that says how it was fitted, and smaller files
    on the photos it was fitted on."""
    fit = _tool("fit_tables")
    src = make_tiny_vr(tmp_path / "src")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.fromarray(smooth_image(48, 64, seed=10 + i)).save(photos / f"{i}.png")
    monkeypatch.setattr(fit, "MODELS_DIR", tmp_path)
    monkeypatch.setattr(sys, "argv", ["fit_tables.py", "--model", src, "--name", "fitted", "--data", str(photos),
                                      "--every", "1", "--qualities", "20,90", "--prior-weight", "1"])
    fit.main()
    new = str(tmp_path / "fitted.safetensors")
    net, info = zoo.load_model(new)
    card = json.loads((tmp_path / "fitted.json").read_text())
    assert card["config"]["coder_tables"] and card["code_tables"]["offsets_counted"] > 0
    from convcodec.entropy import gaussian_tables
    assert not np.allclose(net.coder_table.numpy(), gaussian_tables(), atol=1e-4)
    rgb = np.asarray(Image.open(photos / "0.png").convert("RGB"))
    for q in (20, 90):
        a, pa = codec.encode(rgb, model=new, quality=q, reconstruct=True)
        b, pb = codec.encode(rgb, model=src, quality=q, reconstruct=True)
        assert a.cdr.symbol_crcs == b.cdr.symbol_crcs and np.array_equal(pa, pb)
        assert len(a.data) < len(b.data)
        assert np.array_equal(codec.decode(a.data, model=new), pa)
