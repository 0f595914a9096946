"""What a user waits for: one 1024x768 frame through the default pipeline (trained weights,
their preset sampler and steps, consistency, tile 64 / overlap 16, x4 output), on this
machine. Prints wall time per stage and the process's peak memory.

    python benchmarks/bench_default_preset.py [-w WEIGHTS] [--threads 2]

The frame is the bundled 1024x1024 NASA coating sample cropped to 768 rows (real SEM
content: the denoiser's work does not depend on it, the numbers are for the frame size).
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from napari_etdms import Pipeline
from napari_etdms.io import read_frame
from napari_etdms.samples import sample_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-w", "--weights", help="registry name or folder (default: the shipped default)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    frame = np.asarray(read_frame(sample_path("coating")).data)[:768, :1024]
    pipe = Pipeline.from_pretrained(args.weights)
    started = time.perf_counter()
    result = pipe.run(frame)
    total = time.perf_counter() - started
    meta = result.metadata
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"weights {meta['weights']['name']} [{meta['weights']['hash']}], {meta['sampler']} {meta['steps']} steps, "
          f"tile {meta['tiling']['tile']}/{meta['tiling']['overlap']}, {args.threads} threads, "
          f"{meta['device']} {meta['precision']}")
    print(f"frame {frame.shape[1]}x{frame.shape[0]} -> {result.super_resolved.shape[1]}x"
          f"{result.super_resolved.shape[0]}: {total:.1f} s "
          f"({', '.join(f'{k} {v:.1f} s' for k, v in meta['timings'].items())}), peak RSS {peak_gib:.2f} GiB")


if __name__ == "__main__":
    main()
