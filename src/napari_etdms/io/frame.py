"""What a read gives: a frame with its pixel size, databar and metadata, or a `ReadError`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
ZARR_SUFFIX = ".zarr"  # an OME-Zarr image: a folder read as one frame
OUTPUT_FORMATS = ("auto", "tiff", "zarr")  # of `etdms infer`; auto: OME-Zarr for OME-Zarr inputs, else TIFF


class ReadError(ValueError):
    """A file could not be read as an SEM frame; the message names the file."""


@dataclass
class Frame:
    data: np.ndarray
    path: Path | None = None
    pixel_size_nm: float | None = None
    databar: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)


@dataclass
class VendorMetadata:
    """What one vendor family (or open format) records in a TIFF: `values` (JSON-serialisable)
    are kept under `key` in the frame's metadata; `pixel_sizes` are (nm or None, source)
    candidates, best first; `provenance` is what `write_tiff` stored."""

    vendor: str | None  # 'FEI', 'Zeiss', 'Tescan', 'OME', 'ImageJ'; None: no vendor claimed
    key: str | None
    values: dict | None
    pixel_sizes: list[tuple[float | None, str]] = field(default_factory=list)
    provenance: dict | str | None = None


# Pixels a frame may have, checked from the file's header before anything is decoded: a
# compressed TIFF of a few MB can declare 100000 x 100000 px. 2**30 is a 32768 x 32768 montage.
DEFAULT_MAX_PIXELS = 2**30


def check_pixel_count(path: Path, shape: tuple[int, ...], max_pixels: int) -> None:
    count = math.prod(int(n) for n in shape)
    if count > max_pixels:
        size = " x ".join(str(int(n)) for n in shape)
        raise ReadError(f"{path}: its header declares {size} = {count:,} pixels, more than the limit of "
                        f"{max_pixels:,}; nothing was decoded (raise the limit, e.g. --max-pixels, if it is real)")
