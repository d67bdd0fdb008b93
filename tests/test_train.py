"""The training loop runs, exports a loadable model and resumes exactly where it stopped."""
import numpy as np
import pytest
import torch
from PIL import Image

from convcodec import codec, zoo
from convcodec.entropy import symbol_crc
from convcodec.train import TrainConfig, train

from .conftest import TINY, photo_folder, smooth_image


def test_train_export_and_resume(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        Image.fromarray(smooth_image(48, 64, seed=i)).save(data / f"{i}.png")
    # smaller than the crop: left out (tools/train.py --crop 256 met one in BSDS)
    Image.fromarray(smooth_image(24, 64, seed=9)).save(data / "small.png")
    out = tmp_path / "run"
    tc = TrainConfig(data=(str(data),), crop=32, batch=2, minutes=0.05, warmup=2, ckpt_minutes=100)
    train(TINY.to_dict(), tc, str(out), "t")
    ck = torch.load(out / "ckpt.pt", weights_only=False)
    assert ck["step"] > 0
    net, info = zoo.load_model(str(out / "t.safetensors"))
    assert info["card"]["training"]["iterations"] == ck["step"]
    rgb = smooth_image(20, 24)
    assert codec.decode(codec.encode(rgb, model=str(out / "t.safetensors")).data,
                        model=str(out / "t.safetensors")).shape == rgb.shape
    # resume: a larger budget continues from the saved step and RNG state;
    # GDN couplings at exactly 0 (a checkpoint from before GAMMA_FLOOR) are
    # lifted on resume and then train
    gammas = [k for k in ck["model"] if k.endswith("gamma")]
    assert gammas
    for part in ("model", "ema"):
        for k in gammas:
            ck[part][k] = torch.diag(torch.diag(ck[part][k]))
    torch.save(ck, out / "ckpt.pt")
    train(TINY.to_dict(), TrainConfig(**{**tc.__dict__, "minutes": 0.1}), str(out), "t")
    ck2 = torch.load(out / "ckpt.pt", weights_only=False)
    assert ck2["step"] > ck["step"]
    for k in gammas:
        off = ~torch.eye(ck2["model"][k].shape[0], dtype=torch.bool)
        assert (ck2["model"][k][off] != 0).all()


def test_fit_crop_leaves_out_small_photos():
    from convcodec.train import fit_crop
    imgs = [torch.zeros(3, h, w, dtype=torch.uint8) for h, w in ((48, 64), (24, 64), (64, 31))]
    kept, left_out = fit_crop(imgs, 32)
    assert left_out == 2 and len(kept) == 1 and kept[0].shape == (3, 48, 64)
    assert fit_crop(imgs, 24)[1] == 0
    with pytest.raises(SystemExit, match="at least 65 px"):
        fit_crop(imgs, 65)


def test_random_batch_augments_only_when_asked():
    import random
    from convcodec.train import random_batch
    # A photo whose pixels say where they came from: row index in red, column in green.
    h, w = 80, 120
    im = torch.zeros(3, h, w, dtype=torch.uint8)
    im[0] = torch.arange(h, dtype=torch.uint8)[:, None]
    im[1] = torch.arange(w, dtype=torch.uint8)[None, :]
    # hflip draws the crops of every run before the option, crop for crop:
    # the old draw (photo, y, x, mirror) replayed here.
    a = random_batch([im], 6, 32, random.Random(3))
    assert torch.equal(a, random_batch([im], 6, 32, random.Random(3), "hflip"))
    gen = random.Random(3)
    for c in a:
        gen.randrange(1)
        y, x = gen.randrange(h - 32 + 1), gen.randrange(w - 32 + 1)
        old = im[:, y:y + 32, x:x + 32]
        assert torch.equal(c, (old.flip(2) if gen.random() < 0.5 else old).float() / 255)
    for c in a:      # a plain crop: rows run down, columns run one way or the other
        rows, cols = (c[0] * 255).round(), (c[1] * 255).round()
        assert torch.equal(rows[1:] - rows[:-1], torch.ones(31, 32))
        assert (cols[:, 1:] - cols[:, :-1]).abs().eq(1).all()
    out = random_batch([im], 64, 32, random.Random(3), "dihedral-scale")
    assert out.shape == (64, 3, 32, 32) and out.min() >= 0 and out.max() <= 1
    turned = scaled = 0
    for c in out:
        rows, cols = (c[0] * 255).round(), (c[1] * 255).round()
        down = (rows[-1, 0] - rows[0, 0]).abs() + (rows[0, -1] - rows[0, 0]).abs()
        across = (cols[-1, 0] - cols[0, 0]).abs() + (cols[0, -1] - cols[0, 0]).abs()
        turned += bool((rows[0, -1] - rows[0, 0]).abs() > (rows[-1, 0] - rows[0, 0]).abs())
        # A region r >= 32 px wide squeezed into 32: the ramps span r - 1 levels.
        assert down >= 31 - 1 and across >= 31 - 1
        scaled += bool(down > 34)
    assert 16 < turned < 48 and 8 < scaled      # rows run across in about half; many crops downscaled
    with pytest.raises(ValueError, match="augment"):
        random_batch([im], 1, 32, random.Random(0), "mixup")


def test_refuses_kodak(tmp_path):
    import pytest
    from convcodec.train import load_images
    d = tmp_path / "kodak"
    d.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "kodim01.png")
    with pytest.raises(SystemExit, match="Kodak"):
        load_images([str(d)])


