"""`etdms` command line: inference, demo, info, training, evaluation, degradation examples.

Exit codes: 0 success, 1 an error (for a batch: any file failed), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from napari_etdms import __version__
from napari_etdms.engine.settings import DEFAULTS, MAX_STRENGTH, MIN_TILE, RunSettings
from napari_etdms.io import DEFAULT_MAX_PIXELS, OUTPUT_FORMATS

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
EXIT_NOT_KEPT = 3  # etdms adapt: the base weights fit the frames better; nothing written


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse exits with 2 on usage errors: keep that, say more
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _add_degradation_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--degradation", metavar="JSON",
                   help="degradation settings replacing the shipped ones, as a JSON file or inline, e.g. "
                   "'{\"electrons\": [300, 300]}' for a fixed dose of 300 electrons per pixel at white level")


def _degradation(value: str | None):
    from napari_etdms.config import ConfigError, load_json, parse
    from napari_etdms.simulation.degradation import DegradationConfig

    if value is None:
        return DegradationConfig()
    if not value.lstrip().startswith("{"):
        return load_json(value, DegradationConfig)
    try:
        settings = json.loads(value)
    except json.JSONDecodeError as err:
        raise ConfigError(f"--degradation: not valid JSON ({err})") from None
    return parse(DegradationConfig, settings, "--degradation")


def _at_least(minimum: int):
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


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _positive(text: str) -> float:
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def _strength(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= MAX_STRENGTH:
        raise argparse.ArgumentTypeError(f"must be between 0 and {MAX_STRENGTH}, got {text}")
    return value


def _add_speed_options(g, precisions: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")) -> None:
    if precisions:
        g.add_argument("--precision", default="auto", choices=precisions,
                       help="auto: bfloat16 (float16) only where the processor computes it natively and it is faster "
                       "for these networks, else float32; etdms info says which and why")
    g.add_argument("--threads", type=_at_least(1), metavar="N",
                   help="CPU threads (default: the cores free now; dask workers: 1). Float sums depend on it: the "
                   "same count gives bit-identical outputs")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    from napari_etdms.diffusion import SAMPLERS

    g = p.add_argument_group("model and sampling")
    g.add_argument("-w", "--weights", help="registry name or weights folder (default: the shipped model)")
    g.add_argument("--device", default="auto", help="auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:1, mps")
    _add_speed_options(g)
    g.add_argument("--sampler", choices=list(SAMPLERS), help="default: the weights' recommended preset")
    g.add_argument("--steps", type=_at_least(1), help="network evaluations (default: the preset's)")
    g.add_argument("--eta", type=float, default=DEFAULTS.eta, help="DDIM stochasticity (0 = deterministic)")
    g.add_argument("--seed", type=int, default=DEFAULTS.seed)
    g.add_argument("--samples", type=_at_least(1), default=DEFAULTS.samples,
                   help="K > 1 adds the mean and per-pixel std of K seeds")
    g.add_argument("--consistency", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the 4x4 block means of the x4 output equal to the (denoised) low-res frame "
                        "(default: the weights' preset)")
    g.add_argument("--strength", type=_strength, default=DEFAULTS.strength,
                   help="denoising strength for noise-aware weights: up to 1, the noise level the denoiser is "
                   "told, relative to the level estimated from the frame (1, default: as estimated; 0: no "
                   "denoising); above 1, up to 4: smoother (total-variation smoothing of its output)")
    g.add_argument("--no-denoise", action="store_true", help="skip stage 1 (condition on the raw frame)")
    g.add_argument("--no-sr", action="store_true", help="skip stage 2 (denoise only)")
    t = p.add_argument_group("tiling")
    t.add_argument("--tile", type=_at_least(MIN_TILE), default=DEFAULTS.tile,
                   help=f"low-res tile side, multiple of 4 (default {DEFAULTS.tile})")
    t.add_argument("--overlap", type=_at_least(0), default=DEFAULTS.overlap,
                   help=f"low-res overlap between tiles (default {DEFAULTS.overlap})")
    t.add_argument("--batch-size", type=_at_least(1), default=None,
                   help="tiles per network call (default: 8 on a CUDA GPU, else 1)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="etdms",
                     description="ETDMS: denoise and 4x super-resolve SEM frames; train and evaluate the models.")
    parser.add_argument("--version", action="version", version=f"napari-etdms {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    infer = sub.add_parser(
        "infer",
        help="denoise and super-resolve SEM frames (files or folders)",
        description="Denoise and 4x super-resolve SEM frames. Writes <name>_denoised.tif, <name>_etdms_x4.tif, "
        "<name>_bicubic_x4.tif and <name>_denoised_bicubic_x4.tif (plus _std_x4.tif with --samples > 1) with "
        "pixel size and provenance, or the same as .ome.zarr multiscale images (--output-format zarr, the "
        "default for OME-Zarr inputs), whose x4 arrays stay on disk while they are made, so frames whose x4 "
        "output does not fit in memory can be processed. With no INPUT, processes the bundled sample frames.",
    )
    infer.add_argument("inputs", nargs="*", metavar="INPUT",
                       help="TIFF (8/16-bit), PNG or OME-Zarr (.zarr) images, or folders of them")
    infer.add_argument("-o", "--output", required=True, type=Path, help="output folder (created if needed)")
    infer.add_argument("--overwrite", action="store_true",
                       help="replace each input's existing outputs as a set, removing those of an earlier run that "
                       "this run does not make (inputs are never touched)")
    infer.add_argument("--output-format", choices=OUTPUT_FORMATS, default="auto",
                       help="tiff, or zarr: OME-Zarr multiscale with the x4 arrays kept on disk (napari-etdms[zarr]); "
                       "auto (default): zarr for OME-Zarr inputs, else tiff")
    infer.add_argument("--max-pixels", type=_at_least(1), default=DEFAULT_MAX_PIXELS,
                       help="refuse frames whose file header declares more pixels, before decoding "
                            f"(default {DEFAULT_MAX_PIXELS:,}: 32768 x 32768)")
    cluster = infer.add_mutually_exclusive_group()
    cluster.add_argument("--scheduler", metavar="ADDRESS",
                         help="send the files to a running dask.distributed scheduler (e.g. tcp://host:8786), one "
                         "task per file; each worker loads the model once and writes to --output, which the "
                         "workers must reach (napari-etdms[distributed])")
    cluster.add_argument("--workers", type=_at_least(1), metavar="N",
                         help="run the files on N worker processes of a local dask.distributed cluster")
    _add_run_options(infer)

    demo = sub.add_parser("demo", help="run the shipped model on the bundled sample frame(s)")
    demo.add_argument("-o", "--output", type=Path, default=Path("etdms-demo"), help="output folder")
    demo.add_argument("--all", action="store_true", help="also process the larger 1024x1024 sample")
    demo.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    demo.set_defaults(max_pixels=DEFAULT_MAX_PIXELS)
    _add_run_options(demo)

    info = sub.add_parser("info", help="versions, devices, the precision and threads a run would use, weights")
    _add_speed_options(info, precisions=())

    train = sub.add_parser("train", help="train stage 1, stage 2, or both then fine-tune (see README)")
    train.add_argument("-c", "--config", required=True, type=Path, help="training config JSON")
    train.add_argument("-s", "--stage", type=int, choices=[0, 1, 2], default=0,
                       help="1: denoiser, 2: CLSR, 0: both, then CLSR fine-tuned on stage-1 outputs")
    train.add_argument("--run-dir", type=Path, help="run folder (default runs/<config name>); resumes if present")
    train.add_argument("--max-minutes", type=float, help="wall-clock budget; stops cleanly with a checkpoint")
    train.add_argument("--device", default="auto")
    _add_speed_options(train, precisions=())  # the config's precision (auto by default) decides
    train.add_argument("--export", type=Path, help="write the trained weights as a registry folder here")
    train.add_argument("--clsr-from", metavar="WEIGHTS",
                       help="with --export: take stage 2 from these weights (registry name or folder) instead of "
                       "this run's; recorded by name and hash")

    from napari_etdms.training.adapt import DEFAULT_MINUTES, VALIDATION_ROWS
    from napari_etdms.training.adapt import SETTINGS as ADAPT_SETTINGS

    ad = sub.add_parser(
        "adapt",
        help="adapt stage 1 to your microscope, on your own noisy frames (no clean frames needed)",
        description="Fine-tune the denoiser of the base weights on your noisy frames alone (self-supervised, "
        "row-pair Neighbor2Neighbor: correct for noise correlated along the scan line) and write a weights folder "
        "that infer -w and the napari widget load like any other, with stage 2 of the base weights. A band of "
        f"{VALIDATION_ROWS} rows of each frame is held out: the adapted weights are written only if they denoise "
        f"those better than the base (otherwise exit {EXIT_NOT_KEPT}, nothing written). An interrupted run "
        "resumes when the same command is given again.",
    )
    ad.add_argument("inputs", nargs="+", metavar="FRAME",
                    help="noisy TIFF/PNG frames from your microscope, or folders (every slice of a stack is used)")
    ad.add_argument("-o", "--output", type=Path,
                    help="the weights folder to write; its name is the weights' name (default: "
                    "adapted-<first frame> in your weights folder, see etdms info)")
    ad.add_argument("-w", "--weights", help="base weights: registry name or folder (default: the shipped ones)")
    ad.add_argument("--minutes", "--max-minutes", type=_positive, default=DEFAULT_MINUTES,
                    help=f"training time budget (default {DEFAULT_MINUTES:g}; a step took 2.5 s on 2 threads of a "
                    "Zen 5 with native bfloat16, 6 s on an AVX2 Zen 3)")
    ad.add_argument("--iterations", type=_at_least(1), default=ADAPT_SETTINGS.iterations,
                    help=f"at most this many steps (default {ADAPT_SETTINGS.iterations})")
    ad.add_argument("--device", default="auto")
    _add_speed_options(ad, precisions=("auto", "float32", "bfloat16"))  # no float16 training (no loss scaling)
    ad.add_argument("--keep-anyway", action="store_true",
                    help="write the adapted weights even if the base denoises the held-out rows better")
    ad.add_argument("--restart", action="store_true", help="discard an interrupted run instead of resuming it")
    ad.add_argument("--max-pixels", type=_at_least(1), default=DEFAULT_MAX_PIXELS,
                    help="refuse frames whose file header declares more pixels, before decoding")

    ex = sub.add_parser(
        "export",
        help="write the denoiser (stage 1) of weights as a bioimage.io model (Fiji/deepImageJ, QuPath, Python)",
        description="Write stage 1 of WEIGHTS (shipped, or adapted by etdms adapt) as a bioimage.io model zip "
        "(spec 0.5: TorchScript and state dict, test image, cover, documentation) that bioimage.io consumers run "
        "without napari-etdms (napari-etdms[bioimageio]). The model has ONE fixed noise model (var = GAIN * y + "
        "OFFSET, y: the frame scaled by its 0.1 and 99.9 percentiles to [0, 1]): give it, or a typical frame to "
        "estimate it from; adapted weights default to the noise of the frames they were adapted on.",
    )
    ex.add_argument("weights", metavar="WEIGHTS", help="registry name (e.g. etdms-sem-v2) or weights folder")
    ex.add_argument("-o", "--output", required=True, type=Path, help="the model package to write, NAME.zip")
    noise_source = ex.add_mutually_exclusive_group()
    noise_source.add_argument("--noise", metavar="GAIN,OFFSET",
                              help="the noise model on the model's [0, 1] input scale, e.g. 0.002,0.0005")
    noise_source.add_argument("--from-frame", type=Path, metavar="FRAME",
                              help="a typical frame (TIFF/PNG) of your detector: its noise is estimated and baked in; "
                              "its centre is the package's test image")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing NAME.zip")

    ev = sub.add_parser(
        "eval",
        help="degrade clean frames with a fixed seed, restore them, report metrics and figures",
        description="Evaluate on clean SEM frames: each is degraded with the shipped SEM degradation (fixed seed), "
        "restored, and compared with the original: PSNR, SSIM, NRMSE, FRC resolution, data consistency, for "
        "bicubic, non-local means / BM3D + bicubic, stage 1 + bicubic and ETDMS, for all frames, per source, and "
        "for held-out sources apart. Writes report.md, metrics.csv, summary.json, crops.png, metrics.png; with "
        "--doses, a dose sweep (one command) with dose-sweep.png instead of the last two.",
    )
    ev.add_argument("inputs", nargs="*", metavar="INPUT", help="clean frames (files or folders)")
    ev.add_argument("--split", type=Path, help="a training run's split.json: evaluate its validation frames")
    ev.add_argument("--frames-dir", type=Path,
                    help="the folder holding the split's frames, if they are not at the paths it records")
    ev.add_argument("-o", "--output", required=True, type=Path, help="report folder")
    ev.add_argument("--crop", type=int, default=512, help="central crop of each frame, high-res px (0: whole frame)")
    ev.add_argument("--max-truth-noise", type=float, metavar="SIGMA",
                    help="ground truths noisier than this (wavelet MAD sigma of the frame's range) are area "
                    "down-sampled 2x (or 4x) first, so methods that remove noise are not charged for the truth's "
                    "own (e.g. 0.015)")
    ev.add_argument("--lpips-weights", type=Path,
                    help="LPIPS network as TorchScript (.pt) or torch.export (.pt2), called as f(x, y) on [-1, 1] "
                    "images; nothing can be downloaded at run time")
    ev.add_argument("--fid-weights", type=Path,
                    help="feature extractor (e.g. InceptionV3) as TorchScript (.pt) or torch.export (.pt2): "
                    "(N, 3, h, w) images in [0, 1] -> (N, D) features")
    _add_degradation_option(ev)
    sweep = ev.add_argument_group("dose sweep, baselines and sources")
    sweep.add_argument("--doses", metavar="LIST",
                       help="a dose sweep in one command: electrons per pixel at white level, comma-separated, "
                       "'clean' for noise-free, e.g. 3,10,30,100,300,1000,3000,clean (read noise per dose: "
                       "min(0.01, 0.1/sqrt(dose)))")
    sweep.add_argument("--degradation-kind", choices=["full", "plain", "both"],
                       help="with --doses: 'full' (the shipped SEM degradation, or --degradation's, with only the "
                       "dose set), 'plain' (4x area sampling + Poisson-Gaussian noise only) or 'both' (default)")
    sweep.add_argument("--baselines", default="nlm,bm3d", metavar="LIST",
                       help="classical baselines on the degraded frame, then bicubic x4: nlm, bm3d (the extra "
                       "napari-etdms[baselines]), comma-separated, or 'none' (default nlm,bm3d)")
    sweep.add_argument("--held-out-sources", metavar="LIST",
                       help="sources never trained on (the file-name part before '__'), comma-separated: reported "
                       "apart from the others; a split's top-level 'held_out_sources' is read as well")
    sweep.add_argument("--max-frames", type=int, metavar="N",
                       help="evaluate at most N frames, taken from the sources in turn (quick runs)")
    _add_run_options(ev)

    deg = sub.add_parser("degrade", help="write simulated SEM degradations of clean frames, to look at")
    deg.add_argument("inputs", nargs="+", metavar="INPUT", help="clean frames (files or folders)")
    deg.add_argument("-o", "--output", required=True, type=Path)
    deg.add_argument("--count", type=int, default=3, help="random degradations per frame")
    deg.add_argument("--crop", type=int, default=512, help="central crop, high-res px (0: whole frame)")
    deg.add_argument("--seed", type=int, default=0)
    _add_degradation_option(deg)
    return parser


def _progress_bar(desc: str):
    from tqdm import tqdm

    # piped to a log, a bar's redraws would be hundreds of lines: each file's result line is enough
    bar = tqdm(total=0, desc=desc, unit="step", leave=False, disable=not sys.stderr.isatty())

    def update(done: int, total: int, stage: str) -> None:
        bar.total = total
        bar.set_postfix_str(stage)
        bar.update(done - bar.n)

    return bar, update


def _load_pipeline(args):
    """The chosen weights; weights folders that cannot be read are named, never skipped silently.
    The search path is scanned once, for both."""
    from napari_etdms.engine.pipeline import Pipeline
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


def _infer_files(args, files: list[Path]) -> int:
    from napari_etdms.engine.batch import BatchSettings, OutputFolderError, plan, process_file, run_serially
    from napari_etdms.io.ome_zarr import require_zarr

    try:
        jobs = plan(files, args.output, args.overwrite, getattr(args, "output_format", "auto"))
        if any(job.zarr for job in jobs):
            require_zarr()
    except (OutputFolderError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    batch = BatchSettings(args.weights, args.device, args.precision, args.settings, args.max_pixels, args.overwrite,
                          args.threads)
    if getattr(args, "scheduler", None) or getattr(args, "workers", None):
        failures = _infer_distributed(args, jobs, batch)
    else:
        pipeline = _load_pipeline(args)

        def work(job, _batch_progress):  # a bar per file instead
            bar, update = _progress_bar(job.source.name)
            try:
                return process_file(job, batch, pipeline, update)
            finally:
                bar.close()

        report = _file_reporter(args.output)
        lines = run_serially(jobs, work, lambda job, line, error: report(job.source, line, error))
        failures = sum(line is None for line in lines)
    if failures:
        print(f"{failures} of {len(files)} file(s) failed", file=sys.stderr)
    return EXIT_ERROR if failures else EXIT_OK


def _file_reporter(output: Path, total: int | None = None):
    """`report(source, line, error)`: one line per file as it ends; with `total`, counted
    ("[3/10] ...", for files that end out of order) and naming the error's type (raised on
    another machine)."""
    done = 0

    def report(source, line, error):
        nonlocal done
        done += 1
        count = f"[{done}/{total}] " if total else ""
        if error is None:
            print(f"{count}{source}: {line} -> {output}", flush=True)
        else:
            kind = f"{type(error).__name__}: " if total else ""
            print(f"{count}{source}: error: {kind}{error}", file=sys.stderr, flush=True)

    return report


def _infer_distributed(args, jobs, batch) -> int:
    """The batch on a dask.distributed cluster: a running scheduler, or N local worker processes."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ValueError("--scheduler and --workers need dask.distributed: "
                         "pip install 'napari-etdms[distributed]'") from None
    from napari_etdms.engine.batch import run_distributed

    report = _file_reporter(args.output, total=len(jobs))
    if args.scheduler:
        with Client(args.scheduler) as client:
            return run_distributed(jobs, batch, client, report)
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        return run_distributed(jobs, batch, client, report)


