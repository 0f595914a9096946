"""What an evaluation measures and on what: the methods compared, the doses and degradation
kinds of a sweep, the frames' sources (held-out ones apart), and one frame degraded, restored
by every method and scored."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from napari_etdms.engine.settings import DEFAULTS, RunSettings
from napari_etdms.evaluation import baselines as classical
from napari_etdms.evaluation.metrics import (
    consistency_psnr,
    frc_resolution,
    matched_psnr,
    matched_ssim,
    nrmse,
    uncertainty_calibration,
)
from napari_etdms.simulation.degradation import SCALE, DegradationConfig, degrade

PIPELINE_METHODS = {
    "bicubic_input": "bicubic of degraded",
    "bicubic_denoised": "stage 1 + bicubic",
    "super_resolved": "ETDMS (stage 1 + CLSR)",
}
BASELINE_METHODS = {classical.method_key(name): b.label for name, b in classical.BASELINES.items()}
# report order: the plain upsampling, the classical baselines, then the two ETDMS stages
METHODS = {"bicubic_input": PIPELINE_METHODS["bicubic_input"], **BASELINE_METHODS,
           **{k: v for k, v in PIPELINE_METHODS.items() if k != "bicubic_input"}}

METHOD_COLOURS = {"bicubic_input": "#999999", "nlm_bicubic": "#8fbf6a", "bm3d_bicubic": "#2e7d32",
                  "bicubic_denoised": "#6a8caf", "super_resolved": "#d0743c"}

# ---- degradation presets of the dose sweep -----------------------------------------------

CLEAN = "clean"  # the dose of a noise-free acquisition
DEGRADATION_KINDS = ("full", "plain")
# "plain": 4x area sampling and Poisson-Gaussian noise, nothing else (quantisation stays)
PLAIN_SETTINGS = dict(p_blur=0.0, p_drift=0.0, p_jitter=0.0, sampling_modes={"area": 1.0}, p_contrast=0.0,
                      p_charging=0.0, line_correlation_px=(0.0, 0.0), row_offset=0.0, p_clip=0.0)
KIND_DESCRIPTIONS = {
    "full": "the shipped SEM degradation (probe blur, drift, scan-line jitter, point/line/area sampling, "
            "contrast and shading, charging, row-correlated read noise and row offsets, clipping, quantisation) "
            "with only the dose and read noise set",
    "plain": "4x area sampling + Poisson-Gaussian noise only (no blur, drift, jitter, contrast, charging, "
             "row correlation, row offsets or clipping; 8/16-bit quantisation stays)",
}


def read_sigma_for_dose(dose: float) -> float:
    """Read noise (white = 1) that goes with a dose: min(0.01, 0.1 / sqrt(dose)), which meets
    the two reference points 30 e-/px with 0.01 and 1000 e-/px with 0.003."""
    return min(0.01, 0.1 / math.sqrt(dose))


def dose_degradation(kind: str, dose: float | str, base: DegradationConfig | None = None) -> DegradationConfig:
    """The degradation of one point of a dose sweep. `dose`: electrons per pixel at white
    level, or "clean" (no shot, read or row noise). "full": `base` (default: the shipped
    degradation) with only the dose set; "plain": `PLAIN_SETTINGS` on top as well."""
    if kind not in DEGRADATION_KINDS:
        raise ValueError(f"unknown degradation kind '{kind}' (known: {', '.join(DEGRADATION_KINDS)})")
    settings = (base or DegradationConfig()).model_dump()
    if kind == "plain":
        settings |= PLAIN_SETTINGS
    if dose == CLEAN:
        settings |= dict(p_noise_free=1.0)
    else:
        dose = float(dose)
        if not dose > 0 or not math.isfinite(dose):
            raise ValueError(f"a dose is a positive number of electrons per pixel or '{CLEAN}', not {dose}")
        sigma = read_sigma_for_dose(dose)
        settings |= dict(electrons=(dose, dose), read_sigma=(sigma, sigma), p_noise_free=0.0)
    return DegradationConfig.model_validate(settings)


def parse_doses(text: str) -> list[float | str]:
    """'3,10,clean' -> [3.0, 10.0, 'clean']: ascending, 'clean' last, duplicates dropped."""
    doses, clean = set(), False
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item.lower() == CLEAN:
            clean = True
            continue
        try:
            value = float(item)
        except ValueError:
            raise ValueError(f"--doses: '{item}' is neither a number of electrons per pixel nor '{CLEAN}'") from None
        if not value > 0 or not math.isfinite(value):
            raise ValueError(f"--doses: {item} is not a positive number of electrons per pixel")
        doses.add(value)
    if not doses and not clean:
        raise ValueError("--doses: no doses given")
    return sorted(doses) + ([CLEAN] if clean else [])


def dose_label(dose: float | str | None) -> str:
    if dose is None:
        return ""
    return dose if isinstance(dose, str) else f"{dose:g}"


# ---- sources ------------------------------------------------------------------------------


def source_of(name: str | Path) -> str:
    """A frame's source: its file name's part before the first '__' (the training pool's
    `<source>__<rest>.tif`), else 'other'."""
    stem = Path(name).name
    return stem.split("__", 1)[0] if "__" in stem and stem.split("__", 1)[0] else "other"


def split_held_out_sources(split_file: str | Path) -> list[str]:
    """The sources a split file marks as never trained on (top-level "held_out_sources")."""
    data = json.loads(Path(split_file).read_text())
    names = data.get("held_out_sources", []) if isinstance(data, dict) else []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{split_file}: 'held_out_sources' must be a list of source names")
    return names


def pick_frames(frames: list[Path], count: int | None) -> list[Path]:
    """At most `count` frames, taken from the sources in turn, so a quick run sees each source."""
    if not count or count >= len(frames):
        return list(frames)
    queues: dict[str, list[Path]] = {}
    for path in frames:
        queues.setdefault(source_of(path), []).append(path)
    chosen: list[Path] = []
    while len(chosen) < count:
        for queue in queues.values():
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    return [path for path in frames if path in chosen]  # in the given order


# ---- one frame ----------------------------------------------------------------------------


@dataclass
class FrameReport:
    name: str
    metrics: dict[str, dict[str, float]]  # method -> metric -> value
    extra: dict[str, float] = field(default_factory=dict)
    run: dict = field(default_factory=dict)  # the pipeline's provenance for this frame
    source: str = "other"
    kind: str = ""  # the degradation kind of a dose sweep ("full", "plain"); "" for one degradation
    dose: str = ""  # the dose's label ("30", "clean"); "" for one degradation


def content_crop(image: np.ndarray, size: int | None) -> np.ndarray:
    """The centre crop, unless it is nearly flat (its 1-99 % range under a quarter of the
    frame's: a cavity, an empty background), where no figure means anything; then, of a 3 x 3
    grid of crops, the one with the widest range."""
    centre = centre_crop(image, size)
    span = lambda a: float(np.subtract(*np.percentile(a, (99, 1))[::1]))  # noqa: E731
    if not size or span(centre) >= 0.25 * span(image):
        return centre
    h, w = centre.shape
    ys = np.linspace(0, image.shape[0] - h, 3).astype(int) // SCALE * SCALE
    xs = np.linspace(0, image.shape[1] - w, 3).astype(int) // SCALE * SCALE
    crops = [image[y : y + h, x : x + w] for y in ys for x in xs]
    return max(crops, key=span)


def centre_crop(image: np.ndarray, size: int | None) -> np.ndarray:
    h, w = image.shape
    h, w = h - h % SCALE, w - w % SCALE
    if size:
        size -= size % SCALE
        h, w = min(h, size), min(w, size)
    y, x = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
    y, x = y - y % SCALE, x - x % SCALE
    return image[y : y + h, x : x + w]


def score(reference: np.ndarray, estimate: np.ndarray) -> dict[str, float]:
    return {
        "psnr": matched_psnr(reference, estimate),
        "ssim": matched_ssim(reference, estimate),
        "nrmse": nrmse(reference, estimate),
        "frc_px": frc_resolution(reference, estimate),
    }


def evaluate_frame(pipeline, clean_hr: np.ndarray, name: str, seed: int, degradation: DegradationConfig,
                   settings: RunSettings = DEFAULTS, baselines=()) -> tuple[FrameReport, dict[str, np.ndarray]]:
    """Degrade one frame, run the pipeline once (bicubic, stage 1 + bicubic and ETDMS come
    together) and the named classical baselines on the degraded frame, and score each."""
    degraded, clean_lr, hr = degrade(clean_hr, np.random.default_rng(seed), degradation)
    result = pipeline.run_with(degraded, replace(settings, seed=seed))
    images = {"degraded": degraded, "clean_lr": clean_lr, "ground_truth": hr}
    # each x4 output is held to the low-res frame it was upsampled from
    upsampled_from = {"bicubic_input": degraded, "bicubic_denoised": result.denoised,
                      "super_resolved": degraded if result.denoised is None else result.denoised}
    outputs = {name: getattr(result, name) for name in PIPELINE_METHODS}
    extra = {"degraded_psnr_lr": matched_psnr(clean_lr, degraded), "seconds": sum(result.metadata["timings"].values())}
    for baseline in baselines:
        started = time.perf_counter()
        denoised, upsampled = classical.restore(baseline, degraded)
        key = classical.method_key(baseline)
        extra[f"seconds_{key}"] = time.perf_counter() - started
        outputs[key], upsampled_from[key] = upsampled, denoised
    metrics = {}
    for method in METHODS:  # those the run made: --no-denoise has no stage-1 rows
        image = outputs.get(method)
        if image is not None:
            images[method] = image
            metrics[method] = score(hr, image) | {"consistency_psnr": consistency_psnr(upsampled_from[method], image)}
    if result.std is not None:
        metrics["super_resolved"]["seed_std"] = float(np.mean(result.std) / max(np.ptp(result.super_resolved), 1e-12))
        metrics["super_resolved"] |= uncertainty_calibration(hr, result.super_resolved, result.std)
    if result.denoised is not None:
        extra["denoise_psnr_lr"] = matched_psnr(clean_lr, result.denoised)
    return FrameReport(name, metrics, extra, result.metadata, source=source_of(name)), images
