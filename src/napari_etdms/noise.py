"""SEM noise: the Poisson-Gaussian model, its variance-stabilising transform, and its
estimation from one frame.

Model (Foi et al. 2008): a pixel z with noise-free value y has var(z | y) = gain * y + offset,
`gain` from the shot noise (1 / electrons per pixel at white, on a white = 1 scale) and
`offset` from the detector's read noise (minus gain x the black level). Read noise that is
correlated along the scan line is measured apart, as `row_correlation`.

The stage-1 denoiser works in the stabilised domain of `Stabiliser`: the generalised Anscombe
transform (Murtagh, Starck, Bijaoui 1995) with the frame's own parameters, rescaled so the
signal range maps to [-1, 1]. There the noise is close to Gaussian with one standard
deviation, `Stabiliser.sigma`, whatever the brightness: what the network's noise-level map
carries (FFDNet / DRUNet convention).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# The transform is undefined for an exactly noise-free model (gain = offset = 0); this floor
# (1e-6 of the range, as a standard deviation) makes it the identity there, continuously.
_MIN_OFFSET = 1e-12


@dataclass(frozen=True)
class NoiseModel:
    """var(z | y) = gain * y + offset, in the units of the frame it was measured on.

    `row_correlation`: correlation of the noise between horizontal neighbours (0: white);
    `row_offset_std`: standard deviation of a per-row offset, in frame units."""

    gain: float
    offset: float
    row_correlation: float = 0.0
    row_offset_std: float = 0.0

    def std_at(self, level: float) -> float:
        return max(self.gain * level + self.offset, 0.0) ** 0.5

    def rescaled(self, low: float, high: float) -> NoiseModel:
        """The same noise on the [0, 1] scale on which `low` -> 0 and `high` -> 1
        (z = low + y * (high - low))."""
        span = high - low
        return NoiseModel(
            gain=self.gain / span,
            offset=(self.gain * low + self.offset) / span**2,
            row_correlation=self.row_correlation,
            row_offset_std=self.row_offset_std / span,
        )

    def as_dict(self) -> dict:
        return {"gain": self.gain, "offset": self.offset, "row_correlation": self.row_correlation,
                "row_offset_std": self.row_offset_std}


class Stabiliser:
    """Generalised Anscombe transform on a [0, 1] signal scale, mapped so that 0 -> -1 and
    1 -> +1; `forward` / `inverse` are exact algebraic inverses of each other.

    `gain` and `offset` are the noise model on that [0, 1] scale (`NoiseModel.rescaled`);
    tensors of shape (B, 1, 1, 1) give every batch element its own model. With
    c = 3/8 gain^2 + offset, f(y) = 2/gain * sqrt(gain * y + c), written as
    f(y) - f(0) = 2 y / (sqrt(gain * y + c) + sqrt(c)) so it stays exact as gain -> 0, where
    it becomes the linear map y / sqrt(offset) of plain Gaussian noise.
    """

    def __init__(self, gain, offset):
        gain = torch.as_tensor(gain, dtype=torch.float64).clamp(min=0.0)
        offset = torch.as_tensor(offset, dtype=torch.float64)
        # the black level must stay inside the transform's domain (a negative offset is a
        # black level below zero counts)
        self.c = (0.375 * gain**2 + offset).clamp(min=_MIN_OFFSET)
        self.gain = gain
        self.span = self._delta(torch.ones_like(self.c))  # f(1) - f(0)

    @property
    def sigma(self) -> torch.Tensor:
        """Noise standard deviation in the stabilised [-1, 1] domain."""
        return 2.0 / self.span

    def _lowest(self) -> torch.Tensor:
        """Where gain * y + c reaches 0 (-inf without shot noise)."""
        return torch.where(self.gain > 0, -self.c / self.gain.clamp(min=1e-300), torch.full_like(self.c, -torch.inf))

    def _delta(self, y: torch.Tensor) -> torch.Tensor:
        y = torch.maximum(y, self._lowest())
        return 2.0 * y / (torch.sqrt((self.gain * y + self.c).clamp(min=0.0)) + torch.sqrt(self.c))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        out = self._delta(y.double()) / self.span * 2.0 - 1.0
        return out.to(y.dtype)

    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        d = (u.double() + 1.0) * 0.5 * self.span  # f(y) - f(0)
        # the transform's range starts at f(lowest) - f(0) = -2 sqrt(c) / gain
        d = torch.maximum(d, torch.where(self.gain > 0, -2.0 * torch.sqrt(self.c) / self.gain.clamp(min=1e-300),
                                         torch.full_like(d, -torch.inf)))
        y = torch.sqrt(self.c) * d + 0.25 * self.gain * d**2
        return y.to(u.dtype)
