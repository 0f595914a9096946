"""napari reader: SEM TIFF/PNG frames with pixel size (nm) as layer scale and the databar as a hidden layer,
and OME-Zarr images (our x4 outputs) as multiscale layers.

All file and metadata logic lives in `napari_etdms.io` (no napari or Qt import needed here).
"""

from __future__ import annotations

import os
from pathlib import Path

from napari_etdms.io import IMAGE_SUFFIXES, ZARR_SUFFIX, Frame, read_frame

UNIT = "nm"
_FIRST_AXIS = {"T": "t", "C": "c", "S": "c"}


def napari_get_reader(path):
    """Return `read_sem` when every path is a TIFF or PNG file name or a .zarr folder, else None. Cheap
    (looks at names only) and never raises: unreadable files are reported by `read_sem` itself."""
    try:
        paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
        if not paths or not all(isinstance(p, (str, os.PathLike)) for p in paths):
            return None
        if not all(Path(p).suffix.lower() in (*IMAGE_SUFFIXES, ZARR_SUFFIX) for p in paths):
            return None
    except Exception:  # noqa: BLE001  napari may pass anything; never raise from here
        return None
    return read_sem


def read_sem(path) -> list[tuple]:
    """LayerData tuples for one path or a list of paths; raises `napari_etdms.io.ReadError` for a corrupt
    or missing file (napari shows the message)."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    layers = []
    for p in paths:
        if Path(p).suffix.lower() == ZARR_SUFFIX:
            layers.append(ome_zarr_layer(Path(p)))
        else:
            layers.extend(frame_layers(read_frame(p)))
    return layers


def ome_zarr_layer(path: Path) -> tuple:
    """A multiscale layer of lazy (dask) levels: napari reads only the tiles it shows."""
    from napari_etdms.io import multiscale_layer, open_volume, zarr_stem

    volume = open_volume(path, max_pixels=2**62)  # the header only: napari reads lazily
    if volume is not None:
        return volume_image_layer(volume, zarr_stem(path))
    levels, px, provenance = multiscale_layer(path)
    kwargs = {"name": zarr_stem(path), "multiscale": len(levels) > 1, "scale": (px, px) if px else (1.0, 1.0),
              "axis_labels": ("y", "x"),
              "metadata": {"pixel_size_nm": px, "source_path": str(path), "provenance": provenance}}
    if px:
        kwargs["units"] = (UNIT, UNIT)
    return (levels if len(levels) > 1 else levels[0], kwargs, "image")


def volume_image_layer(volume, name: str) -> tuple:
    """A 3D (z, y, x) OME-Zarr image as a lazy multiscale layer, z spacing and pixel size as its scale."""
    from napari_etdms.io import volume_layer

    levels, provenance = volume_layer(volume)
    px, dz = volume.pixel_size_nm, volume.z_spacing_nm
    kwargs = {"name": name, "multiscale": len(levels) > 1, "scale": (dz or 1.0, px or 1.0, px or 1.0),
              "axis_labels": ("z", "y", "x"),
              "metadata": {"pixel_size_nm": px, "z_spacing_nm": dz, "source_path": str(volume.path),
                           "provenance": provenance}}
    if px and dz:
        kwargs["units"] = (UNIT, UNIT, UNIT)
    return (levels if len(levels) > 1 else levels[0], kwargs, "image")


def frame_layers(frame: Frame, name: str | None = None) -> list[tuple]:
    """The image layer of a frame and, when a databar was split off, a hidden databar layer placed directly
    below the scan area in world coordinates. The databar layer comes first so that the scan image is on
    top of the layer list and becomes the selected layer."""
    data = frame.data
    name = name or (frame.path.stem if frame.path else "SEM frame")
    axes = frame.metadata.get("axes") or ("YX" if data.ndim == 2 else "Q" * (data.ndim - 2) + "YX")
    rgb = axes.endswith("S") and data.ndim == 3 and data.shape[-1] in (3, 4)
    spatial_ndim = data.ndim - 1 if rgb else data.ndim
    px = frame.pixel_size_nm

    metadata = dict(frame.metadata)
    metadata.update(
        pixel_size_nm=px,
        pixel_size_source=frame.metadata.get("pixel_size_source"),
        source_path=str(frame.path) if frame.path else None,
        databar=frame.databar,
    )
    labels = ("y", "x")
    if spatial_ndim > 2:
        extra = axes[: spatial_ndim - 2]
        labels = tuple(_FIRST_AXIS.get(a, "z") for a in extra) + labels
        if len(set(labels)) < len(labels):
            labels = tuple(f"{label}{i}" for i, label in enumerate(labels[:-2])) + ("y", "x")
    scale = (1.0,) * (spatial_ndim - 2) + ((px, px) if px else (1.0, 1.0))
    kwargs = {"name": name, "scale": scale, "axis_labels": labels, "metadata": metadata}
    if rgb:
        kwargs["rgb"] = True
    if px:
        kwargs["units"] = ("pixel",) * (spatial_ndim - 2) + (UNIT, UNIT)
    layers = [(data, kwargs, "image")]

    bar = frame.databar
    if bar is not None and spatial_ndim == 2:
        step = px or 1.0
        bar_kwargs = {
            "name": f"{name} databar",
            "scale": (step, step),
            "translate": (data.shape[0] * step, 0.0),
            "axis_labels": labels,
            "visible": False,
            "metadata": {"source_path": metadata["source_path"], "databar_of": name,
                         "databar_source": frame.metadata.get("databar_source")},
        }
        if rgb:
            bar_kwargs["rgb"] = True
        if px:
            bar_kwargs["units"] = (UNIT, UNIT)
        layers.insert(0, (bar, bar_kwargs, "image"))
    return layers
