"""`etdms train`, `adapt` and `export`: training the models, adapting stage 1 to a microscope, sharing it."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from napari_etdms.cli.common import EXIT_ERROR, EXIT_NOT_KEPT, EXIT_OK, add_speed_options, at_least, positive
from napari_etdms.io import DEFAULT_MAX_PIXELS


def add_commands(sub) -> None:
    train = sub.add_parser("train", help="train stage 1, stage 2, or both then fine-tune (see README)")
    train.add_argument("-c", "--config", required=True, type=Path, help="training config JSON")
    train.add_argument("-s", "--stage", type=int, choices=[0, 1, 2], default=0,
                       help="1: denoiser, 2: CLSR, 0: both, then CLSR fine-tuned on stage-1 outputs")
    train.add_argument("--run-dir", type=Path, help="run folder (default runs/<config name>); resumes if present")
    train.add_argument("--max-minutes", type=float, help="wall-clock budget; stops cleanly with a checkpoint")
    train.add_argument("--device", default="auto")
    add_speed_options(train, precisions=())  # the config's precision (auto by default) decides
    train.add_argument("--export", type=Path, help="write the trained weights as a registry folder here")
    train.add_argument("--clsr-from", metavar="WEIGHTS",
                       help="with --export: take stage 2 from these weights (registry name or folder) instead of "
                       "this run's; recorded by name and hash")

    from napari_etdms.training import ADAPT_SETTINGS, DEFAULT_ADAPT_MINUTES, VALIDATION_ROWS

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
    ad.add_argument("--minutes", "--max-minutes", type=positive, default=DEFAULT_ADAPT_MINUTES,
                    help=f"training time budget (default {DEFAULT_ADAPT_MINUTES:g}; a step took 2.5 s on 2 threads "
                    "of a Zen 5 with native bfloat16, 6 s on an AVX2 Zen 3)")
    ad.add_argument("--iterations", type=at_least(1), default=ADAPT_SETTINGS.iterations,
                    help=f"at most this many steps (default {ADAPT_SETTINGS.iterations})")
    ad.add_argument("--device", default="auto")
    add_speed_options(ad, precisions=("auto", "float32", "bfloat16"))  # no float16 training (no loss scaling)
    ad.add_argument("--keep-anyway", action="store_true",
                    help="write the adapted weights even if the base denoises the held-out rows better")
    ad.add_argument("--restart", action="store_true", help="discard an interrupted run instead of resuming it")
    ad.add_argument("--max-pixels", type=at_least(1), default=DEFAULT_MAX_PIXELS,
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
    train.set_defaults(run=cmd_train)
    ad.set_defaults(run=cmd_adapt)
    ex.set_defaults(run=cmd_export)


def cmd_train(args) -> int:
    from napari_etdms.runtime import select_device, summary
    from napari_etdms.training import (
        StageTrainer,
        export,
        is_lead,
        lead_decides,
        load_train_config,
        start_distributed,
        stop_distributed,
    )

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


def cmd_adapt(args) -> int:
    from napari_etdms.engine import input_files
    from napari_etdms.runtime import select_device
    from napari_etdms.training import ADAPT_SETTINGS, adapt, frames_from_files, seconds_left, work_folder
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
    from napari_etdms.export import export_model

    result = export_model(args.weights, args.output, noise=args.noise, from_frame=args.from_frame,
                          overwrite=args.overwrite)
    noise = result.noise.model
    told = f"noise gain {noise.gain:.6g}, offset {noise.offset:.6g} ({result.noise.source})" if noise else \
        "a blind denoiser (no noise model)"
    print(f"wrote {result.path} ({result.size_bytes / 2**20:.1f} MiB): stage 1 of '{result.weights['name']}' "
          f"({result.weights['hash']}), {told}")
    print(f"check it with: bioimageio test {result.path}")
    return EXIT_OK
