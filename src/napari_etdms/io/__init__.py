"""Reading SEM frames (TIFF, PNG) with pixel size and databar, writing results safely."""

from __future__ import annotations

import glob
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
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


# --- lengths and units -------------------------------------------------------------------------

_NM_PER_UNIT = {
    "pm": 1e-3, "picometer": 1e-3, "picometre": 1e-3,
    "å": 0.1, "angstrom": 0.1,
    "nm": 1.0, "nanometer": 1.0, "nanometre": 1.0,
    "um": 1e3, "µm": 1e3, "μm": 1e3, "\\u00b5m": 1e3, "micron": 1e3, "microns": 1e3,
    "micrometer": 1e3, "micrometre": 1e3,
    "mm": 1e6, "millimeter": 1e6, "millimetre": 1e6,
    "cm": 1e7, "centimeter": 1e7, "centimetre": 1e7,
    "m": 1e9, "meter": 1e9, "metre": 1e9,
}


def nm_per_unit(unit) -> float | None:
    """Nanometres in one `unit` (a string such as 'nm', 'µm', 'micrometer', or a pint unit); None if the
    unit is not a length (e.g. 'pixel') or unknown."""
    if unit is None:
        return None
    text = format(unit, "~") if hasattr(unit, "dimensionality") else str(unit)
    return _NM_PER_UNIT.get(text.strip().lower().replace("\x00", ""))


def length_nm(value, unit) -> float | None:
    """A positive, finite length in nm from a value and its unit; None when either is unusable."""
    factor = nm_per_unit(unit)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    if factor is None or not np.isfinite(value) or value <= 0:
        return None
    return value * factor


def to_jsonable(obj):
    """A JSON-serialisable copy of `obj`: numpy scalars become Python numbers, tuples lists, paths strings;
    arrays, bytes and other objects are left out (dict entries dropped, list items skipped)."""
    if isinstance(obj, (str, bool)) or obj is None:
        return obj
    if isinstance(obj, (int, float, np.integer, np.floating, np.bool_)):
        value = obj.item() if isinstance(obj, np.generic) else obj
        return value if not isinstance(value, float) or np.isfinite(value) else str(value)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if isinstance(key, (str, int, float, bool)) and _keep(value):
                out[str(key)] = to_jsonable(value)
        return out
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj if _keep(v)]
    return None


def _keep(value) -> bool:
    return isinstance(value, (str, bool, int, float, np.integer, np.floating, np.bool_, dict, list, tuple,
                              os.PathLike)) or value is None


# --- reading -----------------------------------------------------------------------------------


# Pixels a frame may have, checked from the file's header before anything is decoded: a
# compressed TIFF of a few MB can declare 100000 x 100000 px. 2**30 is a 32768 x 32768 montage.
DEFAULT_MAX_PIXELS = 2**30


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
        from napari_etdms.io.ome_zarr import read_ome_zarr

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


