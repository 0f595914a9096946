import numpy as np, sys, time
from scipy import ndimage
from napari_etdms import Pipeline
from napari_etdms.frames import load_normalised
import json
split = json.load(open(__import__("pathlib").Path(__file__).parents[1] / "etdms-sem-v2" / "split.json"))
pipe = Pipeline.from_pretrained("etdms-sem-v2")
rng = np.random.default_rng(0)
frames = []
for row in split["validation"][:6]:
    f = load_normalised(row["path"]) if "path" in row else None
    h, w = f.shape; c = f[h//2-128:h//2+128, w//2-128:w//2+128]
    frames.append(c)
def rough(x, flat):
    return float(np.std((x - ndimage.median_filter(x, 3))[flat]))
for s in [0, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4]:
    ps, rs, rt = [], [], []
    for i, c in enumerate(frames):
        r = np.random.default_rng(i)
        z = r.poisson(np.clip(c,0,1)*30)/30 + r.normal(0,0.01,c.shape)
        t0=time.time(); out = pipe.run(z.astype(np.float32), super_resolve=False, strength=s).denoised
        sm = ndimage.gaussian_filter(c, 2); grad = ndimage.gaussian_gradient_magnitude(c, 2)
        flat = grad < np.quantile(grad, 0.3)
        ps.append(10*np.log10(1/np.mean((out-c)**2))); rs.append(rough(out, flat)); rt.append(rough(out, ~flat))
    print(f"strength {s}: PSNR {np.mean(ps):.2f} flat roughness {np.mean(rs):.4f} textured roughness {np.mean(rt):.4f}", flush=True)
