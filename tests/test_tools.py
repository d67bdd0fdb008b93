"""The comparison tool: its classical-codec numbers match an independent
Pillow measurement, and a small run writes every promised file."""
import importlib.util
import io
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from convcodec.metrics import pillow_roundtrip

from .conftest import smooth_image

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_jpeg_and_jpeg2000_rows_match_plain_pillow():
    compare = _tool("compare")
    rgb = smooth_image(64, 96, seed=5)
    for fmt, params in (("JPEG", {"quality": 50, "subsampling": 2}),
                        ("JPEG2000", {"quality_mode": "rates", "quality_layers": [48.0], "irreversible": True})):
        n, dec, _, _ = pillow_roundtrip(rgb, fmt, **params)
        r = compare.row(fmt, "x", "img", rgb, n, dec, 0, 0)
        buf = io.BytesIO()                                   # independent measurement
        Image.fromarray(rgb).save(buf, format=fmt, **params)
        ref = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")).astype(float)
        mse = np.mean((ref - rgb.astype(float)) ** 2)
        assert r["bytes"] == buf.tell()
        assert r["bpp"] == pytest.approx(8 * buf.tell() / (64 * 96))
        assert r["psnr"] == pytest.approx(10 * np.log10(255 ** 2 / mse))


def test_small_run_writes_everything(tmp_path, tiny_model, monkeypatch):
    compare = _tool("compare")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(2):
        Image.fromarray(smooth_image(176, 184, seed=i)).save(imgs / f"kodim0{i + 1}.png")
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["compare.py", "--images", str(imgs), "--out", str(out),
                                      "--models", tiny_model])
    compare.main()
    for f in ("results.json", "results.csv", "summary.md", "rd_psnr.png", "rd_msssim.png",
              "bits_per_group.png", "figure4.png"):
        assert (out / f).stat().st_size > 0, f
    res = json.loads((out / "results.json").read_text())
    assert {"JPEG", "JPEG 4:4:4", "JPEG2000", "WebP", "AVIF"} <= set(res["codecs"])
    conv = [k for k in res["codecs"] if k.startswith("convcodec")]
    assert len(conv) == 2                                    # T=0 and T=1
    for pts in res["codecs"].values():
        for p in pts:
            assert {"setting", "bpp", "psnr", "ms_ssim", "encode_s", "decode_s"} <= set(p)
    assert res["bd_rate"]["psnr"]["vs JPEG2000"]["JPEG"] is not None
