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
first "__"); sources never trained on are reported apart from the others."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from napari_etdms.engine.batch import check_output_folder, run_serially
from napari_etdms.engine.settings import DEFAULTS, RunSettings
from napari_etdms.evaluation import baselines as classical
from napari_etdms.evaluation.learned_metrics import lpips_distance, patch_fid
from napari_etdms.evaluation.protocol import (
    DEGRADATION_KINDS,
    FrameReport,
    content_crop,
    dose_degradation,
    dose_label,
    evaluate_frame,
    pick_frames,
)
from napari_etdms.evaluation.reports import (
    crop_grid_figure,
    dose_sweep_figure,
    method_labels,
    metric_bars_figure,
    summarise,
    summarise_groups,
    write_reports,
    write_sweep_reports,
)
from napari_etdms.simulation.degradation import DegradationConfig
from napari_etdms.simulation.ground_truth import load_ground_truth

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
