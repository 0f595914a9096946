"""The widget's background job as a plain generator (no Qt, no napari): it runs the
pipeline on a helper thread and yields progress, so napari's generator worker can relay
it to the GUI and a cancel request reaches the pipeline within one sampling step."""

from __future__ import annotations

import functools
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from ..noise import frame_noise
from ..pipeline import Pipeline, Result
from ..tiling import Cancelled


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
    options: dict = field(default_factory=dict)  # Pipeline.run keyword arguments
    # per frame, a larger frame to estimate its noise on (a region's whole slice); None: itself
    noise_frames: list[np.ndarray] | None = None


@functools.lru_cache(maxsize=2)
def load_pipeline(weights: str | None, device: str, precision: str) -> Pipeline:
    return Pipeline.from_pretrained(weights, device=device, precision=precision)


def _is_out_of_memory(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def _run_with_backoff(pipeline: Pipeline, frame: np.ndarray, options: dict, **kwargs) -> Result:
    """On GPU out-of-memory, retry with half the tile batch before giving up."""
    batch = options.get("batch_size") or pipeline.auto_batch_size
    while True:
        try:
            return pipeline.run(frame, **{**options, "batch_size": batch}, **kwargs)
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


def run_job(job: Job, cancel: threading.Event):
    """Generator: yields Progress, returns the list of Results (one per frame), or None
    when `cancel` was set (nothing partial). Closing the generator also cancels."""
    events: queue.Queue = queue.Queue()
    started = time.monotonic()

    def work():
        try:
            pipeline = load_pipeline(job.weights, job.device, job.precision)
            results = []
            for index, frame in enumerate(job.frames):
                def report(done, total, stage, index=index):
                    events.put(("progress", (done, total, stage, index)))

                noise = frame_noise(job.noise_frames[index])[0] if job.noise_frames else None
                results.append(_run_with_backoff(pipeline, frame, job.options, noise=noise, progress=report,
                                                 cancel=cancel))
            events.put(("done", results))
        except BaseException as err:  # relayed to the generator's caller
            events.put(("error", err))

    thread = threading.Thread(target=work, name="etdms-job", daemon=True)
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
            done, total, stage, index = payload
            overall = (index * total + done) / (total * len(job.frames))
            elapsed = time.monotonic() - started
            eta = elapsed * (1 - overall) / overall if overall > 0 else None
            yield Progress(done, total, stage, index, len(job.frames), eta)
    finally:
        cancel.set()  # no-op after completion; stops the pipeline if the generator was closed
        thread.join()


__all__ = ["Cancelled", "Job", "Progress", "load_pipeline", "run_job"]
