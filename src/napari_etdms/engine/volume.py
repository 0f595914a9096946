"""A volume (FIB-SEM, serial block-face stack) through the pipeline slice by slice, into one 3D
OME-Zarr per output (`io.volume`): resumable, slice-parallel on dask.distributed.

- **Resumable.** Each store records the run that made it (weights hash, settings, source) and
  which slices are complete. The same command goes on with the missing slices only; a store
  made by another run is refused (`--overwrite` starts over).
- **Slice-parallel.** The missing slices are cut into ranges, one task each; a worker loads the
  model once, computes its slices and writes them straight into the stores (a slice is its own
  chunk), so nothing is gathered. With the same thread count a slice's arrays are the same
  whichever process computes them.
- **Noise from the neighbouring slices.** A slice's noise is also estimated from its second
  difference along z, which fine texture and sharp edges within the slice do not enter
  (`stage1.noise.slice_noise`): on such content the single-frame estimate reads structure as
  noise, and stage 2 then smooths what it should sharpen.
- **No z-flicker from sampling.** Every slice runs with the same seed, so a diffusion stage 2
  draws the same noise field in every slice and what it generates varies only as the data do
  (a one-evaluation stage 2 has no draws at all). `benchmarks/volume_flicker.py` measures it.
- **Bounded memory.** A worker holds one low-res slice; x4 outputs are written band by band
  into the stores and stage 2's state lives in a scratch folder beside them, whatever the
  volume's size. The disk the remaining slices need is checked before any work.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from napari_etdms import __version__
from napari_etdms.engine.pipeline import OUTPUT_SCALES
from napari_etdms.engine.process import cached_pipeline, use_batch_threads, weights_provenance
from napari_etdms.engine.settings import RunSettings
from napari_etdms.io.files import TEMPORARY_SUFFIX
from napari_etdms.io.ome_zarr import ZarrArrays, scratch_bytes
from napari_etdms.io.volume import Volume, VolumeStore, open_volume, slice_bytes
from napari_etdms.stage1.noise import NoiseModel, frame_noise, slice_noise

RESUME_KEYS = ("weights", "settings", "source_shape")  # a store resumes only the run these describe
SLICES_PER_TASK = 4  # a cluster task's slices: few enough to spread, enough to keep the model busy


def output_fields(settings: RunSettings) -> list[str]:
    """The outputs a run with `settings` makes (the pipeline's Result fields)."""
    fields = ["bicubic_input"]
    if settings.denoise:
        fields += ["denoised", "bicubic_denoised"]
    if settings.super_resolve:
        fields += ["super_resolved"] + (["std"] if settings.samples > 1 else [])
    return fields


class SliceArrays:
    """The pipeline's `ArrayFactory` for slice `z`: outputs are views of that slice in their
    stores, stage 2's state scratch arrays in `scratch`."""

    def __init__(self, stores: dict[str, VolumeStore], z: int, scratch: Path):
        self.stores, self.z, self.scratch = stores, z, ZarrArrays(scratch)

    def empty(self, name: str, shape: tuple[int, int]):
        if name in self.stores:
            return self.stores[name].slice_view(self.z)
        return self.scratch.empty(name, shape)


class VolumeRun:
    """One volume input and its output stores (`outputs`: Result field -> store path)."""

    def __init__(self, source: Path, outputs: dict[str, Path], settings: RunSettings, weights: dict,
                 max_pixels: int):
        volume = open_volume(source, max_pixels)
        if volume is None:
            raise ValueError(f"{source}: not a stack of slices")
        self.volume: Volume = volume
        self.settings, self.weights = settings, weights
        self.stores = {field: VolumeStore(outputs[field]) for field in output_fields(settings)}

    def record(self, field: str) -> dict:
        return {"software": f"napari-etdms {__version__}", "layer": field,
                "weights": {k: self.weights.get(k) for k in ("name", "hash")},
                "settings": dataclasses.asdict(self.settings), "source": str(self.volume.path),
                "source_shape": list(self.volume.shape), "slices": len(self.volume),
                "z_consistency": "the same seed in every slice",
                "pixel_size_nm": self.pixel_size(field), "z_spacing_nm": self.volume.z_spacing_nm}

    def pixel_size(self, field: str) -> float | None:
        px = self.volume.pixel_size_nm
        return px / OUTPUT_SCALES[field] if px else None

    def prepare(self, overwrite: bool) -> list[int]:
        """Create the stores, or check that they are this run's; returns the slices still to do."""
        for field, store in self.stores.items():
            if overwrite:
                store.remove()
            if store.path.exists():
                made = store.record()
                wanted = self.record(field)
                if not made or any(made.get(key) != wanted[key] for key in RESUME_KEYS):
                    differs = [key for key in RESUME_KEYS if made.get(key) != wanted[key]] or ["its record"]
                    raise FileExistsError(
                        f"{store.path}: made by another run ({', '.join(differs)} differ); --overwrite starts over")
            else:
                z, h, w = self.volume.shape
                scale = OUTPUT_SCALES[field]
                store.create((z, h * scale, w * scale), self.pixel_size(field), self.volume.z_spacing_nm,
                             self.record(field))
        done = set.intersection(*(store.completed() for store in self.stores.values()))
        todo = [z for z in range(len(self.volume)) if z not in done]
        self.check_disk(len(todo))
        return todo

    @property
    def folder(self) -> Path:
        """Where the output stores are (and the scratch folder, beside them)."""
        return next(iter(self.stores.values())).path.parent

    def check_disk(self, slices: int) -> None:
        folder = self.folder
        per_slice = slice_bytes(self.volume.shape[1:], {field: OUTPUT_SCALES[field] for field in self.stores})
        scratch = scratch_bytes(*self.volume.shape[1:], self.settings)  # one slice's at a time
        needed, free = slices * per_slice + scratch, shutil.disk_usage(folder).free
        if needed > free:
            raise OSError(f"{folder}: {slices} slices need up to {needed / 2**30:.1f} GiB of disk (uncompressed), "
                          f"{free / 2**30:.1f} GiB is free; choose another --output folder")

    def compute(self, pipeline, slices: list[int], progress: Callable[[int], None] | None = None,
                cancel=None) -> list[int]:
        """Run, write and finish each of `slices`; `progress(z)` after each."""
        first = next(iter(self.stores.values())).path.name
        scratch = Path(tempfile.mkdtemp(prefix=f".{first}.", suffix=TEMPORARY_SUFFIX, dir=self.folder))
        read = SliceCache(self.volume)
        try:
            for z in slices:
                noise, how = volume_slice_noise(read, z, len(self.volume))
                result = pipeline.run_with(read(z), self.settings, noise=noise, cancel=cancel,
                                           arrays=SliceArrays(self.stores, z, scratch / f"z{z}"))
                result.metadata["noise"]["source"] = how
                if "denoised" in self.stores:
                    self.stores["denoised"].write_slice(z, result.denoised)
                for store in self.stores.values():
                    store.finish_slice(z, result.metadata | {"slice": z})
                shutil.rmtree(scratch / f"z{z}", ignore_errors=True)
                if progress is not None:
                    progress(z)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return slices


class SliceCache:
    """`volume.slice`, keeping the last few slices read: each slice's noise is estimated with
    its neighbours, which the next slices need again."""

    def __init__(self, volume: Volume, keep: int = 4):
        self.volume, self.keep, self.slices = volume, keep, {}

    def __call__(self, z: int) -> np.ndarray:
        if z not in self.slices:
            if len(self.slices) >= self.keep:
                self.slices.pop(next(iter(self.slices)))
            self.slices[z] = self.volume.slice(z)
        return self.slices[z]


def volume_slice_noise(read: Callable[[int], np.ndarray], z: int, count: int) -> tuple[NoiseModel, str]:
    """Slice `z`'s noise model with its two nearest neighbours along z (`stage1.slice_noise`);
    a stack of two slices has no second difference: its slices are estimated alone."""
    if count < 3:
        return frame_noise(read(z))
    before, after = (1, 2) if z == 0 else (count - 2, count - 3) if z == count - 1 else (z - 1, z + 1)
    return slice_noise(read(before), read(z), read(after))


def compute_slices(source: Path, outputs: dict[str, Path], batch, slices: list[int]) -> list[int]:
    """A cluster task: `slices` of one volume, in this worker's process (its model cached)."""
    use_batch_threads(batch)
    pipeline = cached_pipeline(batch.weights, batch.device, batch.precision)
    run = VolumeRun(source, outputs, batch.settings, pipeline.weights_provenance, batch.max_pixels)
    return run.compute(pipeline, slices)


def run_volume(job, batch, pipeline=None, progress: Callable[[int, int, str], None] | None = None,
               client=None, cancel=None) -> str:
    """One volume job: its missing slices here (`pipeline`) or as tasks on a dask `client`;
    `progress(done, total, stage)` counts the volume's slices; a set `cancel` stops within a
    slice (the finished ones stay complete). Returns the line to report."""
    weights = pipeline.weights_provenance if pipeline is not None else weights_provenance(batch.weights)
    run = VolumeRun(job.source, job.outputs, batch.settings, weights, batch.max_pixels)
    todo = run.prepare(batch.overwrite)
    total, already = len(run.volume), len(run.volume) - len(todo)
    started, done = time.monotonic(), [already]

    def finished(count: int = 1) -> None:
        done[0] += count
        if progress is not None:
            progress(done[0], total, "slices")

    if progress is not None:
        progress(already, total, "slices")
    if client is None:
        run.compute(pipeline or cached_pipeline(batch.weights, batch.device, batch.precision), todo,
                    progress=lambda z: finished(), cancel=cancel)
    else:
        _on_cluster(client, job, batch, todo, finished)
    seconds = time.monotonic() - started
    resumed = f" ({already} were complete)" if already else ""
    return f"{len(todo)} of {total} slices in {seconds:.1f} s{resumed}"


def _on_cluster(client, job, batch, todo: list[int], finished: Callable[[int], None]) -> None:
    from distributed import as_completed

    source = job.source.resolve()
    outputs = {field: path.resolve() for field, path in job.outputs.items()}
    ranges = [todo[i : i + SLICES_PER_TASK] for i in range(0, len(todo), SLICES_PER_TASK)]
    futures = [client.submit(compute_slices, source, outputs, batch, part, pure=False,
                             key=f"etdms-volume-{job.source.name}-{part[0]}") for part in ranges]
    for future in as_completed(futures):
        finished(len(future.result()))  # a failed task raises here; its finished slices stay complete
