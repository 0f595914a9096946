"""ImageJ TIFFs and tifffile's own (shaped) TIFFs: pixel size from XResolution and the unit
they name, and the provenance `write_tiff` stores in their 'Info' key."""

from __future__ import annotations

import json

from napari_etdms.io.frame import VendorMetadata
from napari_etdms.io.units import length_nm, nm_per_unit, to_jsonable


def read_metadata(tif, width: int) -> VendorMetadata | None:
    meta = tif.imagej_metadata if tif.is_imagej else None
    if not meta:
        return None
    values = to_jsonable({k: v for k, v in meta.items() if k != "Info"})
    return _with_resolution_and_info("ImageJ", "imagej", values, tif, meta)


def read_tifffile_metadata(tif, width: int) -> VendorMetadata | None:
    meta = (tif.shaped_metadata or ({},))[0] if tif.is_shaped else None
    if not meta:
        return None
    return _with_resolution_and_info(None, None, None, tif, meta)


def _with_resolution_and_info(vendor, key, values, tif, meta: dict) -> VendorMetadata:
    pixel_sizes = [(resolution_pixel_size_nm(tif, meta.get("unit")), f"{vendor or 'tifffile'} unit/XResolution")]
    info = meta.get("Info")
    provenance = None
    if isinstance(info, str):
        try:
            provenance = json.loads(info)
        except ValueError:
            provenance = info
    return VendorMetadata(vendor, key, values, pixel_sizes, provenance)


def resolution_pixel_size_nm(tif, unit) -> float | None:
    """Pixel size from XResolution (pixels per `unit`) and the unit named in ImageJ/tifffile metadata."""
    factor = nm_per_unit(unit)
    xres = tif.pages[0].tags.get("XResolution")
    if factor is None or xres is None:
        return None
    num, den = xres.value
    return length_nm(den / num, unit) if num else None
