"""Robust intensity mapping shared by training and inference (once per frame, never per tile)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

LOW_PERCENTILE = 0.1
HIGH_PERCENTILE = 99.9
# The models learnt the clean frame's percentile range as [-1, 1]; the raw frame's own
# percentiles are stretched by its noise (up to 2.6x on the validation frames), which fed
# the denoiser a squashed signal: 0.37 dB lower on the low-res grid than this smoothed fit.
SIGNAL_SMOOTHING = 2.0


@dataclass(frozen=True)
class IntensityMap:
    """Maps [low, high] of the input's intensity scale onto the models' [-1, 1]."""

    low: float
    high: float

    @classmethod
    def fit(cls, image: np.ndarray, smoothing: float = 0.0) -> IntensityMap:
        """Percentile range of a finite `image`, of its Gaussian-smoothed copy when `smoothing`
        (sigma, px) > 0: the range of the signal rather than of the noise riding on it.
        Frames whose percentiles (nearly) coincide fall back to the raw frame's full range."""
        if smoothing < 0:
            raise ValueError(f"smoothing must be >= 0, got {smoothing}")
        image = np.asarray(image)
        work = np.asarray(image, dtype=np.result_type(image, np.float32))
        signal = ndimage.gaussian_filter(work, smoothing) if smoothing > 0 else work
        low, high = np.percentile(signal, (LOW_PERCENTILE, HIGH_PERCENTILE))
        full_low, full_high = float(np.min(work)), float(np.max(work))
        # e.g. a flat background with a few bright pixels, which smoothing flattens further
        if not high - low > 1e-2 * (full_high - full_low):
            low, high = full_low, full_high
        return cls(float(low), float(high))

    def forward(self, image: np.ndarray) -> np.ndarray:
        return ((np.asarray(image, dtype=np.float32) - self.low) / (self.high - self.low) * 2.0 - 1.0).astype(
            np.float32
        )

    def inverse(self, model_values: np.ndarray) -> np.ndarray:
        return ((np.asarray(model_values, dtype=np.float32) + 1.0) * 0.5 * (self.high - self.low) + self.low).astype(
            np.float32
        )

    def scale(self, model_differences: np.ndarray) -> np.ndarray:
        """Differences (e.g. a standard deviation) from model units to input units."""
        return (np.asarray(model_differences, dtype=np.float32) * 0.5 * (self.high - self.low)).astype(np.float32)