def cmd_infer(args) -> int:
    from napari_etdms.engine.batch import input_files
    from napari_etdms.samples import sample_paths

    files = input_files(args.inputs) if args.inputs else sample_paths()
    if not files:
        print("no TIFF or PNG files found in the given inputs", file=sys.stderr)
        return EXIT_ERROR
    return _infer_files(args, files)


def cmd_demo(args) -> int:
    from napari_etdms.samples import sample_path, sample_paths

    files = sample_paths() if args.all else [sample_path("superalloy")]
    return _infer_files(args, files)


def cmd_info(args) -> int:
    import torch

    from napari_etdms.engine.pipeline import Pipeline
    from napari_etdms.runtime import CpuFeatures, choose_precision, device_name, select_device, use_threads
    from napari_etdms.weights import DEFAULT_WEIGHTS, scan, search_path

    device = select_device("auto")
    threads = use_threads(args.threads)  # a measured precision holds for this many threads
    try:  # the default weights' networks are what a run times where the processor's queries cannot tell
        precision = Pipeline.from_pretrained(DEFAULT_WEIGHTS, device=device).precision_choice
    except Exception:  # broken or missing weights: listed below
        precision = choose_precision(device)
    features = CpuFeatures.detect()
    info = {
        "napari-etdms": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available() and torch.cuda.get_device_name(0),
        "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
        "processor": f"{device_name(torch.device('cpu'))}; torch kernels {features.capability}, "
                     f"bfloat16 {features.bfloat16}",
        "auto device": f"{device} ({device_name(device)})",
        "auto precision": precision,
        "cpu threads": threads,
    }
    for key, value in info.items():
        print(f"{key:>16}: {value}")
    entries, broken = scan()
    print(f"{'weights':>16}: " + (", ".join(f"{n} [{e.short_hash}] ({e.folder})" for n, e in entries.items())
                                  or "NO TRAINED WEIGHTS INSTALLED"))
    for reason in broken.values():
        print(f"{'broken weights':>16}: {reason}")
    print(f"{'default weights':>16}: {DEFAULT_WEIGHTS}{'' if DEFAULT_WEIGHTS in entries else ' (missing)'}")
    print(f"{'search path':>16}: " + "; ".join(map(str, search_path())))
    return EXIT_OK


