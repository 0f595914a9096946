"""Image-quality figures that need no downloaded network (scikit-image based)."""

from __future__ import annotations

import numpy as np


def _numpy(a) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().float().numpy()
    return np.asarray(a, dtype=np.float64)


def psnr(reference, estimate, data_range: float = 2.0) -> float:
    """PSNR in dB over all pixels (default range: the models' [-1, 1])."""
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(_numpy(reference), _numpy(estimate), data_range=data_range))


def ssim(reference, estimate, data_range: float = 2.0) -> float:
    """Mean SSIM of 2D images (Wang et al. 2004 Gaussian-weighted variant, sigma 1.5),
    averaged over a leading batch/channel axis when present."""
    from skimage.metrics import structural_similarity

    ref, est = _numpy(reference), _numpy(estimate)
    ref = ref.reshape(-1, *ref.shape[-2:])
    est = est.reshape(-1, *est.shape[-2:])
    values = [
        structural_similarity(r, e, data_range=data_range, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        for r, e in zip(ref, est)
    ]
    return float(np.mean(values))