def check_pixel_count(path: Path, shape: tuple[int, ...], max_pixels: int) -> None:
    count = math.prod(int(n) for n in shape)
    if count > max_pixels:
        size = " x ".join(str(int(n)) for n in shape)
        raise ReadError(f"{path}: its header declares {size} = {count:,} pixels, more than the limit of "
                        f"{max_pixels:,}; nothing was decoded (raise the limit, e.g. --max-pixels, if it is real)")


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
            scan_rows = fei_scan_rows(metadata.get("fei"), data.shape[0])
            source = "FEI Image/ResolutionY"
        elif vendor in ("Zeiss", "Tescan"):
            scan_rows = detect_databar(data)
            source = f"painted {vendor} databar (full-width edge over a two-level panel)"
        data, bar = split_databar(data, scan_rows)
        if bar is not None:
            metadata["databar_source"] = source
    return Frame(data=data, path=path, pixel_size_nm=pixel_size_nm, databar=bar, metadata=metadata)


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

    fei = tif.fei_metadata if tif.is_fei else None
    if fei:
        metadata.update(vendor="FEI", fei=to_jsonable(fei))
        candidates.append((_fei_pixel_size_nm(fei), "FEI Scan/PixelWidth"))
        candidates.append(_fei_hfw_pixel_size_nm(fei))

    sem = tif.sem_metadata if tif.is_sem else None
    if sem:
        if metadata["vendor"] is None:
            metadata["vendor"] = "Zeiss"
        metadata["zeiss"] = to_jsonable(sem)
        candidates.extend(zeiss_pixel_size_nm(sem, width))

    tag = tif.pages[0].tags.get(TESCAN_TAG)
    if tag is not None:
        try:
            tescan = parse_tescan_metadata(tag.value)
        except ValueError as err:
            warnings.append(f"Tescan tag {TESCAN_TAG}: {err}")
        else:
            if metadata["vendor"] is None:
                metadata["vendor"] = "Tescan"
            metadata["tescan"] = tescan
            main = tescan.get("MAIN", {})
            candidates.append((length_nm(main.get("PixelSizeX"), "m"), "Tescan MAIN/PixelSizeX"))

    if tif.is_ome:
        try:
            pixels = _ome_pixels(tif.ome_metadata)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError, SyntaxError) as err:  # malformed OME-XML
            warnings.append(f"OME-XML: {type(err).__name__}: {err}")
        else:
            if metadata["vendor"] is None:
                metadata["vendor"] = "OME"
            metadata["ome"] = pixels
            unit = pixels.get("PhysicalSizeXUnit", "µm")  # the OME schema default
            candidates.append((length_nm(pixels.get("PhysicalSizeX"), unit), "OME PhysicalSizeX"))

    imagej = tif.imagej_metadata if tif.is_imagej else None
    shaped = (tif.shaped_metadata or ({},))[0] if tif.is_shaped else None
    for label, meta in (("ImageJ", imagej), ("tifffile", shaped)):
        if not meta:
            continue
        if label == "ImageJ":
            if metadata["vendor"] is None:
                metadata["vendor"] = "ImageJ"
            metadata["imagej"] = to_jsonable({k: v for k, v in meta.items() if k != "Info"})
        candidates.append((_resolution_pixel_size_nm(tif, meta.get("unit")), f"{label} unit/XResolution"))
        info = meta.get("Info")
        if isinstance(info, str) and "provenance" not in metadata:
            try:
                provenance = json.loads(info)
            except ValueError:
                provenance = info
            metadata["provenance"] = provenance

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


def _fei_hfw_pixel_size_nm(fei: dict) -> tuple[float | None, str]:
    """Fallback when `Scan/PixelWidth` is missing: horizontal field width / ResolutionX (rosettasciio)."""
    try:
        return length_nm(float(fei["IRBeam"]["HFW"]) / float(fei["Image"]["ResolutionX"]), "m"), "FEI IRBeam/HFW"
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None, "FEI IRBeam/HFW"


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


TESCAN_TAG = 50431


def parse_tescan_metadata(value) -> dict[str, dict]:
    """Sections of the INI text in a Tescan TIFF's private tag 50431 (leading binary is skipped);
    numbers become int/float. Raises ValueError when there is no INI text."""
    import configparser

    if isinstance(value, (tuple, list, np.ndarray)):
        value = bytes(bytearray(int(v) & 0xFF for v in value))
    text = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
    start = text.find("[MAIN]")
    if start < 0:
        match = re.search(r"^\[[A-Za-z0-9_ ]+\]\s*$", text, flags=re.MULTILINE)
        if match is None:
            raise ValueError("no INI sections found")
        start = match.start()
    parser = configparser.ConfigParser(interpolation=None, strict=False, allow_no_value=True)
    parser.optionxform = str  # keep the keys' case (PixelSizeX)
    try:
        parser.read_string(text[start:].replace("\x00", ""))
    except configparser.Error as err:
        raise ValueError(f"malformed INI text ({type(err).__name__})") from None
    return {section: {k: _number(v) for k, v in parser.items(section)} for section in parser.sections()}


def _number(text):
    if text is None:
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def _ome_pixels(ome_xml: str) -> dict:
    """Scalar attributes of the first image's `Pixels` element of an OME-XML string."""
    import tifffile

    image = tifffile.xml2dict(ome_xml)["OME"]["Image"]
    if isinstance(image, list):
        image = image[0]
    pixels = image.get("Pixels", {})
    return to_jsonable({k: v for k, v in pixels.items() if not isinstance(v, (dict, list))})


def _resolution_pixel_size_nm(tif, unit) -> float | None:
    """Pixel size from XResolution (pixels per `unit`) and the unit named in ImageJ/tifffile metadata."""
    factor = nm_per_unit(unit)
    xres = tif.pages[0].tags.get("XResolution")
    if factor is None or xres is None:
        return None
    num, den = xres.value
    return length_nm(den / num, unit) if num else None


