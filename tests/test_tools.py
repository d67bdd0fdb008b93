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

from .conftest import photo_folder, smooth_image

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_jpeg_and_jpeg2000_rows_match_plain_pillow():
    """The anchors as their users run them: compare's JPEG2000 row is an
    independent Pillow encode with the colour transform (mct=1, as
    opj_compress does for RGB), and differs from the labelled no-MCT curve."""
    compare = _tool("compare")
    rgb = smooth_image(64, 96, seed=5)
    settings = compare.classical_settings()
    j2k = dict(settings["JPEG2000"][1])["0.5bpp"]
    assert j2k["mct"] == 1 and j2k["irreversible"] is True
    assert dict(settings["JPEG2000 (no MCT)"][1])["0.5bpp"]["mct"] == 0
    independent_j2k = {"quality_mode": "rates", "quality_layers": [48.0], "irreversible": True, "mct": 1}
    n_mct, _, _, _ = compare.roundtrip(rgb, "JPEG2000", **j2k)
    n_plain, dec_plain, _, _ = compare.roundtrip(rgb, "JPEG2000", **dict(settings["JPEG2000 (no MCT)"][1])["0.5bpp"])
    n_again, dec_again, _, _ = compare.roundtrip(rgb, "JPEG2000", **j2k)
    assert not np.array_equal(dec_plain, dec_again)          # the colour transform is really applied
    for fmt, params in (("JPEG", {"quality": 50, "subsampling": 2}), ("JPEG2000", independent_j2k)):
        n, dec, _, _ = compare.roundtrip(rgb, fmt, **(j2k if fmt == "JPEG2000" else params))
        r = compare.row(fmt, "x", "img", rgb, n, dec, 0, 0)
        buf = io.BytesIO()                                   # independent measurement
        Image.fromarray(rgb).save(buf, format=fmt, **params)
        ref = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")).astype(float)
        mse = np.mean((ref - rgb.astype(float)) ** 2)
        assert r["bytes"] == buf.tell()
        assert r["bpp"] == pytest.approx(8 * buf.tell() / (64 * 96))
        assert r["psnr"] == pytest.approx(10 * np.log10(255 ** 2 / mse))


def test_jpeg_xl_row_is_libjxl_at_effort_7():
    compare = _tool("compare")
    imagecodecs = pytest.importorskip("imagecodecs")
    if not imagecodecs.JPEGXL.available:
        pytest.skip("imagecodecs without JPEG XL")
    rgb = smooth_image(64, 96, seed=6)
    params = dict(compare.classical_settings()["JPEG XL"][1])["d2.0"]
    assert params == {"distance": 2.0, "effort": 7}
    n, dec, _, _ = compare.roundtrip(rgb, "JPEGXL", **params)
    ref = imagecodecs.jpegxl_encode(rgb, distance=2.0, effort=7)
    assert n == len(ref) and np.array_equal(dec, imagecodecs.jpegxl_decode(ref))


def test_small_run_writes_everything(tmp_path, tiny_model, tiny_vr, monkeypatch):
    compare = _tool("compare")
    imgs = photo_folder(tmp_path / "imgs", 2, 176, 184, name="kodim0{n}.png")
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["compare.py", "--images", str(imgs), "--out", str(out),
                                      "--models", f"{tiny_vr},{tiny_model}"])
    compare.main()
    for f in ("results.json", "results.csv", "summary.md", "rd_psnr.png", "rd_msssim.png",
              "bits_per_group.png", "figure4.png"):
        assert (out / f).stat().st_size > 0, f
    res = json.loads((out / "results.json").read_text())
    assert {"JPEG", "JPEG 4:4:4", "JPEG2000", "JPEG2000 (no MCT)", "WebP", "AVIF"} <= set(res["codecs"])
    conv = {k for k in res["codecs"] if k.startswith("convcodec") and "envelope" not in k}
    dq = compare.codec.DEFAULT_QUALITY
    assert conv == {f"convcodec {tiny_vr}", f"convcodec {tiny_vr} (q{dq} prefixes)",
                    f"convcodec {tiny_vr} T=1 (q{dq} prefixes)", f"convcodec {tiny_model}"}
    sweep = res["codecs"][f"convcodec {tiny_vr}"]            # the quality sweep, all groups
    assert {p["setting"] for p in sweep} == {f"q{q}" for q in compare.QUALITIES if q != dq} | {f"q{dq} steps 5"}
    for pts in res["codecs"].values():
        for p in pts:
            assert {"setting", "bpp", "psnr", "ms_ssim", "encode_s", "decode_s"} <= set(p)
    assert res["bd_rate"]["psnr"]["vs JPEG2000"]["JPEG"] is not None