def _ddp_worker(rank, world, port, cfg, tc, out):
    import os
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    train(cfg, tc, out, "d")
    from convcodec.train import leave_distributed
    leave_distributed()          # as tools/train.py does under torchrun


def test_ddp_two_processes_on_cpu_and_resume(tmp_path):
    """The same script under torchrun: two gloo processes, one checkpoint
    holding both processes' RNG states, resumed by a second launch."""
    import socket
    import torch.multiprocessing as mp
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        Image.fromarray(smooth_image(48, 64, seed=i)).save(data / f"{i}.png")
    out = str(tmp_path / "run")
    tc = TrainConfig(data=(str(data),), crop=32, batch=2, minutes=0.03, warmup=2, ckpt_minutes=100,
                     device="cpu")
    for minutes in (0.03, 0.06):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(_ddp_worker, args=(2, port, TINY.to_dict(), TrainConfig(**{**tc.__dict__, "minutes": minutes}), out),
                 nprocs=2, join=True)
        ck = torch.load(f"{out}/ckpt.pt", weights_only=False)
        assert ck["world"] == 2 and len(ck["rngs"]) == 2
        assert ck["rngs"][0]["py"] != ck["rngs"][1]["py"]     # each process draws its own crops
        if minutes == 0.03:
            first = ck["step"]
    assert ck["step"] > first
    net, info = zoo.load_model(f"{out}/d.safetensors")
    assert info["card"]["training"]["batch"] == 4


def test_msssim_distortion_option(tmp_path):
    from convcodec.train import distortion
    x = torch.rand(2, 3, 64, 64)
    tc = TrainConfig(distortion="msssim")
    assert float(distortion(tc, x, x)) < 1e-5
    assert float(distortion(tc, x.flip(-1), x)) > 0.1
    assert float(distortion(TrainConfig(), x, x)) == 0.0