def _imagej_pixel_size_nm(tif) -> float | None:
    """Pixel size from an ImageJ TIFF's XResolution (pixels per unit) and unit."""
    return _resolution_pixel_size_nm(tif, (tif.imagej_metadata or {}).get("unit"))


# --- databars painted into the frame (Zeiss SmartSEM, Tescan) ----------------------------------
# Grey values here are fractions of the frame's own grey range, so 8-bit, 16-bit and float frames
# are judged alike. Painted bars are exact; the tolerance leaves room for compression and resampling.
LEVEL_TOLERANCE = 0.04  # two values this close are the same level
UNIFORM_ROW = 0.97  # share of a frame line's (or blank panel margin's) pixels at its median; side borders differ
EDGE_COLUMNS = 0.9  # share of the columns that change level across a full-width edge
MIN_LEVEL_CONTRAST = 0.5  # between the panel's background and text levels: painted text is legible
MIN_ON_LEVELS = 0.75  # share of the panel at its two levels; SmartSEM's last strip may overlay ~16 image rows
MIN_TEXT_SHARE = 0.005  # share of the panel at its second (text) level
# glyph edges (level changes along a row that go on in the next row) per column of the panel: text has
# 1 to 5 (real SmartSEM and FEI bars: 2.6 to 3.4), scattered specks (dust, charging dots) next to none
MIN_GLYPH_EDGES_PER_COLUMN = 1 / 32
LEVEL_BINS = 100  # histogram bins over the grey range, for finding the panel's two levels


def _as_grey(image: np.ndarray) -> np.ndarray | None:
    """A 2D frame as is, an RGB(A) frame as the mean of its colour channels, else (stacks) None."""
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        return image[..., :3].mean(axis=-1, dtype=np.float32)
    return image if image.ndim == 2 else None


