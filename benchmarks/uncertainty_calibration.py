"""Is the x4 uncertainty honest? For each weights, the per-pixel std of `--samples K` runs
against the actual error of the mean output, on validation frames degraded at each dose.

    python benchmarks/uncertainty_calibration.py -w etdms-sem-v2 etdms-sem-v3 --samples 4 \
        --split training-runs/etdms-sem-v3/split.json --doses 30,1000,clean -o benchmarks/results/uncertainty

Per weights and dose: the RMS std over the RMS error (1: right on average; the issue's bar:
within a factor of 2) and the Spearman rank correlation of std and absolute error per pixel
(bar: >= 0.4), both after PSNR's intensity matching (`metrics.uncertainty_calibration`), as
means over frames; and the same rank correlation for an oracle std that knows each pixel's
own predicted std exactly (|error| = std x |z|), the most a std of that spread can reach.
A figure plots the RMS error in bins of the std (deciles) against the std itself: on the
diagonal, the std is the error it claims. Degradation: "plain" (4x area sampling and
Poisson-Gaussian noise), the frames' seeds as in `etdms eval`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from napari_etdms import Pipeline  # noqa: E402
from napari_etdms.evaluation import centre_crop
from napari_etdms.evaluation.metrics import match_to_reference, uncertainty_calibration  # noqa: E402
from napari_etdms.evaluation.protocol import parse_doses  # noqa: E402
from napari_etdms.evaluation.sweep import dose_degradation, dose_label
from napari_etdms.runtime import describe, machine_report, use_threads  # noqa: E402
from napari_etdms.simulation.degradation import degrade  # noqa: E402
from napari_etdms.simulation.ground_truth import load_ground_truth, validation_frames  # noqa: E402

BINS = 10
PIXELS_PER_FRAME = 20000  # of each frame's (std, error) pairs kept for the binned curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-w", "--weights", nargs="+", required=True)
    parser.add_argument("--split", required=True, type=Path)
    parser.add_argument("--doses", default="30,1000,clean")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--crop", type=int, default=256, help="high-res px of each frame's centre")
    parser.add_argument("--max-frames", type=int)
    parser.add_argument("--max-truth-noise", type=float, default=0.015)
    parser.add_argument("--threads", type=int)
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder for the JSON and the figure")
    args = parser.parse_args()
    threads = use_threads(args.threads)
    frames = validation_frames(args.split)[: args.max_frames]
    doses = parse_doses(args.doses)
    args.output.mkdir(parents=True, exist_ok=True)
    results, curves = {}, {}
    for weights in args.weights:
        pipe = Pipeline.from_pretrained(weights)
        if not results:
            print(machine_report(describe(pipe.device, pipe.precision_choice, threads)))
        for dose in doses:
            label = f"{pipe.weights_provenance['name']} @ {dose_label(dose)}"
            figures, pairs = [], []
            for seed, path in enumerate(frames):
                truth_hr = centre_crop(load_ground_truth(path, args.max_truth_noise)[0], args.crop)
                degraded, _, truth = degrade(truth_hr, np.random.default_rng(seed), dose_degradation("plain", dose))
                result = pipe.run(degraded, samples=args.samples, seed=seed)
                figures.append(uncertainty_calibration(truth, result.super_resolved, result.std))
                reference, matched = match_to_reference(truth, result.super_resolved)
                gain = np.polyfit(result.super_resolved.ravel(), matched.ravel(), 1)[0]
                std = abs(gain) * result.std.ravel()
                error = np.abs(matched - reference).ravel()
                oracle = spearmanr(std, std * np.abs(np.random.default_rng(seed).standard_normal(std.size)))[0]
                figures[-1]["oracle_rank_correlation"] = float(oracle)
                keep = np.random.default_rng(seed).choice(std.size, min(PIXELS_PER_FRAME, std.size), replace=False)
                pairs.append(np.stack([std[keep], error[keep]]))
            summary = {key: float(np.mean([f[key] for f in figures])) for key in figures[0]}
            results[label] = summary
            std, error = np.concatenate(pairs, axis=1)
            edges = np.quantile(std, np.linspace(0, 1, BINS + 1))
            which = np.clip(np.searchsorted(edges, std, side="right") - 1, 0, BINS - 1)
            curves[label] = [(float(std[which == b].mean()), float(np.sqrt(np.mean(error[which == b] ** 2))))
                             for b in range(BINS) if (which == b).any()]
            print(f"{label}: std / RMS error {summary['std_over_rms_error']:.2f}, rank correlation "
                  f"{summary['std_error_rank_correlation']:.2f} (an exact std of this spread: "
                  f"{summary['oracle_rank_correlation']:.2f}), {len(frames)} frames", flush=True)
    (args.output / "calibration.json").write_text(json.dumps(
        {"results": results, "curves": curves, "samples": args.samples, "crop": args.crop,
         "frames": [p.name for p in frames]}, indent=1) + "\n")
    figure, axes = plt.subplots(figsize=(5.5, 5))
    for label, curve in curves.items():
        xs, ys = zip(*curve)
        axes.loglog(xs, ys, "o-", label=label, markersize=3)
    limits = [min(min(c[0] for c in curve) for curve in curves.values()),
              max(max(max(c) for c in curve) for curve in curves.values())]
    axes.loglog(limits, limits, "k:", label="std = error")
    axes.set_xlabel("per-pixel std (decile bins; matched [0, 1] units)")
    axes.set_ylabel("RMS error of the mean output in the bin")
    axes.set_title(f"x4 uncertainty against the actual error ({args.samples} samples)")
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(args.output / "error-vs-std.png", dpi=120)


if __name__ == "__main__":
    main()
