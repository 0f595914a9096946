"""Honest evaluation on clean SEM frames: degrade with a fixed seed, restore, compare.

Methods compared against the clean high-res frame: bicubic x4 of the degraded input, the
classical baselines (non-local means or BM3D on the degraded low-res frame, then bicubic x4:
`baselines.py`), stage 1 + bicubic x4, and ETDMS (stage 1 + CLSR). Figures: PSNR and SSIM
after PSSR-style percentile + affine matching (SSIM: Wang et al. 2004, Gaussian window sigma
1.5), NRMSE, FRC resolution against the ground truth (1/7 threshold, high-res px),
data-consistency PSNR, and the mean seed standard deviation when samples > 1. LPIPS and FID
need backbone weights that cannot be downloaded here: they run only from user-supplied
TorchScript (.pt) or torch.export (.pt2) files.

Two modes: one degradation (the shipped one, or any DegradationConfig), or a dose sweep
(`doses=`): every frame degraded at each dose under each degradation kind (`dose_degradation`:
"full", the shipped SEM degradation with only the dose set; "plain", 4x area sampling and
Poisson-Gaussian noise only). Frames are grouped by source (the file-name part before the
first "__"); sources never trained on are reported apart from the others.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from napari_etdms.engine.batch import check_output_folder, run_serially
from napari_etdms.engine.settings import DEFAULTS, RunSettings
from napari_etdms.evaluation.metrics import (
    consistency_psnr,
    frc_resolution,
    match_to_reference,
    matched_psnr,
    matched_ssim,
    nrmse,
    uncertainty_calibration,
)
from napari_etdms.evaluation import baselines as classical
from napari_etdms.simulation.degradation import SCALE, DegradationConfig, degrade
from napari_etdms.simulation.ground_truth import load_ground_truth

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


# ---- summaries ----------------------------------------------------------------------------


def method_labels(summary: dict) -> dict[str, str]:
    """The evaluated methods' names; without stage 1 the CLSR ran on the raw frame."""
    labels = {m: label for m, label in METHODS.items() if m in summary}
    if "super_resolved" in labels and "bicubic_denoised" not in labels:
        labels["super_resolved"] = "ETDMS (CLSR on the raw frame)"
    return labels


def summarise(reports: list[FrameReport]) -> dict[str, dict[str, float]]:
    summary = {}
    for method in reports[0].metrics:
        keys = reports[0].metrics[method]
        summary[method] = {k: float(np.mean([r.metrics[method][k] for r in reports])) for k in keys}
    extra_keys = reports[0].extra
    summary["extra"] = {k: float(np.mean([r.extra[k] for r in reports])) for k in extra_keys}
    return summary


def frame_groups(reports: list[FrameReport], held_out: set[str]) -> dict[str, list[FrameReport]]:
    """'all', and with held-out sources named: 'held_out' and 'same_sources' (possibly empty)."""
    groups = {"all": reports}
    if held_out:
        groups["held_out"] = [r for r in reports if r.source in held_out]
        groups["same_sources"] = [r for r in reports if r.source not in held_out]
    return groups


def summarise_groups(reports: list[FrameReport], held_out: set[str]) -> dict:
    """Means per frame group and per source: {"frames": {group: n}, group: summary, ...,
    "sources": {source: summary}, "source_frames": {source: n}}."""
    groups = frame_groups(reports, held_out)
    out: dict = {"frames": {g: len(rs) for g, rs in groups.items()}}
    out |= {g: summarise(rs) for g, rs in groups.items() if rs}
    by_source: dict[str, list[FrameReport]] = {}
    for r in reports:
        by_source.setdefault(r.source, []).append(r)
    out["sources"] = {s: summarise(rs) for s, rs in sorted(by_source.items())}
    out["source_frames"] = {s: len(rs) for s, rs in sorted(by_source.items())}
    return out


def _finite(data):
    return json.loads(json.dumps(data), parse_constant=lambda _: None)  # JSON has no Infinity: exact -> null


