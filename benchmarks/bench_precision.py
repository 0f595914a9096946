"""Precision, memory layout and threads on this machine: what the automatic choice rests on.

Prints the processor facts (model, torch's kernels, native bfloat16 or not, the precision
`auto` picks and why, threads), then:

- networks: seconds per tile of the shipped networks (stage 1: a 160 px tile, the 128 px
  tile with its context; stage 2: one CLSR step on a 64 -> 256 px tile) in float32 with and
  without channels_last and in bfloat16 autocast with it, at every thread count up to the
  usable cores, and CLSR at 1 and 4 tiles per call; the paper-size CLSR in float32 as the
  method's code runs it (contiguous, one tile a call). Repeats are interleaved, and the
  median is shown, so a noisy neighbour slows every variant alike.
- frame: a 192 x 256 real SEM frame through the default run (stage 1, the preset's stage 2)
  with `auto`, `float32` and `bfloat16`, the output difference between precisions next to
  the difference between two seeds, and the speed-up over the method's own loop (paper-size
  CLSR, fp32, one tile at a time, DDIM 200 over the frame's 64 px tiles, estimated from its
  measured step).
- load: the same frame while another process keeps one core busy, with a thread on every
  core against the count `use_threads` chooses from the free cores.
- compile: torch.compile of both networks (first-call time and then per tile), where the
  system compiler allows it. Minutes: not part of the default.

    python benchmarks/bench_precision.py [--parts networks frame load compile] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import statistics
import sys
import time

import numpy as np
import torch

from napari_etdms import Pipeline
from napari_etdms.config import model_config
from napari_etdms.engine.pipeline import DENOISE_CONTEXT, DENOISE_MIN_TILE
from napari_etdms.io import read_frame
from napari_etdms.models import build_clsr, tile_inputs
from napari_etdms.runtime import Precision, describe, machine_report, usable_cores, use_threads
from napari_etdms.samples import sample_path

DENOISE_SIDE = DENOISE_MIN_TILE + 2 * DENOISE_CONTEXT
METHOD_STEPS = 200  # the method's DDIM mode


def interleaved_medians(variants: dict, repeats: int) -> dict:
    """Median seconds of each variant's callable, the repeats taken in turns."""
    for run in variants.values():
        run()  # warm-up: kernel selection, allocator
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def network_call(net, inputs, precision: str):
    chosen = Precision(precision, "benchmark")

    @torch.no_grad()
    def run():
        with chosen.autocast(torch.device("cpu")):
            net(*inputs)

    return run


def networks(repeats: int) -> list[dict]:
    pipe = Pipeline.from_pretrained(device="cpu", precision="float32")
    paper = build_clsr(model_config("paper")).eval()
    rows = []
    for threads in range(1, usable_cores() + 1):
        torch.set_num_threads(threads)
        variants = {}
        for layout, memory_format in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
            # copies: `Module.to` converts in place, and each layout's variants must keep theirs
            denoiser = copy.deepcopy(pipe.denoiser).to(memory_format=memory_format)
            clsr = copy.deepcopy(pipe.clsr).to(memory_format=memory_format)
            # bfloat16 in the layout a run uses: contiguous bfloat16 took minutes a tile where emulated
            for precision in ("float32", "bfloat16") if layout == "channels_last" else ("float32",):
                inputs = tile_inputs(denoiser, DENOISE_SIDE, "cpu", memory_format)
                variants[("stage 1 tile", precision, layout, 1)] = network_call(denoiser, inputs, precision)
                one = tile_inputs(clsr, 64, "cpu", memory_format)
                for batch in (1, 4):
                    inputs = one if batch == 1 else tuple(
                        x.repeat(batch, *([1] * (x.dim() - 1))).contiguous(memory_format=memory_format)
                        if x.dim() == 4 else x.repeat(batch) for x in one)
                    variants[("stage 2 step", precision, layout, batch)] = network_call(clsr, inputs, precision)
        variants[("paper CLSR step (method)", "float32", "contiguous", 1)] = network_call(
            paper, tile_inputs(paper, 64), "float32")
        for (part, precision, layout, batch), seconds in interleaved_medians(variants, repeats).items():
            rows.append({"part": part, "precision": precision, "layout": layout, "tiles_per_call": batch,
                         "threads": threads, "seconds_per_tile": seconds / batch})
            print(f"  threads {threads}  {part:<26} {precision:<9} {layout:<14} {batch} per call: "
                  f"{seconds / batch:.3f} s/tile", flush=True)
    return rows