def test_spikes_are_skipped_then_reverted(tmp_path, monkeypatch):
    """A run whose loss goes bad skips those updates, and after 20 in a row
    reverts to the last checkpoint: the exported weights stay finite."""
    import json
    import convcodec.train as T
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(smooth_image(48, 64)).save(data / "0.png")
    out = tmp_path / "run"
    tc = TrainConfig(data=(str(data),), crop=32, batch=2, minutes=0.03, warmup=2, ckpt_minutes=100)
    train(TINY.to_dict(), tc, str(out), "t")
    good = torch.load(out / "ckpt.pt", weights_only=False)["step"]
    real = T._per_image_distortion
    monkeypatch.setattr(T, "_per_image_distortion", lambda tc, a, b: real(tc, a, b) * float("nan"))
    train(TINY.to_dict(), TrainConfig(**{**tc.__dict__, "minutes": 0.08}), str(out), "t")
    logs = [json.loads(line) for line in open(out / "log.jsonl")]
    after = [r for r in logs if r["step"] > good]
    assert after and all(r["skipped"] == 50 for r in after)
    assert sum(r["reverted"] for r in after) >= 1
    net, _ = zoo.load_model(str(out / "t.safetensors"))
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_compiled_blocks_match_eager_and_keep_the_checkpoint_keys(tmp_path):
    """--compile compiles each block in place: the training pass gives what
    the eager model gives, gradients flow, and the state_dict keys (so the
    checkpoints and shipped weights) are those of the eager model."""
    from convcodec.train import compile_blocks
    torch.manual_seed(0)
    net, ref = zoo.build_model(TINY), zoo.build_model(TINY)
    ref.load_state_dict(net.state_dict())
    compile_blocks(net)
    assert list(net.state_dict()) == list(ref.state_dict())
    x = torch.rand(2, 3, 32, 32)
    out = []
    for m in (net, ref):
        torch.manual_seed(1)                 # same noise in both rollouts
        bits, recon = m(x, prefixes=(1,))
        (bits.sum() + recon[TINY.steps].sum()).backward()
        out.append([bits.detach(), recon[1].detach(), recon[TINY.steps].detach()]
                   + [p.grad for p in m.parameters()])
    for c, e in zip(*out):
        torch.testing.assert_close(c, e, rtol=1e-4, atol=1e-4)
    # and through the trainer: the flag runs and the export loads into an eager model
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(smooth_image(48, 64)).save(data / "0.png")
    tc = TrainConfig(data=(str(data),), crop=32, batch=2, minutes=0.01, warmup=2, ckpt_minutes=100, compile=True,
                     snapshots=True)
    train(TINY.to_dict(), tc, str(tmp_path / "run"), "c")
    zoo.load_model(str(tmp_path / "run" / "c.safetensors"))
    # --snapshots keeps each export under the run's minutes, for tools/learning_curve.py
    snap, _ = zoo.load_model(str(tmp_path / "run" / "snapshots" / "min-000.safetensors"))
    assert snap.cfg == zoo.load_model(str(tmp_path / "run" / "c.safetensors"))[0].cfg