CSV_COLUMNS = {"psnr": "psnr_db", "ssim": "ssim", "nrmse": "nrmse", "frc_px": "frc_resolution_px",
               "consistency_psnr": "consistency_psnr_db", "seed_std": "seed_std",
               "std_over_rms_error": "std_over_rms_error", "std_error_rank_correlation": "std_error_rank_correlation"}


def write_metrics_csv(path: Path, reports: list[FrameReport], held_out: set[str], kind: str = "") -> None:
    """One row per (degradation kind, dose, frame, method); `kind` names a single degradation."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["kind", "dose", "frame", "source", "held_out", "method", *CSV_COLUMNS.values()])
        for r in reports:
            for method, m in r.metrics.items():  # seed_std: ETDMS with samples > 1 only
                writer.writerow([r.kind or kind, r.dose, r.name, r.source, int(r.source in held_out), method,
                                 *(f"{m[k]:.4f}" if k in m else "" for k in CSV_COLUMNS)])


def _psnr_ssim(m: dict | None) -> str:
    return "" if m is None else f"{m['psnr']:.2f} / {m['ssim']:.3f}"


def _frames(n: int) -> str:
    return f"{n} frame{'' if n == 1 else 's'}"


def _group_title(group: str, held_out: set[str], frames: int) -> str:
    return {"all": f"All frames ({frames})",
            "held_out": f"Held-out sources (never trained on: {', '.join(sorted(held_out))}; {_frames(frames)})",
            "same_sources": f"Same sources as training ({_frames(frames)})"}[group]


def source_table(by_source: dict, counts: dict, labels: dict[str, str], held_out: set[str]) -> list[str]:
    lines = ["| source | frames | " + " | ".join(labels.values()) + " |", "|---" * (len(labels) + 2) + "|"]
    for source, summary in by_source.items():
        mark = " (held out)" if source in held_out else ""
        lines.append(f"| {source}{mark} | {counts[source]} | "
                     + " | ".join(_psnr_ssim(summary.get(m)) for m in labels) + " |")
    return lines


def _method_notes(summary: dict, skipped: dict[str, str], optional_metrics: dict[str, str]) -> list[str]:
    lines = []
    extra = summary["extra"]
    if "denoise_psnr_lr" in extra:
        lines.append(f"- Stage 1 on the low-res grid: {extra['degraded_psnr_lr']:.2f} dB degraded -> "
                     f"{extra['denoise_psnr_lr']:.2f} dB denoised (vs clean low-res).")
    else:
        lines.append(f"- No stage 1: the degraded low-res input scores {extra['degraded_psnr_lr']:.2f} dB "
                     "(vs clean low-res).")
    lines.append("- Data consistency: PSNR of each x4 output's 4x4 block means against the low-res frame it "
                 "was upsampled from (the degraded frame for bicubic, the denoised low-res frame otherwise).")
    if "seed_std" in summary.get("super_resolved", {}):
        lines.append(f"- Mean seed standard deviation of ETDMS: {summary['super_resolved']['seed_std']:.4f} "
                     "of the output range.")
    timed = [(label, extra[f"seconds_{key}"]) for key, label in BASELINE_METHODS.items() if f"seconds_{key}" in extra]
    lines.append(f"- Seconds per frame: ETDMS pipeline {extra['seconds']:.2f}"
                 + "".join(f", {label} {seconds:.2f}" for label, seconds in timed) + ".")
    for metric, status in {**skipped, **optional_metrics}.items():
        lines.append(f"- {metric}: {status}")
    return lines


METRIC_NOTE = ("PSNR/SSIM/NRMSE after percentile + affine matching to the ground truth (PSSR style); SSIM is "
               "the Gaussian-window variant (sigma 1.5) of Wang et al. 2004. FRC resolution: where the FRC "
               "between output and ground truth drops below 1/7, in high-res pixels (lower is finer). Classical "
               "baselines: non-local means (h = 0.8 s, 5 px patches, distance 6, fast mode) or BM3D "
               "(sigma_psd = s) on the degraded low-res frame scaled to [0, 1], s from "
               "skimage.restoration.estimate_sigma, then cubic-spline x4 (skimage resize, order 3, reflect).")


def write_reports(out_dir: Path, reports: list[FrameReport], summary: dict, settings: dict,
                  optional_metrics: dict[str, str], skipped: dict[str, str] | None = None,
                  held_out: set[str] | None = None) -> Path:
    """One degradation: report.md, metrics.csv and summary.json."""
    held_out, skipped = held_out or set(), skipped or {}
    out_dir.mkdir(parents=True, exist_ok=True)
    kind = "shipped" if settings.get("degradation") == "shipped" else "custom"
    write_metrics_csv(out_dir / "metrics.csv", reports, held_out, kind)
    groups = summarise_groups(reports, held_out)
    (out_dir / "summary.json").write_text(json.dumps(
        {"summary": _finite(summary), "groups": _finite(groups), "skipped": skipped, "settings": settings}, indent=2))
    lines = ["# ETDMS evaluation", "", f"Frames: {len(reports)}. Settings: `{json.dumps(settings)}`", "",
             "| method | PSNR (dB) | SSIM | NRMSE | FRC resolution (HR px) | data consistency (dB) |",
             "|---|---|---|---|---|---|"]
    labels = method_labels(summary)
    for method, label in labels.items():
        m = summary[method]
        lines.append(f"| {label} | {m['psnr']:.2f} | {m['ssim']:.3f} | {m['nrmse']:.4f} | {m['frc_px']:.2f} "
                     f"| {m['consistency_psnr']:.1f} |")
    lines.append("")
    lines += _method_notes(summary, skipped, optional_metrics)
    if held_out:
        lines += ["", "## Held-out sources apart", "",
                  "PSNR (dB) / SSIM per frame group.", "",
                  "| frames | " + " | ".join(labels.values()) + " |", "|---" * (len(labels) + 1) + "|"]
        for group in ("held_out", "same_sources"):
            title = _group_title(group, held_out, groups["frames"][group])
            lines.append(f"| {title} | " + (" | ".join(_psnr_ssim(groups[group].get(m)) for m in labels)
                                            if group in groups else " | ".join("" for _ in labels)) + " |")
    lines += ["", "## Per source", "", "PSNR (dB) / SSIM.", "",
              *source_table(groups["sources"], groups["source_frames"], labels, held_out)]
    lines += ["", METRIC_NOTE, "", "Per-frame figures: `metrics.csv`. Figures: `crops.png`, `metrics.png`."]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def write_sweep_reports(out_dir: Path, reports: list[FrameReport], sweep: dict, settings: dict,
                        optional_metrics: dict[str, str], skipped: dict[str, str], held_out: set[str]) -> Path:
    """A dose sweep: report.md (per kind: doses x methods tables for all frames, held-out and
    same-source frames, per source), metrics.csv and summary.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_metrics_csv(out_dir / "metrics.csv", reports, held_out)
    (out_dir / "summary.json").write_text(json.dumps(
        {"sweep": _finite(sweep), "skipped": skipped, "settings": settings}, indent=2))
    frames = len({r.name for r in reports})
    lines = ["# ETDMS evaluation: dose sweep", "",
             f"Frames: {frames}. Doses (electrons per pixel at white level): {', '.join(settings['doses'])}. "
             f"Settings: `{json.dumps(settings)}`", "",
             "Read noise at each dose: min(0.01, 0.1 / sqrt(dose)) of white; `clean`: no shot, read or row "
             "noise (quantisation only). Every frame keeps its seed across doses and kinds, so within a kind "
             "only the noise changes from dose to dose.", ""]
    for kind in sweep:
        lines.append(f"- **{kind}**: {KIND_DESCRIPTIONS[kind]}.")
    first = next(iter(next(iter(sweep.values())).values()))
    for kind, by_dose in sweep.items():
        lines += ["", f"## {kind} degradation"]
        labels = method_labels(first["all"])
        for group in ("all", "held_out", "same_sources"):
            if group not in first["frames"]:
                continue
            n = first["frames"][group]
            lines += ["", f"### {_group_title(group, held_out, n)}: PSNR (dB) / SSIM", ""]
            if n == 0:
                lines.append("No frames of these sources were evaluated.")
                continue
            lines += ["| e-/px | degraded, low-res grid (dB) | " + " | ".join(labels.values()) + " |",
                      "|---" * (len(labels) + 2) + "|"]
            for dose, point in by_dose.items():
                s = point[group]
                lines.append(f"| {dose} | {s['extra']['degraded_psnr_lr']:.2f} | "
                             + " | ".join(_psnr_ssim(s.get(m)) for m in labels) + " |")
            if group == "all":
                lines += ["", f"### All frames ({n}): NRMSE / FRC resolution (HR px, lower is finer)", "",
                          "| e-/px | " + " | ".join(labels.values()) + " |", "|---" * (len(labels) + 1) + "|"]
                for dose, point in by_dose.items():
                    s = point["all"]
                    lines.append(f"| {dose} | " + " | ".join(
                        f"{s[m]['nrmse']:.4f} / {s[m]['frc_px']:.2f}" if m in s else "" for m in labels) + " |")
        lines += ["", "### Per source: PSNR (dB) / SSIM", "",
                  "| source | frames | e-/px | " + " | ".join(labels.values()) + " |",
                  "|---" * (len(labels) + 3) + "|"]
        for source, count in first["source_frames"].items():
            mark = " (held out)" if source in held_out else ""
            for dose, point in by_dose.items():
                lines.append(f"| {source}{mark} | {count} | {dose} | "
                             + " | ".join(_psnr_ssim(point["sources"][source].get(m)) for m in labels) + " |")
    lines += ["", "## Notes", ""]
    timing = summarise(reports)["extra"]
    lines.append(f"- Seconds per frame and dose: ETDMS pipeline {timing['seconds']:.2f}" + "".join(
        f", {label} {timing[f'seconds_{key}']:.2f}" for key, label in BASELINE_METHODS.items()
        if f"seconds_{key}" in timing) + ".")
    for metric, status in {**skipped, **optional_metrics}.items():
        lines.append(f"- {metric}: {status}")
    lines += ["", METRIC_NOTE, "",
              "Per-frame figures: `metrics.csv` (kind, dose, frame, source, method, metrics). "
              "Figure: `dose-sweep.png`."]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