def frame_run(repeats: int) -> dict:
    frame = np.asarray(read_frame(sample_path("superalloy")).data)[:192, :256]
    runs = {name: Pipeline.from_pretrained(device="cpu", precision=name) for name in ("auto", "float32", "bfloat16")}
    outputs, times = {}, {name: [] for name in runs}
    for repeat in range(repeats):  # in turns; bfloat16 once where it is emulated (minutes)
        for name, pipe in runs.items():
            if repeat and name == "bfloat16" and pipe.precision != runs["auto"].precision:
                continue
            started = time.perf_counter()
            outputs[name] = pipe.run(frame, seed=0)
            times[name].append(time.perf_counter() - started)
    seconds = {name: statistics.median(values) for name, values in times.items()}
    for name, result in outputs.items():
        meta = result.metadata
        print(f"  {name:<9} -> {meta['precision']:<9} {meta['sampler']} {meta['steps']} steps: {seconds[name]:.1f} s "
              f"(median of {len(times[name])}; last run "
              f"{', '.join(f'{k} {v:.1f}' for k, v in meta['timings'].items())})", flush=True)
    other_seed = runs["float32"].run(frame, seed=1).super_resolved
    reference = outputs["float32"].super_resolved

    def rms(a, b):
        return float(np.sqrt(np.mean((np.asarray(a, np.float64) - b) ** 2)))

    agreement = {"float32 vs bfloat16, seed 0": rms(reference, outputs["bfloat16"].super_resolved),
                 "float32 seed 0 vs seed 1": rms(reference, other_seed),
                 "denoised float32 vs bfloat16": rms(outputs["float32"].denoised, outputs["bfloat16"].denoised)}
    for name, value in agreement.items():
        print(f"  RMS difference, {name}: {value:.3f} grey levels")

    # the method's own loop: paper-size CLSR, fp32, contiguous, one tile per call, DDIM 200,
    # over the frame's non-overlapping 64 px tiles (its stage 1 excluded: conservative)
    paper = build_clsr(model_config("paper")).eval()
    step = interleaved_medians({"paper": network_call(paper, tile_inputs(paper, 64), "float32")}, repeats)["paper"]
    tiles = -(-frame.shape[0] // 64) * -(-frame.shape[1] // 64)
    method = tiles * METHOD_STEPS * step
    print(f"  the method's loop: {tiles} tiles x {METHOD_STEPS} steps x {step:.3f} s = {method:.0f} s; "
          f"default run {seconds['auto']:.1f} s: {method / seconds['auto']:.0f}x "
          f"({seconds['auto'] / tiles:.2f} s per tile against {METHOD_STEPS * step:.0f} s)")
    return {"frame": list(frame.shape), "seconds": seconds, "agreement_rms": agreement,
            "method_seconds": method, "method_step_s": step, "speedup_over_method": method / seconds["auto"]}


def burn(seconds: float) -> None:
    """Keep one core busy, as another user's job would."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def under_load(repeats: int) -> dict:
    """The 192 x 256 frame while another process keeps one core busy: every core's threads
    against the count chosen from the free cores."""
    frame = np.asarray(read_frame(sample_path("superalloy")).data)[:192, :256]
    pipe = Pipeline.from_pretrained(device="cpu")
    busy = multiprocessing.get_context("spawn").Process(target=burn, args=(3600,), daemon=True)
    busy.start()
    try:
        time.sleep(1.0)
        chosen = use_threads()
        counts = {"all cores": usable_cores(), f"chosen ({chosen.reason})": chosen.count}
        seconds = {}
        for name, count in counts.items():
            torch.set_num_threads(count)
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                pipe.run(frame, seed=0)
                times.append(time.perf_counter() - started)
            seconds[name] = statistics.median(times)
            print(f"  one core busy, {count} threads, {name}: {seconds[name]:.1f} s (median of {repeats})", flush=True)
    finally:
        busy.terminate()
    return {"threads": counts, "seconds": seconds}


def compiled(repeats: int) -> dict:
    pipe = Pipeline.from_pretrained(device="cpu", precision="float32")
    results = {}
    for name, net, side in (("stage 1", pipe.denoiser, DENOISE_SIDE), ("stage 2", pipe.clsr, 64)):
        inputs = tile_inputs(net, side, "cpu", torch.channels_last if name == "stage 2" else torch.contiguous_format)
        started = time.perf_counter()
        try:
            fast = torch.compile(net, dynamic=False)
            with torch.no_grad():
                fast(*inputs)
        except Exception as err:  # no compiler, or inductor cannot build here
            print(f"  {name}: torch.compile failed: {type(err).__name__}: {err}")
            continue
        first = time.perf_counter() - started
        medians = interleaved_medians({"eager": network_call(net, inputs, "float32"),
                                       "compiled": network_call(fast, inputs, "float32")}, repeats)
        results[name] = {"first_call_s": first} | medians
        print(f"  {name}: compile + first call {first:.0f} s; eager {medians['eager']:.3f} s, compiled "
              f"{medians['compiled']:.3f} s per tile", flush=True)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["networks", "frame", "load"],
                        choices=["networks", "frame", "load", "compile"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="threads for the frame and compile parts (default: free cores)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    threads = use_threads(args.threads)
    facts = describe(torch.device("cpu"), Pipeline.from_pretrained(device="cpu").precision_choice, threads)
    print(machine_report(facts))
    figures = {"machine": facts}
    parts = {"networks": networks, "frame": frame_run, "load": under_load, "compile": compiled}
    for part in args.parts:
        print(f"\n== {part}", flush=True)
        if part != "networks":
            use_threads(args.threads)
        figures[part] = parts[part](args.repeats)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
