"""The widget's background jobs as plain generators (no Qt, no napari): a run of the
pipeline, or an adaptation of stage 1 to the image, on a helper thread, yielding progress,
so napari's generator worker can relay it to the GUI; a cancel request reaches the pipeline
within one sampling step, and an adaptation within one training step."""

from __future__ import annotations

import queue
import shutil
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from napari_etdms.engine import (
    DEFAULTS,
    Cancelled,
    InputError,
    Pipeline,
    Result,
    RunSettings,
    cached_pipeline,
    run_serially,
    volume_slice_noise,
)
from napari_etdms.runtime import use_threads
from napari_etdms.stage1 import NoiseModel, frame_noise


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    stage: str
    frame: int  # 0-based index of the slice being processed
    frames: int
    eta_s: float | None


@dataclass
class Job:
    frames: list[np.ndarray]  # 2D frames: one, or every slice of a stack
    weights: str | None
    device: str = "auto"
    precision: str = "auto"
    settings: RunSettings = DEFAULTS
    # per frame, a larger frame to estimate its noise on (a region's whole slice); None: itself
    noise_frames: list[np.ndarray] | None = None


def _is_out_of_memory(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def _run_with_backoff(pipeline: Pipeline, frame: np.ndarray, settings: RunSettings, **kwargs) -> Result:
    """On GPU out-of-memory, retry with half the tile batch before giving up."""
    batch = settings.batch_size or pipeline.auto_batch_size
    while True:
        try:
            return pipeline.run_with(frame, replace(settings, batch_size=batch), **kwargs)
        except (RuntimeError, MemoryError) as err:
            if not _is_out_of_memory(err) or batch == 1:
                if _is_out_of_memory(err):
                    raise MemoryError(
                        "out of memory even with one tile per batch: use a smaller region or tile, "
                        "denoise only, or the CPU device"
                    ) from err
                raise
            import torch

            torch.cuda.empty_cache()
            batch = max(1, batch // 2)


def _eta(started: float, fraction: float) -> float | None:
    return (time.monotonic() - started) * (1 - fraction) / fraction if fraction > 0 else None


def _in_background(work, cancel: threading.Event):
    """Generator: runs `work(report)` on a helper thread and yields what it reports; returns
    its result, or None when it was cancelled. Closing the generator also cancels."""
    events: queue.Queue = queue.Queue()

    def target():
        try:
            events.put(("done", work(lambda progress: events.put(("progress", progress)))))
        except BaseException as err:  # relayed to the generator's caller
            events.put(("error", err))

    thread = threading.Thread(target=target, name="etdms-job", daemon=True)
    thread.start()
    try:
        while True:
            kind, payload = events.get()
            if kind == "error":
                if isinstance(payload, Cancelled):
                    return None
                raise payload
            if kind == "done":
                return payload
            yield payload
    finally:
        cancel.set()  # no-op after completion; stops the work if the generator was closed
        thread.join()


def slice_noise_of(job: Job, index: int) -> NoiseModel | None:
    """Frame `index`'s noise model: in a stack of three or more slices, also estimated across
    its neighbours (`engine.volume_slice_noise`, as `etdms infer` does volumes); from its whole
    slice for a region; None (the pipeline estimates it) for one whole frame."""
    frames = job.noise_frames or job.frames
    if len(frames) >= 3:
        return volume_slice_noise(frames.__getitem__, index, len(frames))[0]
    return frame_noise(job.noise_frames[index])[0] if job.noise_frames else None


def run_job(job: Job, cancel: threading.Event):
    """Generator: yields Progress, returns the list of Results (one per frame), or None
    when `cancel` was set (nothing partial). Closing the generator also cancels."""
    started = time.monotonic()

    def work(report):
        use_threads()  # the cores free now: other work on this machine may have changed
        pipeline = cached_pipeline(job.weights, job.device, job.precision)

        def run_slice(index, progress):
            noise = slice_noise_of(job, index)
            try:
                return _run_with_backoff(pipeline, job.frames[index], job.settings, noise=noise, progress=progress,
                                         cancel=cancel)
            except InputError as err:
                if len(job.frames) == 1:
                    raise
                raise InputError(f"slice {index}: {err}") from None

        def relay(p):
            report(Progress(p.done, p.total, p.stage, p.item, p.items, _eta(started, p.fraction)))

        # the output layers need every slice: the first failing one stops the job
        return run_serially(range(len(job.frames)), run_slice, progress=relay, stop_on_error=True)

    return (yield from _in_background(work, cancel))


@dataclass
class AdaptJob:
    frames: list[np.ndarray]  # 2D frames: one, or every slice of a stack
    name: str  # the image's name, for the record
    base: str | None  # weights to adapt
    output: Path  # the weights folder to write
    device: str = "auto"
    minutes: float | None = None  # None: the default budget
    iterations: int | None = None  # None: the default
    precision: str = "auto"


def adapt_job(job: AdaptJob, cancel: threading.Event):
    """Generator: adapts stage 1 to the job's frames (`training.adapt`), yields Progress and
    returns the AdaptOutcome, or None when cancelled (then no weights folder is left)."""
    from napari_etdms.runtime import select_device
    from napari_etdms.training import DEFAULT_ADAPT_MINUTES, AdaptFrame, adapt, seconds_left, work_folder

    started = time.monotonic()
    minutes = job.minutes or DEFAULT_ADAPT_MINUTES

    def work(report):
        names = [job.name] if len(job.frames) == 1 else [f"{job.name}[{i}]" for i in range(len(job.frames))]
        frames = [AdaptFrame.from_image(frame, name) for frame, name in zip(job.frames, names)]

        def progress(done, total):
            report(Progress(done, total, "adapt", 0, 1, seconds_left(time.monotonic() - started, done, total, minutes)))

        try:
            return adapt(frames, job.output, job.base, minutes, job.iterations, str(select_device(job.device)),
                         progress=progress, cancel=cancel, sources=[{"layer": job.name}], precision=job.precision)
        except BaseException:
            # the widget names each adaptation anew, so nothing would resume this work
            shutil.rmtree(work_folder(job.output), ignore_errors=True)
            raise

    return (yield from _in_background(work, cancel))




@dataclass
class StackJob:
    """Every slice of a stack file (3D OME-Zarr, multi-page TIFF) into 3D OME-Zarr outputs in
    `output`, as `etdms infer` writes them: the same job again resumes a stopped one."""

    source: Path
    output: Path
    weights: str | None
    device: str = "auto"
    precision: str = "auto"
    settings: RunSettings = DEFAULTS


def stack_job(job: StackJob, cancel: threading.Event):
    """Generator: yields Progress over the stack's slices, returns {Result field: store path}
    of the outputs, or None when cancelled (the slices finished so far stay complete)."""
    from napari_etdms.engine import BatchSettings, plan, run_volume

    started = time.monotonic()

    def work(report):
        threads = use_threads()
        [file_job] = plan([job.source], job.output, overwrite=False)
        if file_job.problem or not file_job.volume:
            raise ValueError(file_job.problem or f"{job.source}: not a stack of slices")
        pipeline = cached_pipeline(job.weights, job.device, job.precision)
        batch = BatchSettings(job.weights, job.device, job.precision, job.settings, threads=threads.count)

        def relay(done, total, stage):
            report(Progress(done, total, stage, 0, 1, _eta(started, done / total if total else 0.0)))

        run_volume(file_job, batch, pipeline, progress=relay, cancel=cancel)
        return {field: path for field, path in file_job.outputs.items() if path.exists()}

    return (yield from _in_background(work, cancel))


__all__ = ["AdaptJob", "Cancelled", "Job", "Progress", "StackJob", "adapt_job", "run_job", "stack_job"]
