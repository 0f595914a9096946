"""`etdms eval` and `degrade`: measuring on degraded clean frames, and looking at the degradation."""

from __future__ import annotations

import sys
from pathlib import Path

from napari_etdms.cli.common import (
    EXIT_OK,
    EXIT_USAGE,
    add_degradation_option,
    add_run_options,
    degradation_from,
    load_pipeline,
    names,
    progress_bar,
)


def add_commands(sub) -> None:
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
    add_degradation_option(ev)
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
    add_run_options(ev)

    deg = sub.add_parser("degrade", help="write simulated SEM degradations of clean frames, to look at")
    deg.add_argument("inputs", nargs="+", metavar="INPUT", help="clean frames (files or folders)")
    deg.add_argument("-o", "--output", required=True, type=Path)
    deg.add_argument("--count", type=int, default=3, help="random degradations per frame")
    deg.add_argument("--crop", type=int, default=512, help="central crop, high-res px (0: whole frame)")
    deg.add_argument("--seed", type=int, default=0)
    add_degradation_option(deg)
    ev.set_defaults(run=cmd_eval)
    deg.set_defaults(run=cmd_degrade)


def cmd_eval(args) -> int:
    from napari_etdms.engine import OutputFolderError, check_output_folder
    from napari_etdms.evaluation import DEGRADATION_KINDS, parse_doses, run_evaluation, split_held_out_sources
    from napari_etdms.io import iter_image_files
    from napari_etdms.simulation import validation_frames

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
    baselines = [] if args.baselines.strip().lower() == "none" else names(args.baselines)
    held_out = names(args.held_out_sources)
    files = iter_image_files(args.inputs)
    if args.split:
        files += validation_frames(args.split, args.frames_dir)
        held_out += [name for name in split_held_out_sources(args.split) if name not in held_out]
    if not files:
        print("no frames to evaluate: give files, folders or --split", file=sys.stderr)
        return EXIT_USAGE
    degradation = degradation_from(args.degradation)
    try:
        check_output_folder(args.output)
    except OutputFolderError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    pipeline = load_pipeline(args)
    bar, update = progress_bar("eval")
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

    from napari_etdms.evaluation import centre_crop
    from napari_etdms.io import iter_image_files, write_file_atomically, write_tiff
    from napari_etdms.simulation import degrade, load_normalised

    files = iter_image_files(args.inputs)
    degradation = degradation_from(args.degradation)
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
