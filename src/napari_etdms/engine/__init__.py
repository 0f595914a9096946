"""The engine: one frame through stage 1 and stage 2, and batches of frames.

- `settings`: `RunSettings`, the one set of run defaults (the CLI and the widget share them)
- `tiling`: a frame cut into overlapping tiles and blended back (a callable plus inputs)
- `bands`: stage 2 over bands of rows (the diffusion chain, the one-evaluation mean), data consistency
- `pipeline`: `Pipeline`: plan, stage 1, stage 2, describe (the provenance)
- `batch`: files in, each input's outputs written as one set; serially or on a dask cluster
- `volume`: a stack of slices into 3D OME-Zarr outputs, resumable, slice-parallel on dask
- `process`: what every process of a batch runs with (settings, threads, the model loaded once)
"""

from napari_etdms.engine.batch import (
    FILE_ERRORS,
    OUTPUT_NAMES,
    BatchProgress,
    FileJob,
    FileReporter,
    OutputFolderError,
    check_output_folder,
    input_files,
    plan,
    process_file,
    run_distributed,
    run_files,
    run_serially,
)
from napari_etdms.engine.pipeline import InputError, Pipeline, Result
from napari_etdms.engine.process import BatchSettings, cached_pipeline
from napari_etdms.engine.settings import DEFAULTS, MAX_STRENGTH, MIN_TILE, RunSettings
from napari_etdms.engine.tiling import Cancelled
from napari_etdms.engine.volume import run_volume, volume_slice_noise

__all__ = ["BatchProgress", "BatchSettings", "cached_pipeline", "Cancelled", "check_output_folder", "DEFAULTS",
           "FILE_ERRORS", "FileJob", "FileReporter", "input_files", "InputError", "MAX_STRENGTH", "MIN_TILE",
           "OUTPUT_NAMES", "OutputFolderError", "Pipeline", "plan", "process_file", "Result", "run_distributed",
           "run_files", "run_serially", "run_volume", "RunSettings", "volume_slice_noise"]