def test_bench_prints_and_writes_its_figures(tmp_path, tiny_model, monkeypatch, capsys):
    bench = _tool("bench")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.fromarray(smooth_image(48, 64)).save(imgs / "kodim01.png")
    out = tmp_path / "bench.json"
    monkeypatch.setattr(sys, "argv", ["bench.py", "--images", str(imgs), "--limit", "1", "--threads", "1",
                                      "--model", tiny_model, "--json", str(out)])
    bench.main()
    text = capsys.readouterr().out
    assert "| cpu | 1 | 4 |" in text and "batch 8" in text and "JPEG2000" in text
    assert "convcodec decompress (one Kodak file to PNG)" in text and "import torch" in text
    res = json.loads(out.read_text())
    assert all(v > 0 for v in res["whole_process_s"].values())
    run = res["runs"][0]
    assert set(run["steps"]) == {"1", "4"}                  # 1, 4, 8 and all, capped at 4 groups
    v = run["steps"]["4"]
    assert v["decode_s"] == pytest.approx(v["decode_network_s"] + v["decode_entropy_s"], abs=2e-4)
    assert all(x > 0 for x in run["decode_many"].values()) and run["peak_rss_mib"] > 0


def test_learning_curve_reuses_rows_of_the_same_weights(tmp_path, monkeypatch, capsys):
    """--reuse takes an earlier run's rows for snapshots with the same
    SHA-256 (a curve grows by its new snapshots only) and measures the rest."""
    from .conftest import make_tiny_vr
    lc = _tool("learning_curve")
    snaps, imgs = tmp_path / "snaps", tmp_path / "imgs"
    snaps.mkdir(); imgs.mkdir()
    make_tiny_vr(snaps / "min-000", seed=0)
    make_tiny_vr(snaps / "min-004", seed=1)
    Image.fromarray(smooth_image(48, 64)).save(imgs / "kodim01.png")
    first = tmp_path / "lc.json"
    argv = ["learning_curve.py", str(snaps), "--images", str(imgs), "--every", "1", "--qualities", "1,100"]
    monkeypatch.setattr(sys, "argv", argv + ["--json", str(first)])
    lc.main()
    old = json.loads(first.read_text())
    assert [r["minutes"] for r in old["rows"]] == [0.0, 4.0]
    assert all(r["points"][0][0] < r["points"][1][0] for r in old["rows"])      # quality 100: more bits
    make_tiny_vr(snaps / "min-008", seed=2)
    measured = []
    real = lc.sweep
    monkeypatch.setattr(lc, "sweep", lambda m, *a: measured.append(os.path.basename(m)) or real(m, *a))
    again = tmp_path / "lc2.json"
    # The run's threads (not the sweep's): two, then one from minute 6.
    monkeypatch.setattr(sys, "argv", argv + ["--json", str(again), "--reuse", str(first), "--train-threads", "2,6:1"])
    lc.main()
    new = json.loads(again.read_text())
    assert measured == ["min-008.safetensors"]
    assert new["rows"][:2] == old["rows"] and new["rows"][2]["minutes"] == 8.0
    assert new["rows"][2]["cpu_hours"] == round((6 * 2 + 2 * 1) / 60, 2) and new["threads"] == "2,6:1"