def test_init_widens_transforms_without_changing_them(tmp_path):
    """--init into wider g_a / g_s (more channels inside, the same ends):
    the new channels start disconnected, so the model computes what the
    source did (the campaign keeps its progress when capacity grows)."""
    from convcodec.nets.matnet import MatNet
    from convcodec.train import _init_from
    from .conftest import TINY_VR, make_tiny_vr
    src_path = make_tiny_vr(tmp_path / "src")
    src, _ = zoo.load_model(src_path)
    wide = MatNet(type(TINY_VR).from_dict({**TINY_VR.to_dict(), "synthesis": [16, 12], "analysis": [12, 16, 8]}))
    msg = _init_from(src_path, wide)
    assert "leading blocks" in msg
    wide.eval()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(src.begin(x), wide.begin(x)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        st, _ = src.init_state(1, 64, 96, quality=torch.tensor([0.3]))
        st.h = torch.randn_like(st.h.repeat_interleave(4, -2).repeat_interleave(4, -1))
        torch.testing.assert_close(src.render(st), wide.render(st), rtol=1e-5, atol=1e-6)


def _chunks(model_path, x, quality):
    from convcodec import codec
    return codec.encode(x, model=model_path, quality=quality).cdr.chunks


def _grown_tiny_vr(tmp_path, **changes):
    """A tiny variable-rate source model and a model with ``changes`` to its
    config, initialised from it by --init: (source path, grown model)."""
    from convcodec.nets.matnet import MatNet
    from convcodec.train import _init_from
    from .conftest import TINY_VR, make_tiny_vr
    src_path = make_tiny_vr(tmp_path / "src")
    grown = MatNet(type(TINY_VR).from_dict({**TINY_VR.to_dict(), **changes}))
    _init_from(src_path, grown)
    return src_path, grown


def _assert_same_files(src_path, model, path, x):
    """``model`` saved at ``path`` writes the source's files, byte for byte."""
    zoo.save_model(model.eval(), path, {"name": "tiny-vr"})
    for q in (1, 60, 100):
        assert _chunks(src_path, x, q) == _chunks(str(path) + ".safetensors", x, q)


def test_init_widens_finest_h_b_without_changing_the_files(tmp_path):
    """--init into a wider h_b at the finest scale (bu_width, encoder only):
    the new BU channels enter every merge module through zero weights, so
    the grown encoder stores the source's symbols, byte for byte."""
    src_path, wide = _grown_tiny_vr(tmp_path, analysis=[8, 8, 20], bu_width=20)
    assert wide.merge[-1].c1.in_channels == 2 * 8 + 20 and wide.merge[0].c1.in_channels == 3 * 8
    x = (np.random.default_rng(1).random((40, 72, 3)) * 255).astype(np.uint8)
    _assert_same_files(src_path, wide, tmp_path / "wide", x)


def test_init_widens_the_merges_without_changing_the_files_then_they_train(tmp_path):
    """--init into wider merge modules (merge_hidden, encoder only): the new
    hidden channels start with fresh weights in and zero weights out, so the
    grown encoder stores the source's symbols, byte for byte, and the zero
    weights out get a gradient (they would stay at zero if both sides did)."""
    src_path, wide = _grown_tiny_vr(tmp_path, merge_hidden=20)
    m = wide.merge[-1]
    assert m.c1.out_channels == 20 and m.c2.in_channels == 20 and m.c2.out_channels == 8
    assert m.c1.weight[8:].abs().sum() > 0 and m.c2.weight[:, 8:].abs().sum() == 0
    x = (np.random.default_rng(1).random((40, 72, 3)) * 255).astype(np.uint8)
    _assert_same_files(src_path, wide, tmp_path / "wide", x)
    wide.train()
    xb = torch.tensor(x[:32, :64]).permute(2, 0, 1)[None].float().div(255)
    h_b = wide.begin(xb, 0.7)
    st, enc = wide.init_state(1, 32, 64, quality=0.7)
    mu_q, _ = wide.posterior(h_b, st, enc)
    mu_q.square().sum().backward()
    assert wide.merge[0].c2.weight.grad[:, 8:].abs().sum() > 0


def test_init_into_a_residual_read_keeps_the_files_then_the_read_matters(tmp_path):
    """--init into an encoder that reads the residual (residual_read, encoder
    only): the 192 residual channels enter the finest merges through zero
    weights, so the grown encoder stores the source's symbols byte for
    byte; once those weights are not zero, the symbols follow the residual
    of what the decoder draws (and the decoder still decodes them)."""
    src_path, rr = _grown_tiny_vr(tmp_path, residual_read=True)
    assert rr.merge[-1].c1.in_channels == 3 * 8 + 192 and rr.merge[0].c1.in_channels == 3 * 8
    x = (np.random.default_rng(1).random((40, 72, 3)) * 255).astype(np.uint8)
    _assert_same_files(src_path, rr, tmp_path / "rr", x)
    with torch.no_grad():
        for m in rr.merge[-2:]:
            m.c1.weight[:, -192:].normal_(0, 3.0)
    zoo.save_model(rr, tmp_path / "rr2", {"name": "tiny-vr"})
    enc, rec = codec.encode(x, model=str(tmp_path / "rr2.safetensors"), quality=100, reconstruct=True)
    assert enc.cdr.chunks[:3] == _chunks(src_path, x, 100)[:3]      # the coarse groups read no residual
    assert enc.cdr.chunks[3:] != _chunks(src_path, x, 100)[3:]
    dec = codec.decode(enc.data, model=str(tmp_path / "rr2.safetensors"))
    assert np.array_equal(dec, rec)


def test_init_appends_silent_groups_at_the_finest_scale(tmp_path):
    """--init into more groups at the finest scale: the old groups store the
    source's symbols, the new one only zeros (its means start at zero), so
    training starts from the source's files; groups elsewhere are refused."""
    from convcodec import codec
    from convcodec.nets.matnet import MatNet
    from convcodec.train import _init_from
    from .conftest import TINY_VR, make_tiny_vr
    src_path = make_tiny_vr(tmp_path / "src")
    grown = MatNet(type(TINY_VR).from_dict({**TINY_VR.to_dict(), "groups": [1, 2, 3]}))
    assert "1 new latent group" in _init_from(src_path, grown)
    zoo.save_model(grown.eval(), tmp_path / "grown", {"name": "tiny-vr"})
    x = (np.random.default_rng(2).random((40, 72, 3)) * 255).astype(np.uint8)
    for q in (1, 100):
        old = _chunks(src_path, x, q)
        enc = codec.encode(x, model=str(tmp_path / "grown.safetensors"), quality=q)
        assert enc.cdr.chunks[:5] == old
        # the new group's symbols (4 maps at 1/8 of the padded 64 x 96) are all 0
        assert enc.cdr.symbol_crcs[5] == symbol_crc(np.zeros(4 * 8 * 12, dtype=np.int32))
    with pytest.raises(ValueError, match="finest scale"):
        _init_from(src_path, MatNet(type(TINY_VR).from_dict({**TINY_VR.to_dict(), "groups": [1, 3, 2]})))


def test_init_can_append_groups_engaged(tmp_path):
    """--engage: the appended group starts switched on (random TD update and
    posterior head at 0.3x the last old group's spread, scale 1.5 bins), so
    it stores nonzero symbols and changes the picture from step 0, while the
    old groups still store the source's symbols."""
    from convcodec.nets.matnet import MatNet
    from convcodec.train import _init_from
    from .conftest import TINY_VR, make_tiny_vr
    src_path = make_tiny_vr(tmp_path / "src")
    grown = MatNet(type(TINY_VR).from_dict({**TINY_VR.to_dict(), "groups": [1, 2, 3]}))
    torch.manual_seed(0)
    assert "1 new latent group(s) at the finest scale start engaged" in _init_from(src_path, grown, engage=True)
    for mine, old in ((grown.td[5].c2, grown.td[4].c2), (grown.q_heads[5], grown.q_heads[4])):
        spread = float(old.weight.detach().std())
        assert spread > 0 and float(mine.weight.detach().std()) == pytest.approx(0.3 * spread, rel=0.25)
    zoo.save_model(grown.eval(), tmp_path / "grown", {"name": "tiny-vr"})
    x = (np.random.default_rng(2).random((40, 72, 3)) * 255).astype(np.uint8)
    old = _chunks(src_path, x, 100)
    enc = codec.encode(x, model=str(tmp_path / "grown.safetensors"), quality=100)
    assert enc.cdr.chunks[:5] == old
    assert enc.cdr.symbol_crcs[5] != symbol_crc(np.zeros(4 * 8 * 12, dtype=np.int32))
    with pytest.raises(ValueError, match="no appended groups"):
        MatNet(TINY_VR).engage(0)


def test_annealed_rate_weights_rise_to_one():
    """Groups from anneal_from on pay anneal_beta of their rate at the start,
    rising log-linearly to the full rate by anneal_until, and the full rate
    after; the other groups (and runs without annealing) always pay it."""
    from convcodec.train import rate_weights
    tc = TrainConfig(anneal_from=4, anneal_beta=0.1, anneal_until=0.5)
    assert rate_weights(tc, 5, 0.0) == [1.0, 1.0, 1.0, 1.0, pytest.approx(0.1)]
    assert rate_weights(tc, 5, 0.25)[4] == pytest.approx(0.1 ** 0.5)
    assert rate_weights(tc, 5, 0.5) == [1.0] * 5 == rate_weights(tc, 5, 0.9)
    assert rate_weights(TrainConfig(), 5, 0.0) == [1.0] * 5


def test_annealed_rate_is_charged_in_the_loss_but_logged_in_full():
    """rd_loss charges the annealed group beta times its bits, and logs (and
    the spike guard sees) its real rate."""
    import random
    from convcodec.train import rd_loss
    from .conftest import TINY_VR
    from convcodec.nets.matnet import MatNet
    torch.manual_seed(0)
    net = MatNet(TINY_VR)
    x = torch.rand(2, 3, 32, 32)
    T = net.num_groups
    out = []
    for tc in (TrainConfig(bf16=False), TrainConfig(bf16=False, anneal_from=T - 1, anneal_beta=0.25)):
        torch.manual_seed(1)
        loss, terms = rd_loss(tc, net, x, 1, T, random.Random(3), 0.0)
        out.append((loss.item(), terms["gbpp"].tolist()))
    (full, g_full), (annealed, g_ann) = out
    assert g_full == g_ann and g_full[-1] > 0
    # the last group is charged in the all-groups term only (the prefix is 1)
    assert full - annealed == pytest.approx(0.75 * g_full[-1], rel=1e-4)


def test_prefix_weight_scales_only_the_prefix_cost():
    """--prefix-weight w charges the random prefix's cost (its bits and its
    weighted distortion) w times and the all-groups cost in full: the loss
    is A + w P, with A and P what w = 0 and w = 1 give; the log's terms are
    the same for every w."""
    import random
    from convcodec.train import rd_loss
    from .conftest import TINY_VR
    from convcodec.nets.matnet import MatNet
    torch.manual_seed(0)
    net = MatNet(TINY_VR)
    x = torch.rand(2, 3, 32, 32)
    T = net.num_groups
    out = {}
    for w in (0.0, 1.0, 0.1):
        torch.manual_seed(1)
        loss, terms = rd_loss(TrainConfig(bf16=False, prefix_weight=w), net, x, 1, T, random.Random(3), 0.0)
        out[w] = (loss.item(), terms["bpp"], terms["dist_pre"])
    a, p = out[0.0][0], out[1.0][0] - out[0.0][0]
    assert p > 0.1 * a                      # the prefix's cost is no rounding error beside the rest
    assert out[0.1][0] == pytest.approx(a + 0.1 * p, rel=1e-5)
    assert out[0.0][1:] == out[1.0][1:] == out[0.1][1:]
    assert TrainConfig().prefix_weight == 1.0   # every run before session 30
    with pytest.raises(SystemExit, match="prefix-weight"):
        train({"backbone": "matnet"}, TrainConfig(prefix_weight=-0.5), "unused", "unused")


def test_init_to_a_wider_lambda_range_keeps_the_models_function(tmp_path):
    """--init into another lambda range: the source's u is affine in ours
    (u_src = a u + b), and every layer that reads the quality, and the gain
    table at our knots, are re-expressed so the model starts as the source
    at the same lambda (away from the zero padding of the u - 1/2 channel)."""
    import math
    from convcodec.nets.matnet import MatNet
    from convcodec.train import _init_from
    from .conftest import TINY_VR, _perturb_zero_convs
    torch.manual_seed(0)
    cfg = {**TINY_VR.to_dict(), "encoder_quality": True, "lambdas": [0.001, 0.1]}
    src = MatNet(type(TINY_VR).from_dict(cfg))
    with torch.no_grad():
        _perturb_zero_convs(src)
        src.log_gain.normal_(0, 0.5)
    zoo.save_model(src.eval(), tmp_path / "src", {"name": "tiny-vr"})
    wide = MatNet(type(TINY_VR).from_dict({**cfg, "lambdas": [0.001, 1.0]}))
    assert "quality remapped" in _init_from(str(tmp_path / "src.safetensors"), wide)
    wide.eval()
    a = math.log(1000) / math.log(100)                      # u_src = 1.5 u; our knots 0, 1/3, 2/3 -> 0, 1/2, 1
    for u in (0.0, 1 / 3, 2 / 3):
        for g in range(src.num_groups):
            torch.testing.assert_close(wide.quality_bin_width(g, u, 1, "cpu", False),
                                       src.quality_bin_width(g, a * u, 1, "cpu", False))

        def inputs(conv, ch, value):
            x = torch.randn(1, conv.in_channels, 12, 12, generator=torch.Generator().manual_seed(1))
            x[:, ch] = value
            return x
        pairs = [(wide.g_a[0], src.g_a[0], 3, -0.5)]
        pairs += [(w.c1, s.c1, 3 * 8, -0.5) for w, s in zip(wide.merge, src.merge)]
        pairs += [(w.c1, s.c1, 2 * 4, 0.0) for w, s in zip(wide.scale_nets, src.scale_nets)]
        with torch.no_grad():
            for mine, theirs, ch, centre in pairs:
                got = mine(inputs(mine, ch, u + centre))[..., 3:-3, 3:-3]
                want = theirs(inputs(theirs, ch, a * u + centre))[..., 3:-3, 3:-3]
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_spike_guard_expects_each_kind_of_batch_its_own_loss():
    """A variable-rate image's loss grows ~100x from quality 0 to 1 and its
    prefix term shrinks with the prefix, so the guard compares a batch with
    what its qualities and prefix usually cost: a batch that drew high
    qualities and a short prefix is not a spike, a batch at 5x its usual cost is."""
    from convcodec.train import SpikeGuard
    g = SpikeGuard(warmup=2)
    usual = lambda u, p: 0.5 + 60 * u ** 3 * (1 + 3 / p)      # roughly matnet-vr16's per-image losses
    rng = np.random.default_rng(0)
    for _ in range(2000):
        q, p = rng.random(4).tolist(), int(rng.integers(1, 8))
        g.accepted([usual(u, p) for u in q], g.kinds(q, p), gn=1.0)
    low, high = [0.05, 0.1, 0.02, 0.2], [0.95, 0.9, 0.99, 0.97]
    for q, p in ((low, 7), (high, 1), (high, 7)):
        kinds = g.kinds(q, p)
        batch = float(np.mean([usual(u, p) for u in q]))
        assert not g.bad_loss(step=10, loss=batch, kinds=kinds)
        assert g.bad_loss(step=10, loss=5 * batch, kinds=kinds)
        assert not g.bad_loss(step=1, loss=5 * batch, kinds=kinds)      # not during the warm-up
    # that high batch at prefix 1 costs over 3x the mean batch: one running average of the batch loss would skip it
    mean_batch = np.mean([usual(u, p) for u, p in zip(rng.random(4000), rng.integers(1, 8, 4000))])
    assert np.mean([usual(u, 1) for u in high]) > 3 * mean_batch
    assert g.bad_loss(step=10, loss=float("nan"), kinds=g.kinds(low, 3))
    # a single-rate model has one kind per prefix
    assert g.kinds(None, 3) == [(3, 0)]
    # a checkpoint from before the kinds (one float) starts them afresh: a kind not seen is no spike
    old = SpikeGuard(warmup=2, loss_avg=3.5)
    assert old.loss_avg == {}
    assert not old.bad_loss(step=10, loss=1e6, kinds=[(1, 0), (1, 7)])
    assert SpikeGuard(warmup=2, loss_avg=g.loss_avg).loss_avg == g.loss_avg


def test_spike_guard_starts_each_kind_from_a_plain_mean():
    """A kind's first 1/(1 - DECAY) images make a plain mean (an EMA started
    from its first image would lean on that one image for dozens of batches);
    averages restored from a checkpoint go on as EMAs."""
    from convcodec.train import SpikeGuard
    g, k = SpikeGuard(warmup=0), [(2, 3)]
    first = [1.0, 9.0, 2.0, 4.0]
    for v in first:
        g.accepted([v], k, gn=1.0)
    assert g.loss_avg[k[0]] == pytest.approx(np.mean(first))
    n = round(1 / (1 - g.DECAY))
    for _ in range(n - len(first)):
        g.accepted([4.0], k, gn=1.0)
    before = g.loss_avg[k[0]]
    g.accepted([100.0], k, gn=1.0)                     # past n images: an EMA step
    assert g.loss_avg[k[0]] == pytest.approx(g.DECAY * before + (1 - g.DECAY) * 100.0)
    resumed = SpikeGuard(warmup=0, loss_avg={k[0]: 4.0})
    resumed.accepted([100.0], k, gn=1.0)
    assert resumed.loss_avg[k[0]] == pytest.approx(g.DECAY * 4.0 + (1 - g.DECAY) * 100.0)
    resumed.reverted({k[0]: 4.0})
    resumed.accepted([100.0], k, gn=1.0)
    assert resumed.loss_avg[k[0]] == pytest.approx(g.DECAY * 4.0 + (1 - g.DECAY) * 100.0)


def test_bf16_autocast_only_where_native(tmp_path, monkeypatch, capsys):
    """Emulated bf16 (a CPU with AVX2 alone) is ~50x slower than float32: the
    trainer then trains in float32, says so, and the checkpoint records it."""
    import convcodec.train as T
    assert isinstance(T.bf16_native(torch.device("cpu")), bool)
    monkeypatch.setattr(T, "bf16_native", lambda dev: False)
    data = photo_folder(tmp_path / "data", 1)
    tc = TrainConfig(data=(str(data),), crop=32, batch=2, minutes=0.01, warmup=2, ckpt_minutes=100)
    assert tc.bf16
    T.train(TINY.to_dict(), tc, str(tmp_path / "run"), "b")
    assert "bf16 autocast off" in capsys.readouterr().out
    assert torch.load(tmp_path / "run" / "ckpt.pt", weights_only=False)["train_cfg"]["bf16"] is False
