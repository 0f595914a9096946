"""How much does the noise estimate cost? Validation frames, plain degradation: ETDMS x4 told
the estimated noise vs the true one vs (for clean) none."""
import json, sys
import numpy as np
from pathlib import Path
from napari_etdms.engine.pipeline import Pipeline
from napari_etdms.engine.settings import RunSettings
from napari_etdms.evaluation.protocol import dose_degradation, read_sigma_for_dose, score
from napari_etdms.evaluation.sweep import _ground_truth
from napari_etdms.simulation.degradation import degrade
from napari_etdms.stage1.noise import NoiseModel
from napari_etdms.stage1.intensity import IntensityMap

split = json.loads(Path("training-runs/etdms-sem-v3/split.json").read_text())
frames = [Path(p["path"]) for p in split["validation"]]
pipe = Pipeline.from_pretrained(sys.argv[1] if len(sys.argv) > 1 else "etdms-sem-v3")
doses = [float(d) if d != "clean" else "clean" for d in (sys.argv[2] if len(sys.argv) > 2 else "100,1000,3000,clean").split(",")]
for dose in doses:
    rows = {"bicubic": [], "estimated": [], "true": [], "s1_est": [], "s1_true": []}
    ratio = []
    for i, path in enumerate(frames):
        hr = _ground_truth(path, 256, 0.015)
        degraded, clean_lr, truth = degrade(hr, np.random.default_rng(i), dose_degradation("plain", dose))
        true = NoiseModel(0.0, 1e-10) if dose == "clean" else NoiseModel(1.0 / dose, read_sigma_for_dose(dose) ** 2)
        est = pipe.run_with(degraded, RunSettings(seed=i))
        told = pipe.run_with(degraded, RunSettings(seed=i), noise=true)
        m = IntensityMap.fit(degraded, 2.0)
        mid = (m.low + m.high) / 2
        ratio.append(est.noise.std_at(mid) / max(true.std_at(mid), 1e-12))
        rows["bicubic"].append(score(truth, est.bicubic_input)["psnr"])
        rows["estimated"].append(score(truth, est.super_resolved)["psnr"])
        rows["true"].append(score(truth, told.super_resolved)["psnr"])
        rows["s1_est"].append(score(truth, est.bicubic_denoised)["psnr"])
        rows["s1_true"].append(score(truth, told.bicubic_denoised)["psnr"])
    print(dose, {k: round(float(np.mean(v)), 3) for k, v in rows.items()},
          "estimated/true std at mid-grey: median", round(float(np.median(ratio)), 2), "range",
          round(float(np.min(ratio)), 2), round(float(np.max(ratio)), 2), flush=True)
