"""Stage 1, the denoiser's side of a frame (the SwinIR network itself is in `models`).

- `noise`: the frame's noise (Poisson-Gaussian, row offsets and correlation) estimated from the frame
  itself (in a volume, also across its neighbouring slices), and the variance-stabilising
  transform the denoiser runs in (`Stabiliser`)
- `intensity`: the map from the frame's grey values to the networks' range
- `denoise`: the denoiser applied at a strength (0: the input; above 1: smoother, by TV smoothing)
"""

from napari_etdms.stage1.denoise import apply_denoiser
from napari_etdms.stage1.intensity import SIGNAL_SMOOTHING, IntensityMap
from napari_etdms.stage1.noise import (
    NoiseModel,
    Stabiliser,
    estimate_noise,
    estimate_noise_across_slices,
    frame_noise,
    slice_noise,
)

__all__ = ["apply_denoiser", "estimate_noise", "estimate_noise_across_slices", "frame_noise", "IntensityMap",
           "NoiseModel", "SIGNAL_SMOOTHING", "slice_noise", "Stabiliser"]
