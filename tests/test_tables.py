"""Version-3 files: a model with code tables (convcodec.entropy.CodeTables)
stores the same offsets as the same networks without them and draws the
same pictures; only the bytes differ. Version 4 adds context tables (the
checkerboard context) to the same. Both decoders read them, cut files
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


@pytest.mark.parametrize("quality", [1, 60, 100])
def test_context_tables_change_the_bytes_not_the_picture(tiny_ctx, tiny_tables, quality):
    """Version 4 against version 3 with the same networks and tables: the
    same offsets and pictures, other bytes (the non-anchors at small scales
    coded under their classes' tables), and the encoder's estimate holds."""
    rgb = smooth_image(40, 56, seed=quality)
    v4, pic4 = codec.encode(rgb, model=tiny_ctx, quality=quality, reconstruct=True)
    v3, pic3 = codec.encode(rgb, model=tiny_tables, quality=quality, reconstruct=True)
    assert v4.cdr.header.version == 4
    assert v4.cdr.symbol_crcs == v3.cdr.symbol_crcs
    assert v4.cdr.chunks != v3.cdr.chunks
    assert np.array_equal(pic4, pic3)
    assert np.array_equal(codec.decode(v4.data, model=tiny_ctx), pic4)
    assert len(v4.data) == pytest.approx(v4.estimated_bytes, rel=0.05, abs=16)


@pytest.mark.parametrize("kind", ["tiny_tables", "tiny_ctx"])
def test_both_decoders_read_versions_3_and_4_and_their_cuts(request, kind):
    model = request.getfixturevalue(kind)
    rgb = smooth_image(33, 65, seed=3)
    full = codec.encode(rgb, model=model, quality=70)
    assert full.cdr.header.version == (4 if kind == "tiny_ctx" else 3)
    for t in (0, 2, full.cdr.header.groups_total):
        cut = unpack(container.pack(container.truncate(full.cdr, t)))
        assert npdecode.can_decode(cut, model)
        a = npdecode.decode(cut, model=model)
        b = codec.decode(cut, model=model)
        assert np.array_equal(a, b)
        assert container.pack(cut) == codec.encode(rgb, model=model, quality=70, steps=t).data


def test_a_header_that_claims_another_version_is_refused(tiny_tables, tiny_vr, tiny_ctx):
    rgb = smooth_image(16, 24)
    for model, wrong in ((tiny_vr, 3), (tiny_tables, 2), (tiny_tables, 4), (tiny_ctx, 3)):
        cdr = unpack(codec.encode(rgb, model=model).data)
        cdr.header.version = wrong
        data = container.pack(cdr)                          # checksums recomputed: only the claim is wrong
        with pytest.raises(ContainerError, match=f"version {wrong}, but the model writes version"):
            codec.decode(data, model=model)
        with pytest.raises(ContainerError, match="version"):
            npdecode.decode(unpack(data), model=model)


def _fit(tmp_path, monkeypatch, h, w, seed, *runs):
    """Run tools/fit_tables.py on a tiny source model and 3 smooth photos
    (h x w) once per (name, extra arguments); returns (source, photo folder)."""
    fit = _tool("fit_tables")
    src = make_tiny_vr(tmp_path / "src")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.fromarray(smooth_image(h, w, seed=seed + i)).save(photos / f"{i}.png")
    monkeypatch.setattr(fit, "MODELS_DIR", tmp_path)
    args = ["--model", src, "--data", str(photos), "--every", "1", "--qualities", "20,90", "--prior-weight", "1"]
    for name, extra in runs:
        monkeypatch.setattr(sys, "argv", ["fit_tables.py", "--name", name, *args, *extra])
        fit.main()
    return src, photos


def test_fit_tables_learns_the_offsets_and_keeps_the_networks(tmp_path, monkeypatch):
    """tools/fit_tables.py: a new model whose tables moved away from the
    Gaussian towards the offsets it counted, with the source's networks (the
    same pictures), a card that says how it was fitted, and smaller files
    on the photos it was fitted on."""
    src, photos = _fit(tmp_path, monkeypatch, 48, 64, 10, ("fitted", []))
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


def test_fit_context_tables_on_top_of_the_same_tables(tmp_path, monkeypatch):
    """tools/fit_tables.py --context: the same tables as a plain fit of the
    same photos, plus context tables that moved away from their prior (the
    fitted table of their scale); the same pictures, and on the photos it
    was fitted on fewer bytes than the plain fit's."""
    src, photos = _fit(tmp_path, monkeypatch, 64, 96, 20, ("plain", []), ("ctx", ["--context"]))
    plain, ctx = str(tmp_path / "plain.safetensors"), str(tmp_path / "ctx.safetensors")
    p_net, _ = zoo.load_model(plain)
    c_net, _ = zoo.load_model(ctx)
    assert zoo.file_version(c_net.cfg) == 4
    assert np.array_equal(c_net.coder_table.numpy(), p_net.coder_table.numpy())
    card = json.loads((tmp_path / "ctx.json").read_text())
    assert card["code_tables"]["context_offsets_counted"] > 0
    from convcodec.entropy import CTX_CLASSES, CTX_LEN
    prior = np.broadcast_to(p_net.coder_table.numpy()[:, None, :CTX_LEN], (p_net.num_groups, CTX_CLASSES, CTX_LEN))
    assert not np.allclose(c_net.coder_context.numpy(), prior, atol=1e-4)
    total = {plain: 0, ctx: 0}
    for i in range(3):
        rgb = np.asarray(Image.open(photos / f"{i}.png").convert("RGB"))
        for q in (20, 90):
            (a, pa), (b, pb) = (codec.encode(rgb, model=m, quality=q, reconstruct=True) for m in (ctx, plain))
            assert a.cdr.symbol_crcs == b.cdr.symbol_crcs and np.array_equal(pa, pb)
            assert np.array_equal(codec.decode(a.data, model=ctx), pa)
            total[ctx] += len(a.data)
            total[plain] += len(b.data)
    assert total[ctx] < total[plain]