def cmd_train(args) -> int:
    from napari_etdms.runtime import select_device, summary
    from napari_etdms.training.loop import is_lead, lead_decides, start_distributed, stop_distributed
    from napari_etdms.training.trainer import StageTrainer, export, load_train_config

    config = load_train_config(args.config)
    if args.threads:
        config = config.model_copy(update={stage: getattr(config, stage).model_copy(update={"threads": args.threads})
                                           for stage in ("stage1", "stage2", "finetune")})
    run_dir = args.run_dir or Path("runs") / config.name
    # under torchrun: one process per GPU (or CPU process over gloo), gradients averaged
    device = start_distributed(str(select_device(args.device)))
    try:
        stages = {1: ["stage1"], 2: ["stage2"], 0: ["stage1", "stage2", "finetune"]}[args.stage]
        if args.stage == 0 and config.finetune.grow_from:
            stages.remove("stage2")  # the fine-tune starts from its grow_from, not from this run's stage 2
        deadline = time.monotonic() + 60 * args.max_minutes if args.max_minutes else None
        for stage in stages:
            remaining = lead_decides((deadline - time.monotonic()) / 60, device) if deadline else None
            if remaining is not None and remaining <= 0:
                if is_lead():
                    print(f"time budget spent before {stage}; rerun the same command to resume", file=sys.stderr)
                return EXIT_OK
            trainer = StageTrainer(config, stage, run_dir, device)
            if is_lead():
                print(f"{stage} on {summary(trainer.device, trainer.precision, trainer.threads)}", file=sys.stderr)
            reached = trainer.train(max_minutes=remaining)
            if is_lead():
                target = trainer.settings.iterations
                print(f"{stage}: iteration {reached}/{target}; checkpoint {trainer.checkpoint_path}")
            if reached < trainer.settings.iterations:
                if args.export and is_lead():
                    print(f"not exported: {stage} stopped before its last iteration; rerun the same command to "
                          "resume, and it exports when training completes", file=sys.stderr)
                return EXIT_OK
        if args.export and is_lead():
            entry = export(run_dir, config, args.export, clsr_from=args.clsr_from)
            print(f"exported weights '{entry.name}' to {entry.folder}")
        return EXIT_OK
    finally:
        stop_distributed()


