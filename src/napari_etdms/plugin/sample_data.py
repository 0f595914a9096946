"""napari sample data: two SEM frames shipped with the package (MIT, NASA pretrained-microscopy-models)."""

from __future__ import annotations

from napari_etdms.io import read_frame
from napari_etdms.samples import PIXEL_SIZE_NOTE, sample_path

LICENCE = "MIT (NASA pretrained-microscopy-models, Stuckner et al.)"


def _sample(key: str, name: str) -> list[tuple]:
    path = sample_path(key)
    frame = read_frame(path)
    metadata = {"source": str(path), "licence": LICENCE, "pixel_size_note": PIXEL_SIZE_NOTE}
    return [(frame.data, {"name": name, "metadata": metadata})]


def superalloy_sample() -> list[tuple]:
    """Ni-based superalloy, gamma/gamma-prime microstructure (SE), 512 x 512, 8-bit."""
    return _sample("superalloy", "superalloy (SEM sample)")


def coating_sample() -> list[tuple]:
    """Environmental barrier coating cross-section after 100 cycles, 1024 x 1024, 8-bit."""
    return _sample("coating", "coating (SEM sample)")
