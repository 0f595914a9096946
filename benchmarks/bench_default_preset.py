"""What a user waits for: one 1024x768 frame through the default pipeline (trained weights,
their preset sampler and steps, consistency, tile 64 / overlap 16, x4 output), on this
machine. Prints wall time per stage and the process's peak memory.

    python benchmarks/bench_default_preset.py [-w WEIGHTS ...] [--threads 2] [--precisions auto float32 bfloat16]

With several weights (e.g. `-w etdms-sem-v2 etdms-sem-v3`), each runs the same frame in the
same process and precision, and the last lines give each one's speed-up over the first.

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
    parser.add_argument("-w", "--weights", nargs="+", default=[None],
                        help="registry names or folders (default: the shipped default)")
    parser.add_argument("--threads", type=int, help="default: the cores free now")
    parser.add_argument("--precisions", nargs="+", default=["auto", "float32"],
                        help="run the frame in each (side by side; bfloat16 takes ~20 min where it is emulated)")
    args = parser.parse_args()
    threads = use_threads(args.threads)
    frame = np.asarray(read_frame(sample_path("coating")).data)[:768, :1024]
    times: dict[str, list[tuple[str, float, float]]] = {}
    for precision in args.precisions:
        for weights in args.weights:
            pipe = Pipeline.from_pretrained(weights, precision=precision)
            if not times:
                print(machine_report(describe(pipe.device, pipe.precision_choice, threads)))
            started = time.perf_counter()
            result = pipe.run(frame)
            total = time.perf_counter() - started
            meta = result.metadata
            peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            stage2 = "one evaluation per tile" if meta["stage2"] == "regression" else \
                f"{meta['sampler']} {meta['steps']} steps"
            print(f"\n{precision} -> {meta['precision']}: weights {meta['weights']['name']} "
                  f"[{meta['weights']['hash']}], {stage2}, tile {meta['tiling']['tile']}/"
                  f"{meta['tiling']['overlap']}, {meta['threads']} threads")
            print(f"frame {frame.shape[1]}x{frame.shape[0]} -> {result.super_resolved.shape[1]}x"
                  f"{result.super_resolved.shape[0]}: {total:.1f} s "
                  f"({', '.join(f'{k} {v:.1f} s' for k, v in meta['timings'].items())}), "
                  f"peak RSS so far {peak_gib:.2f} GiB")
            times.setdefault(meta["precision"], []).append(
                (meta["weights"]["name"], total, meta["timings"]["super_resolve_s"]))
    for precision, runs in times.items():
        first, first_total, first_stage2 = runs[0]
        for name, total, stage2 in runs[1:]:
            print(f"{precision}: {name} is {first_total / total:.2f}x as fast as {first} in all, "
                  f"{first_stage2 / stage2:.2f}x in stage 2")


if __name__ == "__main__":
    main()
