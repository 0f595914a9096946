"""Quality against time for the samplers of trained weights: how the default preset is chosen.

Degrades held-out frames with the shipped degradation settings (fixed seeds), runs the
pipeline once per sampler setting and prints mean PSNR / SSIM / FRC of the x4 output next
to the two baselines, with the wall time per frame on this machine.

    python benchmarks/sampler_sweep.py --split training-runs/etdms-sem-lite-v1/split.json \
        [--weights etdms-sem-lite-v1] [--frames 6] [--crop 256] [--threads 2] [--only "mean of"]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from napari_etdms.engine.pipeline import Pipeline
from napari_etdms.engine.settings import RunSettings
from napari_etdms.evaluation import centre_crop
from napari_etdms.evaluation.sweep import evaluate_frame, summarise
from napari_etdms.runtime import describe, machine_report, use_threads
from napari_etdms.simulation.degradation import DegradationConfig
from napari_etdms.simulation.ground_truth import load_normalised, validation_frames

SETTINGS = {
    # one step from pure noise: a v model's estimate of the mean given the condition
    "DPM-Solver++(2M), 1 step": {"sampler": "dpmpp", "steps": 1},
    "DPM-Solver++(2M), 1 step, no consistency": {"sampler": "dpmpp", "steps": 1, "data_consistency": False},
    "DPM-Solver++(2M) ODE, 3 steps": {"sampler": "dpmpp", "steps": 3},
    "DPM-Solver++(2M) ODE, 5 steps": {"sampler": "dpmpp", "steps": 5},
    "DPM-Solver++(2M) SDE, 10 steps, no consistency": {"sampler": "dpmpp-sde", "steps": 10, "data_consistency": False},
    "DPM-Solver++(2M) SDE, 5 steps": {"sampler": "dpmpp-sde", "steps": 5},
    "DPM-Solver++(2M) SDE, 10 steps": {"sampler": "dpmpp-sde", "steps": 10},
    "DPM-Solver++(2M) SDE, 20 steps": {"sampler": "dpmpp-sde", "steps": 20},
    "DPM-Solver++(2M) ODE, 10 steps": {"sampler": "dpmpp", "steps": 10},
    "DPM-Solver++(2M) ODE, 20 steps": {"sampler": "dpmpp", "steps": 20},
    "DDIM eta 1, 50 steps": {"sampler": "ddim", "steps": 50, "eta": 1.0},
    "DDIM eta 0 (paper Ts=200)": {"sampler": "ddim", "steps": 200},
    "DDPM ancestral, 100 steps": {"sampler": "ddpm", "steps": 100},
    "DPM-Solver++(2M) SDE, 10 steps, mean of 4": {"sampler": "dpmpp-sde", "steps": 10, "samples": 4},
    "DPM-Solver++(2M) SDE, 5 steps, mean of 2": {"sampler": "dpmpp-sde", "steps": 5, "samples": 2},
    "DPM-Solver++(2M) SDE, 5 steps, mean of 4": {"sampler": "dpmpp-sde", "steps": 5, "samples": 4},
    "DPM-Solver++(2M) SDE, 5 steps, mean of 8": {"sampler": "dpmpp-sde", "steps": 5, "samples": 8},
    "DPM-Solver++(2M) SDE, 10 steps, mean of 8": {"sampler": "dpmpp-sde", "steps": 10, "samples": 8},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=Path, required=True, help="a training run's split.json")
    parser.add_argument("--frames-dir", type=Path, help="the folder holding the split's frames, if moved")
    parser.add_argument("--weights", default=None, help="registry name or weights.json (default: shipped)")
    parser.add_argument("--frames", type=int, default=6, help="every other validation frame, this many")
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--threads", type=int, help="default: the cores free now")
    parser.add_argument("--only", nargs="+", default=None, help="run the settings whose label contains any of these")
    args = parser.parse_args()
    threads = use_threads(args.threads)

    frames = validation_frames(args.split, args.frames_dir)[::2][: args.frames]
    clean = [centre_crop(load_normalised(path), args.crop).astype(np.float64) for path in frames]
    pipeline = Pipeline.from_pretrained(args.weights)
    print(machine_report(describe(pipeline.device, pipeline.precision_choice, threads)))
    print(f"weights {pipeline.weights_provenance.get('name')}, {len(frames)} frames, {args.crop} px crops")
    print("| setting | PSNR (dB) | SSIM | FRC (HR px) | s / frame |\n|---|---|---|---|---|")
    chosen = {k: v for k, v in SETTINGS.items() if not args.only or any(part in k for part in args.only)}
    for label, options in chosen.items():
        started = time.perf_counter()
        reports = [evaluate_frame(pipeline, image, path.stem, i, DegradationConfig(), RunSettings(**options))[0]
                   for i, (path, image) in enumerate(zip(frames, clean))]
        seconds = (time.perf_counter() - started) / len(frames)
        summary = summarise(reports)
        sr = summary["super_resolved"]
        print(f"| {label} | {sr['psnr']:.2f} | {sr['ssim']:.3f} | {sr['frc_px']:.2f} | {seconds:.1f} |", flush=True)
    for method, label in (("bicubic_denoised", "stage 1 + bicubic"), ("bicubic_input", "bicubic of degraded")):
        ref = summary[method]
        print(f"| {label} (reference) | {ref['psnr']:.2f} | {ref['ssim']:.3f} | {ref['frc_px']:.2f} | - |")


if __name__ == "__main__":
    main()
