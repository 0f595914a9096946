"""Honest evaluation on clean SEM frames: degrade with a fixed seed, restore, compare.

Methods compared against the clean high-res frame: bicubic x4 of the degraded input,
stage 1 + bicubic x4, and ETDMS (stage 1 + CLSR). Figures: PSNR and SSIM after PSSR-style
percentile + affine matching (SSIM: Wang et al. 2004, Gaussian window sigma 1.5), NRMSE,
FRC resolution against the ground truth (1/7 threshold, high-res px), data-consistency
PSNR, and the mean seed standard deviation when samples > 1. LPIPS and FID need backbone
weights that cannot be downloaded here: they run only from user-supplied TorchScript (.pt) or torch.export (.pt2) files.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .metrics import consistency_psnr, frc_resolution, match_to_reference, matched_psnr, matched_ssim, nrmse
from .frames import load_normalised
from .degradation import SCALE, DegradationConfig, degrade

METHODS = {
    "bicubic_input": "bicubic of degraded",
    "bicubic_denoised": "stage 1 + bicubic",
    "super_resolved": "ETDMS (stage 1 + CLSR)",
}

METHOD_COLOURS = {"bicubic_input": "#999999", "bicubic_denoised": "#6a8caf", "super_resolved": "#d0743c"}


@dataclass
class FrameReport:
    name: str
    metrics: dict[str, dict[str, float]]  # method -> metric -> value
    extra: dict[str, float] = field(default_factory=dict)
    run: dict = field(default_factory=dict)  # the pipeline's provenance for this frame


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
                   run_options: dict) -> tuple[FrameReport, dict[str, np.ndarray]]:
    degraded, clean_lr, hr = degrade(clean_hr, np.random.default_rng(seed), degradation)
    result = pipeline.run(degraded, seed=seed, **run_options)
    images = {"degraded": degraded, "clean_lr": clean_lr, "ground_truth": hr}
    # each x4 output is held to the low-res frame it was upsampled from
    upsampled_from = {"bicubic_input": degraded, "bicubic_denoised": result.denoised,
                      "super_resolved": degraded if result.denoised is None else result.denoised}
    metrics = {}
    for field_name in METHODS:  # those the run made: --no-denoise has no stage-1 rows
        image = getattr(result, field_name)
        if image is not None:
            images[field_name] = image
            metrics[field_name] = score(hr, image) | {"consistency_psnr": consistency_psnr(upsampled_from[field_name],
                                                                                          image)}
    if result.std is not None:
        metrics["super_resolved"]["seed_std"] = float(np.mean(result.std) / max(np.ptp(result.super_resolved), 1e-12))
    extra = {"degraded_psnr_lr": matched_psnr(clean_lr, degraded), "seconds": sum(result.metadata["timings"].values())}
    if result.denoised is not None:
        extra["denoise_psnr_lr"] = matched_psnr(clean_lr, result.denoised)
    return FrameReport(name, metrics, extra, result.metadata), images


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


def write_reports(out_dir: Path, reports: list[FrameReport], summary: dict, settings: dict,
                  optional_metrics: dict[str, str]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "metrics.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        columns = {"psnr": "psnr_db", "ssim": "ssim", "nrmse": "nrmse", "frc_px": "frc_resolution_px",
                   "consistency_psnr": "consistency_psnr_db", "seed_std": "seed_std"}
        writer.writerow(["frame", "method", *columns.values()])
        for r in reports:
            for method, m in r.metrics.items():  # seed_std: ETDMS with samples > 1 only
                writer.writerow([r.name, method, *(f"{m[k]:.4f}" if k in m else "" for k in columns)])
    finite = json.loads(json.dumps(summary), parse_constant=lambda _: None)  # JSON has no Infinity: exact -> null
    (out_dir / "summary.json").write_text(json.dumps({"summary": finite, "settings": settings}, indent=2))
    lines = ["# ETDMS evaluation", "", f"Frames: {len(reports)}. Settings: `{json.dumps(settings)}`", "",
             "| method | PSNR (dB) | SSIM | NRMSE | FRC resolution (HR px) | data consistency (dB) |",
             "|---|---|---|---|---|---|"]
    for method, label in method_labels(summary).items():
        m = summary[method]
        lines.append(f"| {label} | {m['psnr']:.2f} | {m['ssim']:.3f} | {m['nrmse']:.4f} | {m['frc_px']:.2f} "
                     f"| {m['consistency_psnr']:.1f} |")
    extra = summary["extra"]
    lines.append("")
    if "denoise_psnr_lr" in extra:
        lines.append(f"- Stage 1 on the low-res grid: {extra['degraded_psnr_lr']:.2f} dB degraded -> "
                     f"{extra['denoise_psnr_lr']:.2f} dB denoised (vs clean low-res).")
    else:
        lines.append(f"- No stage 1: the degraded low-res input scores {extra['degraded_psnr_lr']:.2f} dB "
                     "(vs clean low-res).")
    lines.append("- Data consistency: PSNR of each x4 output's 4x4 block means against the low-res frame it "
                 "was upsampled from (the degraded frame for bicubic, the stage-1 output otherwise).")
    if "seed_std" in summary.get("super_resolved", {}):
        lines.append(f"- Mean seed standard deviation of ETDMS: {summary['super_resolved']['seed_std']:.4f} "
                     "of the output range.")
    for metric, status in optional_metrics.items():
        lines.append(f"- {metric}: {status}")
    lines += ["", "PSNR/SSIM/NRMSE after percentile + affine matching to the ground truth (PSSR style); SSIM is "
              "the Gaussian-window variant (sigma 1.5) of Wang et al. 2004. FRC resolution: where the FRC "
              "between output and ground truth drops below 1/7, in high-res pixels (lower is finer).",
              "", "Per-frame figures: `metrics.csv`. Figures: `crops.png`, `metrics.png`."]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def crop_grid_figure(path: Path, examples: list[tuple[str, dict[str, np.ndarray]]], crop: int = 96) -> None:
    """Side-by-side crops: degraded input, bicubic, denoised, ETDMS x4, ground truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [(key, title) for key, title in (
        ("degraded", "degraded input"), ("bicubic_input", "bicubic x4"), ("bicubic_denoised", "denoised + bicubic"),
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

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    labels = method_labels(summary)
    for ax, (key, title) in zip(axes, [("psnr", "PSNR (dB, higher better)"), ("ssim", "SSIM (higher better)"),
                                        ("frc_px", "FRC resolution (HR px, lower better)")]):
        values = [summary[m][key] for m in labels]
        ax.bar(range(len(values)), values, color=[METHOD_COLOURS[m] for m in labels])
        ax.set_xticks(range(len(values)), list(labels.values()), rotation=15, fontsize=8)
        ax.set_title(title, fontsize=10)
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.2f}" if key != "ssim" else f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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


def run_evaluation(pipeline, frames: list[Path], out_dir: Path, seed: int = 0, crop: int | None = 512,
                   degradation: DegradationConfig = DegradationConfig(), run_options: dict | None = None,
                   lpips_weights: Path | None = None, fid_weights: Path | None = None, progress=None) -> dict:
    run_options = run_options or {}
    reports, examples = [], []
    learned: dict[str, list[np.ndarray]] = {}
    for i, path in enumerate(frames):
        clean = centre_crop(load_normalised(path), crop).astype(np.float64)
        report, images = evaluate_frame(pipeline, clean, path.stem, seed + i, degradation, run_options)
        reports.append(report)
        if len(examples) < 4:
            examples.append((path.stem, images))
        if progress:
            progress(i + 1, len(frames), path.name)
        if lpips_weights or fid_weights:
            for method in report.metrics:
                learned.setdefault(method, []).append(images[method])
            learned.setdefault("ground_truth", []).append(images["ground_truth"])
    summary = summarise(reports)
    labels = method_labels(summary)
    optional = {
        "LPIPS": "skipped: no weights (give --lpips-weights: a TorchScript .pt or torch.export .pt2 LPIPS network)",
        "FID": "skipped: no weights (give --fid-weights: a .pt or .pt2 feature extractor such as InceptionV3)",
    }
    if lpips_weights:
        values = {m: lpips_distance(lpips_weights, learned["ground_truth"], learned[m]) for m in labels}
        optional["LPIPS"] = ", ".join(f"{labels[m]} {v:.4f}" for m, v in values.items()) + " (lower is better)"
    if fid_weights:
        values = {m: patch_fid(fid_weights, learned["ground_truth"], learned[m]) for m in labels}
        optional["FID"] = ", ".join(f"{labels[m]} {v[0]:.2f}" for m, v in values.items()) + (
            f" (lower is better; {next(iter(values.values()))[1]} patches of 64 px per set)")
    chosen = ("sampler", "steps", "eta", "data_consistency")  # as resolved from the weights' preset
    resolved = {key: reports[0].run.get(key) for key in chosen} if reports else {}
    if reports:  # the tile batch actually used (None asks for the device's default)
        resolved["batch_size"] = reports[0].run["tiling"]["batch_size"]
    settings = {"seed": seed, "crop": crop, "frames": len(frames), **run_options, **resolved,
                "weights": pipeline.weights_provenance.get("name"),
                "weights_hash": pipeline.weights_provenance.get("hash"),
                "software": reports[0].run.get("software") if reports else None,
                "degradation": degradation.model_dump(mode="json", exclude_defaults=True) or "shipped"}
    write_reports(out_dir, reports, summary, settings, optional)
    crop_grid_figure(out_dir / "crops.png", examples)
    metric_bars_figure(out_dir / "metrics.png", summary)
    return {"summary": summary, "reports": reports, "optional": optional}
