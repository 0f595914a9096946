"""Peak memory and time of `etdms infer --output-format zarr` on a frame whose x4 output
does not fit the budget in memory (default 4096 x 4096 -> 16384 x 16384: one float32 x4
array alone is 1 GiB, and an in-memory run holds six of them).

The input is a real SEM frame (the bundled superalloy sample, 1024 px) mirrored out to the
requested size, written as a TIFF with a pixel size. The run is `etdms infer` in a child
process, with the shipped weights and stage 2 on (a short sampler: memory does not depend
on the step count, time grows with it); its peak resident memory is the child's ru_maxrss.
The child's first line names the processor, the precision chosen and why, and the threads.
It then checks the output as napari's reader opens it: the levels, their scale, and the
x4 output's block means against the denoised frame.

    python benchmarks/bench_zarr.py [--size 4096] [--steps 1] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_etdms.io import read_frame, write_tiff
from napari_etdms.samples import sample_path

PIXEL_NM = 5.0


def mirrored(frame: np.ndarray, size: int) -> np.ndarray:
    reps = -(-size // min(frame.shape)) + 1
    tiled = np.tile(np.concatenate([frame, frame[::-1]], axis=0), (reps, 1))
    tiled = np.tile(np.concatenate([tiled, tiled[:, ::-1]], axis=1), (1, reps))
    return np.ascontiguousarray(tiled[:size, :size])


def run(size: int, steps: int, folder: Path) -> dict:
    source = folder / f"sem_{size}.tif"
    frame = read_frame(sample_path("superalloy")).data
    write_tiff(source, mirrored(frame, size), PIXEL_NM, {"note": "mirrored bundled sample"})
    out = folder / "out"
    command = [sys.executable, "-m", "napari_etdms.cli", "infer", str(source), "-o", str(out), "--output-format",
               "zarr", "--sampler", "dpmpp", "--steps", str(steps), "--overwrite"]
    started = time.perf_counter()
    child = subprocess.Popen(command)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"etdms infer failed ({os.waitstatus_to_exitcode(status)})")
    peak_gib = usage.ru_maxrss / 2**20  # kB on Linux

    from napari_etdms.plugin.reader import napari_get_reader

    x4 = out / f"sem_{size}_etdms_x4.ome.zarr"
    [(levels, kwargs, _)] = napari_get_reader(str(x4))(str(x4))
    denoised = read_frame(out / f"sem_{size}_denoised.ome.zarr").data
    band = np.asarray(levels[0][:1024])  # the first 256 low-res rows
    means = band.reshape(256, 4, -1, 4).mean(axis=(1, 3))
    consistency = float(np.abs(means - denoised[:256]).max() / np.ptp(denoised))
    return {
        "input": f"{size} x {size}", "output": f"{4 * size} x {4 * size}", "sampler": "dpmpp", "steps": steps,
        "peak_rss_gib": round(peak_gib, 3), "x4_float32_array_gib": round((4 * size) ** 2 * 4 / 2**30, 3),
        "seconds": round(seconds, 1), "levels": [list(level.shape) for level in levels],
        "scale_nm": list(kwargs["scale"]), "multiscale": kwargs["multiscale"],
        "max_block_mean_error_of_range": consistency,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        figures = run(args.size, args.steps, args.keep)
    else:
        with tempfile.TemporaryDirectory() as folder:
            figures = run(args.size, args.steps, Path(folder))
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
