"""Stage 1's strength from 0 to 4 with total variation above 1: PSNR and roughness (README)."""

import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_etdms import Pipeline
from napari_etdms.simulation.ground_truth import load_normalised

STRENGTHS = (0, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4)
split = json.loads((Path(__file__).parents[1] / "etdms-sem-v2" / "split.json").read_text())
pipe = Pipeline.from_pretrained("etdms-sem-v2")
crops = []
for row in split["validation"][:6]:
    frame = load_normalised(row["path"])
    h, w = frame.shape
    crops.append(frame[h // 2 - 128 : h // 2 + 128, w // 2 - 128 : w // 2 + 128])


def roughness(x, where):
    return float(np.std((x - ndimage.median_filter(x, 3))[where]))


for strength in STRENGTHS:
    psnrs, flat_roughness, textured_roughness = [], [], []
    for i, clean in enumerate(crops):
        rng = np.random.default_rng(i)
        noisy = rng.poisson(np.clip(clean, 0, 1) * 30) / 30 + rng.normal(0, 0.01, clean.shape)
        out = pipe.run(noisy.astype(np.float32), super_resolve=False, strength=strength).denoised
        gradient = ndimage.gaussian_gradient_magnitude(clean, 2)
        flat = gradient < np.quantile(gradient, 0.3)
        psnrs.append(10 * np.log10(1 / np.mean((out - clean) ** 2)))
        flat_roughness.append(roughness(out, flat))
        textured_roughness.append(roughness(out, ~flat))
    print(f"strength {strength}: PSNR {np.mean(psnrs):.2f} flat roughness {np.mean(flat_roughness):.4f} "
          f"textured roughness {np.mean(textured_roughness):.4f}", flush=True)
