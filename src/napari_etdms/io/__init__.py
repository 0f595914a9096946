"""Files: SEM frames read with their vendor metadata, pixel size and databar, and outputs written.

- `read`: `read_frame` (TIFF, PNG, OME-Zarr) and `read_provenance`; one module per vendor family
  or open format for the metadata: `fei`, `zeiss`, `tescan`, `ome`, `imagej`
- `databar`: the strip of text under the scan area, found and split off
- `frame`, `units`: what a read gives (`Frame`, `ReadError`), lengths in nm, JSON-safe metadata
- `write`: TIFFs with pixel size and provenance; `ome_zarr`: OME-Zarr images read and written
- `files`: a batch's inputs listed, and sets of files written all or nothing
"""

from napari_etdms.io.databar import detect_databar, split_databar
from napari_etdms.io.files import (
    TEMPORARY_SUFFIX,
    is_our_output,
    iter_image_files,
    remove_file_or_folder,
    remove_stale_temporaries,
    write_file_atomically,
    write_files_atomically,
)
from napari_etdms.io.frame import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, OUTPUT_FORMATS, ZARR_SUFFIX, Frame, ReadError
from napari_etdms.io.ome_zarr import OmeZarrOutputs, ZarrArrays, check_disk, multiscale_layer, require_zarr, zarr_stem
from napari_etdms.io.read import read_frame, read_provenance
from napari_etdms.io.units import length_nm, nm_per_unit, to_jsonable
from napari_etdms.io.write import tiff_writer, write_tiff

__all__ = ["DEFAULT_MAX_PIXELS", "Frame", "IMAGE_SUFFIXES", "OUTPUT_FORMATS", "OmeZarrOutputs", "ReadError",
           "TEMPORARY_SUFFIX", "ZARR_SUFFIX", "ZarrArrays", "check_disk", "detect_databar", "is_our_output",
           "iter_image_files", "length_nm", "multiscale_layer", "nm_per_unit", "read_frame", "read_provenance",
           "remove_file_or_folder", "remove_stale_temporaries", "require_zarr", "split_databar", "tiff_writer",
           "to_jsonable", "write_file_atomically", "write_files_atomically", "write_tiff", "zarr_stem"]
