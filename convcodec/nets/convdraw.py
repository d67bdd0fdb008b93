"""Convolutional DRAW (Gregor et al. 2016, "Towards Conceptual Compression"),
arranged as a codec: one latent group per step, a fixed-width posterior, a
Gaussian prior computed from the decoder state.

The recurrence runs in a learned transform domain at 1/stride resolution:

    y      = g_a(x)                                   analysis, once per image (encoder)
    for t = 1..T:
      mu_p, sigma_p = prior(h_dec)                    p(z_t | z_<t)
      h_enc  = ConvLSTM(read([y, canvas, h_dec]), h_enc)   encoder: sees what the canvas lacks
      mu_q   = posterior(h_enc)                       q(z_t | x, z_<t) = U(mu_q +- width/2)
      h_dec  = ConvLSTM(z_t, h_dec)                   decoder
      canvas = canvas + W(h_dec)                      canvas refined every step
    x_hat  = g_s(canvas)                              synthesis, once per picture shown

Why the canvas lives at 1/stride resolution rather than in pixels, as in the
paper: with an image-space canvas every step pays for a full-resolution
reader and writer, and on our CPU budget those had to be so thin that the
model stayed ~4 dB below JPEG. Here the full-resolution work (g_a, g_s, with
GDN) is done once, so it can be strong, while the steps stay cheap. The
encoder still compares the input with the canvas at every step (the paper's
error image, in the transform domain).

The codec (convcodec.codec) drives begin/prior/posterior/update/render, so
the trainer, the encoder and the decoder share one definition of a step.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from .layers import ConvLSTMCell, analysis, by_tiles, run_analysis, run_synthesis, synthesis
from .rollout import LatentGroups


@dataclass
class ConvDrawConfig:
    backbone: str = "convdraw"          # registry key; checkpoints are rebuilt from this
    steps: int = 8                      # T: DRAW steps = latent groups in a file
    latent: int = 16                    # latent maps per group
    hidden: int = 64                    # h_dec channels (decoder ConvLSTM)
    enc_hidden: int = 48                # h_enc channels (encoder ConvLSTM)
    read: int = 64                      # channels the encoder reads per step
    canvas: int = 96                    # canvas channels = output of g_a
    kernel: int = 3                     # ConvLSTM kernel size
    analysis: tuple = (64, 64, 96)      # g_a widths, one stride-2 conv each; last = canvas
    synthesis: tuple = (64, 64)         # g_s widths from the canvas upwards (then RGB)

    @property
    def stride(self) -> int:
        return 2 ** len(self.analysis)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["analysis"], d["synthesis"] = list(self.analysis), list(self.synthesis)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ConvDrawConfig":
        d = dict(d)
        d["analysis"], d["synthesis"] = tuple(d["analysis"]), tuple(d["synthesis"])
        return cls(**d)


@dataclass
class DecoderState:
    """Everything the decoder knows after some groups: shared by both sides."""
    h: torch.Tensor
    c: torch.Tensor
    canvas: torch.Tensor


@dataclass
class EncoderState:
    """What only the encoder has: its LSTM state."""
    h: torch.Tensor
    c: torch.Tensor


class ConvDraw(LatentGroups):
    def __init__(self, cfg: ConvDrawConfig):
        super().__init__()
        assert cfg.analysis[-1] == cfg.canvas, "g_a produces the canvas space"
        self.cfg = cfg
        self.g_a = analysis(3, cfg.analysis)
        self.g_s = synthesis(cfg.canvas, cfg.synthesis, 3)
        self.reader = nn.Conv2d(2 * cfg.canvas + cfg.hidden, cfg.read, 1)
        self.enc = ConvLSTMCell(cfg.read, cfg.enc_hidden, cfg.kernel)
        self.q_head = nn.Conv2d(cfg.enc_hidden, cfg.latent, 3, padding=1)
        # The posterior's width is a learned constant per latent map, independent
        # of the input: it defines the quantization grid of that map.
        self.log_width = nn.Parameter(torch.zeros(cfg.latent))
        self.p_head = nn.Conv2d(cfg.hidden, 2 * cfg.latent, 3, padding=1)
        self.dec = ConvLSTMCell(cfg.latent, cfg.hidden, cfg.kernel)
        self.writer = nn.Conv2d(cfg.hidden, cfg.canvas, 3, padding=1)

    # ---- the group interface shared by trainer, encoder and decoder ----
    @property
    def num_groups(self) -> int:
        return self.cfg.steps

    def init_state(self, batch: int, height: int, width: int, device=None, quality=None):
        """``quality`` is for variable-rate backbones; a Conv DRAW has one rate."""
        s = self.cfg.stride
        hs, ws = height // s, width // s
        z = lambda ch: torch.zeros(batch, ch, hs, ws, device=device)
        dec = DecoderState(z(self.cfg.hidden), z(self.cfg.hidden), z(self.cfg.canvas))
        enc = EncoderState(z(self.cfg.enc_hidden), z(self.cfg.enc_hidden))
        return dec, enc

    def begin(self, x01: torch.Tensor, quality=None) -> torch.Tensor:
        """Encoder-side context computed once per image: y = g_a(x)."""
        return run_analysis(self.g_a, x01, self.cfg.stride)

    def prior(self, st: DecoderState):
        """p(z_t | z_<t): mean and std (latent units) from the decoder state."""
        mu, log_sigma = by_tiles(lambda h: self.p_head(h).float().chunk(2, 1), st.h, halo=1)
        return mu, log_sigma.clamp(-10, 10).exp()

    def posterior(self, y: torch.Tensor, st: DecoderState, enc: EncoderState):
        """Mean of q(z_t | x, z_<t) and the encoder's next state (encoder only)."""
        def step(y, canvas, h_dec, h, c):
            h, c = self.enc(self.reader(torch.cat([y, canvas, h_dec], 1)), h, c)
            return self.q_head(h).float(), h, c
        mu_q, h, c = by_tiles(step, y, st.canvas, st.h, enc.h, enc.c, halo=2)
        return mu_q, EncoderState(h, c)

    def update(self, st: DecoderState, z: torch.Tensor) -> DecoderState:
        def step(z, h, c, canvas):
            h, c = self.dec(z, h, c)
            return h, c, canvas + self.writer(h).float()
        return DecoderState(*by_tiles(step, z, st.h, st.c, st.canvas, halo=2))

    def render(self, st: DecoderState) -> torch.Tensor:
        """x_hat = g_s(canvas), in [0, 1] up to clamping (padded size)."""
        return run_synthesis(self.g_s, st.canvas, self.cfg.stride)
