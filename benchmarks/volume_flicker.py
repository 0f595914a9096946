"""Z-flicker of the x4 output on synthetic volumes whose structure changes smoothly along z.

Each slice of a clean 3D structure (a smoothed random field through a soft threshold: particles
with sharp edges and some texture) is 4x area-sampled and gets its own Poisson noise, as a
FIB-SEM slice would; every slice is then restored on its own, as `etdms infer` does a volume.
Flicker is the mean squared difference between neighbouring slices of an x4 output, over that
of the bicubic x4 of the noisy slices (1.0: as much slice-to-slice change as bicubic, which has
no generated detail; issue 28's bar is 1.2); the truth's own ratio shows how much of the change
is real structure, which a sharper output restores: so the same ratio is also given for the
error (output - truth), the slice-to-slice change that no structure explains. v2's diffusion
stage 2 is run with the seed of `etdms infer` volumes (the same in every slice) and, for
comparison, with a new seed per slice; the default with each slice's noise estimated with its
neighbours (as `etdms infer` does) and from the slice alone.

    python benchmarks/volume_flicker.py --out benchmarks/results/volume-flicker
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_etdms.engine import Pipeline, RunSettings
from napari_etdms.engine.volume import volume_slice_noise
from napari_etdms.evaluation.baselines import upsample


def synthetic_volume(slices: int, side: int, seed: int) -> np.ndarray:
    """(slices, side, side) on [0, 1]: structure smooth along z (sigma 6 slices), sharp edges in x/y."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal((slices + 24, side, side)), sigma=(6, 4, 4))[12:-12]
    field /= field.std()
    # texture at the low-res pixel scale and above: finer, it reads as noise in a single slice (and the
    # noise estimate, then stage 2, take it for noise; see the model card's limits)
    texture = ndimage.gaussian_filter(rng.standard_normal(field.shape), sigma=(3, 4, 4))
    particles = 1 / (1 + np.exp(-6 * (field - 0.3)))  # soft threshold: edges a few pixels wide
    return np.clip(0.15 + 0.65 * particles + 0.04 * texture / texture.std(), 0.0, 1.0)


def degrade(clean: np.ndarray, dose: float | None, seed: int) -> np.ndarray:
    """4x area sampling and, with a dose (electrons per pixel at white), Poisson noise per slice."""
    z, h, w = clean.shape
    low = clean.reshape(z, h // 4, 4, w // 4, 4).mean(axis=(2, 4))
    if dose is None:
        return low.astype(np.float32)
    rng = np.random.default_rng(seed)
    return (rng.poisson(low * dose) / dose).astype(np.float32)


def psnr(truth: np.ndarray, volume: np.ndarray) -> float:
    """On the truth's [0, 1] scale, no matching (the outputs are in the input's units)."""
    mse = float(np.mean((volume.astype(np.float64) - truth) ** 2))
    return 10 * np.log10(1 / mse) if mse > 0 else float("inf")


def flicker(volume: np.ndarray) -> float:
    return float(np.mean(np.diff(volume.astype(np.float64), axis=0) ** 2))


def restore(pipeline: Pipeline, low: np.ndarray, seeds: list[int], across_slices: bool = True
            ) -> tuple[np.ndarray, float]:
    """Each slice as `etdms infer` runs a volume: its noise estimated with its neighbours
    (`across_slices`), or from the slice alone as for a single frame."""
    started = time.perf_counter()
    out = []
    for z, seed in enumerate(seeds):
        noise = volume_slice_noise(low.__getitem__, z, len(low))[0] if across_slices else None
        out.append(pipeline.run_with(low[z], RunSettings(seed=seed), noise=noise).super_resolved)
    return np.stack(out), time.perf_counter() - started


def xz_figure(path: Path, panels: dict[str, np.ndarray], row: int) -> None:
    """An x-z section of each volume (z stretched to the x4 pixel size), one above the other."""
    from PIL import Image, ImageDraw

    strips = []
    for name, volume in panels.items():
        section = volume[:, row, :]
        section = np.repeat(section, 4, axis=0)
        low, high = np.percentile(panels["truth"][:, row, :], (0.5, 99.5))
        grey = (np.clip((section - low) / (high - low), 0, 1) * 255).astype(np.uint8)
        label = Image.new("L", (grey.shape[1], 14), 255)
        ImageDraw.Draw(label).text((2, 1), name, fill=0)
        strips += [np.asarray(label), grey, np.full((4, grey.shape[1]), 255, np.uint8)]
    Image.fromarray(np.concatenate(strips)).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--slices", type=int, default=24)
    parser.add_argument("--side", type=int, default=256, help="high-res side (px)")
    parser.add_argument("--doses", default="30,300,clean")
    parser.add_argument("--diffusion", default="etdms-sem-v2", help="diffusion weights compared (or 'none')")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    truth = synthetic_volume(args.slices, args.side, seed=0)
    models = {"default": Pipeline.from_pretrained(device="cpu")}
    if args.diffusion != "none":
        models["diffusion"] = Pipeline.from_pretrained(args.diffusion, device="cpu")
    same = [0] * args.slices
    results = {"slices": args.slices, "side": args.side, "truth_flicker_over_bicubic": {}, "doses": {}}
    for dose_text in args.doses.split(","):
        dose = None if dose_text == "clean" else float(dose_text)
        low = degrade(truth, dose, seed=1)
        bicubic = np.stack([upsample(s) for s in low])
        reference = flicker(bicubic)
        runs = {"truth": (truth, 0.0), "bicubic x4": (bicubic, 0.0)}
        default = models["default"].weights_provenance["name"]
        runs[f"{default} (default)"] = restore(models["default"], low, same)
        runs[f"{default}, noise from each slice alone"] = restore(models["default"], low, same, across_slices=False)
        if "diffusion" in models:
            name = models["diffusion"].weights_provenance["name"]
            runs[f"{name}, one seed (etdms infer)"] = restore(models["diffusion"], low, same)
            runs[f"{name}, a seed per slice"] = restore(models["diffusion"], low, list(range(args.slices)))
        error_reference = flicker(bicubic - truth)
        rows = {label: {"flicker_over_bicubic": round(flicker(v) / reference, 3),
                        "error_flicker_over_bicubic": round(flicker(v - truth) / error_reference, 3),
                        "psnr_db": round(psnr(truth, v), 2),
                        "seconds": round(seconds, 1)} for label, (v, seconds) in runs.items()}
        results["doses"][dose_text] = rows
        xz_figure(args.out / f"xz-{dose_text}.png", {"truth" if k == "truth" else k: v for k, (v, _) in runs.items()},
                  row=args.side // 2)
        print(f"dose {dose_text}: " + "; ".join(
            f"{k} {r['flicker_over_bicubic']}x, error {r['error_flicker_over_bicubic']}x ({r['psnr_db']} dB)"
            for k, r in rows.items()), flush=True)
    (args.out / "flicker.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
