"""Image -> latent groups -> bytes, and back.

Both directions run ``_walk``: one loop over the model's latent groups. For
stored groups the encoder quantizes its posterior and the decoder reads the
same integers back; for the others both regenerate from the prior. The
encoder therefore tracks exactly the state the decoder will have.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import entropy
from .container import CdrFile, ContainerError, Header, overhead_bytes, pack, unpack
from .nets.layers import gaussian_bits
from .zoo import ModelError, load_model


class DesyncError(Exception):
    """The decoder's model produced different probabilities than the encoder's."""


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


def _digest8(info: dict) -> bytes:
    return bytes.fromhex(info["sha256"])[:8]


def _pad(x: torch.Tensor, stride: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    if ph or pw:
        # Replicate the border: reflect needs pad < size, which 1-pixel images break.
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x


Take = Callable[[int, object, torch.Tensor, torch.Tensor, np.ndarray], np.ndarray]
Latent = Callable[[int, object, torch.Tensor, torch.Tensor], torch.Tensor]


def coded(model, take: Take) -> Latent:
    """The latent callback of a coder: ``take(g, state, mu_p, scale, idx)``
    returns stored group g's integer offsets from the prior mean in bins,
    batch first (the encoder quantizes and codes them, the decoder reads
    them), and the latent is the prior mean plus that many bins."""
    w = model.width()

    def latent(g, st, mu_p, sigma_p):
        scale = sigma_p / w
        k = take(g, st, mu_p, scale, entropy.scale_index(scale.cpu().numpy()))
        return mu_p + w * torch.from_numpy(k).to(device=mu_p.device, dtype=mu_p.dtype)
    return latent


def _walk(model, height: int, width: int, stored: int, latent: Latent, device,
          temperature: float = 0.0, seeds=(0,), render: bool = True):
    """The loop every side shares, for a batch of ``len(seeds)`` images of
    one size. ``latent(g, state, mu_p, sigma_p)`` gives stored group g's
    latent (encoder and decoder: through ``coded``; the encoder's refinement:
    a differentiable choice of offsets). Returns the reconstructions in
    [0, 1] at the padded size, or None when ``render`` is False (the encoder
    then stops after the last stored group: nothing after it changes the
    file). Image b of a batch gets exactly what it gets alone: the same
    network arithmetic and its own noise generator seeded with ``seeds[b]``."""
    st, _ = model.init_state(len(seeds), height, width, device)
    gens = [torch.Generator().manual_seed(sd) for sd in seeds]
    for g in range(model.num_groups if render else stored):
        mu_p, sigma_p = model.prior(st)
        if g < stored:
            z = latent(g, st, mu_p, sigma_p)
        elif temperature > 0:
            eps = torch.stack([torch.randn(mu_p.shape[1:], generator=gn) for gn in gens]).to(device)
            z = mu_p + temperature * sigma_p * eps
        else:
            z = mu_p
        if render or g + 1 < stored:
            st = model.update(st, z)
    return model.render(st) if render else None


def _to_uint8(x: torch.Tensor, h: int, w: int, b: int = 0) -> np.ndarray:
    x = x[b, :, :h, :w].clamp(0, 1).mul(255).round().to(torch.uint8)
    return x.permute(1, 2, 0).cpu().numpy()


def encode(rgb: np.ndarray, model: str | None = None, steps: int | None = None,
           device: str = "auto", reconstruct: bool = False, refine: int = 0):
    """HxWx3 uint8 -> Encoded (and the decoder's reconstruction if asked).

    ``refine`` > 0 improves the stored offsets with that many gradient steps
    on the file's own rate-distortion cost (convcodec.refine): a slower
    encode and a better file, decoded as any other."""
    net, info = load_model(model)
    dev = pick_device(device)
    net = net.to(dev)
    h, w = rgb.shape[:2]
    stored = net.num_groups if steps is None else max(0, min(int(steps), net.num_groups))
    if refine > 0:       # refused before any work: too big, or no lambda to refine for
        from .refine import check_size, model_lambda, refine_offsets
        check_size(h, w)
        lmbda = model_lambda(info["card"], max(1, stored), net.num_groups)
    with torch.inference_mode():
        x01 = torch.tensor(rgb, device=dev).permute(2, 0, 1)[None].float().div(255)  # copy: input may be read-only
        x01 = _pad(x01, net.cfg.stride)
        ctx = net.begin(x01)
        _, enc_state = net.init_state(1, *x01.shape[-2:], dev)
        width = net.width()
        state = {"enc": enc_state}

        def guess(g, st, mu_p):
            """The encoder network's offsets (bins from the prior mean), unrounded."""
            mu_q, state["enc"] = net.posterior(ctx, st, state["enc"])
            return (mu_q - mu_p) / width

        pick = guess
        if refine > 0 and stored > 0:
            start = []

            def first_guess(g, st, mu_p, sigma_p):
                start.append(guess(g, st, mu_p))
                return mu_p + width * _quantize(start[-1])

            _walk(net, x01.shape[-2], x01.shape[-1], stored, first_guess, dev, render=False)
            with torch.inference_mode(False):
                chosen = refine_offsets(net, x01, h, w, start, refine, lmbda)

            def pick(g, st, mu_p):
                return chosen[g]

        chunks, crcs, est = [], [], []

        def take(g, st, mu_p, scale, idx):
            k = _quantize(pick(g, st, mu_p))
            est.append(float(gaussian_bits(k, scale).sum()))
            k = k.to(torch.int32).cpu().numpy()
            chunks.append(entropy.encode(k[0], idx[0]))
            crcs.append(entropy.symbol_crc(k[0]))
            return k

        out = _walk(net, x01.shape[-2], x01.shape[-1], stored, coded(net, take), dev, render=reconstruct)
    cdr = CdrFile(Header(info["name"], _digest8(info), w, h, net.num_groups, stored), chunks, crcs)
    encoded = Encoded(pack(cdr), cdr, est, info["name"])
    return (encoded, _to_uint8(out, h, w)) if reconstruct else encoded


def _quantize(offsets: torch.Tensor) -> torch.Tensor:
    """Offsets in bins -> the integers the coder stores."""
    return torch.round(offsets).clamp_(-entropy.SYMBOL_MAX, entropy.SYMBOL_MAX)


def model_for(cdr: CdrFile, model: str | None = None):
    """Load the model a file was made with (or ``model``) and check its identity."""
    name = model or cdr.header.model_name
    try:
        net, info = load_model(name)
    except ModelError as e:
        if model is None:
            raise ModelError(f"file was made by model {cdr.header.model_name!r}, "
                             f"which is not installed ({e})") from None
        raise
    if _digest8(info) != cdr.header.model_digest:
        raise ModelError(f"file was made by model {cdr.header.model_name!r} "
                         f"(weights {cdr.header.model_digest.hex()}), but the model loaded is "
                         f"{info['name']!r} (weights {_digest8(info).hex()}): cannot decode with a different model")
    if net.num_groups != cdr.header.groups_total:
        raise ContainerError("corrupted .cdr header (group count does not match the model)")
    return net, info


def _read_group(cdr: CdrFile, g: int, idx: np.ndarray) -> np.ndarray:
    """Group g's integer offsets, decoded and checked against their CRC."""
    # The container's CRC-32 already vouched for these bytes, so a chunk
    # that does not decode, or decodes to other symbols, means the model
    # here computed other probabilities than the encoder's did (a
    # different machine or build), unless the file was altered and its
    # checksums recomputed. Both are reported as what they are.
    try:
        k = entropy.decode(cdr.chunks[g], idx)
    except entropy.StreamError as e:
        raise DesyncError(f"group {g + 1} cannot be decoded although the file's checksum is intact "
                          f"({e}): decoding went out of step with the encoder (this machine "
                          "computes the model's probabilities differently from the one that "
                          "wrote the file), or the file was altered") from None
    if entropy.symbol_crc(k) != cdr.symbol_crcs[g]:
        raise DesyncError(f"group {g + 1} decoded out of step with the encoder: the model here "
                          "computes different probabilities than the one that wrote the file, "
                          "or the file was altered")
    return k


def _decode_batch(net, cdrs: list[CdrFile], stored: int, temperature: float, seeds, dev) -> list[np.ndarray]:
    """Decode files of one size and one model together (one network pass)."""
    hd = cdrs[0].header
    s = net.cfg.stride
    ph, pw = hd.height + (-hd.height) % s, hd.width + (-hd.width) % s

    def take(g, st, mu_p, scale, idx):
        return np.stack([_read_group(c, g, idx[b]) for b, c in enumerate(cdrs)])

    with torch.inference_mode():
        out = _walk(net, ph, pw, stored, coded(net, take), dev, temperature, seeds)
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
        buckets.setdefault((h.model_name, h.model_digest, h.width, h.height, len(c.chunks)), []).append(i)
    for (_, _, _, _, stored), idxs in buckets.items():
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
