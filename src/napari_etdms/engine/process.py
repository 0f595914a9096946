"""What every process of a batch runs with: the settings (sent to each cluster worker), its
thread count, and the model, loaded once per process."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from napari_etdms.engine.pipeline import Pipeline
from napari_etdms.engine.settings import DEFAULTS, RunSettings
from napari_etdms.io import DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class BatchSettings:
    """What every file of a batch runs with (sent to each worker of a cluster)."""

    weights: str | None = None  # registry name or folder
    device: str = "auto"
    precision: str = "auto"
    settings: RunSettings = DEFAULTS
    max_pixels: int = DEFAULT_MAX_PIXELS
    overwrite: bool = False
    # torch CPU threads in each process (None: the free cores, chosen by the CLI; dask workers: 1).
    # Float sums depend on the thread count: the same count gives bit-identical outputs.
    threads: int | None = None


def use_batch_threads(batch: BatchSettings) -> None:
    if batch.threads:
        import torch

        torch.set_num_threads(batch.threads)


def weights_provenance(weights: str | None) -> dict:
    """The weights' name and hash without loading the networks (a cluster's coordinator)."""
    from napari_etdms.weights import resolve

    return resolve(weights).provenance()


@functools.lru_cache(maxsize=2)
def cached_pipeline(weights: str | None, device: str, precision: str) -> Pipeline:
    """One model per process: a cluster worker loads it for its first file and keeps it."""
    return Pipeline.from_pretrained(weights, device=device, precision=precision)
