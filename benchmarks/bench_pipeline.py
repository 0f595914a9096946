"""Speed and memory of the ETDMS pipeline on this machine (random weights: speed only).

Prints, for each model size: seconds per CLSR step per 64->256 tile, tiles per second at
the best batch size, seconds for a full 1024x768 frame (stage 1 + stage 2) with DDIM 200 and
DPM-Solver++ 20, peak memory; and the same frame for a naive loop in the style of the
paper's code (one tile at a time, fp32, no channels_last, DDIM 200, no fusion) so the
speed-up is a ratio from one run.

A whole 1024x768 frame at 200 steps takes hours on a CPU, so frame times are built from
measured parts: one full stage-1 pass and one full fused stage-2 step over the whole
frame are timed, and the step is multiplied by the step count (sampler overhead per step
is negligible: the sampler's update is elementwise).

    python benchmarks/bench_pipeline.py [--sizes lite paper] [--frame 1024x768] [--quick]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import torch

from napari_etdms.config import model_config
from napari_etdms.engine.pipeline import Pipeline
from napari_etdms.engine.settings import RunSettings
from napari_etdms.engine.tiling import TileGrid
from napari_etdms.models import build_clsr, build_denoiser
from napari_etdms.runtime import Precision, describe, machine_report, select_device, use_threads


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats: int) -> float:
    fn()  # warm-up (kernel selection, allocator)
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeats


@torch.no_grad()
def clsr_step_seconds(net, device, precision, batch, channels_last, repeats):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(device, memory_format=fmt)
    x = torch.randn(batch, 1, 256, 256, device=device).contiguous(memory_format=fmt)
    c = torch.randn(batch, 1, 64, 64, device=device).contiguous(memory_format=fmt)
    t = torch.full((batch,), 500, device=device)

    def step():
        with Precision(precision, "benchmark").autocast(device):
            net(x, c, t)

    return timed(step, device, repeats)


@torch.no_grad()
def denoiser_tile_seconds(net, device, repeats):
    net = net.to(device, memory_format=torch.contiguous_format)
    x = torch.randn(1, 1, 64, 64, device=device)
    return timed(lambda: net(x), device, repeats)


def frame_parts(pipe: Pipeline, height: int, width: int, tile: int, overlap: int, batch: int):
    """Seconds for one stage-1 pass and one fused stage-2 step over a whole frame: a run of
    stage 1 alone, and the difference between stage-2 runs of two steps and of one."""
    frame = torch.rand(height, width).numpy()

    def seconds(**changes):
        settings = RunSettings(sampler="dpmpp", tile=tile, overlap=overlap, batch_size=batch, **changes)
        timings = pipe.run_with(frame, settings).metadata["timings"]
        return timings.get("denoise_s", 0.0), timings.get("super_resolve_s", 0.0)

    stage1, _ = seconds(super_resolve=False)
    one = seconds(denoise=False, steps=1)[1]
    two = seconds(denoise=False, steps=2)[1]
    grid = TileGrid(height, width, tile, overlap)
    return stage1, two - one, len(grid.origins)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["lite", "paper"])
    parser.add_argument("--frame", default="1024x768", help="low-res frame WIDTHxHEIGHT")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--overlap", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="default: the cores free now")
    args = parser.parse_args(argv)
    width, height = map(int, args.frame.split("x"))
    device = select_device(args.device)
    threads = use_threads(args.threads)
    sized = Pipeline.from_config(args.sizes[0], device=device, precision="auto")
    precision = sized.precision
    allocator = "tcmalloc" if "tcmalloc" in os.environ.get("LD_PRELOAD", "") else "default (glibc)"
    print(machine_report(describe(device, sized.precision_choice, threads)))
    print(f"allocator {allocator}, frame {width}x{height} low-res -> {4 * width}x{4 * height}")

    for size in args.sizes:
        config = model_config(size)
        torch.manual_seed(0)
        denoiser, clsr = build_denoiser(config), build_clsr(config)
        print(f"\n== {size}: CLSR {sum(p.numel() for p in clsr.parameters()) / 1e6:.2f} M params, "
              f"SwinIR {sum(p.numel() for p in denoiser.parameters()) / 1e6:.2f} M params")
        fast = clsr_step_seconds(clsr, device, precision, 1, True, args.repeats)
        naive = clsr_step_seconds(clsr, device, "float32", 1, False, args.repeats)
        print(f"CLSR step per tile, batch 1: {fast:.3f} s ({precision}, channels_last); {naive:.3f} s (fp32, naive)")
        rates = {}
        for batch in (1, 2, 4, 8):
            rates[batch] = batch / clsr_step_seconds(clsr, device, precision, batch, True, max(1, args.repeats - 1))
        best = max(rates, key=rates.get)
        print("tiles per second by batch size: " + ", ".join(f"{b}: {r:.2f}" for b, r in rates.items())
              + f" -> best batch {best}")

        pipe = Pipeline(config, denoiser, clsr, device=device, precision=precision)
        stage1, step, tiles = frame_parts(pipe, height, width, args.tile, args.overlap, best)
        print(f"full frame, {tiles} tiles (tile {args.tile}, overlap {args.overlap}): stage 1 {stage1:.1f} s, "
              f"one fused stage-2 step {step:.1f} s")
        ours = {n: stage1 + n * step for n in (20, 200)}
        print(f"frame time, DPM-Solver++ 20 steps: {ours[20]:.0f} s ({ours[20] / 60:.1f} min)")
        print(f"frame time, DDIM 200 steps:        {ours[200]:.0f} s ({ours[200] / 60:.1f} min)")

        # The paper's code path: one tile at a time in fp32, no overlap fusion, DDIM 200.
        naive_tiles = -(-height // args.tile) * -(-width // args.tile)
        naive_frame = naive_tiles * (200 * naive + denoiser_tile_seconds(denoiser, device, args.repeats))
        print(f"naive paper-style loop: {naive_tiles} tiles x 200 steps x {naive:.3f} s = {naive_frame:.0f} s "
              f"({naive_frame / 3600:.2f} h)")
        print(f"speed-up vs naive: {naive_frame / ours[200]:.2f}x at DDIM 200, {naive_frame / ours[20]:.1f}x with "
              f"DPM-Solver++ 20")
        print(f"peak memory so far: {peak_memory_mib(device):.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
