"""Tile seams on a real frame, where users see them: the flat dark cavity of a Zeiss InLens
frame with the contrast stretched.

Prints how closely stage 1 with tile 64 and with tile 96 agree (PSNR over the frame's 0-255
range, on the cavity and on the whole frame), and for the x4 output at tile 64 the ratio of
the mean second difference across tile borders to that elsewhere (about 1: no seam), and
writes `seams.png`: the cavity denoised (tile 64, tile 96) and x4, each stretched to the
1st-99th percentiles of the cavity below its bright rim.

    python benchmarks/seam_check.py [-w WEIGHTS] [-o seams.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tifffile

from napari_etdms import Pipeline
from napari_etdms.engine.tiling import TileGrid
from napari_etdms.evaluation.metrics import psnr
from napari_etdms.runtime import describe, machine_report

FRAME = Path(__file__).resolve().parents[1] / "tests" / "data" / "zeiss_auriga_inlens_UB19_14_databar.tif"
IMAGE_ROWS = 676  # above the painted databar
CAVITY = (slice(420, 640), slice(250, 750))


def border_ratio(image: np.ndarray, borders: list[int]) -> float:
    """Mean |second difference| across the columns at `borders` over that of all columns."""
    d2 = np.abs(np.diff(image, n=2, axis=1)).mean(axis=0)
    near = [d2[max(b - 2, 0) : b + 1].mean() for b in borders if 2 <= b < len(d2)]
    return float(np.mean(near) / np.median(d2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-w", "--weights")
    parser.add_argument("-o", "--output", type=Path, default=Path("seams.png"))
    args = parser.parse_args()
    frame = tifffile.imread(FRAME)[:IMAGE_ROWS]
    pipe = Pipeline.from_pretrained(args.weights)
    print(machine_report(describe(pipe.device, pipe.precision_choice)))
    denoised = {t: pipe.run(frame, super_resolve=False, tile=t, overlap=16).denoised for t in (64, 96)}
    print(f"stage 1, tile 64 vs 96: cavity {psnr(denoised[64][CAVITY], denoised[96][CAVITY], 255):.1f} dB, "
          f"frame {psnr(denoised[64], denoised[96], 255):.1f} dB")
    region = frame[CAVITY[0].start - 20 : CAVITY[0].stop + 20, CAVITY[1].start - 20 : CAVITY[1].stop + 20]
    x4 = pipe.run(region, tile=64, overlap=16).super_resolved
    grid = TileGrid(-(-region.shape[0] // 4) * 4, -(-region.shape[1] // 4) * 4, 64, 16)
    starts = sorted({x for _, x in grid.origins if x > 0})
    borders = sorted({4 * x for x in starts} | {4 * (x + 64) for x in starts if 4 * (x + 64) < x4.shape[1]})
    print(f"x4, tile 64: second difference across tile borders / elsewhere = {border_ratio(x4, borders):.2f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("stage 1, tile 64", denoised[64][CAVITY]), ("stage 1, tile 96", denoised[96][CAVITY]),
              ("ETDMS x4, tile 64", x4[80:-80, 80:-80])]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 4.4 * len(panels)))
    for ax, (title, image) in zip(axes, panels):
        lo, hi = np.percentile(image[image.shape[0] // 3 :], (1, 99))  # the cavity, not its bright rim
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(f"{title} (contrast stretched to the cavity)", fontsize=10)
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(args.output, dpi=90)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
