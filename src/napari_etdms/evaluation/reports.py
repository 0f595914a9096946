"""An evaluation's reports: summaries per group and source, metrics.csv, report.md, and the figures."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from napari_etdms.evaluation.protocol import (
    BASELINE_METHODS,
    CLEAN,
    KIND_DESCRIPTIONS,
    METHOD_COLOURS,
    METHODS,
    FrameReport,
)
from napari_etdms.simulation.degradation import SCALE

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
