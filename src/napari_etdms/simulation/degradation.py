"""Seeded SEM degradation: clean fine-grid frame -> (degraded low-res, clean low-res, clean high-res).

Effects follow the order of a real acquisition (see the README's training section):
probe blur, drift, scan-line jitter, 4x undersampling, contrast, charging, noise after
sampling, quantisation. Every effect is a plain function of an image and its parameters so
it can be tested on its own; `degrade` draws the parameters per sample from a config.
Intensities are on [0, 1]; "coarse px" means low-res pixels (4 fine px).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from pydantic import Field
from scipy import ndimage

from napari_etdms.config import _Strict
from napari_etdms.stage1.noise import NoiseModel

SCALE = 4


class DegradationConfig(_Strict):
    p_blur: float = Field(0.8, ge=0, le=1)
    blur_sigma: tuple[float, float] = (0.3, 1.5)
    blur_ratio: tuple[float, float] = (1.0, 1.6)
    p_defocus: float = Field(0.05, ge=0, le=1)
    defocus_sigma: float = 2.5
    p_drift: float = Field(0.3, ge=0, le=1)
    drift_coarse_px: tuple[float, float] = (0.5, 2.0)
    p_jitter: float = Field(0.4, ge=0, le=1)
    jitter_sigma_coarse_px: tuple[float, float] = (0.0, 0.3)
    jitter_sine_coarse_px: tuple[float, float] = (0.1, 1.0)
    jitter_period_lines: tuple[float, float] = (5.0, 50.0)
    sampling_modes: dict[str, float] = {"point": 0.4, "line": 0.3, "area": 0.3}
    p_contrast: float = Field(0.5, ge=0, le=1)
    gain: tuple[float, float] = (0.7, 1.3)
    offset: tuple[float, float] = (-0.1, 0.1)
    gamma: tuple[float, float] = (0.8, 1.25)
    shading: float = 0.1
    p_charging: float = Field(0.15, ge=0, le=1)
    streak_amplitude: tuple[float, float] = (0.05, 0.3)
    streak_decay_px: tuple[float, float] = (5.0, 50.0)
    row_flicker: tuple[float, float] = (0.01, 0.05)
    electrons: tuple[float, float] = (3.0, 100.0)  # at white level, drawn log-uniform
    read_sigma: tuple[float, float] = (0.005, 0.05)
    # no shot, read or row noise at all (a noise-free acquisition; quantisation still applies)
    p_noise_free: float = Field(0.0, ge=0, le=1)
    line_correlation_px: tuple[float, float] = (0.0, 1.5)
    row_offset: float = 0.02
    p_clip: float = Field(0.1, ge=0, le=1)


# ---- individual effects -------------------------------------------------------------------


def gaussian_kernel(sigma: float, ratio: float = 1.0, angle: float = 0.0) -> np.ndarray:
    """Normalised anisotropic Gaussian kernel; sigma along the long axis is sigma * ratio."""
    s_long, s_short = sigma * ratio, sigma
    radius = max(1, int(np.ceil(3 * s_long)))
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1].astype(np.float64)
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * xx + s * yy, -s * xx + c * yy
    k = np.exp(-0.5 * ((u / s_long) ** 2 + (v / s_short) ** 2))
    return k / k.sum()


def probe_blur(image: np.ndarray, sigma: float, ratio: float = 1.0, angle: float = 0.0) -> np.ndarray:
    return ndimage.convolve(image, gaussian_kernel(sigma, ratio, angle), mode="reflect")


def drift(image: np.ndarray, dx_fine: float, dy_fine: float) -> np.ndarray:
    """Displacement that grows smoothly with acquisition time (row index), up to (dy, dx)."""
    h, w = image.shape
    progress = np.sin(0.5 * np.pi * np.linspace(0.0, 1.0, h))[:, None]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    return ndimage.map_coordinates(image, [yy + dy_fine * progress, xx + dx_fine * progress], order=1, mode="reflect")


def shift_rows(image: np.ndarray, shifts_fine: np.ndarray) -> np.ndarray:
    """Shift every row horizontally by its own amount (linear interpolation, edge-clamped)."""
    h, w = image.shape
    xx = np.arange(w, dtype=np.float64)
    out = np.empty_like(image)
    for row in range(h):
        out[row] = np.interp(xx + shifts_fine[row], xx, image[row])
    return out


def jitter_shifts(n_coarse_rows: int, rng: np.random.Generator, sigma: float, amplitude: float, period: float):
    """Per-scan-line shifts (coarse px): correlated random walk-like noise plus a sinusoid."""
    white = rng.normal(0.0, 1.0, n_coarse_rows)
    correlated = ndimage.gaussian_filter1d(white, 2.0)
    correlated *= sigma / (correlated.std() + 1e-12)
    phase = rng.uniform(0, 2 * np.pi)
    return correlated + amplitude * np.sin(2 * np.pi * np.arange(n_coarse_rows) / period + phase)


def undersample(image: np.ndarray, mode: str, phase: tuple[int, int] = (0, 0)) -> np.ndarray:
    """4x undersampling: 'point' (one sample per cell at a sub-pixel phase), 'line'
    (average along the scan line at one row phase) or 'area' (4x4 average)."""
    h, w = image.shape
    cells = image[: h - h % SCALE, : w - w % SCALE].reshape(h // SCALE, SCALE, w // SCALE, SCALE)
    py, px = phase
    if mode == "point":
        return cells[:, py, :, px].copy()
    if mode == "line":
        return cells[:, py, :, :].mean(axis=-1)
    if mode == "area":
        return cells.mean(axis=(1, 3))
    raise ValueError(f"unknown sampling mode '{mode}'")


def area_downsample(image: np.ndarray) -> np.ndarray:
    """The clean low-res reference and the data-consistency operator: 4x4 averaging."""
    return undersample(image, "area")


def centre_on_samples(image: np.ndarray, mode: str, phase: tuple[int, int]) -> np.ndarray:
    """Shift the fine grid so that each point (or line) sample sits at its cell's centre.

    An instrument's pixel is where its beam dwelt; the high-res grid is defined around that
    point. Without this, a random sampling phase is an unknowable +-1.5 fine px shift
    between input and target.
    """
    if mode == "area":
        return image
    centre = (SCALE - 1) / 2
    dy = centre - phase[0]
    dx = centre - phase[1] if mode == "point" else 0.0
    return ndimage.shift(image, (dy, dx), order=3, mode="reflect")


def contrast(image: np.ndarray, gain: float, offset: float, gamma: float, shading: np.ndarray | None = None):
    out = np.clip(image, 0.0, None) ** gamma * gain + offset
    return out * shading if shading is not None else out


def smooth_shading(shape: tuple[int, int], rng: np.random.Generator, strength: float) -> np.ndarray:
    coarse = rng.normal(0.0, 1.0, (3, 3))
    field = ndimage.zoom(coarse, (shape[0] / 3, shape[1] / 3), order=3)[: shape[0], : shape[1]]
    field = field / (np.abs(field).max() + 1e-12)
    return 1.0 + strength * rng.uniform(0, 1) * field


def charging(image: np.ndarray, rng: np.random.Generator, amplitude: float, decay: float, flicker: float):
    """Bright streaks that decay along the scan line, and per-row gain flicker."""
    h, w = image.shape
    out = image * (1.0 + rng.normal(0.0, flicker, (h, 1)))
    for row in rng.choice(h, size=max(1, h // 16), replace=False):
        start = rng.integers(0, w)
        tail = np.arange(w - start)
        out[row, start:] += amplitude * rng.uniform(0.3, 1.0) * np.exp(-tail / decay)
    return out


def poisson_gaussian(
    image: np.ndarray,
    rng: np.random.Generator,
    electrons: float,
    read_sigma: float,
    line_correlation: float = 0.0,
    row_offset: float = 0.0,
) -> np.ndarray:
    """Shot noise (variance = mean / electrons) plus read noise correlated along rows."""
    shot = rng.poisson(np.clip(image, 0.0, None) * electrons) / electrons
    read = rng.normal(0.0, 1.0, image.shape)
    if line_correlation > 0:
        read = ndimage.gaussian_filter1d(read, line_correlation, axis=1)
        read /= read.std() + 1e-12
    rows = rng.uniform(-row_offset, row_offset, (image.shape[0], 1)) if row_offset > 0 else 0.0
    return shot + read_sigma * read + rows


def quantise(image: np.ndarray, bits: int, clip: bool) -> np.ndarray:
    levels = 2**bits - 1
    out = np.clip(image, 0.0, 1.0) if clip else image
    return np.round(out * levels) / levels


# ---- the full chain -----------------------------------------------------------------------


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


class Degraded(NamedTuple):
    degraded: np.ndarray  # what the instrument recorded (low-res)
    clean_lr: np.ndarray  # 4x4 block means of clean_hr
    clean_hr: np.ndarray  # the target of stage 2
    noiseless: np.ndarray  # the recorded frame without its noise: the target of a pure denoiser
    noise: NoiseModel  # the noise added, on the degraded frame's scale


def degrade(
    clean_hr: np.ndarray, rng: np.random.Generator, config: DegradationConfig = DegradationConfig()
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (degraded low-res, clean low-res, clean high-res); sides are cropped to x4."""
    return degrade_with_details(clean_hr, rng, config)[:3]


