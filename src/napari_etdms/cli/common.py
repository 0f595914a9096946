"""What the commands share: exit codes, argument types, the run options, progress, loading weights."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from napari_etdms.engine import DEFAULTS, MAX_STRENGTH, MIN_TILE

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
EXIT_NOT_KEPT = 3  # etdms adapt: the base weights fit the frames better; nothing written


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse exits with 2 on usage errors: keep that, say more
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def add_degradation_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--degradation", metavar="JSON",
                   help="degradation settings replacing the shipped ones, as a JSON file or inline, e.g. "
                   "'{\"electrons\": [300, 300]}' for a fixed dose of 300 electrons per pixel at white level")


def degradation_from(value: str | None):
    from napari_etdms.config import ConfigError, load_json, parse
    from napari_etdms.simulation import DegradationConfig

    if value is None:
        return DegradationConfig()
    if not value.lstrip().startswith("{"):
        return load_json(value, DegradationConfig)
    try:
        settings = json.loads(value)
    except json.JSONDecodeError as err:
        raise ConfigError(f"--degradation: not valid JSON ({err})") from None
    return parse(DegradationConfig, settings, "--degradation")


def at_least(minimum: int):
    """An argparse type: an integer >= minimum (a usage error, exit 2, before any work)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text}")
        return value

    return parse


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def positive(text: str) -> float:
    value = number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def strength(text: str) -> float:
    value = number(text)
    if not 0 <= value <= MAX_STRENGTH:
        raise argparse.ArgumentTypeError(f"must be between 0 and {MAX_STRENGTH}, got {text}")
    return value


def add_speed_options(g, precisions: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")) -> None:
    if precisions:
        g.add_argument("--precision", default="auto", choices=precisions,
                       help="auto: bfloat16 (float16) only where the processor computes it natively and it is faster "
                       "for these networks, else float32; etdms info says which and why")
    g.add_argument("--threads", type=at_least(1), metavar="N",
                   help="CPU threads (default: the cores free now; dask workers: 1). Float sums depend on it: the "
                   "same count gives bit-identical outputs")


def add_run_options(p: argparse.ArgumentParser) -> None:
    from napari_etdms.diffusion import SAMPLERS

    g = p.add_argument_group("model and sampling")
    g.add_argument("-w", "--weights", help="registry name or weights folder (default: the shipped model)")
    g.add_argument("--device", default="auto", help="auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:1, mps")
    add_speed_options(g)
    g.add_argument("--sampler", choices=list(SAMPLERS), help="default: the weights' recommended preset")
    g.add_argument("--steps", type=at_least(1), help="network evaluations (default: the preset's)")
    g.add_argument("--eta", type=float, default=DEFAULTS.eta, help="DDIM stochasticity (0 = deterministic)")
    g.add_argument("--seed", type=int, default=DEFAULTS.seed)
    g.add_argument("--samples", type=at_least(1), default=DEFAULTS.samples,
                   help="K > 1 adds the mean and per-pixel std of K seeds")
    g.add_argument("--consistency", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the 4x4 block means of the x4 output equal to the (denoised) low-res frame "
                        "(default: the weights' preset)")
    g.add_argument("--strength", type=strength, default=DEFAULTS.strength,
                   help="denoising strength for noise-aware weights: up to 1, the noise level both stages are "
                   "told, relative to the level estimated from the frame (1, default: as estimated; below 1 for "
                   "frames cleaner than the estimate says, e.g. fine texture read as noise; 0: no denoising, "
                   "the x4 step takes the frame as noise-free); above 1, up to 4: smoother (total-variation "
                   "smoothing of stage 1's output)")
    g.add_argument("--no-denoise", action="store_true", help="skip stage 1 (condition on the raw frame)")
    g.add_argument("--no-sr", action="store_true", help="skip stage 2 (denoise only)")
    t = p.add_argument_group("tiling")
    t.add_argument("--tile", type=at_least(MIN_TILE), default=DEFAULTS.tile,
                   help=f"low-res tile side, multiple of 4 (default {DEFAULTS.tile})")
    t.add_argument("--overlap", type=at_least(0), default=DEFAULTS.overlap,
                   help=f"low-res overlap between tiles (default {DEFAULTS.overlap})")
    t.add_argument("--batch-size", type=at_least(1), default=None,
                   help="tiles per network call (default: 8 on a CUDA GPU, else 1)")


def run_options(args) -> dict:
    return dict(denoise=not args.no_denoise, super_resolve=not args.no_sr, sampler=args.sampler, steps=args.steps,
                eta=args.eta, samples=args.samples, data_consistency=args.consistency, tile=args.tile,
                overlap=args.overlap, batch_size=args.batch_size, strength=args.strength)


def names(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def progress_bar(desc: str):
    from tqdm import tqdm

    # piped to a log, a bar's redraws would be hundreds of lines: each file's result line is enough
    bar = tqdm(total=0, desc=desc, unit="step", leave=False, disable=not sys.stderr.isatty())

    def update(done: int, total: int, stage: str) -> None:
        bar.total = total
        bar.set_postfix_str(stage)
        bar.update(done - bar.n)

    return bar, update


def load_pipeline(args):
    """The chosen weights; weights folders that cannot be read are named, never skipped silently.
    The search path is scanned once, for both."""
    from napari_etdms.engine import Pipeline
    from napari_etdms.runtime import summary, use_threads
    from napari_etdms.weights import DEFAULT_WEIGHTS, scan

    entries, broken = scan()
    for reason in broken.values():
        print(f"warning: skipped a broken weights folder: {reason}", file=sys.stderr)
    name = args.weights or DEFAULT_WEIGHTS
    # as `weights.resolve` decides: a folder first, then a registry name (else its error)
    chosen = entries[name].folder if name in entries and not Path(name).is_dir() else name
    threads = use_threads(args.threads)
    pipeline = Pipeline.from_pretrained(chosen, device=args.device, precision=args.precision)
    print(f"running on {summary(pipeline.device, pipeline.precision_choice, threads)}", file=sys.stderr)
    return pipeline
