"""What a user waits for: one 1024x768 frame through the default pipeline (trained weights,
their preset sampler and steps, consistency, tile 64 / overlap 16, x4 output), on this
machine. Prints wall time per stage and the process's peak memory.

    python benchmarks/bench_default_preset.py [-w WEIGHTS] [--threads 2] [--precisions auto float32 bfloat16]

The frame is the bundled 1024x1024 NASA coating sample cropped to 768 rows (real SEM
content: the denoiser's work does not depend on it, the numbers are for the frame size).
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from napari_etdms import Pipeline
from napari_etdms.io import read_frame
from napari_etdms.runtime import describe, machine_report, use_threads
from napari_etdms.samples import sample_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-w", "--weights", help="registry name or folder (default: the shipped default)")
    parser.add_argument("--threads", type=int, help="default: the cores free now")
    parser.add_argument("--precisions", nargs="+", default=["auto", "float32"],
                        help="run the frame in each (side by side; bfloat16 takes ~20 min where it is emulated)")
    args = parser.parse_args()
    threads = use_threads(args.threads)
    frame = np.asarray(read_frame(sample_path("coating")).data)[:768, :1024]
    for number, precision in enumerate(args.precisions):
        pipe = Pipeline.from_pretrained(args.weights, precision=precision)
        if number == 0:
            print(machine_report(describe(pipe.device, pipe.precision_choice, threads)))
        started = time.perf_counter()
        result = pipe.run(frame)
        total = time.perf_counter() - started
        meta = result.metadata
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"\n{precision} -> {meta['precision']}: weights {meta['weights']['name']} [{meta['weights']['hash']}], "
              f"{meta['sampler']} {meta['steps']} steps, tile {meta['tiling']['tile']}/{meta['tiling']['overlap']}, "
              f"{meta['threads']} threads")
        print(f"frame {frame.shape[1]}x{frame.shape[0]} -> {result.super_resolved.shape[1]}x"
              f"{result.super_resolved.shape[0]}: {total:.1f} s "
              f"({', '.join(f'{k} {v:.1f} s' for k, v in meta['timings'].items())}), "
              f"peak RSS so far {peak_gib:.2f} GiB")


if __name__ == "__main__":
    main()