def degrade_with_details(
    clean_hr: np.ndarray, rng: np.random.Generator, config: DegradationConfig = DegradationConfig()
) -> Degraded:
    """`degrade`, also returning the noiseless recorded frame and the noise model used."""
    h, w = clean_hr.shape
    hr = np.asarray(clean_hr[: h - h % SCALE, : w - w % SCALE], dtype=np.float64)
    # Drift moves the specimen itself during the scan and one frame cannot reveal it, so the
    # targets keep it: targets that undo unknowable shifts teach the models to blur.
    if rng.random() < config.p_drift:
        magnitude = SCALE * _uniform(rng, config.drift_coarse_px)
        angle = rng.uniform(0, 2 * np.pi)
        hr = drift(hr, magnitude * np.cos(angle), magnitude * np.sin(angle))
    x = hr
    if rng.random() < config.p_blur:
        if rng.random() < config.p_defocus:
            x = probe_blur(x, config.defocus_sigma)
        else:
            x = probe_blur(x, _uniform(rng, config.blur_sigma), _uniform(rng, config.blur_ratio), rng.uniform(0, np.pi))
    if rng.random() < config.p_jitter:
        coarse = jitter_shifts(
            x.shape[0] // SCALE,
            rng,
            _uniform(rng, config.jitter_sigma_coarse_px),
            _uniform(rng, config.jitter_sine_coarse_px),
            _uniform(rng, config.jitter_period_lines),
        )
        x = shift_rows(x, SCALE * np.repeat(coarse, SCALE))
    modes, weights = zip(*config.sampling_modes.items())
    mode = str(rng.choice(modes, p=np.asarray(weights) / np.sum(weights)))
    phase = (int(rng.integers(0, SCALE)), int(rng.integers(0, SCALE)))
    x = undersample(x, mode, phase)
    hr = centre_on_samples(hr, mode, phase)
    clean_lr = area_downsample(hr)
    if rng.random() < config.p_contrast:
        x = contrast(
            x,
            _uniform(rng, config.gain),
            _uniform(rng, config.offset),
            _uniform(rng, config.gamma),
            smooth_shading(x.shape, rng, config.shading),
        )
    if rng.random() < config.p_charging:
        x = charging(
            x, rng, _uniform(rng, config.streak_amplitude), _uniform(rng, config.streak_decay_px),
            _uniform(rng, config.row_flicker),
        )
    noiseless = x
    # (the draws keep their order from before p_noise_free existed: seeded reports stay reproducible)
    if config.p_noise_free > 0 and rng.random() < config.p_noise_free:
        electrons = read_sigma = 0.0
    else:
        electrons = float(np.exp(rng.uniform(*np.log(config.electrons))))
        read_sigma = _uniform(rng, config.read_sigma)
        x = poisson_gaussian(x, rng, electrons, read_sigma, _uniform(rng, config.line_correlation_px),
                             config.row_offset)
    bits = 8 if rng.random() < 0.5 else 16
    row_variance = config.row_offset**2 / 3 if electrons else 0.0  # uniform in +-row_offset
    noise = NoiseModel(1.0 / electrons if electrons else 0.0,
                       read_sigma**2 + row_variance + 1.0 / ((2**bits - 1) ** 2 * 12),  # + quantisation
                       row_offset_std=float(np.sqrt(row_variance)))
    x = quantise(x, bits, clip=rng.random() < config.p_clip)
    as32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
    return Degraded(as32(x), as32(clean_lr), as32(hr), as32(noiseless), noise)
