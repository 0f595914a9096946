"""Reading SEM frames (TIFF, PNG) with pixel size and databar, writing results safely."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")


class ReadError(ValueError):
    """A file could not be read as an SEM frame; the message names the file."""


@dataclass
class Frame:
    data: np.ndarray
    path: Path | None = None
    pixel_size_nm: float | None = None
    databar: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)


def fei_scan_rows(fei_metadata: dict | None, image_height: int) -> int | None:
    """Rows of the scan area in a FEI/Thermo TIFF (the databar is appended below them)."""
    if not fei_metadata:
        return None
    rows = (fei_metadata.get("Image") or {}).get("ResolutionY")
    if isinstance(rows, int) and 0 < rows < image_height:
        return rows
    return None


def split_databar(image: np.ndarray, scan_rows: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Split a frame into (scan area, databar) given the number of scan rows."""
    if scan_rows is None or scan_rows >= image.shape[0]:
        return image, None
    return image[:scan_rows], image[scan_rows:]


def _fei_pixel_size_nm(fei_metadata: dict | None) -> float | None:
    scan = (fei_metadata or {}).get("Scan") or {}
    width = scan.get("PixelWidth")
    return float(width) * 1e9 if isinstance(width, (int, float)) and width > 0 else None


def read_frame(path: str | os.PathLike) -> Frame:
    """Read one SEM frame; FEI/Thermo databars are split off and kept in `databar`."""
    path = Path(path)
    if not path.is_file():
        raise ReadError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            return _read_tiff(path)
        if suffix == ".png":
            from PIL import Image

            with Image.open(path) as im:
                data = np.asarray(im)
            return Frame(data=data, path=path)
    except ReadError:
        raise
    except Exception as err:  # corrupt or truncated files raise many types
        raise ReadError(f"{path}: cannot read image ({type(err).__name__}: {err})") from None
    raise ReadError(f"{path}: unsupported file type '{suffix}' (use TIFF or PNG)")


def _read_tiff(path: Path) -> Frame:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        data = tif.asarray()
        fei = tif.fei_metadata if tif.is_fei else None
        pixel_size_nm = _fei_pixel_size_nm(fei) or _imagej_pixel_size_nm(tif)
    metadata = {"fei": fei} if fei else {}
    image, bar = split_databar(data, fei_scan_rows(fei, data.shape[0])) if data.ndim == 2 else (data, None)
    return Frame(data=image, path=path, pixel_size_nm=pixel_size_nm, databar=bar, metadata=metadata)


def _imagej_pixel_size_nm(tif) -> float | None:
    """Pixel size from an ImageJ TIFF's XResolution (pixels per unit) and unit."""
    unit = (tif.imagej_metadata or {}).get("unit")
    factor = {"nm": 1.0, "um": 1e3, "micron": 1e3, "\\u00B5m": 1e3, "\u00b5m": 1e3, "mm": 1e6}.get(unit)
    xres = tif.pages[0].tags.get("XResolution")
    if factor is None or xres is None:
        return None
    num, den = xres.value
    return factor * den / num if num else None


def iter_image_files(inputs: list[str | os.PathLike]) -> list[Path]:
    """Expand files and folders (non-recursive) into a sorted list of image files."""
    files: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            files.extend(sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()))
        else:
            files.append(item)
    return files


def write_tiff(path: str | os.PathLike, data: np.ndarray, pixel_size_nm: float | None, provenance: dict) -> Path:
    """Write an ImageJ TIFF with pixel size (micrometres) and provenance, atomically.

    The file appears under its final name only once complete (temp file + rename), and an
    existing file is never replaced: a clear error is raised instead.
    """
    import tifffile

    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path}: exists already; refusing to overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"Info": json.dumps(provenance, default=str)}
    kwargs = {}
    if pixel_size_nm:
        px_um = pixel_size_nm / 1000.0
        kwargs["resolution"] = (1.0 / px_um, 1.0 / px_um)
        metadata["unit"] = "um"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        tifffile.imwrite(tmp, data, imagej=True, metadata=metadata, **kwargs)
        os.link(tmp, path)  # fails if path appeared meanwhile, unlike os.replace
    finally:
        os.unlink(tmp)
    return path


def read_provenance(path: str | os.PathLike) -> dict:
    """Provenance and pixel size stored by `write_tiff`."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        info = (tif.imagej_metadata or {}).get("Info")
        pixel_size_nm = _imagej_pixel_size_nm(tif)
    return {"provenance": json.loads(info) if info else {}, "pixel_size_nm": pixel_size_nm}
