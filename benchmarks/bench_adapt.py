"""Adapting stage 1 to a detector (issue 17): does `etdms adapt` on ONE noisy 1024x768 frame,
with the default budget, make stage 1 better on OTHER frames of the same detector, and does
its guard keep it from harm where the shipped model already knows the noise?

    LD_PRELOAD=libtcmalloc_minimal.so.4 python benchmarks/bench_adapt.py [--detectors spiky,trained,rows]
        [--frames-dir ../shared/data/sem-train] [--threads 2] [-o bench-adapt.json]

Frames (v2's validation split, never trained on): the adapt frame is vquentin-auriga
ADB1_28 (768x1024, native); the scored frames are the central 512x512 of six others from
three labs, with their own noise low (MAD sigma <= 0.024 of the range). Each detector's noise
is added to all of them with a fixed seed. PSNR (data range 1) of stage 1 alone, against
the frame before the synthetic noise:
- base: the shipped weights' stage 1 (`Pipeline.run(..., super_resolve=False)`);
- adapted: after `training.adapt.adapt` on the adapt frame (written even where the guard
  would not keep it, so both are scored; the guard's decision is printed);
- BM3D: `bm3d` with scikit-image's estimated sigma (the evaluation's baseline settings).

Detectors:
- spiky: 100 e-/px, read noise 0.01 correlated over 2 px along rows, row offsets +-0.02, and
  2 % of pixels hit by impulsive spikes (+0.3..0.8): a detector whose noise the shipped
  model was never trained on (its noise model is Poisson-Gaussian).
- trained: 100 e-/px, read noise 0.02 over 1 px, row offsets +-0.01: inside the training range.
- rows: 100 e-/px, read noise 0.03 over 8 px, row offsets +-0.12: strong row-correlated
  Gaussian noise, outside the training range but within the noise model's form.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_etdms import Pipeline
from napari_etdms.evaluation.baselines import denoise as classical_denoise
from napari_etdms.runtime import describe, machine_report, use_threads
from napari_etdms.simulation.degradation import poisson_gaussian
from napari_etdms.simulation.ground_truth import load_normalised
from napari_etdms.training.adapt import DEFAULT_MINUTES, AdaptFrame, adapt

ADAPT_FRAME = "vquentin-auriga__examples__ADB1_28.tif"
SCORED = ["nasa-pmm__040617_3_S0410019.tif", "nasa-pmm__050317_3_S0440026.tif",
          "nasa-pmm__111418_4_1426_100Cyc0034.tif", "llnl-list__sample_data__image_c_01.tif",
          "vquentin-auriga__examples__WF69_18.tif", "lungcells-sem__DC__NiO_DC_12000x_C.tif"]
DETECTORS = {
    "spiky": dict(electrons=100, read_sigma=0.01, line_correlation=2.0, row_offset=0.02, spikes=0.02),
    "trained": dict(electrons=100, read_sigma=0.02, line_correlation=1.0, row_offset=0.01, spikes=0.0),
    "rows": dict(electrons=100, read_sigma=0.03, line_correlation=8.0, row_offset=0.12, spikes=0.0),
}
CROP = 512


def record(clean: np.ndarray, detector: dict, rng: np.random.Generator) -> np.ndarray:
    """The frame as this detector records it, as 16-bit counts (what a user's TIFF holds)."""
    spikes = detector["spikes"]
    noisy = poisson_gaussian(clean, rng, **{k: v for k, v in detector.items() if k != "spikes"})
    hit = rng.random(clean.shape) < spikes
    noisy[hit] += rng.uniform(0.3, 0.8, int(hit.sum()))
    return np.clip(noisy * 20000 + 20000, 0, 65535).astype(np.uint16)  # an offset and a gain, as ADCs have


def counts_to_unit(frame: np.ndarray) -> np.ndarray:
    return (frame.astype(np.float64) - 20000) / 20000


def psnr(clean: np.ndarray, restored: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((clean - restored) ** 2)))