def _painted_panels(window: np.ndarray, tops: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Whether each panel `window[top:]` (grey in [0, 1]) looks painted: essentially two levels, the second
    one (text) present, with glyph edges; and the histogram bins of its background and text levels."""
    n, width = window.shape
    # histograms of the panels below every row at once: row histograms summed from the bottom up
    bins = np.minimum((window * LEVEL_BINS).astype(np.intp), LEVEL_BINS - 1)
    row_hist = np.bincount((bins + LEVEL_BINS * np.arange(n)[:, None]).ravel(), minlength=n * LEVEL_BINS)
    panel_hist = np.cumsum(row_hist.reshape(n, LEVEL_BINS)[::-1], axis=0)[::-1][tops]
    reach = round(LEVEL_TOLERANCE * LEVEL_BINS)
    padded = np.pad(panel_hist, ((0, 0), (reach, reach)))
    near = np.lib.stride_tricks.sliding_window_view(padded, 2 * reach + 1, axis=1).sum(axis=-1)  # at a level
    background = panel_hist.argmax(axis=1)  # the most common level, then the most common one far from it
    far = np.abs(np.arange(LEVEL_BINS) - background[:, None]) >= MIN_LEVEL_CONTRAST * LEVEL_BINS
    text = np.where(far, panel_hist, -1).argmax(axis=1)
    each = np.arange(tops.size)
    pixels = (n - tops) * width
    glyph_side = np.abs(np.diff(window, axis=1)) > MIN_LEVEL_CONTRAST / 2
    glyph_edges = np.count_nonzero(glyph_side[:-1] & glyph_side[1:], axis=1)
    glyph_edges_below = np.append(np.cumsum(glyph_edges[::-1])[::-1], 0)[tops]
    painted = (
        (near[each, background] + near[each, text] >= MIN_ON_LEVELS * pixels)
        & (near[each, text] >= MIN_TEXT_SHARE * pixels)
        & (glyph_edges_below >= MIN_GLYPH_EDGES_PER_COLUMN * width)
    )
    return painted, background, text


def detect_databar(image: np.ndarray, max_fraction: float = 0.25, min_fraction: float = 0.03) -> int | None:
    """Scan rows above a databar painted over the bottom of the frame (Zeiss SmartSEM, Tescan), or None.

    Every layout starts at a full-width straight edge onto a uniform row (its frame line or the panel's
    blank margin), below which the panel is essentially two grey levels (background, text) with glyph
    edges; the topmost such edge in the bottom `max_fraction` of the frame marks the bar, which must be
    at least `min_fraction` of the height. A long uniform block that ends on another full-width edge is
    flat image (a black scan, vacuum) over the bar, not its panel. Uniform rows just above the edge are
    the bar's frame line when thin; when they run on at a panel level (a black scan over SmartSEM's black
    line), the line is hidden and taken as SmartSEM draws it. A dark, bright or flat-noisy bottom has no
    second level or no glyphs, and textured image (a wafer edge included) has no uniform rows: neither is cut.
    """
    grey = _as_grey(image)
    if grey is None or grey.shape[0] < 8:
        return None
    height, width = grey.shape
    lo, hi = float(grey.min()), float(grey.max())
    if not lo < hi:
        return None
    window_top = height - math.floor(max_fraction * height)
    min_rows = max(2, math.ceil(min_fraction * height))
    frame_line_rows = max(2, height // 200)  # thicker uniform runs are image or a panel's blank margin
    slab_top = max(0, window_top - frame_line_rows - 1)  # the window, and room for a frame line above it
    rows = (grey[slab_top:].astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
    n_rows, in_window = rows.shape[0], window_top - slab_top

    # per row: its level, whether it is uniform, whether a full-width edge opens it (on a uniform row)
    level = np.median(rows, axis=1)
    uniform = (np.abs(rows - level[:, None]) <= LEVEL_TOLERANCE).mean(axis=1) >= UNIFORM_ROW
    changes = (np.abs(np.diff(rows, axis=0)) > LEVEL_TOLERANCE).mean(axis=1) >= EDGE_COLUMNS
    opens = np.zeros_like(uniform)
    opens[1:] = uniform[1:] & changes
    tops = in_window + np.flatnonzero(opens[in_window : n_rows - min_rows + 1])
    # the uniform block each top opens (rows of its level) and the row after it
    goes_on = uniform[:-1] & uniform[1:] & (np.abs(np.diff(level)) <= LEVEL_TOLERANCE)
    block_ends = np.append(np.flatnonzero(~goes_on), n_rows - 1)
    after = block_ends[np.searchsorted(block_ends, tops)] + 1
    flat_image = (after - tops > frame_line_rows) & (after < n_rows) & opens[np.minimum(after, n_rows - 1)]
    tops = tops[~flat_image]
    if tops.size == 0:
        return None
    painted, background, text = _painted_panels(rows[in_window:], tops - in_window)
    if not painted.any():
        return None
    first = int(np.argmax(painted))
    edge = int(tops[first])

    # uniform rows of one shade directly above the edge: the bar's frame line, or image hiding it
    above = slice(max(0, edge - frame_line_rows - 1), edge)
    same = (uniform[above] & (np.abs(level[above] - level[edge - 1]) <= LEVEL_TOLERANCE))[::-1]  # upwards
    run = int(np.argmin(same)) if not same.all() else same.size
    if 0 < run <= frame_line_rows:  # a frame line whose top edge is too faint against the image
        edge -= run
    elif run > frame_line_rows and not opens[edge + 1 : edge + frame_line_rows + 1].any():
        # the edge opens the panel itself, not a frame line: image at a panel level hides the line over it,
        # taken as SmartSEM draws it, a row per 1024 columns (its bars scale with the store resolution)
        shade = min(int(level[edge - 1] * LEVEL_BINS), LEVEL_BINS - 1)
        if min(abs(shade - background[first]), abs(shade - text[first])) <= round(LEVEL_TOLERANCE * LEVEL_BINS):
            edge -= max(1, round(width / 1024))
    return slab_top + edge



def iter_image_files(inputs: list[str | os.PathLike], skip: Callable[[Path], bool] | None = None) -> list[Path]:
    """Expand files and folders (non-recursive) into a sorted list of image files (and
    OME-Zarr folders); `skip` leaves files of folders out (inputs named one by one are
    always kept)."""
    files: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir() and item.suffix.lower() != ZARR_SUFFIX:
            files.extend(sorted(p for p in item.iterdir() if _is_image(p) and not (skip and skip(p))))
        else:
            files.append(item)
    return files


def _is_image(path: Path) -> bool:
    suffix = path.suffix.lower()
    return (suffix in IMAGE_SUFFIXES and path.is_file()) or (suffix == ZARR_SUFFIX and path.is_dir())


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


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()  # read once: setting it to read it is not thread-safe


def write_file_atomically(path: str | os.PathLike, write: Callable[[str], None], *, overwrite: bool = False) -> Path:
    """`write(temporary_path)` beside `path`, then publish it under `path` in one step, so the file
    appears only once complete. An existing file is never replaced unless `overwrite` is true."""
    return write_files_atomically({path: write}, overwrite=overwrite)[0]


TEMPORARY_SUFFIX = ".part"


def write_files_atomically(writes: dict[str | os.PathLike, Callable[[str], None]], *,
                           overwrite: bool = False, folders: bool = False) -> list[Path]:
    """A set of files, all or nothing: each `write(temporary_path)` runs on a hidden temporary
    beside its file; only when every one is complete are they published, each in one step.
    Without `overwrite`, an existing file refuses the whole set before anything is written,
    and a failure while publishing removes the files this set had published. With it, each
    file is swapped in by one `os.replace` (readers see the old or the new file, never a
    partial one). New files follow the umask.

    With `folders`, each output is a folder (an OME-Zarr image), its temporary an empty
    folder to fill. A folder cannot replace another in one step: with `overwrite` the old one
    is renamed aside first, and removed once the new one is in place."""
    paths = [Path(p) for p in writes]
    if not overwrite:
        for path in paths:
            if path.exists():
                raise FileExistsError(f"{path}: exists already; refusing to overwrite")
    temporaries: dict[Path, str] = {}
    published: list[Path] = []
    try:
        for path, write in zip(paths, writes.values()):
            path.parent.mkdir(parents=True, exist_ok=True)
            if folders:
                tmp = tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
                os.chmod(tmp, 0o777 & ~_UMASK)
            else:
                fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
                os.close(fd)
                os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it 0600; a new file follows the umask
            temporaries[path] = tmp
            write(tmp)
        for path, tmp in temporaries.items():
            if folders:
                _publish_folder(tmp, path, overwrite)
            elif overwrite:
                os.replace(tmp, path)
            else:
                os.link(tmp, path)  # fails if path appeared meanwhile, unlike os.replace
            published.append(path)
    except BaseException:
        if not overwrite:
            for path in published:
                remove_file_or_folder(path)
        raise
    finally:
        for tmp in temporaries.values():
            remove_file_or_folder(Path(tmp))
    return paths


def _publish_folder(tmp: str, path: Path, overwrite: bool) -> None:
    if not path.exists():
        os.rename(tmp, path)  # fails if a non-empty folder appeared meanwhile
        return
    if not overwrite:  # it appeared since the check: another run's
        raise FileExistsError(f"{path}: exists already; refusing to overwrite")
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent))
    os.rmdir(aside)  # only its unique name is wanted: renaming onto a folder fails on Windows
    os.rename(path, aside)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(aside, path)  # the old output back in place
        raise
    remove_file_or_folder(aside)


def remove_file_or_folder(path: Path) -> None:
    """A file or a whole folder (an OME-Zarr image); nothing if it is not there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        path.unlink(missing_ok=True)


