"""Stage 2: CLSR, the conditional lightweight super-resolution noise predictor (x4).

The same encoder weights run on the noisy high-res state x_t (with the step embedding)
and on the low-res condition c (without it); condition features are fused into x twice
and attended to twice at 1/4 resolution; the decoder has no skip connections.

With `measured_input`, the condition has a second channel, the measured (noisy) low-res
frame, added to the condition's first features through its own zero-initialised
convolution: stage 2 may then recover what the denoiser smoothed away, and a model
grown from one without it starts out computing the same function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SCALE = 4


@dataclass(frozen=True)
class CLSRSize:
    inner_channels: int = 32
    channel_multiplier: int = 12
    dropout: float = 0.0
    measured_input: bool = False
    uncertainty: bool = False

    @property
    def base_channels(self) -> int:
        # 24 at paper size: two PixelUnshuffle(2) levels then give 96 and 384 channels.
        return self.inner_channels * self.channel_multiplier // 16


def _groups(channels: int) -> int:
    return max(1, min(8, channels // 8))


def step_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(channels), channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.step = nn.Linear(emb_dim, channels)
        self.norm2 = nn.GroupNorm(_groups(channels), channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if emb is not None:  # the condition branch shares weights but has no step
            h = h + self.step(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return x + h


class CrossAttention(nn.Module):
    """Single-head global attention from x (queries) to the condition (keys, values)."""

    def __init__(self, channels: int, key_dim: int):
        super().__init__()
        self.key_dim = key_dim
        self.query = nn.Conv2d(channels, key_dim, 1)
        self.key_value = nn.Conv2d(channels, 2 * key_dim, 1)
        self.out = nn.Conv2d(key_dim, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # (B, HW, d)
        k, v = self.key_value(cond).flatten(2).transpose(1, 2).chunk(2, dim=2)
        attended = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        attended = attended.transpose(1, 2).reshape(b, self.key_dim, h, w)
        return x + self.out(attended)


# The step input of a regression CLSR is the condition's noise level: 0 for a noise-free
# frame, rising towards the last diffusion step as the level grows past RELIABILITY_SCALE.
RELIABILITY_SCALE = 0.05
# The log-variance output is read within this range (target units): beyond e^8 a variance
# means nothing more, and below e^-16 the likelihood's exp(-log variance) only overflows.
LOG_VARIANCE_RANGE = (-16.0, 8.0)
RELIABILITY_STEPS = 2000


def reliability_step(level: torch.Tensor) -> torch.Tensor:
    """The step a regression CLSR is given for a condition whose noise had `level` (std on the
    stabilised [-1, 1] scale, `Stabiliser.sigma`): how far to trust the condition."""
    level = level.float().flatten().clamp(min=0.0)
    return (RELIABILITY_STEPS - 1) * level / (level + RELIABILITY_SCALE)


class CLSR(nn.Module):
    def __init__(self, size: CLSRSize):
        super().__init__()
        emb = size.inner_channels
        c0 = size.base_channels
        c1, c2 = 4 * c0, 16 * c0
        self.emb_dim = emb
        self.step_mlp = nn.Sequential(nn.Linear(emb, 4 * emb), nn.SiLU(), nn.Linear(4 * emb, emb))
        self.conv_in = nn.Conv2d(1, c0, 3, padding=1)
        self.condition_channels = 2 if size.measured_input else 1
        if size.measured_input:
            self.measured_in = nn.Conv2d(1, c0, 3, padding=1)
            nn.init.zeros_(self.measured_in.weight)
            nn.init.zeros_(self.measured_in.bias)
        self.enc0 = ResBlock(c0, emb, size.dropout)
        self.fuse0 = nn.Conv2d(c0, c0, 3, padding=1)
        self.enc1 = ResBlock(c1, emb, size.dropout)
        self.fuse1 = nn.Conv2d(c1, c1, 3, padding=1)
        self.mid = nn.ModuleList(ResBlock(c2, emb, size.dropout) for _ in range(2))
        self.attn = nn.ModuleList(CrossAttention(c2, size.inner_channels) for _ in range(2))
        self.dec2 = nn.ModuleList(ResBlock(c2, emb, size.dropout) for _ in range(2))
        self.dec1 = nn.ModuleList(ResBlock(c1, emb, size.dropout) for _ in range(2))
        self.norm_out = nn.GroupNorm(_groups(c0), c0)
        self.conv_out = nn.Conv2d(c0, 1, 3, padding=1)
        self.uncertainty = size.uncertainty
        if size.uncertainty:
            self.log_variance_out = nn.Conv2d(c0, 1, 3, padding=1)
            nn.init.zeros_(self.log_variance_out.weight)
            nn.init.zeros_(self.log_variance_out.bias)

    def grow_from(self, state: dict[str, torch.Tensor]) -> None:
        """Start from trained CLSR weights of the same size, with or without the measured input;
        a branch the source lacks stays zero, so the result computes what the source did.

        A CLSR with the uncertainty output grown from one without it (a diffusion noise
        predictor) keeps the source's features but starts its mean output at zero: the
        residual over the bicubic x4 of the condition, so it starts as that bicubic."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        added = ("measured_in.", "log_variance_out.")
        unplaced = unexpected + [name for name in missing if not name.startswith(added)]
        if unplaced:
            raise ValueError(f"cannot grow from these weights: '{unplaced[0]}' does not fit this CLSR "
                             "(only the measured input and the uncertainty output may be added)")
        if self.uncertainty and "log_variance_out.weight" not in state:
            with torch.no_grad():
                self.conv_out.weight.zero_()
                self.conv_out.bias.zero_()

    def condition(self, restored: torch.Tensor, measured: torch.Tensor) -> torch.Tensor:
        """The condition this model takes from the stage-1 output and the measured frame."""
        return torch.cat([restored, measured], dim=1) if self.condition_channels == 2 else restored

    def check_shapes(self, x_t: torch.Tensor, cond: torch.Tensor) -> None:
        if cond.shape[1] != self.condition_channels:
            raise ValueError(f"CLSR expects a condition of {self.condition_channels} channel(s), got {cond.shape[1]}")
        lh, lw = cond.shape[-2:]
        if lh % 4 or lw % 4:
            raise ValueError(f"CLSR low-res sides must be divisible by 4, got {lh}x{lw}")
        if x_t.shape[-2:] != (SCALE * lh, SCALE * lw):
            raise ValueError(f"CLSR high-res must be 4x the low-res {lh}x{lw}, got {tuple(x_t.shape[-2:])}")

    def forward(self, x_t: torch.Tensor, cond: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.check_shapes(x_t, cond)
        emb = self.step_mlp(step_embedding(t, self.emb_dim))
        unshuffle = F.pixel_unshuffle

        x = self.enc0(self.conv_in(x_t), emb)
        c = self.conv_in(cond[:, :1])
        if self.condition_channels == 2:
            c = c + self.measured_in(cond[:, 1:])
        c = self.enc0(c, None)
        x = x + self.fuse0(F.interpolate(c, scale_factor=SCALE, mode="nearest"))
        x, c = unshuffle(x, 2), unshuffle(c, 2)

        x, c = self.enc1(x, emb), self.enc1(c, None)
        x = x + self.fuse1(F.interpolate(c, scale_factor=SCALE, mode="nearest"))
        x, c = unshuffle(x, 2), unshuffle(c, 2)

        for block, attn in zip(self.mid, self.attn):
            x, c = block(x, emb), block(c, None)
            x = attn(x, c)

        for block in self.dec2:
            x = block(x, emb)
        x = F.pixel_shuffle(x, 2)
        for block in self.dec1:
            x = block(x, emb)
        x = F.pixel_shuffle(x, 2)
        features = F.silu(self.norm_out(x))
        if self.uncertainty:
            return torch.cat([self.conv_out(features), self.log_variance_out(features)], dim=1)
        return self.conv_out(features)
