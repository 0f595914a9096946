"""FEI/Thermo Fisher TIFFs: pixel size and the rows of the scan area (the databar is appended below)."""

from __future__ import annotations

from napari_etdms.io.frame import VendorMetadata
from napari_etdms.io.units import length_nm, to_jsonable


def fei_scan_rows(fei_metadata: dict | None, image_height: int) -> int | None:
    """Rows of the scan area in a FEI/Thermo TIFF (the databar is appended below them)."""
    if not fei_metadata:
        return None
    rows = (fei_metadata.get("Image") or {}).get("ResolutionY")
    if isinstance(rows, int) and 0 < rows < image_height:
        return rows
    return None


def read_metadata(tif, width: int) -> VendorMetadata | None:
    fei = tif.fei_metadata if tif.is_fei else None
    if not fei:
        return None
    return VendorMetadata("FEI", "fei", to_jsonable(fei),
                          [(_pixel_size_nm(fei), "FEI Scan/PixelWidth"), _hfw_pixel_size_nm(fei)])


def _pixel_size_nm(fei_metadata: dict | None) -> float | None:
    scan = (fei_metadata or {}).get("Scan") or {}
    width = scan.get("PixelWidth")
    return float(width) * 1e9 if isinstance(width, (int, float)) and width > 0 else None


def _hfw_pixel_size_nm(fei: dict) -> tuple[float | None, str]:
    """Fallback when `Scan/PixelWidth` is missing: horizontal field width / ResolutionX (rosettasciio)."""
    try:
        return length_nm(float(fei["IRBeam"]["HFW"]) / float(fei["Image"]["ResolutionX"]), "m"), "FEI IRBeam/HFW"
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None, "FEI IRBeam/HFW"