def remove_stale_temporaries(path: str | os.PathLike, older_than_s: float = 600.0) -> list[Path]:
    """Remove the temporaries that `write_files_atomically` left beside `path` when its process
    was killed mid-write (older than `older_than_s`: a write in progress is left alone)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    cutoff = time.time() - older_than_s
    stale = [p for p in path.parent.glob(f".{glob.escape(path.name)}.*{TEMPORARY_SUFFIX}")
             if p.stat().st_mtime < cutoff]
    for p in stale:
        remove_file_or_folder(p)
    return stale


def is_our_output(path: str | os.PathLike) -> bool:
    """A file this package wrote (its provenance names napari-etdms): never taken as an input
    by a batch, so a rerun into the input folder does not process its own outputs."""
    try:
        software = read_provenance(path)["provenance"].get("software", "")
    except Exception:  # unreadable, or a zarr without the zarr extra: reported when it is processed
        return False
    return str(software).startswith("napari-etdms")


def read_provenance(path: str | os.PathLike) -> dict:
    """Provenance and pixel size stored by `write_tiff` (or in an OME-Zarr output)."""
    import tifffile

    if Path(path).suffix.lower() == ZARR_SUFFIX:
        from napari_etdms.io.ome_zarr import multiscale_layer

        _, pixel_size_nm, provenance = multiscale_layer(Path(path))  # lazy: nothing is decoded
        return {"provenance": provenance, "pixel_size_nm": pixel_size_nm}

    with tifffile.TiffFile(path) as tif:
        if tif.is_imagej:
            meta = tif.imagej_metadata or {}
        else:
            meta = ((tif.shaped_metadata or ({},))[0] if tif.is_shaped else None) or {}
        info = meta.get("Info")
        pixel_size_nm = _resolution_pixel_size_nm(tif, meta.get("unit"))
    return {"provenance": json.loads(info) if info else {}, "pixel_size_nm": pixel_size_nm}
