"""Throughput of `etdms infer` on a volume: slices per minute serially and on 1 and 2 local dask
workers, and the peak memory of each process that computes slices.

The volume is a 3D OME-Zarr of noisy synthetic slices (`volume_flicker.synthetic_volume`, 4x
area-sampled, Poisson noise at 300 e-/px) written once into `--work`. Each run writes into its own
output folder; memory is the largest resident set of any one computing process (the CLI process
for the serial run, each worker otherwise), sampled every 0.2 s.

    python benchmarks/bench_volume.py --slices 200 --side 1024    # issue 28's volume (hours on 2 cores)
    python benchmarks/bench_volume.py --slices 6 --side 512       # a quick look
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from volume_flicker import degrade, synthetic_volume  # noqa: E402

from napari_etdms.io import VolumeStore  # noqa: E402
from napari_etdms.runtime import processor_name  # noqa: E402


def write_volume(path: Path, slices: int, side: int) -> None:
    store = VolumeStore(path)
    store.create((slices, side, side), pixel_size_nm=5.0, z_spacing_nm=10.0, record={"layer": "input"})
    for first in range(0, slices, 8):  # the clean structure made in blocks: memory stays small
        block = synthetic_volume(min(8, slices - first), 4 * side, seed=first)
        for z, image in enumerate(degrade(block, 300.0, seed=first)):
            store.write_slice(first + z, image)


def timed_run(command: list[str]) -> tuple[float, float, int]:
    """(seconds, largest resident set of one process in GiB, exit code) of `command`."""
    started = time.monotonic()
    process = subprocess.Popen(command)
    parent, peak = psutil.Process(process.pid), {}
    while process.poll() is None:
        try:
            for proc in [parent, *parent.children(recursive=True)]:
                peak[proc.pid] = max(peak.get(proc.pid, 0), proc.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.2)
    return time.monotonic() - started, max(peak.values(), default=0) / 2**30, process.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--side", type=int, default=1024, help="low-res slice side (px)")
    parser.add_argument("--work", type=Path, default=Path("bench-volume"))
    parser.add_argument("--runs", default="serial,1,2", help="serial and/or worker counts")
    parser.add_argument("--out", type=Path, help="also write the figures here (JSON)")
    args = parser.parse_args()
    source = args.work / "volume.ome.zarr"
    if not source.exists():
        write_volume(source, args.slices, args.side)
    figures = {"processor": processor_name(), "python": platform.python_version(), "slices": args.slices,
               "side": args.side, "runs": {}}
    for run in args.runs.split(","):
        out = args.work / f"out-{run}"
        command = [sys.executable, "-m", "napari_etdms.cli", "infer", str(source), "-o", str(out), "--overwrite"]
        command += ["--threads", "2"] if run == "serial" else ["--workers", run]
        seconds, peak_gib, code = timed_run(command)
        per_minute = args.slices / seconds * 60
        figures["runs"][run] = {"seconds": round(seconds, 1), "slices_per_minute": round(per_minute, 2),
                                "peak_process_gib": round(peak_gib, 2), "exit_code": code}
        print(f"{run}: {seconds:.1f} s, {per_minute:.2f} slices/min, peak {peak_gib:.2f} GiB per process", flush=True)
    if args.out:
        args.out.write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures, indent=1))
    sys.exit(0 if all(r["exit_code"] == 0 for r in figures["runs"].values()) else 1)


if __name__ == "__main__":
    main()
