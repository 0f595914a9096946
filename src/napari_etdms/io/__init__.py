"""Files: SEM frames read with their vendor metadata, pixel size and databar, and outputs written.

- `read`: `read_frame` (TIFF, PNG, OME-Zarr) and `read_provenance`; `metadata`: a TIFF's pixel
  size and vendor metadata, from one module per vendor family or open format: `fei`, `zeiss`,
  `tescan`, `ome`, `imagej`
- `databar`: the strip of text under the scan area, found and split off
- `frame`, `units`: what a read gives (`Frame`, `ReadError`), lengths in nm, JSON-safe metadata
- `write`: TIFFs with pixel size and provenance; `ome_zarr`: OME-Zarr images read and written
- `files`: a batch's inputs listed, and sets of files written all or nothing
- `volume`: stacks of slices read one at a time; 3D OME-Zarr outputs written a slice at a time
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
from napari_etdms.io.volume import Volume, VolumeStore, open_volume, volume_layer
from napari_etdms.io.write import tiff_writer, write_tiff

__all__ = ["check_disk", "DEFAULT_MAX_PIXELS", "detect_databar", "Frame", "IMAGE_SUFFIXES", "is_our_output",
           "iter_image_files", "length_nm", "multiscale_layer", "nm_per_unit", "OmeZarrOutputs", "open_volume",
           "OUTPUT_FORMATS", "read_frame", "read_provenance", "ReadError", "remove_file_or_folder",
           "remove_stale_temporaries", "require_zarr", "split_databar", "TEMPORARY_SUFFIX", "tiff_writer",
           "to_jsonable", "Volume", "volume_layer", "VolumeStore", "write_file_atomically", "write_files_atomically",
           "write_tiff", "zarr_stem", "ZARR_SUFFIX", "ZarrArrays"]
