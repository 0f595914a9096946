"""Stage 1 on normalised frames, as training and inference both run it.

A blind denoiser (v1) maps the frame as it is. A noise-aware one works in the
variance-stabilised domain of the frame's noise model, with the noise level as a second
input channel; `strength` scales that level (0: no denoising, 1: the estimate).

Frames here are on the pipeline's [-1, 1] scale; the noise model is on the matching [0, 1]
scale (y = (x + 1) / 2), one (gain, offset) pair per batch element, shaped (B, 1, 1, 1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .noise import Stabiliser

ROWS_PER_CHUNK = 256  # the transforms run in float64: by bands of rows, a large frame's copies stay small


def _by_rows(transform: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """A pixel-wise float64 `transform` of (B, 1, H, W) frames, band by band, as float32."""
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    for top in range(0, x.shape[-2], ROWS_PER_CHUNK):
        rows = slice(top, top + ROWS_PER_CHUNK)
        out[..., rows, :] = transform(x[..., rows, :].double())
    return out


class NoiseAwareInput:
    """The stabilised frame and the noise level the network is told, for one batch of frames."""

    def __init__(self, x: torch.Tensor, gain: torch.Tensor, offset: torch.Tensor, strength: float = 1.0):
        self.stabiliser = Stabiliser(gain, offset)
        self.stabilised = _by_rows(lambda rows: self.stabiliser.forward((rows + 1.0) * 0.5), x)
        self.level = (self.stabiliser.sigma * strength).float()

    def restore(self, stabilised_output: torch.Tensor) -> torch.Tensor:
        return _by_rows(lambda rows: self.stabiliser.inverse(rows) * 2.0 - 1.0, stabilised_output)


def apply_denoiser(
    denoiser: torch.nn.Module,
    x: torch.Tensor,
    gain: torch.Tensor | None = None,
    offset: torch.Tensor | None = None,
    strength: float = 1.0,
    run: Callable[[Callable, torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Denoise (B, 1, H, W) frames on [-1, 1]. `run(network, frames, level)` applies the
    network (e.g. tile by tile; default: in one call); noise-aware denoisers need `gain`
    and `offset`. Strength 0 returns `x` unchanged."""
    run = run or (lambda network, frames, level: network(frames) if level is None else network(frames, level))
    if not getattr(denoiser, "noise_map", False):
        return run(denoiser, x, None)
    if gain is None or offset is None:
        raise ValueError("a noise-aware denoiser needs the frame's noise model (gain and offset)")
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    if strength == 0:
        return x.clone()
    prepared = NoiseAwareInput(x, gain, offset, strength)
    return prepared.restore(run(denoiser, prepared.stabilised, prepared.level))
