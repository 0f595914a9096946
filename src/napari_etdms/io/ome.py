"""OME-TIFF (OME-XML in the first page): pixel size from the first image's `Pixels`."""

from __future__ import annotations

from napari_etdms.io.frame import VendorMetadata
from napari_etdms.io.units import length_nm, to_jsonable


def read_metadata(tif, width: int) -> VendorMetadata | None:
    if not tif.is_ome:
        return None
    try:
        pixels = _ome_pixels(tif.ome_metadata)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, SyntaxError) as err:  # malformed OME-XML
        raise ValueError(f"OME-XML: {type(err).__name__}: {err}") from None
    unit = pixels.get("PhysicalSizeXUnit", "µm")  # the OME schema default
    return VendorMetadata("OME", "ome", pixels, [(length_nm(pixels.get("PhysicalSizeX"), unit), "OME PhysicalSizeX")])


def _ome_pixels(ome_xml: str) -> dict:
    """Scalar attributes of the first image's `Pixels` element of an OME-XML string."""
    import tifffile

    image = tifffile.xml2dict(ome_xml)["OME"]["Image"]
    if isinstance(image, list):
        image = image[0]
    pixels = image.get("Pixels", {})
    return to_jsonable({k: v for k, v in pixels.items() if not isinstance(v, (dict, list))})
