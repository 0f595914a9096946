"""Tescan TIFFs (INI text in private tag 50431): pixel size. Their databar is painted into the frame."""

from __future__ import annotations

import re

import numpy as np

from napari_etdms.io.frame import VendorMetadata
from napari_etdms.io.units import length_nm

TESCAN_TAG = 50431


def read_metadata(tif, width: int) -> VendorMetadata | None:
    tag = tif.pages[0].tags.get(TESCAN_TAG)
    if tag is None:
        return None
    try:
        tescan = parse_tescan_metadata(tag.value)
    except ValueError as err:
        raise ValueError(f"Tescan tag {TESCAN_TAG}: {err}") from None
    main = tescan.get("MAIN", {})
    pixel_size = (length_nm(main.get("PixelSizeX"), "m"), "Tescan MAIN/PixelSizeX")
    return VendorMetadata("Tescan", "tescan", tescan, [pixel_size])


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