def test_plot_log_reads_resumed_and_skipped_records(tmp_path, monkeypatch, capsys):
    plot_log = _tool("plot_log")
    run = tmp_path / "run"
    run.mkdir()
    rec = lambda step, minutes, psnr: {"step": step, "minutes": minutes, "loss": 1.0, "bpp": 0.5, "psnr": psnr,
                                       "psnr_pre": psnr - 1, "patches_per_s": 9.0, "skipped": 0}
    lines = [rec(50, 1.0, 20.0), rec(100, 2.0, 21.0), rec(100, 2.1, 22.0),      # step 100 logged twice (resume)
             {"step": 150, "minutes": 3.0, "skipped": 50, "patches_per_s": 9.0}]  # every update skipped
    (run / "log.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    assert [r["psnr"] for r in plot_log.read_log(str(run))] == [20.0, 22.0]
    monkeypatch.setattr(sys, "argv", ["plot_log.py", str(run), "--out", str(tmp_path / "t.png"), "--marks", "1"])
    plot_log.main()
    assert (tmp_path / "t.png").stat().st_size > 0 and "| run | 2.1 | 100 |" in capsys.readouterr().out


def test_refine_gain_measures_real_files(tmp_path, monkeypatch):
    from .conftest import make_tiny
    model = make_tiny(tmp_path / "tiny-l", card={"training": {"lambda": 0.05}})
    gain = _tool("refine_gain")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rgb = smooth_image(40, 48, seed=2)
    Image.fromarray(rgb).save(imgs / "a.png")
    out = tmp_path / "gain.json"
    monkeypatch.setattr(sys, "argv", ["refine_gain.py", "--models", model, "--images", str(imgs),
                                      "--iters", "3", "--json", str(out)])
    gain.main()
    (res,) = json.loads(out.read_text())["models"].values()
    (row,) = res["images"]
    from convcodec import codec
    plain = codec.encode(rgb, model=model).data
    assert row["plain"]["bpp"] == pytest.approx(8 * len(plain) / (40 * 48))
    assert res["bytes_change_pct"] == pytest.approx(100 * (row["refined"]["bpp"] / row["plain"]["bpp"] - 1))


def test_refine_gain_sweeps_in_shards_and_merges_against_anchors(tmp_path, monkeypatch, capsys):
    """A variable-rate sweep split in two shards, merged: every (image,
    quality) measured once, plain rows equal to codec.encode's files, and
    BD-rates against the anchors of a compare.py results file."""
    from convcodec import codec
    from .conftest import make_tiny_vr
    model = make_tiny_vr(tmp_path / "tiny-vr")
    gain, compare = _tool("refine_gain"), _tool("compare")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    pics = {f"{c}.png": smooth_image(32, 40, seed=i) for i, c in enumerate("ab")}
    for n, rgb in pics.items():
        Image.fromarray(rgb).save(imgs / n)
    for k in (0, 1):
        monkeypatch.setattr(sys, "argv", ["refine_gain.py", "--models", model, "--images", str(imgs), "--iters", "2",
                                          "--qualities", "10,60,100", "--shard", f"{k}/2",
                                          "--json", str(tmp_path / f"s{k}.json")])
        gain.main()
    shards = [json.loads((tmp_path / f"s{k}.json").read_text()) for k in (0, 1)]
    assert [s["images"] for s in shards] == [["a.png"], ["b.png"]]
    # The anchors: a compare.py results file with JPEG2000 rows for the same two images.
    anchor_rows = []
    for n, rgb in pics.items():
        for b in (0.5, 1, 2, 4):
            nb, dec, te, td = compare.roundtrip(rgb, "JPEG2000", **compare.jpeg2000_params(b))
            anchor_rows.append(compare.row("JPEG2000", f"{b}bpp", n, rgb, nb, dec, te, td))
    (tmp_path / "results.json").write_text(json.dumps({"images": list(pics), "rows": anchor_rows}))
    monkeypatch.setattr(sys, "argv", ["refine_gain.py", "--merge", str(tmp_path / "s0.json"), str(tmp_path / "s1.json"),
                                      "--anchors", str(tmp_path / "results.json"), "--json", str(tmp_path / "m.json")])
    gain.main()
    res = json.loads((tmp_path / "m.json").read_text())
    (m,) = res["models"].values()
    assert sorted((p["image"], p["setting"]) for p in m["images"]) == sorted(
        (n, f"q{q}") for n in pics for q in (10, 60, 100))
    for p in m["images"]:
        q = int(p["setting"][1:])
        data = codec.encode(pics[p["image"]], model=model, quality=q).data
        assert p["plain"]["bpp"] == pytest.approx(8 * len(data) / (32 * 40))
    assert [p["setting"] for p in sorted(m["plain"], key=lambda p: p["bpp"])][0] == "q10"
    assert isinstance(m["bd_rate_vs_plain"], float)
    vs = res["bd_rate"]["psnr"]["vs JPEG2000"]
    assert set(vs) == {"convcodec tiny-vr", "convcodec tiny-vr --refine 2"}
    assert "BD-rate (PSNR) against the anchors" in capsys.readouterr().out


def test_envelopes_per_backbone_name_their_points():
    compare = _tool("compare")
    pt = lambda b, q, s: {"setting": s, "bpp": b, "psnr": q}
    agg = {"convcodec a": [pt(0.1, 20, "steps 1"), pt(0.5, 30, "steps 2")],
           "convcodec b": [pt(0.2, 26, "steps 1"), pt(0.4, 25, "steps 2")],
           "convcodec m": [pt(0.3, 27, "steps 1")],
           "convcodec n": [pt(0.05, 15, "steps 1"), pt(0.3, 22, "steps 2")]}
    env = compare.envelopes(agg, {"a": "convdraw", "b": "convdraw", "m": "matnet", "n": "matnet"})
    assert set(env) == {"convcodec (envelope)", "convcodec (convdraw envelope)", "convcodec (matnet envelope)"}
    assert [p["setting"] for p in env["convcodec (envelope)"]] == [
        "n steps 1", "a steps 1", "b steps 1", "m steps 1", "a steps 2"]   # b steps 2 is dominated
    assert [p["setting"] for p in env["convcodec (matnet envelope)"]] == ["n steps 1", "m steps 1"]
    assert [p["setting"] for p in env["convcodec (convdraw envelope)"]] == ["a steps 1", "b steps 1", "a steps 2"]
    assert compare.envelopes(agg, {"a": "convdraw"}) == {}             # one model: no envelope
    assert set(compare.envelopes(agg, {"a": "convdraw", "b": "convdraw"})) == {"convcodec (envelope)"}


def test_envelope_is_never_below_its_best_member():
    """Two near-equal curves: a point under the other curve is no part of
    the envelope, so the envelope never dips below either member (Pareto
    alone kept (1.2, 34.0) and drew the envelope under the better curve)."""
    from convcodec.metrics import interp_curve
    compare = _tool("compare")
    pt = lambda b, q, s: {"setting": s, "bpp": b, "psnr": q}
    agg = {"convcodec old": [pt(1.0, 33.6, "q75"), pt(1.2, 34.0, "q85")],
           "convcodec new": [pt(1.04, 33.96, "q75"), pt(1.27, 34.41, "q85")]}
    env = compare.envelope(agg, list(agg))
    assert [p["setting"] for p in env] == ["old q75", "new q75", "new q85"]
    curve = lambda pts: ([p["bpp"] for p in pts], [p["psnr"] for p in pts])
    for b in [1.0 + 0.01 * i for i in range(28)]:
        members = [v for v in (interp_curve(*curve(pts), b) for pts in agg.values()) if v is not None]
        assert interp_curve(*curve(env), b) >= max(members) - 1e-9
    # Pareto alone: the old q85 point (fewer bits than new q85) dragged it under
    assert interp_curve([1.04, 1.2, 1.27], [33.96, 34.0, 34.41], 1.2) < interp_curve(*curve(agg["convcodec new"]), 1.2)


def test_card_curves_take_a_variable_rate_models_quality_sweep():
    """A variable-rate model's card row is its quality sweep (the curve a
    compare run measures for it), a single-rate model's its steps table."""
    from convcodec.zoo import installed_cards
    compare = _tool("compare")
    cards = installed_cards()
    vr = next(n for n, c in cards.items() if c["config"].get("rate_knots") and c.get("kodak", {}).get("images") == 24)
    sr = next(n for n, c in cards.items() if not c["config"].get("rate_knots") and c.get("kodak", {}).get("images") == 24)
    got = compare.card_curves(f"{vr},{sr}", 24)
    sweep = cards[vr]["kodak"]["quality_sweep"]
    assert [p["setting"] for p in got[f"convcodec {vr} (card)"]] == [f"quality {r['quality']}" for r in sweep]
    assert [p["bpp"] for p in got[f"convcodec {vr} (card)"]] == [r["bpp"] for r in sweep]
    assert [p["setting"] for p in got[f"convcodec {sr} (card)"]] == [
        f"steps {r['steps']}" for r in cards[sr]["kodak"]["rd"]]
    assert compare.card_curves(vr, 6) == {}             # measured on other images: left out


def test_probe_redraws_one_group_at_a_time(tiny_vr, tiny_model):
    probe = _tool("probe")
    rgb = smooth_image(40, 56, seed=3)
    for m in (tiny_vr, tiny_model):
        base, bits, redrawn = probe.probe(m, rgb, samples=2, temperature=1.0, quality=60)
        assert base.shape == rgb.shape and len(bits) == len(redrawn) and all(b >= 0 for b in bits)
        for g, pics in redrawn.items():
            assert len(pics) == 2 and all(p.shape == rgb.shape for p in pics)
        assert any(not np.array_equal(p, base) for pics in redrawn.values() for p in pics)


def test_context_gain_finds_planted_redundancy_and_measures_the_coder():
    """tools/context_gain.py: where non-anchors are their anchor neighbours'
    mean, the mean context saves most of their bits; on a real model its
    plain bits are the coder's own estimate of the file."""
    ctx = _tool("context_gain")
    rng = np.random.default_rng(0)

    def planted():
        k = rng.integers(-6, 7, size=(2, 16, 16)).astype(np.float64)
        nb, m = ctx.neighbours(k)
        off = np.where(m, nb.sum(-1) / 4 + rng.normal(0, 0.05, k.shape), k)
        k = np.where(m, np.round(off), k)
        return [(off, k, np.full(k.shape, 1.0))]
    coef, mult = ctx.fit([planted() for _ in range(4)])
    tot = ctx.evaluate([planted() for _ in range(2)], coef, mult)
    assert tot["mean"] < 0.9 * tot["plain"]                # (the anchors cost the same)
    np.testing.assert_allclose(coef[0], 0.25, atol=0.02)   # and the fit found the planted weights


def test_context_gain_plain_bits_are_the_coders_estimate(tiny_vr):
    from convcodec import codec, zoo
    ctx = _tool("context_gain")
    net, _ = zoo.load_model(tiny_vr)
    rgb = smooth_image(48, 64, seed=3)
    plain = sum(ctx.bits(k, sc) for _, k, sc in ctx.offsets(net, rgb, 60))
    est = sum(codec.encode(rgb, model=tiny_vr, quality=60).estimated_bits)
    assert plain == pytest.approx(est, rel=1e-4)


def test_ship_model_counts_the_whole_lineage(tmp_path):
    """A card's total training minutes follow --init through a run's own
    export (minutes, init) back to a shipped card (wall_minutes_total)."""
    from .conftest import make_tiny
    ship = _tool("ship_model")
    shipped = make_tiny(tmp_path / "shipped", card={"training": {"wall_minutes": 100.0, "wall_minutes_total": 519.0}})
    export = make_tiny(tmp_path / "export", name="run-export",
                       card={"training": {"minutes": 152.0, "init": shipped}})
    assert ship.init_record(shipped)["init_minutes"] == 519.0
    rec = ship.init_record(export)
    assert rec["init_minutes"] == 671.0 and rec["init"].startswith("run-export (sha256 ")
    assert ship.init_record(None) == {"init": None, "init_minutes": 0.0}


def test_quant_cost_is_free_at_many_bits_and_costly_at_few(tmp_path, tiny_vr, monkeypatch):
    quant = _tool("quant_cost")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.fromarray(smooth_image(40, 48, seed=4)).save(imgs / "a.png")
    out = tmp_path / "q.json"
    monkeypatch.setattr(sys, "argv", ["quant_cost.py", "--model", tiny_vr, "--images", str(imgs), "--every", "1",
                                      "--qualities", "50", "--bits", "16:16,3:3", "--json", str(out)])
    quant.main()
    fine, coarse = json.loads(out.read_text())["rows"]
    # (a tiny random model's picture is smooth, so even 3 bits cost little, but more than 16)
    assert abs(fine["psnr_change_mean"]) < 1e-3 and coarse["psnr_change_mean"] < fine["psnr_change_mean"] - 0.005
    # the float32 bound scales with the integer ranges: 2^15 x 2^15 against 2^2 x 2^2
    for k, v in fine["worst_sum_over_2_24"].items():
        assert v > 1000 * coarse["worst_sum_over_2_24"][k]


def test_ceiling_rounded_is_the_files_picture_and_the_ceiling_ignores_the_quality(tiny_vr):
    """tools/ceiling.py: its rounded decode is what the codec's file gives
    (up to the fixed-point decoder's ~1e-4), and the unrounded one, the
    posterior means themselves, is the same at every quality (only the grid
    depends on it)."""
    from convcodec import codec
    from convcodec.metrics import psnr
    ceiling = _tool("ceiling")
    rgb = smooth_image(40, 56, seed=5)
    res = {q: ceiling.ceiling(tiny_vr, rgb, q) for q in (1, 60, 100)}
    for q, r in res.items():
        enc, pic = codec.encode(rgb, model=tiny_vr, quality=q, reconstruct=True)
        assert abs(r["rounded"] - psnr(rgb, pic)) < 0.05
    assert max(r["unrounded"] for r in res.values()) - min(r["unrounded"] for r in res.values()) < 1e-3
    assert res[1]["rounded"] != res[1]["unrounded"]

    # the encoder's quality input (an encoder_quality model whose quality
    # weights are not zero): the file's own u is what the codec writes, another
    # u makes another file that the decoder still reads
    import torch
    from convcodec import zoo
    from convcodec.nets.matnet import MatNet, MatNetConfig
    from convcodec.train import _init_from
    m = MatNet(MatNetConfig.from_dict({**zoo.load_model(tiny_vr)[0].cfg.to_dict(), "encoder_quality": True}))
    _init_from(tiny_vr, m)
    with torch.no_grad():
        for mm in m.merge:
            mm.c1.weight[:, -1].normal_(0, 1.0)
    eq = os.path.join(os.path.dirname(tiny_vr), "eq-tools")
    zoo.save_model(m, eq, {"name": "eq-tools"})
    eq += ".safetensors"
    orig_map = MatNet.__dict__["_quality_map"]
    own = ceiling.file_with_encoder_u(eq, rgb, 60, None)
    assert own == ceiling.file_with_encoder_u(eq, rgb, 60, 59 / 99)
    assert own["bpp"] == 8 * len(codec.encode(rgb, model=eq, quality=60).data) / (40 * 56)
    assert ceiling.file_with_encoder_u(eq, rgb, 60, 0.0) != own
    # the class's own method is back (the tool patches the class): a file
    # made afterwards is the file's own again
    assert MatNet.__dict__["_quality_map"] is orig_map
    assert 8 * len(codec.encode(rgb, model=eq, quality=60).data) / (40 * 56) == own["bpp"]


def test_spike_guard_tool_runs_both_rules_on_the_same_batches(tmp_path, tiny_vr):
    guard = _tool("spike_guard")
    data = photo_folder(tmp_path / "data", 2)
    out = tmp_path / "g.json"
    guard.main(["--model", tiny_vr, "--data", str(data), "--crop", "32", "--batch", "2",
                "--batches", "12", "--warmup", "2", "--json", str(out)])
    rec = json.loads(out.read_text())
    s, rows = rec["summary"], rec["batches"]
    assert len(rows) == 12 and s["batches_after_warmup"] == 9
    for rule in ("old", "new"):
        skipped = [r for r in rows if r["step"] > 2 and r[f"skip_{rule}"]]
        assert s[rule]["skipped_fraction"] == round(len(skipped) / 9, 4)
    for r in rows:
        assert len(r["quality"]) == len(r["per_image"]) == 2
        assert abs(r["loss"] - np.mean(r["per_image"])) < 1e-6 * max(1.0, r["loss"])
    # the old rule, by hand: 3x one running average of the accepted batch losses
    avg = None
    for r in rows:
        bad = avg is not None and r["step"] > 2 and r["loss"] > 3 * avg
        assert bad == r["skip_old"]
        if not bad:
            avg = r["loss"] if avg is None else 0.99 * avg + 0.01 * r["loss"]
    # a single-rate model has nothing to compare
    with pytest.raises(SystemExit, match="single-rate"):
        guard.main(["--model", "matnet-low", "--data", str(data), "--crop", "32", "--batches", "1"])


def test_coder_headroom_causal_context_finds_planted_smoothness():
    """tools/coder_headroom.py: on first-group offsets that follow their west
    and north neighbours, the raster-order predictor fits those weights and
    codes new offsets in far fewer bits than without a prediction."""
    hr = _tool("coder_headroom")
    rng = np.random.default_rng(0)

    def planted():
        k = np.zeros((2, 12, 16))
        for y in range(12):
            for x in range(16):
                w = k[:, y, x - 1] if x else 0.0
                n = k[:, y - 1, x] if y else 0.0
                k[:, y, x] = np.round(0.6 * w + 0.35 * n + rng.normal(0, 1.5, 2))
        return k.astype(np.int64)
    fits = hr.fit_causal([planted() for _ in range(6)])
    np.testing.assert_allclose(fits[0][0][:2], [0.6, 0.35], atol=0.08)     # W, N
    test = planted()
    blind = [(np.zeros(6), np.array([0.0, np.abs(test[m]).mean()])) for m in range(2)]   # Laplace at 0, its own spread
    assert hr.causal_bits(fits, test) < 0.85 * hr.causal_bits(blind, test)


def test_coder_headroom_shift_and_quality_tables():
    """The per-group shift never costs more than its own 4 bits and finds
    offsets labelled four scale indices too low; quality tables interpolate
    between the fitted qualities and keep the ends beyond them; smoothing
    with no counts returns the prior."""
    from convcodec import entropy
    hr = _tool("coder_headroom")
    tables = entropy.CodeTables(entropy.gaussian_tables())
    rng = np.random.default_rng(1)
    idx = np.full((4, 16, 16), 30)
    k = np.round(rng.normal(0, entropy.SCALES[34], idx.shape)).astype(np.int64)
    own = tables.bits(k, idx)
    assert hr.shift_bits(tables, k, idx) < own - 2 * hr.SHIFT_BITS
    k0 = np.round(rng.normal(0, entropy.SCALES[30], idx.shape)).astype(np.int64)
    assert hr.shift_bits(tables, k0, idx) <= tables.bits(k0, idx) + hr.SHIFT_BITS

    fitted = {10: (np.zeros(3), np.zeros(2)), 30: (np.ones(3), np.full(2, 2.0))}
    assert np.array_equal(hr.quality_tables(fitted, 20)[0], np.full(3, 0.5))
    assert np.array_equal(hr.quality_tables(fitted, 20)[1], np.ones(2))
    assert hr.quality_tables(fitted, 5) is fitted[10] and hr.quality_tables(fitted, 90) is fitted[30]
    prior = entropy.gaussian_tables()[None]
    np.testing.assert_allclose(hr.tables_from(np.zeros_like(prior, dtype=np.int64), 10.0, prior), prior, rtol=1e-9)


def test_coder_headroom_runs_on_a_version_4_model(tmp_path, tiny_ctx, monkeypatch, capsys):
    hr = _tool("coder_headroom")
    photos = photo_folder(tmp_path / "train", 2, 64, 64)
    kodak = photo_folder(tmp_path / "kodak", 1, 64, 64, name="kodim0{n}.png")
    out = tmp_path / "h.json"
    monkeypatch.setattr(hr, "QUALITIES", (20, 80))
    monkeypatch.setattr(sys, "argv", ["coder_headroom.py", "--model", tiny_ctx, "--data", str(photos), "--every", "1",
                                      "--kodak", str(kodak), "--kodak-every", "1", "--qualities", "20,50",
                                      "--json", str(out)])
    hr.main()
    res = json.loads(out.read_text())
    assert [r["quality"] for r in res["rows"]] == [20, 50] and res["fitted_qualities"] == [20, 80]
    for r in res["rows"]:
        assert r["model_bytes_per_image"] > 0 and 0 < r["first_group_share"] < 100
        # a shift of 0 is always allowed: at most 4 bits a group more
        assert r["shift"] <= 100 * hr.SHIFT_BITS * res["groups"] / (8 * r["model_bytes_per_image"])
    assert "causal/first" in capsys.readouterr().out


def test_ship_model_records_how_the_run_trained(tmp_path, monkeypatch):
    """The shipped card says what makes a run reproducible beside its data:
    the prefix weight, the augmentation and the data seed."""
    from convcodec import zoo
    from convcodec.train import TrainConfig, train
    from .conftest import TINY_VR
    ship = _tool("ship_model")
    data = photo_folder(tmp_path / "data", 2)
    tc = TrainConfig(data=(str(data),), crop=32, batch=2, minutes=0.02, warmup=1, ckpt_minutes=100,
                     augment="dihedral-scale", prefix_weight=0.25, seed=7, bf16=False)
    train(TINY_VR.to_dict(), tc, str(tmp_path / "run"), "r")
    monkeypatch.setattr(ship, "MODELS_DIR", tmp_path / "models")
    (tmp_path / "models").mkdir()
    monkeypatch.setattr(sys, "argv", ["ship_model.py", str(tmp_path / "run"), "--name", "shipped"])
    ship.main()
    _, info = zoo.load_model(str(tmp_path / "models" / "shipped.safetensors"))
    tr = info["card"]["training"]
    assert (tr["prefix_weight"], tr["augment"], tr["seed"]) == (0.25, "dihedral-scale", 7)
    assert "0.25 times the same" in tr["objective"]
