"""Image-quality figures that need no downloaded network (scikit-image based)."""

from __future__ import annotations

import numpy as np

from napari_etdms.engine.bands import block_means_psnr


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
        structural_similarity(
            r, e, data_range=data_range, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )
        for r, e in zip(ref, est)
    ]
    return float(np.mean(values))


# ---- figures for evaluation against a ground truth -----------------------------------------


def _matching(reference, estimate) -> tuple[np.ndarray, np.ndarray, float, float]:
    ref, est = _numpy(reference), _numpy(estimate)
    lo, hi = np.percentile(ref, (0.1, 99.9))
    ref = (ref - lo) / max(hi - lo, 1e-12)
    design = np.stack([est.ravel(), np.ones(est.size)], axis=1)
    (gain, offset), *_ = np.linalg.lstsq(design, ref.ravel(), rcond=None)
    return ref, est, float(gain), float(offset)


def match_to_reference(reference, estimate) -> tuple[np.ndarray, np.ndarray]:
    """PSSR-style normalisation: the reference to [0, 1] by its 0.1/99.9 percentiles, then
    the estimate affinely (least squares) onto it, so global gain/offset do not count."""
    ref, est, gain, offset = _matching(reference, estimate)
    return ref, gain * est + offset


def uncertainty_calibration(reference, estimate, std) -> dict[str, float]:
    """How well a per-pixel `std` (in the estimate's units) foretells the estimate's error,
    both matched to the reference as PSNR matches them: the RMS std over the RMS error (1:
    right on average, under 1: overconfident) and the Spearman rank correlation of the std
    with the absolute error per pixel (does it point at the wrong pixels)."""
    from scipy.stats import spearmanr

    ref, est, gain, offset = _matching(reference, estimate)
    error = np.abs(gain * est + offset - ref).ravel()
    scaled = abs(gain) * _numpy(std).ravel()
    rms_error = float(np.sqrt(np.mean(error**2)))
    return {"std_over_rms_error": float(np.sqrt(np.mean(scaled**2))) / max(rms_error, 1e-12),
            "std_error_rank_correlation": float(spearmanr(scaled, error)[0])}


def nrmse(reference, estimate) -> float:
    """Root-mean-square error relative to the reference's range (after matching)."""
    ref, est = match_to_reference(reference, estimate)
    return float(np.sqrt(np.mean((ref - est) ** 2)))


def matched_psnr(reference, estimate) -> float:
    ref, est = match_to_reference(reference, estimate)
    return psnr(ref, est, data_range=1.0)


def matched_ssim(reference, estimate) -> float:
    ref, est = match_to_reference(reference, estimate)
    return ssim(ref, est, data_range=1.0)


def consistency_psnr(low_res, high_res) -> float:
    """Data consistency of an upsampled frame: PSNR of its block means (one block per
    low-res pixel) against the low-res frame it was made from, over the range of that frame's
    signal (the pipeline's smoothed percentile fit, so a noisy source and a denoised one are
    on one scale); no matching, since exactness is the point (infinite when exact)."""
    low, high = _numpy(low_res), _numpy(high_res)
    scale = high.shape[0] // low.shape[0]
    if high.shape != (low.shape[0] * scale, low.shape[1] * scale):
        raise ValueError(f"high-res {high.shape} is not a whole multiple of low-res {low.shape}")
    return block_means_psnr(low, high.reshape(low.shape[0], scale, low.shape[1], scale).mean(axis=(1, 3)))


FRC_THRESHOLD = 1.0 / 7.0


def frc_curve(a, b) -> tuple[np.ndarray, np.ndarray]:
    """Fourier ring correlation of two images on their central square, Hann-windowed.
    Returns (spatial frequency in cycles/pixel, FRC) for 1-px rings up to Nyquist."""
    a, b = _numpy(a), _numpy(b)
    n = min(a.shape[-2:])
    window = np.outer(np.hanning(n), np.hanning(n))

    def spectrum(x):
        y0, x0 = (x.shape[0] - n) // 2, (x.shape[1] - n) // 2
        square = x[y0 : y0 + n, x0 : x0 + n]
        return np.fft.fftshift(np.fft.fft2((square - square.mean()) * window))

    fa, fb = spectrum(a), spectrum(b)
    yy, xx = np.indices((n, n)) - n // 2
    rings = np.round(np.hypot(yy, xx)).astype(int).ravel()
    nyquist = n // 2
    cross = np.bincount(rings, (fa * fb.conj()).real.ravel())[: nyquist + 1]
    pa = np.bincount(rings, (np.abs(fa) ** 2).ravel())[: nyquist + 1]
    pb = np.bincount(rings, (np.abs(fb) ** 2).ravel())[: nyquist + 1]
    frc = cross / np.sqrt(pa * pb + 1e-30)
    return np.arange(nyquist + 1) / n, frc


def frc_resolution(a, b, pixel_size: float = 1.0) -> float:
    """Resolution (in units of pixel_size) where the smoothed FRC first drops below 1/7;
    2 pixels (Nyquist) when it never does."""
    freq, frc = frc_curve(a, b)
    smooth = np.convolve(frc, np.ones(3) / 3, mode="same")
    below = np.nonzero(smooth[1:] < FRC_THRESHOLD)[0]
    if below.size == 0:
        return 2.0 * pixel_size
    k = below[0] + 1  # linear interpolation of the crossing between rings k-1 and k
    f0, f1, v0, v1 = freq[k - 1], freq[k], smooth[k - 1], smooth[k]
    crossing = f0 + (v0 - FRC_THRESHOLD) * (f1 - f0) / (v0 - v1) if v0 != v1 else f1
    return pixel_size / max(crossing, 1e-12)
