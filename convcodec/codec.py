"""Image -> latent groups -> bytes, and back.

Both directions run ``convcodec.nets.rollout.walk``, the loop over the
model's latent groups that training and refinement run too. For stored
groups the encoder quantizes its posterior and the decoder reads the same
integers back (the ``Coded`` strategy); for the others both regenerate from
the prior. The encoder therefore tracks exactly the state the decoder will
have. A model with exact scales computes the coder's probabilities in
fixed-point arithmetic (convcodec.nets.exact), so its files (container
version 2) decode to the same symbols on every machine; a model with code
tables codes them with its own stored tables instead of the Gaussian
(version 3, convcodec.entropy.CodeTables), and with context tables adds a
checkerboard context inside each group (version 4).
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import entropy
from .entropy import DesyncError, read_group as _read_group
from .container import CdrFile, ContainerError, Header, overhead_bytes, pack, unpack
from .nets.layers import gaussian_bits
from .nets.rollout import Coded, quantize, walk
from .quality import DEFAULT_QUALITY, QUALITY_RANGE, check_quality as _check_quality, quality_u  # noqa: F401 (re-exported)
from .zoo import ModelError, file_version, load_model


@dataclass
class Encoded:
    data: bytes                    # the .cdr file
    cdr: CdrFile
    estimated_bits: list[float]    # the model's own estimate per stored group
    model_name: str

    @property
    def estimated_bytes(self) -> float:
        """Container overhead (exact) plus the model's estimate of the payload."""
        return overhead_bytes(self.model_name, len(self.cdr.chunks)) + sum(self.estimated_bits) / 8


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda asked for, but no CUDA device is available")
    return torch.device(device)


def bf16_native(dev: torch.device) -> bool:
    """Does this device compute bf16 natively? Why ask: bf16 autocast is
    about 1.6x faster than float32 on a CPU with avx512_bf16 or AMX, but on
    one with AVX2 alone oneDNN emulates it, and one training iteration of
    matnet-vr16 at 256 px x 4 took 141 s instead of 2.7 s in float32 (an
    AMD EPYC without AVX-512, session 23). Training and --refine ask it."""
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _digest8(info: dict) -> bytes:
    return bytes.fromhex(info["sha256"])[:8]


