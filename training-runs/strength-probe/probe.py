"""Stage 1's strength control at ~30 e-/px (issue 25, item 3): what "strength > 1" does today
(the denoiser is told s times the estimated noise level) against re-noising the stabilised
input up to the level it is told, averaged over K draws (plain or antithetic pairs +n / -n).

    python training-runs/strength-probe/probe.py told|renoise|antithetic [K] [--every 2]

Frames: the v2 split's validation frames (every `--every`-th), central 256 px crops, [0, 1]
clean; Poisson noise at 30 e-/px plus Gaussian read noise 0.01; stage 1 alone (shipped
weights). Scores: PSNR after an affine intensity fit, and the roughness on flat regions
(|grad| of the clean crop < 0.01 at sigma 1.5): std of the output minus its 3x3 median.
A throwaway measurement, not part of the package.
"""

import argparse

import numpy as np
import torch
from napari_etdms.evaluation.metrics import psnr
from scipy import ndimage

import napari_etdms.stage1.denoise as denoise
from napari_etdms import Pipeline
from napari_etdms.simulation.ground_truth import load_normalised, validation_frames

SPLIT = "training-runs/etdms-sem-v2/split.json"
told_only = denoise.NoiseAwareInput.__init__
draw = {"index": 0, "antithetic": False}


def renoised(self, x, gain, offset, strength=1.0):
    """The stabilised input with extra Gaussian noise, so its noise is the level it is told."""
    told_only(self, x, gain, offset, strength)
    if strength > 1:
        index, sign = (draw["index"] // 2, (-1) ** draw["index"]) if draw["antithetic"] else (draw["index"], 1)
        noise = torch.randn(self.stabilised.shape, generator=torch.Generator().manual_seed(index))
        self.stabilised = self.stabilised + sign * self.stabiliser.sigma.float() * np.sqrt(strength**2 - 1) * noise


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["told", "renoise", "antithetic"])
    parser.add_argument("draws", nargs="?", type=int, default=1)
    parser.add_argument("--every", type=int, default=2)
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.5, 1, 2, 3, 4])
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.mode != "told":
        denoise.NoiseAwareInput.__init__ = renoised
        draw["antithetic"] = args.mode == "antithetic"
    pipe = Pipeline.from_pretrained()
    rng = np.random.default_rng(0)
    rows = {}
    for path in validation_frames(SPLIT)[:: args.every]:
        clean = np.clip(load_normalised(path), 0, 1)
        h, w = clean.shape
        crop = clean[h // 2 - 128 : h // 2 + 128, w // 2 - 128 : w // 2 + 128].astype(np.float64)
        noisy = (rng.poisson(crop * 30) / 30 + rng.normal(0, 0.01, crop.shape)).astype(np.float32)
        flat = ndimage.gaussian_gradient_magnitude(crop, 1.5) < 0.01
        for strength in args.strengths:
            outputs = []
            for index in range(args.draws if strength > 1 else 1):
                draw["index"] = index
                outputs.append(pipe.run(noisy, super_resolve=False, strength=strength).denoised.astype(np.float64))
            out = np.mean(outputs, axis=0)
            a, b = np.polyfit(out.ravel(), crop.ravel(), 1)
            rough = np.std((out - ndimage.median_filter(out, 3))[flat]) if flat.any() else np.nan
            rows.setdefault(strength, []).append((psnr(crop, np.clip(a * out + b, 0, 1), 1.0), rough))
    for strength, values in rows.items():
        values = np.array(values)
        print(f"{args.mode} K={args.draws} strength {strength:g}: PSNR {values[:, 0].mean():.2f} dB, "
              f"flat roughness {np.nanmean(values[:, 1]):.4f}")


if __name__ == "__main__":
    main()
