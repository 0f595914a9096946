"""What a TIFF records beside its pixels: each vendor family's or open format's metadata and
the pixel size, the first usable one in the order they are trusted."""

from __future__ import annotations

from napari_etdms.io import fei, imagej, ome, tescan, zeiss

# vendor families and open formats, in the order their pixel sizes are trusted
VENDOR_READERS = (fei.read_metadata, zeiss.read_metadata, tescan.read_metadata, ome.read_metadata,
                  imagej.read_metadata, imagej.read_tifffile_metadata)


def tiff_metadata(tif, width: int) -> tuple[dict, float | None]:
    """(metadata, pixel size in nm) of an open `tifffile.TiffFile`, without reading pixels.

    The metadata holds `vendor` ('FEI', 'Zeiss', 'Tescan', 'OME', 'ImageJ' or None), the vendor's
    metadata under 'fei', 'zeiss', 'tescan', 'ome' or 'imagej' (JSON-serialisable), `pixel_size_source`
    when a pixel size was found, `provenance` for files written by `write_tiff`, and
    `pixel_size_warning` when vendor metadata was present but unusable.
    """
    metadata: dict = {"vendor": None}
    candidates = []  # (pixel size nm or None, source), first usable one wins
    warnings = []
    for read in VENDOR_READERS:
        try:
            found = read(tif, width)
        except ValueError as err:  # malformed vendor metadata: named, and the others still count
            warnings.append(str(err))
            continue
        if found is None:
            continue
        if metadata["vendor"] is None:
            metadata["vendor"] = found.vendor
        if found.key:
            metadata[found.key] = found.values
        candidates.extend(found.pixel_sizes)
        if found.provenance is not None:
            metadata.setdefault("provenance", found.provenance)

    pixel_size_nm = None
    for value, source in candidates:
        if value:
            pixel_size_nm = value
            metadata["pixel_size_source"] = source
            break
    if pixel_size_nm is None and metadata["vendor"] not in (None, "ImageJ"):
        warnings.append(f"{metadata['vendor']} metadata present but without a usable pixel size")
    if warnings:
        metadata["pixel_size_warning"] = "; ".join(warnings)
    return metadata, pixel_size_nm
