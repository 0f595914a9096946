"""`etdms infer`, `demo` and `info`: frames through the pipeline, and what a run would use."""

from __future__ import annotations

import sys
from pathlib import Path

from napari_etdms import __version__
from napari_etdms.cli.common import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    add_run_options,
    add_speed_options,
    at_least,
    load_pipeline,
    progress_bar,
)
from napari_etdms.io import DEFAULT_MAX_PIXELS, OUTPUT_FORMATS


def add_commands(sub) -> None:
    infer = sub.add_parser(
        "infer",
        help="denoise and super-resolve SEM frames (files or folders)",
        description="Denoise and 4x super-resolve SEM frames. Writes <name>_denoised.tif, <name>_etdms_x4.tif, "
        "<name>_bicubic_x4.tif and <name>_denoised_bicubic_x4.tif (plus _std_x4.tif with --samples > 1) with "
        "pixel size and provenance, or the same as .ome.zarr multiscale images (--output-format zarr, the "
        "default for OME-Zarr inputs), whose x4 arrays stay on disk while they are made, so frames whose x4 "
        "output does not fit in memory can be processed. A stack (3D OME-Zarr, multi-page TIFF) runs slice by "
        "slice into 3D OME-Zarr outputs; the same command resumes a stopped stack. With no INPUT, processes the "
        "bundled sample frames.",
    )
    infer.add_argument("inputs", nargs="*", metavar="INPUT",
                       help="TIFF (8/16-bit), PNG or OME-Zarr (.zarr) images or stacks, or folders of them")
    infer.add_argument("-o", "--output", required=True, type=Path, help="output folder (created if needed)")
    infer.add_argument("--overwrite", action="store_true",
                       help="replace each input's existing outputs as a set, removing those of an earlier run that "
                       "this run does not make (inputs are never touched)")
    infer.add_argument("--output-format", choices=OUTPUT_FORMATS, default="auto",
                       help="tiff, or zarr: OME-Zarr multiscale with the x4 arrays kept on disk (napari-etdms[zarr]); "
                       "auto (default): zarr for OME-Zarr inputs, else tiff")
    infer.add_argument("--max-pixels", type=at_least(1), default=DEFAULT_MAX_PIXELS,
                       help="refuse frames whose file header declares more pixels, before decoding "
                            f"(default {DEFAULT_MAX_PIXELS:,}: 32768 x 32768)")
    cluster = infer.add_mutually_exclusive_group()
    cluster.add_argument("--scheduler", metavar="ADDRESS",
                         help="send the files to a running dask.distributed scheduler (e.g. tcp://host:8786), one "
                         "task per file; each worker loads the model once and writes to --output, which the "
                         "workers must reach (napari-etdms[distributed])")
    cluster.add_argument("--workers", type=at_least(1), metavar="N",
                         help="run the files on N worker processes of a local dask.distributed cluster")
    add_run_options(infer)

    demo = sub.add_parser("demo", help="run the shipped model on the bundled sample frame(s)")
    demo.add_argument("-o", "--output", type=Path, default=Path("etdms-demo"), help="output folder")
    demo.add_argument("--all", action="store_true", help="also process the larger 1024x1024 sample")
    demo.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    demo.set_defaults(max_pixels=DEFAULT_MAX_PIXELS)
    add_run_options(demo)

    info = sub.add_parser("info", help="versions, devices, the precision and threads a run would use, weights")
    add_speed_options(info, precisions=())
    infer.set_defaults(run=cmd_infer)
    demo.set_defaults(run=cmd_demo)
    info.set_defaults(run=cmd_info)


class ConsoleReporter:
    """A progress bar while each file runs (serial runs) and one line per file as it ends; with
    `total` (files end out of order on a cluster), lines are counted ("[3/10] ...") and name the
    error's type (raised on another machine)."""

    def __init__(self, output: Path, total: int | None = None):
        self.output, self.total, self.done = output, total, 0
        self.bar = None

    def started(self, job):
        self.bar, update = progress_bar(job.source.name)
        return update

    def finished(self, job, line: str | None, error: BaseException | None) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.done += 1
        count = f"[{self.done}/{self.total}] " if self.total else ""
        if error is None:
            print(f"{count}{job.source}: {line} -> {self.output}", flush=True)
        else:
            kind = f"{type(error).__name__}: " if self.total else ""
            print(f"{count}{job.source}: error: {kind}{error}", file=sys.stderr, flush=True)


def infer_files(args, files: list[Path]) -> int:
    from napari_etdms.engine import BatchSettings, OutputFolderError, plan, run_files
    from napari_etdms.io import require_zarr

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
        failures = infer_on_cluster(args, jobs, batch)
    else:
        failures = run_files(jobs, batch, ConsoleReporter(args.output), load_pipeline(args))
    if failures:
        print(f"{failures} of {len(files)} file(s) failed", file=sys.stderr)
    return EXIT_ERROR if failures else EXIT_OK


def infer_on_cluster(args, jobs, batch) -> int:
    """The batch on a dask.distributed cluster: a running scheduler, or N local worker processes."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ValueError("--scheduler and --workers need dask.distributed: "
                         "pip install 'napari-etdms[distributed]'") from None
    from napari_etdms.engine import run_distributed

    reporter = ConsoleReporter(args.output, total=len(jobs))
    if args.scheduler:
        with Client(args.scheduler) as client:
            return run_distributed(jobs, batch, client, reporter)
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        return run_distributed(jobs, batch, client, reporter)


def cmd_infer(args) -> int:
    from napari_etdms.engine import input_files
    from napari_etdms.samples import sample_paths

    files = input_files(args.inputs) if args.inputs else sample_paths()
    if not files:
        print("no TIFF or PNG files found in the given inputs", file=sys.stderr)
        return EXIT_ERROR
    return infer_files(args, files)


def cmd_demo(args) -> int:
    from napari_etdms.samples import sample_path, sample_paths

    files = sample_paths() if args.all else [sample_path("superalloy")]
    return infer_files(args, files)


def cmd_info(args) -> int:
    import torch

    from napari_etdms.engine import Pipeline
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