def central(image: np.ndarray, size: int) -> np.ndarray:
    y, x = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return image[y : y + size, x : x + size]


def stage1_psnr(pipe: Pipeline, clean: list[np.ndarray], noisy: list[np.ndarray]) -> list[float]:
    return [psnr(c, counts_to_unit(pipe.run(n, super_resolve=False).denoised)) for c, n in zip(clean, noisy)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detectors", default=",".join(DETECTORS))
    parser.add_argument("--frames-dir", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared/data/sem-train")
    parser.add_argument("--threads", type=int, help="default: the cores free now")
    parser.add_argument("-o", "--output", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    threads = use_threads(args.threads)
    adapt_clean = np.clip(load_normalised(args.frames_dir / ADAPT_FRAME), 0, 1)
    scored_clean = [np.clip(central(load_normalised(args.frames_dir / name), CROP), 0, 1) for name in SCORED]
    base = Pipeline.from_pretrained()
    print(machine_report(describe(base.device, base.precision_choice, threads)))
    figures = {}
    for name in args.detectors.split(","):
        detector = DETECTORS[name]
        rng = np.random.default_rng(0)
        adapt_noisy = record(adapt_clean, detector, rng)
        scored_noisy = [record(c, detector, rng) for c in scored_clean]
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            frames = [AdaptFrame.from_image(adapt_noisy, ADAPT_FRAME)]
            outcome = adapt(frames, Path(tmp) / f"adapted-{name}", keep_anyway=True)
            seconds = time.perf_counter() - started
            adapted = Pipeline.from_pretrained(outcome.entry.folder)
            kept = outcome.record["pair_loss_adapted"] < outcome.record["pair_loss_base"]
            base_scores = stage1_psnr(base, scored_clean, scored_noisy)
            adapted_scores = stage1_psnr(adapted, scored_clean, scored_noisy)
        bm3d_scores = [psnr(c, counts_to_unit(classical_denoise("bm3d", n.astype(np.float64))))
                       for c, n in zip(scored_clean, scored_noisy)]
        noisy_scores = [psnr(c, counts_to_unit(n)) for c, n in zip(scored_clean, scored_noisy)]
        row = {"detector": detector, "adapt_seconds": round(seconds, 1), "iterations": outcome.record["iterations"],
               "pair_loss_base": outcome.record["pair_loss_base"],
               "pair_loss_adapted": outcome.record["pair_loss_adapted"], "guard_keeps": kept,
               "psnr": {"noisy": noisy_scores, "bm3d": bm3d_scores, "base": base_scores, "adapted": adapted_scores}}
        figures[name] = row
        mean = {k: float(np.mean(v)) for k, v in row["psnr"].items()}
        effective = mean["adapted"] if kept else mean["base"]
        print(f"{name}: adapt {seconds:.0f} s ({row['iterations']} steps, default budget {DEFAULT_MINUTES:g} min); "
              f"held-out pair loss {row['pair_loss_base']:.5f} -> {row['pair_loss_adapted']:.5f}: "
              f"guard {'keeps' if kept else 'rejects'} the adapted weights", flush=True)
        print(f"  mean PSNR over {len(SCORED)} other frames: noisy {mean['noisy']:.2f}, BM3D {mean['bm3d']:.2f}, "
              f"base {mean['base']:.2f}, adapted {mean['adapted']:.2f} ({mean['adapted'] - mean['base']:+.2f} dB); "
              f"what the user gets {effective:.2f} ({effective - mean['base']:+.2f} dB over base, "
              f"{effective - mean['bm3d']:+.2f} over BM3D)", flush=True)
        print("  per frame adapted - base: " + ", ".join(f"{a - b:+.2f}" for a, b in zip(adapted_scores, base_scores)),
              flush=True)
    print(f"peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    if args.output:
        args.output.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
