"""Writing TIFFs with pixel size and provenance (ImageJ-readable where the dtype allows)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from napari_etdms.io.files import write_file_atomically

_IMAGEJ_DTYPES = "BHhf"  # uint8, uint16, int16, float32


def write_tiff(
    path: str | os.PathLike,
    data: np.ndarray,
    pixel_size_nm: float | None,
    provenance: dict,
    *,
    overwrite: bool = False,
    axes: str | None = None,
) -> Path:
    """Write a TIFF with pixel size (micrometres) and provenance, atomically.

    The file appears under its final name only once complete (temp file + rename). An existing file is
    never replaced unless `overwrite` is true (then it is swapped in one `os.replace`, so readers see the
    old or the new file, never a partial one). `axes` is 'YX', 'YXS' (RGB), 'ZYX' or 'TYX'; by default 2D
    is 'YX', 3D with 3 or 4 uint8 samples last is 'YXS', other 3D 'ZYX'. ImageJ TIFFs are written for
    uint8/uint16/int16/float32 data; other dtypes are written unchanged as tifffile TIFFs carrying the
    same 'unit' and 'Info' keys (ImageJ cannot hold them), both read back by `read_frame`/`read_provenance`.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists already; refusing to overwrite")
    return write_file_atomically(path, tiff_writer(path, data, pixel_size_nm, provenance, axes), overwrite=overwrite)


def tiff_writer(path: str | os.PathLike, data: np.ndarray, pixel_size_nm: float | None, provenance: dict,
                axes: str | None = None) -> Callable[[str], None]:
    """What `write_tiff` writes, as a function of the file to write it to (for
    `write_files_atomically`); `path` only names the file in errors."""
    import tifffile

    data = np.asarray(data)
    if axes is None:
        if data.ndim == 3 and data.shape[-1] in (3, 4) and data.dtype == np.uint8:
            axes = "YXS"
        else:
            axes = "YX" if data.ndim == 2 else "ZYX"
    if len(axes) != data.ndim:
        raise ValueError(f"{path}: axes '{axes}' do not match data of shape {data.shape}")
    metadata = {"Info": json.dumps(provenance, default=str)}
    kwargs = {"photometric": "rgb" if axes.endswith("S") else "minisblack"}
    if pixel_size_nm:
        px_um = pixel_size_nm / 1000.0
        kwargs["resolution"] = (1.0 / px_um, 1.0 / px_um)
        metadata["unit"] = "um"
    imagej = data.dtype.char in _IMAGEJ_DTYPES
    if axes not in ("YX", "YXS"):
        metadata["axes"] = axes
    return lambda tmp: tifffile.imwrite(tmp, data, imagej=imagej, metadata=metadata, **kwargs)
