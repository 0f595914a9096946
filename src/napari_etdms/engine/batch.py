"""Frames through the pipeline in a batch: `etdms infer`'s files, `etdms eval`'s frames and
the widget's slices all run through `run_serially` (or `run_distributed` on a cluster).

Everything that can be checked is checked before any compute: the output folder (created,
writable), each input's output files (not an input, not another input's, not already there
unless overwriting), and our own stale temporaries are cleared. Each input's outputs are then
written as one set, all or nothing, so old and new outputs never mix.

Outputs are TIFFs, or OME-Zarr images (`output_format="zarr"`, the default for OME-Zarr
inputs): then the x4 arrays, and stage 2's state, live on disk while the file runs, in a
hidden work folder inside the output folder, and the process holds bands, not frames.

The files run here one after another (`run_files`), or as one task per file on a
`dask.distributed` cluster (`run_distributed`); either tells a `FileReporter` as each file ends.
On a cluster each worker process loads the model once and writes the outputs itself, so the
output folder must be one the workers can reach (a shared drive).
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

from napari_etdms.engine.pipeline import OUTPUT_SCALES, Pipeline, Result
from napari_etdms.engine.process import BatchSettings, cached_pipeline, use_batch_threads
from napari_etdms.engine.volume import run_volume
from napari_etdms.io import (
    OUTPUT_FORMATS,
    TEMPORARY_SUFFIX,
    ZARR_SUFFIX,
    ReadError,
    is_our_output,
    iter_image_files,
    read_frame,
    remove_file_or_folder,
    remove_stale_temporaries,
    tiff_writer,
    write_files_atomically,
)
from napari_etdms.io.ome_zarr import zarr_stem
from napari_etdms.io.volume import open_volume

# what fails one file and lets the batch go on (anything else stops the batch)
FILE_ERRORS = (ReadError, ValueError, FileExistsError, MemoryError, OSError)

OUTPUT_NAMES = {  # Result field -> file name suffix
    "denoised": "denoised",
    "super_resolved": "etdms_x4",
    "bicubic_input": "bicubic_x4",
    "bicubic_denoised": "denoised_bicubic_x4",
    "std": "std_x4",
}


class OutputFolderError(OSError):
    """The output folder cannot be created or written to."""


Item = TypeVar("Item")


@dataclass(frozen=True)
class BatchProgress:
    item: int  # 0-based index of the item being processed
    items: int
    done: int  # the item's own progress: tile batches done of `total`
    total: int
    stage: str

    @property
    def fraction(self) -> float:
        """Of the whole batch, counting every item as the same amount of work."""
        return (self.item + (self.done / self.total if self.total else 0.0)) / self.items


def run_serially(items: Sequence[Item], work: Callable[[Item, Callable[[int, int, str], None]], Any],
                 report: Callable[[Item, Any, BaseException | None], None] | None = None,
                 progress: Callable[[BatchProgress], None] | None = None,
                 stop_on_error: bool = False) -> list[Any]:
    """The batch's serial executor: `work(item, item_progress)` for each item in turn, with
    `item_progress(done, total, stage)` relayed to `progress` as the batch's. `report(item,
    result, error)` as each item ends. An item that fails with one of FILE_ERRORS is reported
    and the others go on (its result is None), unless `stop_on_error`; any other error (a
    cancel, a bug) stops the batch."""
    results = []
    for index, item in enumerate(items):
        def item_progress(done: int, total: int, stage: str, index: int = index) -> None:
            if progress is not None:
                progress(BatchProgress(index, len(items), done, total, stage))

        try:
            result, error = work(item, item_progress), None
        except FILE_ERRORS as err:
            if stop_on_error:
                raise
            result, error = None, err
        if report is not None:
            report(item, result, error)
        results.append(result)
    return results


@dataclass(frozen=True)
class FileJob:
    source: Path
    outputs: dict[str, Path]  # Result field -> output file (or OME-Zarr folder)
    problem: str | None = None  # why this input is not processed (reported; the others go on)
    volume: bool = False  # a stack of slices (engine.volume): 3D OME-Zarr outputs, resumable

    @property
    def zarr(self) -> bool:
        return next(iter(self.outputs.values())).suffix == ZARR_SUFFIX


def output_paths(out_dir: Path, source: Path, output_format: str = "auto", volume: bool = False) -> dict[str, Path]:
    """Each Result field's output; a volume's are always 3D OME-Zarr images."""
    zarr_input = source.suffix.lower() == ZARR_SUFFIX
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format '{output_format}' (choose from {', '.join(OUTPUT_FORMATS)})")
    if volume and output_format == "tiff":
        raise ValueError(f"{source}: a stack of slices is written as 3D OME-Zarr; leave --output-format at auto")
    zarr_output = volume or output_format == "zarr" or (output_format == "auto" and zarr_input)
    extension = ".ome.zarr" if zarr_output else ".tif"
    stem = zarr_stem(source) if zarr_input else source.stem
    return {field: out_dir / f"{stem}_{suffix}{extension}" for field, suffix in OUTPUT_NAMES.items()}


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


def plan(inputs: list[Path], out_dir: Path, overwrite: bool, output_format: str = "auto") -> list[FileJob]:
    """One job per input, with the reason it cannot run where it cannot; raises
    OutputFolderError before anything else when the output folder is unusable. A volume's
    existing outputs are not a problem: the run resumes them (engine.volume)."""
    check_output_folder(out_dir)
    sources = {path.resolve() for path in inputs}
    claimed: dict[Path, Path] = {}
    jobs = []
    for path in inputs:
        volume = _is_volume(path)
        try:
            outputs = output_paths(out_dir, path, output_format, volume)
        except ValueError as err:
            jobs.append(FileJob(path, output_paths(out_dir, path, "zarr"), str(err), volume))
            continue
        problem = None
        for out in outputs.values():
            if out.resolve() in sources:
                problem = f"output {out} would overwrite an input; choose another --output folder"
            elif out.resolve() in claimed:
                problem = f"output {out} is also the output of {claimed[out.resolve()]}; rename one of them"
            elif out.exists() and not overwrite and not volume:
                problem = f"output {out} exists already; --overwrite replaces this input's outputs"
            if problem:
                break
        if problem is None:
            claimed.update({out.resolve(): path for out in outputs.values()})
            for out in outputs.values():
                remove_stale_temporaries(out)
        jobs.append(FileJob(path, outputs, problem, volume))
    return jobs


def _is_volume(path: Path) -> bool:
    """From the header alone; an unreadable file is not one (it fails, named, when it runs)."""
    try:
        return open_volume(path, max_pixels=2**62) is not None
    except (ReadError, ImportError, OSError):
        return False


def _pixel_sizes(job: FileJob, pixel_size_nm: float | None) -> dict[str, float | None]:
    return {field: pixel_size_nm / OUTPUT_SCALES[field] if pixel_size_nm else None for field in job.outputs}


def write_outputs(job: FileJob, result: Result, pixel_size_nm: float | None, provenance: dict,
                  overwrite: bool) -> list[Path]:
    """The input's TIFF outputs as one set: all written, or none."""
    pixels = _pixel_sizes(job, pixel_size_nm)
    writes = {out: tiff_writer(out, getattr(result, field), pixels[field], provenance | {"layer": field})
              for field, out in job.outputs.items() if getattr(result, field) is not None}
    return publish(job, writes, overwrite)


def publish(job: FileJob, writes: dict, overwrite: bool, folders: bool = False) -> list[Path]:
    """The outputs as one set; when overwriting, an earlier run's outputs that this run did
    not make (e.g. its x4 output, now with --no-sr) go too, or the set would mix two runs."""
    published = write_files_atomically(writes, overwrite=overwrite, folders=folders)
    if overwrite:
        for out in set(job.outputs.values()) - set(published):
            remove_file_or_folder(out)
    return published


def run_to_ome_zarr(job: FileJob, pipeline: Pipeline, frame, batch: BatchSettings, progress=None) -> Result:
    """Run one input with its x4 arrays on disk and publish its OME-Zarr outputs as one set.
    The work folder (hidden, in the output folder) is removed whatever happens; one left by
    a killed process is removed by a later `plan` (`remove_stale_temporaries`)."""
    from napari_etdms.io.ome_zarr import OmeZarrOutputs, check_disk, require_zarr

    require_zarr()
    first = next(iter(job.outputs.values()))
    check_disk(first.parent, *frame.data.shape[:2], batch.settings)  # (H, W) of grey and RGB frames
    work = Path(tempfile.mkdtemp(prefix=f".{first.name}.", suffix=TEMPORARY_SUFFIX, dir=first.parent))
    try:
        arrays = OmeZarrOutputs(work, list(job.outputs))
        result = pipeline.run_with(frame.data, batch.settings, progress=_keeping_alive(work, progress), arrays=arrays)
        made = {field: getattr(result, field) for field in job.outputs if getattr(result, field) is not None}
        staged = arrays.finish(made, _pixel_sizes(job, frame.pixel_size_nm), _provenance(job, result, frame))
        moves = {job.outputs[field]: functools.partial(_move_into, folder) for field, folder in staged.items()}
        publish(job, moves, batch.overwrite, folders=True)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _move_into(staged: Path, temporary: str) -> None:
    """The staged output becomes the empty temporary folder made for it (a rename: same drive)."""
    os.rmdir(temporary)
    os.rename(staged, temporary)


def _keeping_alive(folder: Path, progress, every_s: float = 30.0):
    """`progress`, which also touches `folder` now and then: a later run into the same output
    folder takes a work folder untouched for 10 minutes as a killed run's (its files change,
    deep inside, but not its own time)."""
    touched = time.monotonic()

    def relay(done, total, stage):
        nonlocal touched
        if time.monotonic() - touched > every_s:
            os.utime(folder)
            touched = time.monotonic()
        if progress is not None:
            progress(done, total, stage)

    return relay


def _provenance(job: FileJob, result: Result, frame) -> dict:
    return result.metadata | {"source": str(job.source), "source_pixel_size_nm": frame.pixel_size_nm}


def process_file(job: FileJob, batch: BatchSettings, pipeline: Pipeline | None = None,
                 progress: Callable[[int, int, str], None] | None = None) -> str:
    """Read one input, run it, write its outputs as one set; returns the line to report.
    Raises one of FILE_ERRORS when this input fails."""
    if job.problem:
        raise ValueError(job.problem)
    use_batch_threads(batch)
    if job.volume:
        return run_volume(job, batch, pipeline, progress)
    frame = read_frame(job.source, batch.max_pixels)
    pipeline = pipeline or cached_pipeline(batch.weights, batch.device, batch.precision)
    if job.zarr:
        result = run_to_ome_zarr(job, pipeline, frame, batch, progress)
    else:
        result = pipeline.run_with(frame.data, batch.settings, progress=progress)
        write_outputs(job, result, frame.pixel_size_nm, _provenance(job, result, frame), batch.overwrite)
    mapped = result.metadata["intensity_map"]
    return (f"done in {sum(result.metadata['timings'].values()):.1f} s "
            f"(noise: {result.noise.describe(mapped['low'], mapped['high'])})")


class FileReporter(Protocol):
    """What a batch of files tells its caller (the CLI prints it; a test counts it)."""

    def started(self, job: FileJob) -> Callable[[int, int, str], None] | None:
        """A file starts: the callable, if any, gets its progress (done, total, stage)."""

    def finished(self, job: FileJob, line: str | None, error: BaseException | None) -> None:
        """A file ended: its result line, or the error that failed it (the others go on)."""


def run_files(jobs: list[FileJob], batch: BatchSettings, reporter: FileReporter, pipeline: Pipeline | None = None
              ) -> int:
    """The files one after another in this process; returns the number that failed."""
    lines = run_serially(jobs, lambda job, _: process_file(job, batch, pipeline, reporter.started(job)),
                         reporter.finished)
    return sum(line is None for line in lines)


def run_distributed(jobs: list[FileJob], batch: BatchSettings, client, reporter: FileReporter) -> int:
    """One task per file on a dask.distributed `client`, reported as each file finishes (in the
    order they finish); a volume's slices are spread over the workers (engine.volume). Returns
    the number of failed files: a failing file, even a worker lost on it, is reported and the
    others go on."""
    from distributed import as_completed

    failures = 0
    for job in [job for job in jobs if job.volume]:
        try:
            if job.problem:
                raise ValueError(job.problem)
            reporter.finished(job, run_volume(job, batch, client=client), None)
        except Exception as err:  # raised here or on a worker, or a worker died
            failures += 1
            reporter.finished(job, None, err)
    jobs = [job for job in jobs if not job.volume]

    # absolute paths: a worker resolves relative ones against its own working folder
    absolute = [replace(job, source=job.source.resolve(), outputs={k: v.resolve() for k, v in job.outputs.items()})
                for job in jobs]
    futures = {client.submit(process_file, task, batch, pure=False, key=f"etdms-{i}-{job.source.name}"): job
               for i, (job, task) in enumerate(zip(jobs, absolute))}
    for future in as_completed(futures):
        job = futures[future]
        try:
            reporter.finished(job, future.result(), None)
        except Exception as err:  # raised on a worker, or the worker died
            failures += 1
            reporter.finished(job, None, err)
    return failures