def _pad(x: torch.Tensor, stride: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    if ph or pw:
        # Replicate the border: reflect needs pad < size, which 1-pixel images break.
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x


def is_portable(net) -> bool:
    """Whether the model's coder scales come from exact arithmetic (files of
    version 2 and later, the same symbols on every machine)."""
    return file_version(net.cfg) >= 2


def coding_net(net):
    """The network the codec walks: for a portable model its fixed-point
    decoder (the same pixels on every machine, convcodec.nets.fixed)."""
    return net.coder() if is_portable(net) else net


def is_variable_rate(net) -> bool:
    return bool(getattr(net.cfg, "rate_knots", 0))


_CODE_TABLES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def code_tables(net) -> list:
    """A version-3 or 4 model's ``CodeTables`` per group (cached per model, rebuilt
    when its tables changed); None per group for other models."""
    if file_version(net.cfg) < 3:
        return [None] * net.num_groups
    t = net.coder_table
    c = getattr(net, "coder_context", None)
    key = (t._version, t.data_ptr()) + (() if c is None else (c._version, c.data_ptr()))
    hit = _CODE_TABLES.get(net)
    if hit is None or hit[0] != key:
        rows, ctx = (None if b is None else b.detach().cpu().double().numpy() for b in (t, c))
        hit = (key, entropy.group_tables(rows, ctx))
        _CODE_TABLES[net] = hit
    return hit[1]


def _u(net, quality: int):
    return quality_u(quality) if is_variable_rate(net) else None


def _start(net, batch: int, height: int, width: int, dev, quality: int):
    """The walk's first states (decoder, encoder) for a file of this quality."""
    return net.init_state(batch, height, width, dev, quality=_u(net, quality))


def _begin(net, x01: torch.Tensor, quality: int):
    """The encoder's bottom-up pass over the padded image, for a file of this
    quality (an encoder_quality model's encoder sees it)."""
    return net.begin(x01, _u(net, quality))


def _to_uint8(x: torch.Tensor, h: int, w: int, b: int = 0) -> np.ndarray:
    x = x[b, :, :h, :w].clamp(0, 1).mul(255).round().to(torch.uint8)
    return x.permute(1, 2, 0).cpu().numpy()


def encode(rgb: np.ndarray, model: str | None = None, steps: int | None = None,
           device: str = "auto", reconstruct: bool = False, refine: int = 0,
           quality: int | None = None):
    """HxWx3 uint8 -> Encoded (and the decoder's reconstruction if asked).

    ``quality`` (1..100, default DEFAULT_QUALITY) sets a variable-rate
    model's rate; a single-rate model refuses it. ``refine`` > 0 improves
    the stored offsets with that many gradient steps on the file's own
    rate-distortion cost (convcodec.refine): a slower encode and a better
    file, decoded as any other."""
    net, info = load_model(model)
    if info["card"].get("decode_only"):
        from .zoo import DEFAULT_MODEL
        raise ModelError(f"model {info['name']!r} writes version-1 files, which another machine may fail "
                         f"to decode; it is kept only to decode the files it made. Compress with "
                         f"{DEFAULT_MODEL!r} (the default) or another current model (convcodec models)")
    if is_variable_rate(net):
        quality = _check_quality(DEFAULT_QUALITY if quality is None else quality)
    elif quality is not None:
        raise ValueError(f"model {info['name']!r} has a single rate: --quality needs a variable-rate "
                         "model (convcodec models); choose the rate with --steps or another model")
    else:
        quality = 0
    version = file_version(net.cfg)
    dev = pick_device(device)
    net = net.to(dev)
    h, w = rgb.shape[:2]
    stored = net.num_groups if steps is None else max(0, min(int(steps), net.num_groups))
    if refine > 0:       # refused before any work: too big, or no lambda to refine for
        from .refine import check_size, model_lambda, refine_offsets
        check_size(h, w)
        lmbda = model_lambda(info["card"], max(1, stored), net.num_groups, net.cfg, quality)
    with torch.inference_mode():
        x01 = torch.tensor(rgb, device=dev).permute(2, 0, 1)[None].float().div(255)  # copy: input may be read-only
        x01 = _pad(x01, net.cfg.stride)
        ph, pw = x01.shape[-2:]
        ctx = _begin(net, x01, quality)
        state = {}
        coder = coding_net(net)

        def guess(st, prior, wd):
            """The encoder network's offsets (bins from the prior mean), unrounded."""
            mu_q, state["enc"] = coder.posterior(ctx, st, state["enc"])
            return (mu_q - prior.mu) / wd

        pick = lambda g, st, prior, wd: guess(st, prior, wd)
        if refine > 0 and stored > 0:
            start = []

            def first_guess(g, st, prior, wd):
                start.append(guess(st, prior, wd))
                return quantize(start[-1]).to(torch.int32).cpu().numpy()

            st0, state["enc"] = _start(net, 1, ph, pw, dev, quality)
            walk(coder, st0, Coded(first_guess), stored, coding=True, render=False)
            with torch.inference_mode(False):
                chosen = refine_offsets(net, x01, h, w, start, refine, lmbda, quality)
            pick = lambda g, st, prior, wd: chosen[g]

        chunks, crcs, est = [], [], []

        tables = code_tables(net)

        def take(g, st, prior, wd):
            k = quantize(pick(g, st, prior, wd))
            if tables[g] is None:
                est.append(float(gaussian_bits(k, prior.scale).sum()))
                k = k.to(torch.int32).cpu().numpy()
            else:       # offsets outside the group's tables are clamped (and decoded as such)
                k = tables[g].clamp(k.to(torch.int32).cpu().numpy(), prior.idx)
                est.append(tables[g].bits(k, prior.idx))
            chunks.append(entropy.encode(k[0], prior.idx[0], entropy.group_coder(version, tables[g])))
            crcs.append(entropy.symbol_crc(k[0]))
            return k

        st, state["enc"] = _start(net, 1, ph, pw, dev, quality)
        out = walk(coder, st, Coded(take), stored, coding=True, render=reconstruct)
    header = Header(info["name"], _digest8(info), w, h, net.num_groups, stored, quality, version)
    cdr = CdrFile(header, chunks, crcs)
    encoded = Encoded(pack(cdr), cdr, est, info["name"])
    return (encoded, _to_uint8(out, h, w)) if reconstruct else encoded


def model_for(cdr: CdrFile, model: str | None = None):
    """Load the model a file was made with (or ``model``) and check its identity."""
    from .zoo import check_identity
    name = model or cdr.header.model_name
    try:
        net, info = load_model(name)
    except ModelError as e:
        if model is None:
            raise ModelError(f"file was made by model {cdr.header.model_name!r}, "
                             f"which is not installed ({e})") from None
        raise
    check_identity(cdr.header, info, net.num_groups, is_variable_rate(net), file_version(net.cfg))
    return net, info


def _decode_batch(net, cdrs: list[CdrFile], stored: int, temperature: float, seeds, dev) -> list[np.ndarray]:
    """Decode files of one size, model and quality together (one network pass)."""
    hd = cdrs[0].header
    s = net.cfg.stride
    ph, pw = hd.height + (-hd.height) % s, hd.width + (-hd.width) % s

    tables = code_tables(net)

    def take(g, st, prior, wd):
        return np.stack([_read_group(c, g, prior.idx[b], tables[g]) for b, c in enumerate(cdrs)])

    net = coding_net(net)
    gens = [torch.Generator().manual_seed(sd) for sd in seeds]
    with torch.inference_mode():
        st, _ = _start(net, len(cdrs), ph, pw, dev, hd.quality)
        out = walk(net, st, Coded(take), stored, coding=True, temperature=temperature, gens=gens)
    return [_to_uint8(out, hd.height, hd.width, b) for b in range(len(cdrs))]


def _check_temperature(temperature: float):
    if temperature < 0 or not math.isfinite(temperature):
        raise ValueError("temperature must be a finite number >= 0")


def decode(data: bytes | CdrFile, model: str | None = None, steps: int | None = None,
           temperature: float = 0.0, seed: int = 0, device: str = "auto") -> np.ndarray:
    """A .cdr file -> HxWx3 uint8. ``steps`` decodes only the first groups of
    the file; groups not decoded are regenerated from the prior (its mean when
    ``temperature`` is 0, else a sample seeded by ``seed``)."""
    cdr = data if isinstance(data, CdrFile) else unpack(data)
    _check_temperature(temperature)
    net, _ = model_for(cdr, model)
    dev = pick_device(device)
    net = net.to(dev)
    stored = len(cdr.chunks) if steps is None else max(0, min(int(steps), len(cdr.chunks)))
    return _decode_batch(net, [cdr], stored, temperature, [seed], dev)[0]


def decode_many(files, model: str | None = None, temperature: float = 0.0, seed: int = 0,
                device: str = "auto", batch: int = 16) -> list[np.ndarray]:
    """Decode several .cdr files (bytes or CdrFile), batching those made by
    the same model at the same size with the same number of groups: one
    network pass per batch, which is what keeps a GPU busy. Each picture is
    exactly what ``decode(file, temperature=..., seed=seed)`` gives. If a
    batch goes out of step (a device whose batched kernels round
    differently), its files are decoded one by one instead."""
    _check_temperature(temperature)
    cdrs = [f if isinstance(f, CdrFile) else unpack(f) for f in files]
    dev = pick_device(device)
    out: list = [None] * len(cdrs)
    buckets: dict = {}
    for i, c in enumerate(cdrs):
        h = c.header
        buckets.setdefault((h.model_name, h.model_digest, h.width, h.height, h.quality, len(c.chunks)),
                           []).append(i)
    for (*_, stored), idxs in buckets.items():
        net, _ = model_for(cdrs[idxs[0]], model)
        net = net.to(dev)
        for a in range(0, len(idxs), batch):
            part = idxs[a:a + batch]
            try:
                pics = _decode_batch(net, [cdrs[i] for i in part], stored, temperature, [seed] * len(part), dev)
            except DesyncError:
                pics = [_decode_batch(net, [cdrs[i]], stored, temperature, [seed], dev)[0] for i in part]
            for i, p in zip(part, pics):
                out[i] = p
    return out