def _run_options(args) -> dict:
    return dict(denoise=not args.no_denoise, super_resolve=not args.no_sr, sampler=args.sampler, steps=args.steps,
                eta=args.eta, samples=args.samples, data_consistency=args.consistency, tile=args.tile,
                overlap=args.overlap, batch_size=args.batch_size, strength=args.strength)


def _names(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def cmd_adapt(args) -> int:
    from napari_etdms.engine.batch import input_files
    from napari_etdms.runtime import select_device
    from napari_etdms.training.adapt import SETTINGS as ADAPT_SETTINGS
    from napari_etdms.training.adapt import adapt, frames_from_files, seconds_left, work_folder
    from napari_etdms.weights import user_folder

    files = input_files(args.inputs)
    if not files:
        print("no TIFF or PNG files found in the given inputs", file=sys.stderr)
        return EXIT_ERROR
    frames, sources = frames_from_files(files, args.max_pixels)  # every frame is read before any training
    output = args.output or user_folder() / f"adapted-{files[0].stem}"
    print(f"adapting on {len(frames)} frame(s) from {len(files)} file(s) for up to {args.iterations} steps or "
          f"{args.minutes:g} min", file=sys.stderr)
    started, tty = time.monotonic(), sys.stderr.isatty()

    def log_line(done: int, total: int) -> None:  # piped to a log: a line every 10 steps instead of a bar
        if not tty and (done % 10 == 0 or done == total):
            left = seconds_left(time.monotonic() - started, done, total, args.minutes)
            print(f"adapt: step {done}/{total}, about {left / 60:.1f} min left", file=sys.stderr, flush=True)

    try:
        outcome = adapt(frames, output, args.weights, args.minutes, args.iterations, str(select_device(args.device)),
                        args.keep_anyway, args.restart, progress=log_line, show_progress=tty, sources=sources,
                        precision=args.precision, threads=args.threads)
    except KeyboardInterrupt:
        print(f"interrupted: the last checkpoint (every {ADAPT_SETTINGS.checkpoint_every} steps) is kept in "
              f"{work_folder(output)}; the same command resumes from it (--restart starts again)", file=sys.stderr)
        return EXIT_ERROR
    print(outcome.message)
    if not outcome.kept:
        return EXIT_NOT_KEPT
    print(f"use them with: etdms infer -w {output if args.output else outcome.entry.name} ...")
    return EXIT_OK


def cmd_export(args) -> int:
    from napari_etdms.export.bioimageio import export_model

    result = export_model(args.weights, args.output, noise=args.noise, from_frame=args.from_frame,
                          overwrite=args.overwrite)
    noise = result.noise.model
    told = f"noise gain {noise.gain:.6g}, offset {noise.offset:.6g} ({result.noise.source})" if noise else \
        "a blind denoiser (no noise model)"
    print(f"wrote {result.path} ({result.size_bytes / 2**20:.1f} MiB): stage 1 of '{result.weights['name']}' "
          f"({result.weights['hash']}), {told}")
    print(f"check it with: bioimageio test {result.path}")
    return EXIT_OK


def cmd_eval(args) -> int:
    from napari_etdms.engine.batch import OutputFolderError, check_output_folder
    from napari_etdms.evaluation.sweep import (
        DEGRADATION_KINDS,
        parse_doses,
        run_evaluation,
        split_held_out_sources,
    )
    from napari_etdms.io import iter_image_files
    from napari_etdms.simulation.ground_truth import validation_frames

    if args.frames_dir and not args.split:
        print("--frames-dir locates a split's frames: give --split too", file=sys.stderr)
        return EXIT_USAGE
    if args.degradation_kind and not args.doses:
        print("--degradation-kind chooses the degradations of a dose sweep: give --doses too", file=sys.stderr)
        return EXIT_USAGE
    if args.max_frames is not None and args.max_frames < 1:
        print("--max-frames: give a positive number of frames", file=sys.stderr)
        return EXIT_USAGE
    doses = parse_doses(args.doses) if args.doses else None
    kinds = DEGRADATION_KINDS if args.degradation_kind in (None, "both") else (args.degradation_kind,)
    baselines = [] if args.baselines.strip().lower() == "none" else _names(args.baselines)
    held_out = _names(args.held_out_sources)
    files = iter_image_files(args.inputs)
    if args.split:
        files += validation_frames(args.split, args.frames_dir)
        held_out += [name for name in split_held_out_sources(args.split) if name not in held_out]
    if not files:
        print("no frames to evaluate: give files, folders or --split", file=sys.stderr)
        return EXIT_USAGE
    degradation = _degradation(args.degradation)
    try:
        check_output_folder(args.output)
    except OutputFolderError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    pipeline = _load_pipeline(args)
    bar, update = _progress_bar("eval")
    try:
        run_evaluation(pipeline, files, args.output, args.seed, args.crop or None, degradation,
                       settings=args.settings, lpips_weights=args.lpips_weights,
                       fid_weights=args.fid_weights, progress=update, doses=doses, kinds=kinds,
                       held_out_sources=held_out, baselines=baselines, max_frames=args.max_frames,
                       max_truth_noise=args.max_truth_noise)
    finally:
        bar.close()
    print((args.output / "report.md").read_text())
    return EXIT_OK


def _degrade_preview(degraded, clean_lr, clean_hr):
    """Degraded low-res | clean low-res | clean high-res, side by side at the high-res scale
    (low-res pixels shown as blocks), on one 8-bit grey scale."""
    import numpy as np

    scale = clean_hr.shape[0] // clean_lr.shape[0]
    blocks = [np.kron(degraded, np.ones((scale, scale))), np.kron(clean_lr, np.ones((scale, scale))), clean_hr]
    gap = np.ones((clean_hr.shape[0], 8))
    row = np.concatenate([blocks[0], gap, blocks[1], gap, blocks[2]], axis=1)
    low, high = np.percentile(clean_hr, (0.5, 99.5))
    return np.round(np.clip((row - low) / max(high - low, 1e-6), 0, 1) * 255).astype(np.uint8)


def cmd_degrade(args) -> int:
    from functools import partial

    import numpy as np
    from PIL import Image

    from napari_etdms.evaluation.sweep import centre_crop
    from napari_etdms.io import iter_image_files, write_file_atomically, write_tiff
    from napari_etdms.simulation.degradation import degrade
    from napari_etdms.simulation.ground_truth import load_normalised

    files = iter_image_files(args.inputs)
    degradation = _degradation(args.degradation)
    rng = np.random.default_rng(args.seed)
    args.output.mkdir(parents=True, exist_ok=True)
    for path in files:
        clean = centre_crop(load_normalised(path), args.crop or None).astype(np.float64)
        provenance = {"source": str(path), "seed": args.seed, "degradation": degradation.model_dump(mode="json")}
        for k in range(args.count):
            # each draw has its own target: drift and the sampling phase move it with the samples
            degraded, clean_lr, clean_hr = degrade(clean, rng, degradation)
            for label, image in (("degraded_lr", degraded), ("clean_lr", clean_lr), ("clean_hr", clean_hr)):
                write_tiff(args.output / f"{path.stem}_{k}_{label}.tif", image, None, provenance | {"draw": k})
            preview = Image.fromarray(_degrade_preview(degraded, clean_lr, clean_hr))
            write_file_atomically(args.output / f"{path.stem}_{k}_preview.png", partial(preview.save, format="PNG"))
        print(f"{path}: {args.count} degradations -> {args.output} (TIFF triples; PNG previews: "
              "degraded low-res | clean low-res | clean high-res)")
    return EXIT_OK


COMMANDS = {"infer": cmd_infer, "adapt": cmd_adapt, "demo": cmd_demo, "info": cmd_info, "train": cmd_train,
            "eval": cmd_eval, "degrade": cmd_degrade, "export": cmd_export}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from napari_etdms.config import ConfigError
    from napari_etdms.engine.pipeline import InputError
    from napari_etdms.engine.tiling import Cancelled
    from napari_etdms.weights import WeightsError

    if hasattr(args, "no_sr"):  # a command that runs the pipeline: its settings checked once, before any work
        try:
            args.settings = RunSettings(seed=args.seed, **_run_options(args))
        except ValueError as err:
            parser.error(str(err))  # a usage error: exit 2
    try:
        return COMMANDS[args.command](args)
    except (WeightsError, ConfigError, InputError, FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"etdms {args.command}: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except (KeyboardInterrupt, Cancelled):
        print("interrupted", file=sys.stderr)
        return EXIT_ERROR

