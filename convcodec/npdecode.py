"""A torch-free decoder for portable files: numpy, on the CPU.

Importing torch takes 1.7 s on our 2-core machine, more than decoding a
Kodak file does; a command-line decode that needs no torch starts at once.
This module decodes portable files (versions 2 to 4) of MatNet models (exact scales) with
numpy alone: the very group loop of the torch decoder (``nets.walk.walk``,
at temperature 0, over this module's numpy twin of the model's group
interface), the same exact entropy model (``nets.exact.ExactScales``, one implementation
for both decoders, so the symbols are those of the file on any machine), and
the fixed-point reconstruction of ``nets.fixed`` (the top-down path and
``g_s``) in numpy's float64, whose sums are exact: its pixels are the torch
decoder's, bit for bit, on any machine (tests/test_npdecode.py checks it).

Used by ``convcodec decompress`` (``--engine auto``) for portable files on
the CPU at temperature 0, up to MAX_PIXELS; everything else (sampling at a
temperature, big images, which the torch decoder tiles, CUDA, batches)
goes through convcodec.codec.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .container import CdrFile
from .entropy import group_tables, read_group
from .nets.exact import ExactConv, ExactScales, FixedConvTranspose, FixedGDN, fixed_conv
from .nets.walk import Prior, walk
from .quality import quality_u
from .zoo import ModelError, check_identity, file_version, load_arrays

MAX_PIXELS = 4_000_000     # larger images go to the torch decoder, which works in tiles


def _lrelu(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, np.float32(0.1) * x)


def _pixel_shuffle(x: np.ndarray) -> np.ndarray:
    c4, h, w = x.shape
    c = c4 // 4
    return x.reshape(c, 2, 2, h, w).transpose(0, 3, 1, 4, 2).reshape(c, 2 * h, 2 * w)


@dataclass
class State:
    """nets.matnet.TopDownState in numpy: the TD state (C x H x W float32),
    the next group, the quality u and |w k| of the groups decoded so far."""
    h: np.ndarray
    g: int
    u: float | None
    hist: tuple = ()


class NumpyMatNet:
    """The decoder half of a MatNet with exact scales, from its weights: the
    fixed-point layers of nets.fixed, in numpy (nets.exact.fixed_*), and the
    float32 elementwise steps of nets.matnet between them, behind the group
    interface that ``nets.walk.walk`` drives (as MatNet.coder() is, coding)."""

    def __init__(self, state: dict, cfg: dict):
        self.s = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}
        self.groups = list(cfg["groups"])
        self.G = sum(self.groups)
        self.latent, self.synthesis = cfg["latent"], list(cfg["synthesis"])
        self.stride = 2 ** (len(cfg["analysis"]) + len(self.groups) - 1)
        self.rate_knots = cfg.get("rate_knots", 0)
        self.scale_of, self.last_of_scale = [], []
        for s, k in enumerate(self.groups):
            self.scale_of += [s] * k
            self.last_of_scale += [False] * (k - 1) + [True]
        self.exact = ExactScales(state, self.latent, self.G, self.scale_of, self.rate_knots)
        self.version = file_version(cfg)
        self.tables = (group_tables(state["coder_table"], state["coder_context"] if self.version >= 4 else None)
                       if self.version >= 3 else [None] * self.G)
        self._layers: dict = {}

    def _layer(self, name: str, make):
        if name not in self._layers:
            self._layers[name] = make()
        return self._layers[name]

    def conv(self, name: str, x):
        c = self._layer(name, lambda: ExactConv(self.s[f"{name}.weight"], self.s[f"{name}.bias"]))
        return fixed_conv(c, x)

    def prior_mean(self, g: int, h):
        return self.conv(f"prior_heads.{g}.2", _lrelu(self.conv(f"prior_heads.{g}.0", h)))

    def update(self, g: int, h, z):
        inp = np.concatenate([h, z.astype(np.float32)], 0)
        h = _lrelu(h + self.conv(f"td.{g}.c2", _lrelu(self.conv(f"td.{g}.c1", inp))))
        if self.last_of_scale[g] and g + 1 < self.G:
            name = f"up_t.{self.scale_of[g]}"
            h = self._layer(name, lambda: FixedConvTranspose(self.s[f"{name}.weight"],
                                                               self.s[f"{name}.bias"]))(h)
        return h

    def render(self, st: State):
        """g_s: conv, pixel shuffle, inverse GDN per octave; then + 1/2."""
        x, n = st.h, len(self.synthesis) + 1
        for i in range(n):
            x = _pixel_shuffle(self.conv(f"g_s.{3 * i}", x))
            if i < n - 1:
                name = f"g_s.{3 * i + 2}"
                x = self._layer(name, lambda: FixedGDN(self.s[f"{name}.beta"],
                                                       self.s[f"{name}.gamma"]))(x)
        return x + np.float32(0.5)

    # ---- the group interface of nets.walk (coding, temperature 0) ----
    @property
    def num_groups(self) -> int:
        return self.G

    def init_state(self, cdr: CdrFile) -> State:
        hd = cdr.header
        ph, pw = hd.height + (-hd.height) % self.stride, hd.width + (-hd.width) % self.stride
        top = self.s["h_top"][0]
        h = np.broadcast_to(top, (top.shape[0], ph // self.stride, pw // self.stride)).astype(np.float32)
        return State(h, 0, quality_u(hd.quality) if self.rate_knots else None)

    def prior(self, st: State):
        return self.prior_mean(st.g, st.h), None

    def prior_of(self, st: State, coding: bool = True) -> Prior:
        idx = self.exact.index(st.g, list(st.hist), st.u, (1, *st.h.shape[1:]))
        return Prior(self.prior_mean(st.g, st.h), None, idx)

    def bin_width(self, st: State, coding: bool = True) -> np.ndarray:
        return self.exact.constants(st.u)[0][st.g].astype(np.float32).reshape(-1, 1, 1)

    def step(self, st: State, z: np.ndarray, k: np.ndarray | None, coding: bool = True) -> State:
        d = np.zeros((1, *z.shape)) if k is None else self.exact.magnitudes(st.g, k[None], st.u)
        return State(self.update(st.g, st.h, z), st.g + 1, st.u, st.hist + (d,))

    def decode(self, cdr: CdrFile, stored: int) -> np.ndarray:
        # A stored group's offsets as float32, as the torch decoder's Coded
        # strategy hands them over: z = mu + w k is then the same float32 sum.
        take = lambda g, st, prior, w: read_group(cdr, g, prior.idx[0], self.tables[g]).astype(np.float32)
        x = walk(self, self.init_state(cdr), take, stored, coding=True)
        x = x[:, :cdr.header.height, :cdr.header.width]
        return np.round(np.clip(x, 0, 1) * np.float32(255)).astype(np.uint8).transpose(1, 2, 0)


_NETS: dict = {}


def _net(name_or_path: str):
    state, cfg, info = load_arrays(name_or_path)
    key = info["sha256"]
    if key not in _NETS:
        _NETS[key] = NumpyMatNet(state, cfg)
    return _NETS[key], cfg, info


def can_decode(cdr: CdrFile, model: str | None = None, temperature: float = 0.0,
               device: str = "auto") -> bool:
    """Whether this decoder takes the file: a portable file of a MatNet with
    exact scales, temperature 0, on the CPU (``auto`` where no NVIDIA GPU is
    present), at most MAX_PIXELS."""
    hd = cdr.header
    if hd.version < 2 or temperature != 0 or hd.width * hd.height > MAX_PIXELS:
        return False
    if device == "cuda" or (device == "auto" and os.path.exists("/dev/nvidiactl")):
        return False
    try:
        _, cfg, _ = load_arrays(model or hd.model_name)
    except ModelError:
        return False          # the torch decoder reports it
    return cfg.get("backbone") == "matnet" and bool(cfg.get("exact_scales"))


def decode(cdr: CdrFile, model: str | None = None, steps: int | None = None) -> np.ndarray:
    """A portable .cdr file (version 2, 3 or 4) -> HxWx3 uint8, without torch (see can_decode)."""
    net, _, info = _net(model or cdr.header.model_name)
    check_identity(cdr.header, info, net.G, bool(net.rate_knots), net.version)
    stored = len(cdr.chunks) if steps is None else max(0, min(int(steps), len(cdr.chunks)))
    return net.decode(cdr, stored)