# ---- figures ------------------------------------------------------------------------------


def crop_grid_figure(path: Path, examples: list[tuple[str, dict[str, np.ndarray]]], crop: int = 96) -> None:
    """Side-by-side crops: degraded input, bicubic, the classical baselines, denoised, ETDMS x4,
    ground truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [(key, title) for key, title in (
        ("degraded", "degraded input"), ("bicubic_input", "bicubic x4"), ("nlm_bicubic", "NLM + bicubic"),
        ("bm3d_bicubic", "BM3D + bicubic"), ("bicubic_denoised", "denoised + bicubic"),
        ("super_resolved", "ETDMS x4"), ("ground_truth", "ground truth")) if key in examples[0][1]]
    fig, axes = plt.subplots(len(examples), len(columns), figsize=(2.6 * len(columns), 2.7 * len(examples)),
                             squeeze=False)
    for row, (name, images) in enumerate(examples):
        gt = images["ground_truth"]
        y, x = (gt.shape[0] - crop) // 2, (gt.shape[1] - crop) // 2
        for col, (key, title) in enumerate(columns):
            image = images[key]
            if image.shape != gt.shape:  # low-res: show at the same field of view
                image = np.kron(image, np.ones((SCALE, SCALE)))
            shown = image[y : y + crop, x : x + crop]
            # Each panel is stretched by its own percentiles: a least-squares match to the
            # ground truth (as the metrics do) would flatten a panel that correlates weakly.
            lo, hi = np.percentile(shown, (0.5, 99.5))
            axes[row, col].imshow(shown, cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-12), interpolation="nearest")
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
            if row == 0:
                axes[row, col].set_title(title, fontsize=10)
        axes[row, 0].set_ylabel(name[:28], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def metric_bars_figure(path: Path, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = method_labels(summary)
    fig, axes = plt.subplots(1, 3, figsize=(max(12, 2.6 * len(labels) * 1.2), 3.6))
    for ax, (key, title) in zip(axes, [("psnr", "PSNR (dB, higher better)"), ("ssim", "SSIM (higher better)"),
                                        ("frc_px", "FRC resolution (HR px, lower better)")]):
        values = [summary[m][key] for m in labels]
        ax.bar(range(len(values)), values, color=[METHOD_COLOURS[m] for m in labels])
        ax.set_xticks(range(len(values)), list(labels.values()), rotation=20, fontsize=8, ha="right")
        ax.set_title(title, fontsize=10)
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.2f}" if key != "ssim" else f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _dose_positions(doses: list[str]) -> tuple[list[float], float | None]:
    """x positions on a log axis; 'clean' sits one step past the highest dose, at the right."""
    numeric = [float(d) for d in doses if d != CLEAN]
    clean_at = (max(numeric) * 4 if numeric else 1.0) if CLEAN in doses else None
    return [clean_at if d == CLEAN else float(d) for d in doses], clean_at


def dose_sweep_figure(path: Path, sweep: dict, held_out: set[str]) -> None:
    """PSNR and SSIM against dose: one panel per degradation kind and metric, one colour per
    method; held-out sources solid and the training sources dashed (all frames solid when no
    source is held out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    kinds = list(sweep)
    doses = list(next(iter(sweep.values())))
    first = next(iter(sweep[kinds[0]].values()))
    labels = method_labels(first["all"])
    x, clean_at = _dose_positions(doses)
    groups = [g for g in ("held_out", "same_sources") if first["frames"].get(g)] or ["all"]
    styles = {"all": "-", "held_out": "-", "same_sources": "--"}
    fig, axes = plt.subplots(2, len(kinds), figsize=(5.2 * len(kinds) + 0.6, 7.4), squeeze=False, sharex=True,
                             sharey="row")
    for col, kind in enumerate(kinds):
        for row, (metric, title) in enumerate((("psnr", "PSNR (dB)"), ("ssim", "SSIM"))):
            ax = axes[row, col]
            for group in groups:
                for method in labels:
                    values = [sweep[kind][d][group].get(method, {}).get(metric, np.nan) for d in doses]
                    line = dict(marker="o", markersize=3.5, color=METHOD_COLOURS[method],
                                linewidth=1.6 if group != "same_sources" else 1.2)
                    cut = len(doses) - 1 if clean_at is not None and len(doses) > 1 else len(doses)
                    ax.plot(x[:cut], values[:cut], styles[group], **line)
                    if cut < len(doses):  # no dose lies between the highest and noise-free: a faint link
                        ax.plot(x[cut - 1 :], values[cut - 1 :], styles[group], alpha=0.35,
                                **(line | dict(marker=None)))
                        ax.plot(x[cut:], values[cut:], **line)
            ax.set_xscale("log")
            if clean_at is not None and len(doses) > 1:
                numeric_max = max(v for v, d in zip(x, doses) if d != CLEAN)
                ax.axvline(np.sqrt(numeric_max * clean_at), color="#bbbbbb", linewidth=0.8, linestyle=":")
            ax.set_xticks(x, doses)
            ax.minorticks_off()
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(f"{kind} degradation", fontsize=11)
            if col == 0:
                ax.set_ylabel(title)
            if row == 1:
                ax.set_xlabel("dose (electrons per pixel at white level)")
    handles = [Line2D([], [], color=METHOD_COLOURS[m], marker="o", label=label) for m, label in labels.items()]
    if groups != ["all"]:
        handles += [Line2D([], [], color="black", linestyle="-",
                           label=f"held-out sources, never trained on ({_frames(first['frames']['held_out'])})"),
                    Line2D([], [], color="black", linestyle="--",
                           label=f"same sources as training ({_frames(first['frames']['same_sources'])})")]
    else:
        handles.append(Line2D([], [], color="black", label=f"all frames ({first['frames']['all']})"))
    fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), fontsize=8, frameon=False)
    fig.suptitle("Restoration vs dose (matched PSNR / SSIM against the clean high-res frame)", fontsize=11)
    fig.tight_layout(rect=(0, 0.045 * (1 + (len(handles) - 1) // 4), 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- learned metrics (user-supplied networks) ---------------------------------------------


def _as_network_input(images: list[np.ndarray], reference: list[np.ndarray]):
    """Grey frames matched to their reference, on [0, 1], as 3-channel tensors."""
    import torch

    out = []
    for image, ref in zip(images, reference):
        ref01, est01 = match_to_reference(ref, image)
        out.append(torch.from_numpy(np.clip(est01, 0, 1)).float()[None, None].repeat(1, 3, 1, 1))
    return out


def _load_metric_network(path: Path):
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: metric weights file not found")
    try:
        if path.suffix == ".pt2":  # torch.export archive
            return torch.export.load(str(path)).module()
        return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as err:
        raise ValueError(f"{path}: not a TorchScript (.pt) or torch.export (.pt2) module ({err})") from None


def lpips_distance(weights: Path, reference: list[np.ndarray], estimates: list[np.ndarray]) -> float:
    """Mean LPIPS from a TorchScript module called as module(x, y) on (1, 3, H, W) images in
    [-1, 1] (e.g. the `lpips` package's model exported with torch.jit.trace)."""
    import torch

    model = _load_metric_network(weights)
    refs = _as_network_input(reference, reference)
    ests = _as_network_input(estimates, reference)
    with torch.no_grad():
        return float(np.mean([float(model(r * 2 - 1, e * 2 - 1).mean()) for r, e in zip(refs, ests)]))


def patch_fid(weights: Path, reference: list[np.ndarray], estimates: list[np.ndarray], patch: int = 64):
    """Frechet distance between features of non-overlapping 64 px patches of the ground truth
    and of the estimates; the module maps (N, 3, h, w) images in [0, 1] to (N, D) features.
    Returns (FID, patches per set). Few patches make FID biased: the count is reported."""
    import torch
    from scipy import linalg

    model = _load_metric_network(weights)

    def features(images):
        patches = []
        for t in images:
            tiles = t.unfold(2, patch, patch).unfold(3, patch, patch)  # 1, 3, ny, nx, p, p
            patches.append(tiles.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, patch, patch))
        batch = torch.cat(patches)
        with torch.no_grad():
            return torch.cat([model(chunk) for chunk in batch.split(64)]).double().numpy(), len(batch)

    (f_ref, n), (f_est, _) = features(_as_network_input(reference, reference)), features(
        _as_network_input(estimates, reference))
    mu1, mu2 = f_ref.mean(0), f_est.mean(0)
    c1, c2 = np.cov(f_ref, rowvar=False), np.cov(f_est, rowvar=False)
    covmean = linalg.sqrtm(c1 @ c2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * covmean)), n



# ---- the evaluation -----------------------------------------------------------------------


def _optional_metric_status(lpips_weights, fid_weights, sweep: bool) -> dict[str, str]:
    status = {
        "LPIPS": "skipped: no weights (give --lpips-weights: a TorchScript .pt or torch.export .pt2 LPIPS network)",
        "FID": "skipped: no weights (give --fid-weights: a .pt or .pt2 feature extractor such as InceptionV3)",
    }
    if sweep:
        for metric, weights in (("LPIPS", lpips_weights), ("FID", fid_weights)):
            if weights:
                status[metric] = "not computed in a dose sweep: evaluate one degradation (without --doses) for it"
    return status


def _settings(pipeline, reports: list[FrameReport], seed: int, crop, frames: int, run: RunSettings,
              degradation: DegradationConfig, baselines, held_out: set[str]) -> dict:
    chosen = ("sampler", "steps", "eta", "data_consistency")  # as resolved from the weights' preset
    resolved = {key: reports[0].run.get(key) for key in chosen} if reports else {}
    if reports:  # the tile batch actually used (None asks for the device's default)
        resolved["batch_size"] = reports[0].run["tiling"]["batch_size"]
    chosen_by_user = {key: value for key, value in asdict(run).items() if key != "seed"}
    settings = {"seed": seed, "crop": crop, "frames": frames, **chosen_by_user, **resolved,
                "weights": pipeline.weights_provenance.get("name"),
                "weights_hash": pipeline.weights_provenance.get("hash"),
                "software": reports[0].run.get("software") if reports else None,
                "runtime": {key: reports[0].run.get(key) for key in ("device", "precision", "precision_reason",
                                                                     "threads")} if reports else None,
                "degradation": degradation.model_dump(mode="json", exclude_defaults=True) or "shipped",
                "baselines": list(baselines)}
    if held_out:
        settings["held_out_sources"] = sorted(held_out)
    return settings


def run_evaluation(pipeline, frames: list[Path], out_dir: Path, seed: int = 0, crop: int | None = 512,
                   degradation: DegradationConfig = DegradationConfig(), settings: RunSettings = DEFAULTS,
                   lpips_weights: Path | None = None, fid_weights: Path | None = None, progress=None, *,
                   doses: list[float | str] | None = None, kinds=DEGRADATION_KINDS, held_out_sources=(),
                   baselines=tuple(classical.BASELINES), max_frames: int | None = None,
                   max_truth_noise: float | None = None) -> dict:
    """Evaluate `pipeline` and the classical `baselines` on clean `frames`, write the reports.

    Without `doses`: one degradation (`degradation`), report.md, metrics.csv, summary.json,
    crops.png and metrics.png. With `doses` (electrons per pixel, or "clean"): a sweep over
    `kinds` x `doses` (`dose_degradation`, with `degradation` as the "full" kind's base), each
    frame degraded with the same seed at every point and the pipeline run once per point;
    report.md, metrics.csv, summary.json and dose-sweep.png. Frames of `held_out_sources` are
    reported apart. A baseline whose dependency is missing is reported as skipped.
    `max_truth_noise`: truths noisier than this are area down-sampled first
    (`frames.load_ground_truth`); each truth is cropped where it has content (`content_crop`).

    The output folder is checked before any work (`batch.OutputFolderError`). Frames run
    through the batch runner: one that cannot be read or run is named in the report's notes
    and the others go on.
    """
    check_output_folder(out_dir)
    held_out = set(held_out_sources)
    skipped = {classical.BASELINES[name].short: reason for name, reason in classical.unavailable(baselines).items()}
    runnable = [name for name in baselines if classical.BASELINES[name].short not in skipped]
    frames = pick_frames(frames, max_frames)
    if doses is None:
        return _single(pipeline, frames, out_dir, seed, crop, degradation, settings, lpips_weights, fid_weights,
                       progress, runnable, skipped, held_out, max_truth_noise)
    kinds = list(dict.fromkeys(kinds))
    points = [(kind, dose, dose_degradation(kind, dose, degradation)) for kind in kinds for dose in doses]

    def sweep_frame(i, frame_progress):
        path = frames[i]
        clean = _ground_truth(path, crop, max_truth_noise)
        frame_reports = []
        for j, (kind, dose, config) in enumerate(points):
            report, _ = evaluate_frame(pipeline, clean, path.stem, seed + i, config, settings, runnable)
            report.kind, report.dose = kind, dose_label(dose)
            frame_reports.append(report)
            frame_progress(j + 1, len(points), f"{path.name} {kind} {report.dose}")
        return frame_reports

    outcomes = run_serially(range(len(frames)), sweep_frame, _failures_into(skipped, frames),
                            _overall(progress))
    reports = [report for frame_reports in outcomes if frame_reports for report in frame_reports]
    _require_some(reports, skipped)
    sweep = {kind: {dose_label(dose): summarise_groups([r for r in reports if r.kind == kind
                                                        and r.dose == dose_label(dose)], held_out)
                    for dose in doses} for kind in kinds}
    recorded = _settings(pipeline, reports, seed, crop, len(frames), settings, degradation, runnable, held_out)
    recorded |= {"doses": [dose_label(d) for d in doses], "kinds": kinds, "max_truth_noise": max_truth_noise}
    optional = _optional_metric_status(lpips_weights, fid_weights, sweep=True)
    write_sweep_reports(out_dir, reports, sweep, recorded, optional, skipped, held_out)
    dose_sweep_figure(out_dir / "dose-sweep.png", sweep, held_out)
    return {"sweep": sweep, "reports": reports, "optional": optional, "skipped": skipped}


def _ground_truth(path: Path, crop: int | None, max_truth_noise: float | None) -> np.ndarray:
    return content_crop(load_ground_truth(path, max_truth_noise)[0], crop).astype(np.float64)


def _failures_into(skipped: dict[str, str], frames: list[Path]):
    """The batch runner's report: a frame that failed is named in the report's notes."""

    def report(i, _result, error):
        if error is not None:
            skipped[f"frame {frames[i].name}"] = f"not evaluated: {error}"

    return report


def _require_some(evaluated: list, skipped: dict[str, str]) -> None:
    if not evaluated:
        reasons = "; ".join(f"{name}: {why}" for name, why in skipped.items() if name.startswith("frame "))
        raise ValueError(f"no frame could be evaluated ({reasons})")


def _overall(progress):
    """The batch runner's progress as `progress(done, total, label)` over all frames."""
    if progress is None:
        return None
    return lambda p: progress(p.item * p.total + p.done, p.items * p.total, p.stage)


def _single(pipeline, frames, out_dir, seed, crop, degradation, settings, lpips_weights, fid_weights, progress,
            baselines, skipped, held_out, max_truth_noise) -> dict:
    examples = []
    learned: dict[str, list[np.ndarray]] = {}

    def evaluate(i, frame_progress):
        """One frame's report; its images are kept only where needed (examples, learned metrics)."""
        path = frames[i]
        clean = _ground_truth(path, crop, max_truth_noise)
        report, images = evaluate_frame(pipeline, clean, path.stem, seed + i, degradation, settings, baselines)
        if len(examples) < 4:
            examples.append((report.name, images))
        if lpips_weights or fid_weights:
            for method in report.metrics:
                learned.setdefault(method, []).append(images[method])
            learned.setdefault("ground_truth", []).append(images["ground_truth"])
        frame_progress(1, 1, path.name)
        return report

    outcomes = run_serially(range(len(frames)), evaluate, _failures_into(skipped, frames), _overall(progress))
    reports = [report for report in outcomes if report is not None]
    _require_some(reports, skipped)
    summary = summarise(reports)
    labels = method_labels(summary)
    optional = _optional_metric_status(lpips_weights, fid_weights, sweep=False)
    if lpips_weights:
        values = {m: lpips_distance(lpips_weights, learned["ground_truth"], learned[m]) for m in labels}
        optional["LPIPS"] = ", ".join(f"{labels[m]} {v:.4f}" for m, v in values.items()) + " (lower is better)"
    if fid_weights:
        values = {m: patch_fid(fid_weights, learned["ground_truth"], learned[m]) for m in labels}
        optional["FID"] = ", ".join(f"{labels[m]} {v[0]:.2f}" for m, v in values.items()) + (
            f" (lower is better; {next(iter(values.values()))[1]} patches of 64 px per set)")
    recorded = _settings(pipeline, reports, seed, crop, len(frames), settings, degradation, baselines, held_out)
    write_reports(out_dir, reports, summary, recorded, optional, skipped, held_out)
    crop_grid_figure(out_dir / "crops.png", examples)
    metric_bars_figure(out_dir / "metrics.png", summary)
    return {"summary": summary, "reports": reports, "optional": optional, "skipped": skipped}
