"""Stage 1 on normalised frames, as training and inference both run it.

A blind denoiser (v1) maps the frame as it is. A noise-aware one works in the
variance-stabilised domain of the frame's noise model, with the noise level as a second
input channel. `strength` up to 1 scales that level (0: no denoising, 1: the estimate).
Above 1 the network is told the estimate, and its output is smoothed further by total
variation (Chambolle; scikit-image) in the stabilised domain, with a weight of
(strength - 1) / 3 x the noise level: smoother as strength grows, edges kept, never the
speckle the network makes when told more noise than it sees (a level above the truth is
outside its training: at strength 4 that gave 19x the roughness of strength 1).

Frames here are on the pipeline's [-1, 1] scale; the noise model is on the matching [0, 1]
scale (y = (x + 1) / 2), one (gain, offset) pair per batch element, shaped (B, 1, 1, 1).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from skimage.restoration import denoise_tv_chambolle

from napari_etdms.stage1.noise import Stabiliser

# strength above 1: the total-variation weight in units of the stabilised noise level, per unit
TV_WEIGHT_PER_STRENGTH = 1.0 / 3.0

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
        self.level = (self.stabiliser.sigma * min(strength, 1.0)).float()
        self.smoothing = max(strength - 1.0, 0.0) * TV_WEIGHT_PER_STRENGTH

    def restore(self, stabilised_output: torch.Tensor) -> torch.Tensor:
        if self.smoothing > 0:
            stabilised_output = self._smoothed(stabilised_output)
        return _by_rows(lambda rows: self.stabiliser.inverse(rows) * 2.0 - 1.0, stabilised_output)

    def _smoothed(self, frames: torch.Tensor) -> torch.Tensor:
        """Total-variation smoothing of each (1, H, W) frame, weighted by its noise level."""
        weights = (self.level.flatten() * self.smoothing).tolist()
        if len(weights) == 1:
            weights *= frames.shape[0]
        out = [denoise_tv_chambolle(frame[0].float().cpu().numpy(), weight=weight) for frame, weight in
               zip(frames, weights)]
        return torch.from_numpy(np.stack(out)[:, None]).to(frames.device, torch.float32)


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
