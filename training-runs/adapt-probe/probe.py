"""Probe for issue 17 (not part of the package): does row-pair Neighbor2Neighbor fine-tuning of the shipped stage 1 help on a detector it was not trained on?"""
import copy
import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from napari_etdms.evaluation.metrics import psnr

from napari_etdms import Pipeline
from napari_etdms.simulation.degradation import poisson_gaussian
from napari_etdms.simulation.ground_truth import load_normalised
from napari_etdms.stage1.denoise import apply_denoiser
from napari_etdms.stage1.intensity import SIGNAL_SMOOTHING, IntensityMap
from napari_etdms.stage1.noise import frame_noise

torch.set_num_threads(2)
split = json.load(open("/work/main/training-runs/etdms-sem-v2/split.json"))
paths = [r["path"] for r in split["validation"]]
rng = np.random.default_rng(0)
import os

DET = dict(electrons=float(sys.argv[1]) if len(sys.argv) > 1 else 30, read_sigma=float(os.environ.get("READ", 0.05)), line_correlation=float(os.environ.get("CORR", 4.0)), row_offset=float(os.environ.get("ROWS", 0.04)))
ITS = int(sys.argv[2]) if len(sys.argv) > 2 else 200
GAMMA = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
LR = float(sys.argv[4]) if len(sys.argv) > 4 else 5e-5

def clean_frame(p):
    img = load_normalised(p)
    # the stage-1 grid: 4x area down-sampled (as an undersampled frame is recorded)
    h, w = img.shape[0] // 4 * 4, img.shape[1] // 4 * 4
    img = img[:h, :w].reshape(h // 4, 4, w // 4, 4).mean((1, 3))
    return np.clip(img, 0, 1)[:256, :256]

cleans = [clean_frame(p) for p in paths[:10]]
cleans = [c for c in cleans if min(c.shape) >= 128]
noisy = [poisson_gaussian(c, rng, **DET).astype(np.float32) for c in cleans]
SPIKES = float(os.environ.get("SPIKES", 0))
for n in noisy:  # detector spikes: a fraction of pixels jump by a random large amount
    hit = rng.random(n.shape) < SPIKES
    n[hit] += rng.uniform(0.3, 0.8, hit.sum()).astype(np.float32)
adapt_idx, test_idx = list(range(0, len(cleans), 2)), list(range(1, len(cleans), 2))
pipe = Pipeline.from_pretrained()

def score(model):
    out = []
    for i in test_idx:
        pipe.denoiser = model
        r = pipe.run(noisy[i], super_resolve=False)
        out.append(psnr(torch.from_numpy(cleans[i]), torch.from_numpy(np.clip(r.denoised, -0.2, 1.2)), data_range=1.0) if False else
                   10*np.log10(1/np.mean((cleans[i]-r.denoised)**2)))
    return float(np.mean(out))

base = pipe.denoiser
t0=time.time(); print("base", score(base), "noisy", np.mean([10*np.log10(1/np.mean((cleans[i]-noisy[i])**2)) for i in test_idx]), time.time()-t0, flush=True)
try:
    import bm3d
    from skimage.restoration import estimate_sigma
    b=[]
    for i in test_idx:
        s = estimate_sigma(noisy[i]); d = bm3d.bm3d(noisy[i], s)
        b.append(10*np.log10(1/np.mean((cleans[i]-d)**2)))
    print("bm3d", np.mean(b), flush=True)
except Exception as e: print(e)

# training data: normalised frames + their noise models, as the pipeline sees them
prepared = []
for i in adapt_idx:
    m = IntensityMap.fit(noisy[i], smoothing=SIGNAL_SMOOTHING)
    nm = frame_noise(noisy[i])[0].rescaled(m.low, m.high)
    prepared.append((torch.from_numpy(m.forward(noisy[i])), nm.gain, nm.offset))

def pairs(y, g):
    """(B,1,H,W) -> two (B,1,H/2,W/2) sub-images whose pixels come from different rows of each 2x2 cell."""
    b, _, h, w = y.shape
    cells = y.reshape(b, 1, h // 2, 2, w // 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(b, 1, h // 2, w // 2, 4)
    top = torch.randint(0, 2, (b, 1, h // 2, w // 2), generator=g)
    c1 = torch.randint(0, 2, top.shape, generator=g); c2 = torch.randint(0, 2, top.shape, generator=g)
    i1 = top * 2 + c1; i2 = (1 - top) * 2 + c2
    pick = lambda x, i: x.reshape(b, 1, h // 2, 2, w // 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(b, 1, h // 2, w // 2, 4).gather(-1, i[..., None])[..., 0]
    return pick(y, i1), pick(y, i2), lambda x: (pick(x, i1), pick(x, i2))

model = copy.deepcopy(base).train().requires_grad_(True)
ema = copy.deepcopy(model).eval()
opt = torch.optim.Adam(model.parameters(), lr=LR)
g = torch.Generator().manual_seed(0)
crop, B = 128, 8
t0 = time.time()
for it in range(1, ITS + 1):
    ys, gains, offs = [], [], []
    for _ in range(B):
        x, ga, of = prepared[int(rng.integers(len(prepared)))]
        h, w = x.shape
        yy, xx = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
        c = x[yy:yy+crop, xx:xx+crop]
        if rng.random() < 0.5: c = c.flip(1)  # horizontal flip only: rows stay rows
        ys.append(c[None]); gains.append(ga); offs.append(of)
    y = torch.stack(ys)
    gain = torch.tensor(gains, dtype=torch.float64).view(-1, 1, 1, 1); off = torch.tensor(offs, dtype=torch.float64).view(-1, 1, 1, 1)
    g1, g2, sub = pairs(y, g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = apply_denoiser(model, g1, gain, off).float()
        loss = F.mse_loss(out, g2)
        if GAMMA > 0:
            with torch.no_grad():
                full = apply_denoiser(model, y, gain, off).float()
            f1, f2 = sub(full)
            loss = loss + GAMMA * F.mse_loss(out - g2, f1 - f2)
    opt.zero_grad(); loss.backward(); opt.step()
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()): pe.lerp_(pm, 1 - min(0.99, (1+it)/(10+it)))
    if it % 50 == 0:
        print(it, f"{loss.item():.5f}", f"{(time.time()-t0)/it:.2f} s/it", "ema", score(ema.eval()), flush=True)
