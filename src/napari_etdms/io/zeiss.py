"""Zeiss SmartSEM TIFFs (CZ_SEM metadata): pixel size. Their databar is painted into the frame (`databar`)."""

from __future__ import annotations

import re

from napari_etdms.io.frame import VendorMetadata
from napari_etdms.io.units import length_nm, to_jsonable


def read_metadata(tif, width: int) -> VendorMetadata | None:
    sem = tif.sem_metadata if tif.is_sem else None
    if not sem:
        return None
    return VendorMetadata("Zeiss", "zeiss", to_jsonable(sem), zeiss_pixel_size_nm(sem, width))


def zeiss_pixel_size_nm(sem: dict, width: int) -> list[tuple[float | None, str]]:
    """Pixel-size candidates from a Zeiss SmartSEM CZ_SEM dict (`TiffFile.sem_metadata`), best first:
    `ap_image_pixel_size` (value, unit), then rosettasciio's `sem[''][3] * 1024 / width` (metres)."""
    candidates = []
    entry = sem.get("ap_image_pixel_size")
    if isinstance(entry, (tuple, list)) and len(entry) >= 2:
        value, unit = entry[1], entry[2] if len(entry) >= 3 else None
        if isinstance(value, str):  # unit not split off by tifffile, e.g. '2.6nm'
            match = re.fullmatch(r"\s*([-+0-9.eE]+)\s*(\S+)\s*", value)
            value, unit = match.groups() if match else (None, None)
        candidates.append((length_nm(value, unit), "Zeiss ap_image_pixel_size"))
    unnamed = sem.get("")
    try:
        candidates.append((length_nm(float(unnamed[3]) * 1024 / width, "m"), "Zeiss CZ_SEM[''][3]*1024/width"))
    except (TypeError, ValueError, IndexError, ZeroDivisionError):
        pass
    return candidates
