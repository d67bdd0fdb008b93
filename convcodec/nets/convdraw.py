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

from .layers import ConvLSTMCell, analysis, gaussian_bits, synthesis


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


# Inference on big images runs g_a and g_s in bands of BAND_ROWS pixel rows,
# so memory stays bounded. Each band carries a halo wider than the receptive
# field, so the result is that of one pass over the whole image: no seams.
BAND_ROWS = 256
ANALYSIS_HALO = 32      # pixels; g_a's receptive field reaches 29 (multiple of the stride)
SYNTHESIS_HALO = 2      # canvas rows; g_s's receptive field reaches < 2


def _in_bands(fn, x: torch.Tensor, band: int, halo: int, up: int, down: int) -> torch.Tensor:
    """fn(x) for a row-local fn whose output has up/down rows per input row,
    computed in bands of ``band`` input rows with ``halo`` rows of context each
    side. Used only at inference on images taller than BAND_ROWS plus halos
    (in pixels), where it bounds memory; elsewhere one pass."""
    rows = x.shape[-2]
    if torch.is_grad_enabled() or rows * up <= BAND_ROWS + 2 * ANALYSIS_HALO:
        return fn(x)
    out = []
    for a in range(0, rows, band):
        b = min(rows, a + band)
        lo, hi = max(0, a - halo), min(rows, b + halo)
        out.append(fn(x[..., lo:hi, :])[..., (a - lo) * up // down:(b - lo) * up // down, :])
    return torch.cat(out, -2)


class ConvDraw(nn.Module):
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

    def width(self) -> torch.Tensor:
        """Posterior width (bin size) per latent map, shaped for broadcasting."""
        return self.log_width.float().exp().view(1, -1, 1, 1)

    def init_state(self, batch: int, height: int, width: int, device=None):
        s = self.cfg.stride
        hs, ws = height // s, width // s
        z = lambda ch: torch.zeros(batch, ch, hs, ws, device=device)
        dec = DecoderState(z(self.cfg.hidden), z(self.cfg.hidden), z(self.cfg.canvas))
        enc = EncoderState(z(self.cfg.enc_hidden), z(self.cfg.enc_hidden))
        return dec, enc

    def begin(self, x01: torch.Tensor) -> torch.Tensor:
        """Encoder-side context computed once per image: y = g_a(x)."""
        return _in_bands(lambda t: self.g_a(t).float(), x01 - 0.5,
                         BAND_ROWS, ANALYSIS_HALO, up=1, down=self.cfg.stride)

    def prior(self, st: DecoderState):
        """p(z_t | z_<t): mean and std (latent units) from the decoder state."""
        mu, log_sigma = self.p_head(st.h).float().chunk(2, 1)
        return mu, log_sigma.clamp(-10, 10).exp()

    def posterior(self, y: torch.Tensor, st: DecoderState, enc: EncoderState):
        """Mean of q(z_t | x, z_<t) and the encoder's next state (encoder only)."""
        inp = self.reader(torch.cat([y, st.canvas, st.h], 1))
        h, c = self.enc(inp, enc.h, enc.c)
        return self.q_head(h).float(), EncoderState(h, c)

    def update(self, st: DecoderState, z: torch.Tensor) -> DecoderState:
        h, c = self.dec(z, st.h, st.c)
        return DecoderState(h, c, st.canvas + self.writer(h).float())

    def render(self, st: DecoderState) -> torch.Tensor:
        """x_hat = g_s(canvas), in [0, 1] up to clamping (padded size)."""
        s = self.cfg.stride
        return _in_bands(lambda t: self.g_s(t).float(), st.canvas,
                         BAND_ROWS // s, SYNTHESIS_HALO, up=s, down=1) + 0.5

    # ---- training ----
    def forward(self, x01: torch.Tensor, prefix: int | None = None):
        """Noisy-quantization pass for training.

        Returns (x_hat, bits per group [T] summed over the batch, x_prefix):
        x_prefix is the reconstruction from the first ``prefix`` groups with the
        rest regenerated from the prior mean, exactly what the decoder shows for
        a file cut after ``prefix`` groups.
        """
        b, _, hgt, wid = x01.shape
        y = self.begin(x01)
        st, enc = self.init_state(b, hgt, wid, x01.device)
        w = self.width()
        bits, st_prefix = [], None
        for t in range(self.num_groups):
            mu_p, sigma_p = self.prior(st)
            mu_q, enc = self.posterior(y, st, enc)
            z = mu_q + w * (torch.rand_like(mu_q) - 0.5)
            bits.append(gaussian_bits((z - mu_p) / w, sigma_p / w).sum())
            st = self.update(st, z)
            if prefix is not None and t + 1 == prefix:
                st_prefix = st
        x_prefix = None
        if st_prefix is not None:
            for _ in range(prefix, self.num_groups):
                mu_p, _ = self.prior(st_prefix)
                st_prefix = self.update(st_prefix, mu_p)
            x_prefix = self.render(st_prefix)
        return self.render(st), torch.stack(bits), x_prefix
