"""How much stage 2 adds over bicubic, and how much any data-consistent stage 2 could add.

For each held-out frame (degraded as `etdms eval` does: same seeds and settings) and for two
conditions, the clean low-res frame and the stage-1 output, prints the mean PSNR and FRC
resolution against the ground truth of:
  bicubic             the condition upsampled, nothing added
  bicubic, projected  the same after the data-consistency projection alone (4x4 block means
                      set to the condition): what stage 2 gives if its detail is worth nothing
  CLSR, 1 / mean of K the pipeline's x4 output (the weights' preset sampling)
  CLSR, 1 step        one DPM-Solver step from pure noise: a v model's estimate of the mean
  oracle              the ground truth projected onto the condition: the best any stage 2
                      that keeps the condition's block means can do

    python benchmarks/stage2_headroom.py --split training-runs/etdms-sem-lite-v1/split.json \
        [--weights etdms-sem-lite-v1] [--crop 512] [--samples 4] [--threads 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from napari_etdms.diffusion.target import upsample_condition
from napari_etdms.engine.bands import project_onto_low_res
from napari_etdms.engine.pipeline import Pipeline
from napari_etdms.evaluation import centre_crop
from napari_etdms.evaluation.metrics import frc_resolution, matched_psnr
from napari_etdms.runtime import describe, machine_report, use_threads
from napari_etdms.simulation.degradation import DegradationConfig, degrade
from napari_etdms.simulation.ground_truth import load_normalised, validation_frames


def as_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]


def x4_estimates(pipeline: Pipeline, condition: np.ndarray, hr: np.ndarray, samples: int) -> dict[str, np.ndarray]:
    cond = as_tensor(condition)
    bicubic = upsample_condition(cond)
    return {
        "bicubic": bicubic[0, 0].numpy(),
        "bicubic, projected": project_onto_low_res(bicubic, cond)[0, 0].numpy(),
        "CLSR, 1 sample": pipeline.run(condition, denoise=False).super_resolved,
        f"CLSR, mean of {samples}": pipeline.run(condition, denoise=False, samples=samples).super_resolved,
        "CLSR, 1 step": pipeline.run(condition, denoise=False, sampler="dpmpp", steps=1).super_resolved,
        "oracle": project_onto_low_res(as_tensor(hr), cond)[0, 0].numpy(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=Path, required=True, help="a training run's split.json")
    parser.add_argument("--frames-dir", type=Path, help="the folder holding the split's frames, if moved")
    parser.add_argument("--weights", default=None, help="registry name or weights folder (default: shipped)")
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="as etdms eval: frame i is degraded with seed + i")
    parser.add_argument("--threads", type=int, help="default: the cores free now")
    args = parser.parse_args()
    threads = use_threads(args.threads)

    frames = validation_frames(args.split, args.frames_dir)
    pipeline = Pipeline.from_pretrained(args.weights)
    print(machine_report(describe(pipeline.device, pipeline.precision_choice, threads)))
    if pipeline.clsr.condition_channels != 1:
        parser.error("these weights' stage 2 also takes the measured frame, which this benchmark's conditions "
                     "(clean low-res, stage-1 output) lack: compare them with `etdms eval`")
    scores: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for i, path in enumerate(frames):
        clean = centre_crop(load_normalised(path), args.crop).astype(np.float64)
        degraded, clean_lr, hr = degrade(clean, np.random.default_rng(args.seed + i), DegradationConfig())
        denoised = pipeline.run(degraded, super_resolve=False).denoised
        for condition_name, condition in (("clean low-res", clean_lr), ("stage-1 output", denoised)):
            for method, estimate in x4_estimates(pipeline, condition, hr, args.samples).items():
                score = (matched_psnr(hr, estimate), frc_resolution(hr, estimate))
                scores.setdefault((condition_name, method), []).append(score)
        print(f"{i + 1}/{len(frames)} {path.name}", flush=True)

    weights = pipeline.weights_provenance
    print(f"\nweights {weights.get('name')} (hash {weights.get('hash')}), {len(frames)} frames, "
          f"{args.crop} px crops, preset {pipeline.recommended}")
    print("| condition | x4 method | PSNR (dB) | FRC (HR px) |\n|---|---|---|---|")
    for (condition_name, method), values in scores.items():
        psnr, frc = np.mean(values, axis=0)
        print(f"| {condition_name} | {method} | {psnr:.2f} | {frc:.2f} |")


if __name__ == "__main__":
    main()
