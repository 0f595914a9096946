"""Reading one SEM frame (TIFF, PNG, OME-Zarr) with its vendor metadata, pixel size and databar."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from napari_etdms.io import fei, imagej
from napari_etdms.io.databar import detect_databar, split_databar
from napari_etdms.io.frame import DEFAULT_MAX_PIXELS, ZARR_SUFFIX, Frame, ReadError, check_pixel_count
from napari_etdms.io.metadata import tiff_metadata
from napari_etdms.io.ome_zarr import multiscale_layer, read_ome_zarr, read_zarr_provenance
from napari_etdms.io.volume import open_volume


def read_frame(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Frame:
    """Read one SEM frame (TIFF or PNG).

    The pixel size comes from FEI/Thermo, Zeiss SmartSEM, Tescan, OME or ImageJ metadata (in that order;
    `metadata['pixel_size_source']` names the one used) and the vendor metadata is kept in `metadata`.
    FEI/Thermo databars (rows below `Image/ResolutionY`) and painted Zeiss/Tescan databars are split off
    and kept in `databar`, so `vstack(data, databar)` is the stored page. Multi-page TIFFs give 3D `data`
    (pages, y, x) with no databar split; RGB(A) frames give (y, x, samples). `metadata['axes']` holds the
    tifffile axes ('YX', 'YXS', 'ZYX', 'TYX', 'QYX', ...). A file whose header declares more than
    `max_pixels` pixels is refused before decoding.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ZARR_SUFFIX and path.is_dir():
        return read_ome_zarr(path, max_pixels)
    if not path.is_file():
        raise ReadError(f"{path}: no such file")
    try:
        if suffix in (".tif", ".tiff"):
            return _read_tiff(path, max_pixels)
        if suffix == ".png":
            from PIL import Image

            with Image.open(path) as im:
                check_pixel_count(path, (im.height, im.width), max_pixels)
                data = np.asarray(im)
            return Frame(data=data, path=path, metadata={"axes": "YX" if data.ndim == 2 else "YXS"})
    except ReadError:
        raise
    except Exception as err:  # corrupt or truncated files raise many types
        raise ReadError(
            f"{path}: cannot read image, the file may be corrupt or truncated ({type(err).__name__}: {err})"
        ) from None
    raise ReadError(f"{path}: unsupported file type '{suffix}' (use TIFF, PNG or OME-Zarr)")


def _read_tiff(path: Path, max_pixels: int) -> Frame:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        check_pixel_count(path, series.shape, max_pixels)
        axes = series.axes
        data = tif.asarray()
        if data.ndim != len(axes):  # squeezed/odd series: fall back to a generic label
            axes = "YX" if data.ndim == 2 else "Q" * (data.ndim - 2) + "YX"
        width = tif.pages[0].shape[1] if len(tif.pages[0].shape) >= 2 else data.shape[-1]
        metadata, pixel_size_nm = tiff_metadata(tif, width)
    metadata["axes"] = axes
    bar = None
    if axes in ("YX", "YXS"):
        vendor = metadata.get("vendor")
        scan_rows, source = None, None
        if vendor == "FEI":
            scan_rows = fei.fei_scan_rows(metadata.get("fei"), data.shape[0])
            source = "FEI Image/ResolutionY"
        elif vendor in ("Zeiss", "Tescan"):
            scan_rows = detect_databar(data)
            source = f"painted {vendor} databar (full-width edge over a two-level panel)"
        data, bar = split_databar(data, scan_rows)
        if bar is not None:
            metadata["databar_source"] = source
    return Frame(data=data, path=path, pixel_size_nm=pixel_size_nm, databar=bar, metadata=metadata)


def read_provenance(path: str | os.PathLike) -> dict:
    """Provenance and pixel size stored by `write_tiff` (or in an OME-Zarr output)."""
    import tifffile

    if Path(path).suffix.lower() == ZARR_SUFFIX:
        volume = open_volume(path, max_pixels=2**62)  # headers only: nothing is decoded
        if volume is not None:  # a stack's output (or any 3D image)
            return {"provenance": read_zarr_provenance(Path(path)), "pixel_size_nm": volume.pixel_size_nm}
        _, pixel_size_nm, provenance = multiscale_layer(Path(path))
        return {"provenance": provenance, "pixel_size_nm": pixel_size_nm}

    with tifffile.TiffFile(path) as tif:
        if tif.is_imagej:
            meta = tif.imagej_metadata or {}
        else:
            meta = ((tif.shaped_metadata or ({},))[0] if tif.is_shaped else None) or {}
        info = meta.get("Info")
        pixel_size_nm = imagej.resolution_pixel_size_nm(tif, meta.get("unit"))
    return {"provenance": json.loads(info) if info else {}, "pixel_size_nm": pixel_size_nm}
