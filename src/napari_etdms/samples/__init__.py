"""Sample SEM frames shipped with the package (MIT, NASA pretrained-microscopy-models)."""

from __future__ import annotations

from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parent
SAMPLES = {
    "superalloy": "nasa_superalloy_spot3_0d_3.png",
    "coating": "nasa_ebc_032919-6_100cyc0007.png",
}
PIXEL_SIZE_NOTE = "pixel size not recorded in the source files"


def sample_path(key: str) -> Path:
    if key not in SAMPLES:
        raise KeyError(f"unknown sample '{key}' (choose from {', '.join(SAMPLES)})")
    return SAMPLE_DIR / SAMPLES[key]


def sample_paths() -> list[Path]:
    return [sample_path(k) for k in SAMPLES]
