"""Classical baselines for the evaluation: a denoiser on the low-res frame, then bicubic x4.

Exactly as the figures in the project's issues were measured: on the frame scaled to [0, 1]
(min-max), s = skimage.restoration.estimate_sigma(x); non-local means
`denoise_nl_means(x, h=0.8*s, sigma=s, patch_size=5, patch_distance=6, fast_mode=True)` or
BM3D `bm3d.bm3d(x, sigma_psd=s)`; then `skimage.transform.resize` to (4H, 4W), order 3,
mode "reflect", no anti-aliasing. Outputs go back to the input's intensity scale, so data
consistency can be measured against the denoised low-res frame. BM3D is the optional extra
`napari-etdms[baselines]`; without it that baseline is reported as skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

SCALE = 4
INSTALL_HINT = "install napari-etdms[baselines]"


class BaselineUnavailable(RuntimeError):
    """A baseline whose optional dependency is not installed."""


def nl_means(x01: np.ndarray, sigma: float) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    return denoise_nl_means(x01, h=0.8 * sigma, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True)


def _import_bm3d():
    try:
        import bm3d
    except ImportError:
        raise BaselineUnavailable(f"skipped, {INSTALL_HINT}") from None
    return bm3d


def bm3d_denoise(x01: np.ndarray, sigma: float) -> np.ndarray:
    return np.asarray(_import_bm3d().bm3d(x01, sigma_psd=sigma), dtype=np.float64)


@dataclass(frozen=True)
class Baseline:
    denoise: Callable[[np.ndarray, float], np.ndarray]  # (frame on [0, 1], noise sigma) -> denoised
    label: str  # the method's name in reports
    short: str  # the denoiser's name in "skipped" lines
    check: Callable[[], object] | None = None  # raises BaselineUnavailable when it cannot run


BASELINES: dict[str, Baseline] = {
    "nlm": Baseline(nl_means, "non-local means + bicubic", "NLM"),
    "bm3d": Baseline(bm3d_denoise, "BM3D + bicubic", "BM3D", check=_import_bm3d),
}


def method_key(name: str) -> str:
    """The evaluation's method key of a baseline: 'nlm' -> 'nlm_bicubic'."""
    return f"{name}_bicubic"


def unavailable(names) -> dict[str, str]:
    """Baselines among `names` that cannot run here -> why (e.g. 'skipped, install ...')."""
    reasons = {}
    for name in names:
        if name not in BASELINES:
            raise ValueError(f"unknown baseline '{name}' (known: {', '.join(BASELINES)})")
        try:
            if BASELINES[name].check:
                BASELINES[name].check()
        except BaselineUnavailable as err:
            reasons[name] = str(err)
    return reasons


def upsample(image: np.ndarray, scale: int = SCALE) -> np.ndarray:
    from skimage.transform import resize

    h, w = image.shape
    return resize(image, (scale * h, scale * w), order=3, mode="reflect", anti_aliasing=False)


def denoise(name: str, low_res: np.ndarray) -> np.ndarray:
    """The named denoiser on a low-res frame, on the frame's own intensity scale."""
    x = np.asarray(low_res, dtype=np.float64)
    lo, span = float(x.min()), float(np.ptp(x))
    if span <= 0:  # a flat frame: nothing to denoise
        return x.copy()
    x01 = (x - lo) / span
    from skimage.restoration import estimate_sigma

    sigma = float(estimate_sigma(x01))
    return BASELINES[name].denoise(x01, sigma) * span + lo


def restore(name: str, low_res: np.ndarray, scale: int = SCALE) -> tuple[np.ndarray, np.ndarray]:
    """(denoised low-res, its bicubic x`scale` upsampling), both on the input's scale."""
    denoised = denoise(name, low_res)
    return denoised, upsample(denoised, scale)
