"""Convolutional DRAW (Gregor et al. 2016, "Towards Conceptual Compression"),
arranged as a codec: one latent group per step, a fixed-width posterior, a
Gaussian prior computed from the decoder state.

For t = 1..T (names from the paper):
    e      = x - r                                  error image
    h_enc  = ConvLSTM([read(x, e), h_dec], h_enc)   encoder (encoder side only)
    mu_q   = posterior(h_enc)                        q(z_t | x, z_<t) = U(mu_q +- width/2)
    mu_p, sigma_p = prior(h_dec)                     p(z_t | z_<t)
    h_dec  = ConvLSTM(z_t, h_dec)                    decoder
    r      = r + W(h_dec)                            canvas update
The codec (convcodec.codec) drives these same methods group by group, so the
trainer, the encoder and the decoder share one definition of a step.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import ConvLSTMCell, Reader, Writer, gaussian_bits


@dataclass
class ConvDrawConfig:
    backbone: str = "convdraw"          # registry key; checkpoints are rebuilt from this
    steps: int = 8                      # T: DRAW steps = latent groups in a file
    latent: int = 16                    # latent maps per group
    hidden: int = 64                    # h_dec channels (decoder ConvLSTM)
    enc_hidden: int = 48                # h_enc channels (encoder ConvLSTM)
    kernel: int = 3                     # ConvLSTM kernel size
    reader: tuple = (16, 32, 64)        # reader widths per octave; len() = log2(stride)
    writer: tuple = (64, 32, 16)        # writer widths from h_dec resolution upwards

    @property
    def stride(self) -> int:
        return 2 ** len(self.reader)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["reader"], d["writer"] = list(self.reader), list(self.writer)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ConvDrawConfig":
        d = dict(d)
        d["reader"], d["writer"] = tuple(d["reader"]), tuple(d["writer"])
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


# Inference on big images runs the full-resolution parts (reader, writer) in
# bands of this many pixel rows, so memory stays bounded (issue: 12 MP < 2 GiB).
# A band carries a halo wider than the receptive field of those parts, so the
# result is the same as one pass over the whole image: no seams.
BAND_ROWS = 256
READER_HALO = 16        # pixels; reader receptive field reaches 14
WRITER_HALO = 2         # latent rows; writer receptive field reaches < 2


class ConvDraw(nn.Module):
    def __init__(self, cfg: ConvDrawConfig):
        super().__init__()
        assert cfg.writer[0] == cfg.hidden, "writer starts from h_dec"
        self.cfg = cfg
        self.read = Reader(6, cfg.reader)                     # reads [x, e]
        self.enc = ConvLSTMCell(cfg.reader[-1] + cfg.hidden, cfg.enc_hidden, cfg.kernel)
        self.q_head = nn.Conv2d(cfg.enc_hidden, cfg.latent, 3, padding=1)
        # The posterior's width is a learned constant per latent map, independent
        # of the input: it defines the quantization grid of that map.
        self.log_width = nn.Parameter(torch.zeros(cfg.latent))
        self.p_head = nn.Conv2d(cfg.hidden, 2 * cfg.latent, 3, padding=1)
        self.dec = ConvLSTMCell(cfg.latent, cfg.hidden, cfg.kernel)
        self.write = Writer(cfg.hidden, cfg.writer, 3)

    # ---- the group interface shared by trainer, encoder and decoder ----
    @property
    def num_groups(self) -> int:
        return self.cfg.steps

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        s = self.cfg.stride
        return self.cfg.latent, height // s, width // s

    def width(self) -> torch.Tensor:
        """Posterior width (bin size) per latent map, shaped for broadcasting."""
        return self.log_width.float().exp().view(1, -1, 1, 1)

    def init_state(self, batch: int, height: int, width: int, device=None):
        s = self.cfg.stride
        hs, ws = height // s, width // s
        z = lambda ch: torch.zeros(batch, ch, hs, ws, device=device)
        dec = DecoderState(z(self.cfg.hidden), z(self.cfg.hidden),
                           torch.zeros(batch, 3, height, width, device=device))
        enc = EncoderState(z(self.cfg.enc_hidden), z(self.cfg.enc_hidden))
        return dec, enc

    def begin(self, x01: torch.Tensor) -> torch.Tensor:
        """Encoder-side context computed once per image: the centred input."""
        return x01 - 0.5

    def prior(self, st: DecoderState):
        """p(z_t | z_<t): mean and std (latent units) from the decoder state."""
        mu, log_sigma = self.p_head(st.h.to(self._dtype(st.h))).float().chunk(2, 1)
        return mu, log_sigma.clamp(-10, 10).exp()

    def posterior(self, x: torch.Tensor, st: DecoderState, enc: EncoderState):
        """Mean of q(z_t | x, z_<t) and the encoder's next state (encoder only)."""
        inp = torch.cat([self._read_image(x, st.canvas), st.h.to(self._dtype(st.h))], 1)
        h, c = self.enc(inp, enc.h, enc.c)
        return self.q_head(h).float(), EncoderState(h, c)

    def update(self, st: DecoderState, z: torch.Tensor) -> DecoderState:
        h, c = self.dec(z.to(self._dtype(z)), st.h, st.c)
        return DecoderState(h, c, self._write_canvas(st.canvas, h))

    def _banded(self, rows: int) -> bool:
        return not torch.is_grad_enabled() and rows > BAND_ROWS + 2 * READER_HALO

    def _read_image(self, x: torch.Tensor, canvas: torch.Tensor) -> torch.Tensor:
        """read([x, e]) with e = x - canvas, the error image."""
        rows, s = x.shape[-2], self.cfg.stride
        if not self._banded(rows):
            return self.read(torch.cat([x, x - canvas], 1))
        out = []
        for a in range(0, rows, BAND_ROWS):
            b = min(rows, a + BAND_ROWS)
            lo, hi = max(0, a - READER_HALO), min(rows, b + READER_HALO)
            xb = x[..., lo:hi, :]
            f = self.read(torch.cat([xb, xb - canvas[..., lo:hi, :]], 1))
            out.append(f[..., (a - lo) // s:(b - lo) // s, :])
        return torch.cat(out, -2)

    def _write_canvas(self, canvas: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """canvas + W(h_dec); in place, band by band, when not training."""
        s = self.cfg.stride
        if not self._banded(canvas.shape[-2]):
            return canvas + self.write(h).float()
        rows, band = h.shape[-2], BAND_ROWS // s
        for a in range(0, rows, band):
            b = min(rows, a + band)
            lo, hi = max(0, a - WRITER_HALO), min(rows, b + WRITER_HALO)
            w = self.write(h[..., lo:hi, :]).float()
            canvas[..., a * s:b * s, :] += w[..., (a - lo) * s:(b - lo) * s, :]
        return canvas

    def render(self, st: DecoderState) -> torch.Tensor:
        """Canvas -> image in [0, 1] (images are centred at 0 inside the model)."""
        return st.canvas + 0.5

    @staticmethod
    def _dtype(t):
        return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else t.dtype

    # ---- training ----
    def forward(self, x01: torch.Tensor, prefix: int | None = None):
        """Noisy-quantization pass for training.

        Returns (x_hat, bits per group [T] summed over the batch, x_prefix):
        x_prefix is the reconstruction from the first ``prefix`` groups with the
        rest regenerated from the prior mean, exactly what the decoder shows for
        a file cut after ``prefix`` groups.
        """
        x = self.begin(x01)
        b, _, hgt, wid = x.shape
        st, enc = self.init_state(b, hgt, wid, x.device)
        w = self.width()
        bits, st_prefix = [], None
        for t in range(self.num_groups):
            mu_p, sigma_p = self.prior(st)
            mu_q, enc = self.posterior(x, st, enc)
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
