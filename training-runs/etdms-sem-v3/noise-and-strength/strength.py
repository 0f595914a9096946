import json, sys
import numpy as np
from pathlib import Path
sys.path.insert(0, "benchmarks")
from volume_flicker import synthetic_volume, degrade as vdegrade, psnr
from napari_etdms.engine.pipeline import Pipeline
from napari_etdms.engine.settings import RunSettings
from napari_etdms.evaluation.protocol import dose_degradation, score
from napari_etdms.evaluation.sweep import _ground_truth
from napari_etdms.simulation.degradation import degrade

pipe = Pipeline.from_pretrained("etdms-sem-v3")
vol = synthetic_volume(1, 1024, 0)
for dose in (None, 3000, 300):
    low = vdegrade(vol, dose, 0)[0]
    out = {s: psnr(vol[0], pipe.run_with(low, RunSettings(strength=s)).super_resolved) for s in (1.0, 0.5, 0.0)}
    bic = psnr(vol[0], pipe.run_with(low, RunSettings(super_resolve=False)).bicubic_input)
    print("synthetic particles", dose, "bicubic", round(bic, 2), {k: round(v, 2) for k, v in out.items()}, flush=True)
split = json.loads(Path("training-runs/etdms-sem-v3/split.json").read_text())
frames = [Path(p["path"]) for p in split["validation"]]
for dose in ("clean", 3000.0, 300.0, 30.0):
    rows = {s: [] for s in (1.0, 0.5, 0.0)}
    for i, path in enumerate(frames):
        hr = _ground_truth(path, 256, 0.015)
        degraded, _, truth = degrade(hr, np.random.default_rng(i), dose_degradation("plain", dose))
        for s in rows:
            rows[s].append(score(truth, pipe.run_with(degraded, RunSettings(seed=i, strength=s)).super_resolved)["psnr"])
    print("validation", dose, {k: round(float(np.mean(v)), 3) for k, v in rows.items()}, flush=True)
