"""Frames through the pipeline in a batch, as `etdms infer` runs them.

Everything that can be checked is checked before any compute: the output folder (created,
writable), each input's output files (not an input, not another input's, not already there
unless overwriting), and our own stale temporaries are cleared. Each input's outputs are then
written as one set, all or nothing, so old and new outputs never mix.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .io import is_our_output, iter_image_files, remove_stale_temporaries, tiff_writer, write_files_atomically
from .pipeline import Result

OUTPUT_NAMES = {  # Result field -> file name suffix
    "denoised": "denoised",
    "super_resolved": "etdms_x4",
    "bicubic_input": "bicubic_x4",
    "bicubic_denoised": "denoised_bicubic_x4",
    "std": "std_x4",
}


class OutputFolderError(OSError):
    """The output folder cannot be created or written to."""


@dataclass(frozen=True)
class FileJob:
    source: Path
    outputs: dict[str, Path]  # Result field -> output file
    problem: str | None = None  # why this input is not processed (reported; the others go on)


def output_paths(out_dir: Path, stem: str) -> dict[str, Path]:
    return {field: out_dir / f"{stem}_{suffix}.tif" for field, suffix in OUTPUT_NAMES.items()}


def input_files(inputs: list[str | os.PathLike]) -> list[Path]:
    """Files and folders' image files; in folders, files this package wrote are left out, so a
    rerun into the input folder does not take its own outputs as inputs."""
    return iter_image_files(inputs, skip=is_our_output)


def check_output_folder(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as err:
        raise OutputFolderError(f"{out_dir}: cannot write outputs there ({err.strerror or err}); "
                                "choose another --output folder") from None


def plan(inputs: list[Path], out_dir: Path, overwrite: bool) -> list[FileJob]:
    """One job per input, with the reason it cannot run where it cannot; raises
    OutputFolderError before anything else when the output folder is unusable."""
    check_output_folder(out_dir)
    sources = {path.resolve() for path in inputs}
    claimed: dict[Path, Path] = {}
    jobs = []
    for path in inputs:
        outputs = output_paths(out_dir, path.stem)
        problem = None
        for out in outputs.values():
            if out.resolve() in sources:
                problem = f"output {out} would overwrite an input; choose another --output folder"
            elif out.resolve() in claimed:
                problem = f"output {out} is also the output of {claimed[out.resolve()]}; rename one of them"
            elif out.exists() and not overwrite:
                problem = f"output {out} exists already; --overwrite replaces this input's outputs"
            if problem:
                break
        if problem is None:
            claimed.update({out.resolve(): path for out in outputs.values()})
            for out in outputs.values():
                remove_stale_temporaries(out)
        jobs.append(FileJob(path, outputs, problem))
    return jobs


def write_outputs(job: FileJob, result: Result, pixel_size_nm: float | None, provenance: dict,
                  overwrite: bool) -> list[Path]:
    """The input's outputs as one set: all written, or none."""
    writes = {}
    for field, out in job.outputs.items():
        data = getattr(result, field)
        if data is None:
            continue
        scale = 1 if field == "denoised" else 4
        pixel = pixel_size_nm / scale if pixel_size_nm else None
        writes[out] = tiff_writer(out, data, pixel, provenance | {"layer": field})
    return write_files_atomically(writes, overwrite=overwrite)
