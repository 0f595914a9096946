"""OME-Zarr in and out (the `zarr` extra: zarr, and ome-zarr for the NGFF metadata), for
frames whose x4 outputs do not fit in memory.

An output is an OME-Zarr (NGFF) multiscale image: level 0 is filled band by band while the
pipeline runs (`OmeZarrOutputs` is its `ArrayFactory`), each coarser level is the 2x2 mean
of the one above, made band by band, and every level's scale is its pixel size in
nanometres. Stage 2's state goes to uncompressed zarr arrays in a scratch folder, so the
process holds bands, not frames, whatever the frame's size. Inputs are read from level 0 of
an OME-Zarr image (a 2D frame, or one with single-plane leading axes).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from napari_etdms.io.frame import ZARR_SUFFIX, Frame, ReadError, check_pixel_count
from napari_etdms.io.units import length_nm, to_jsonable

CHUNK = 512  # px, outputs' chunk side
STATE_CHUNK = (256, 4096)  # scratch arrays are read and written in full-width bands of rows
SMALLEST_LEVEL = 512  # px: the pyramid stops at the first level whose longer side is at most this
BAND_ROWS = 2 * CHUNK  # rows read or written at a time where a level is made or checked
PROVENANCE_KEY = "napari_etdms"  # the group attribute holding an output's provenance


def require_zarr():
    try:
        import ome_zarr  # noqa: F401
        import zarr
    except ImportError:
        raise ImportError("OME-Zarr input and output need the zarr extra: pip install 'napari-etdms[zarr]'") from None
    return zarr


def zarr_stem(path: Path) -> str:
    """`frame` for frame.zarr and frame.ome.zarr."""
    name = path.name
    for suffix in (".ome.zarr", ZARR_SUFFIX):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _multiscale(path: Path):
    """The first image node of an OME-Zarr: (levels as dask arrays, node metadata)."""
    require_zarr()
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    location = parse_url(str(path))
    if location is None:
        raise ValueError("not a zarr store")
    for node in Reader(location)():
        if node.load(Multiscales) is not None and node.data:
            return node.data, node.metadata
    raise ValueError("no multiscale image in it")


def _pixel_size_nm(metadata: dict) -> float | None:
    """Level 0's spacing of the last (x) axis in nanometres, if it is a space axis with a known unit."""
    axes = metadata.get("axes") or []
    transforms = (metadata.get("coordinateTransformations") or [[]])[0]
    scales = [t["scale"] for t in transforms if t.get("type") == "scale"]
    if not axes or not scales:
        return None
    unit = axes[-1].get("unit") if isinstance(axes[-1], dict) else None
    return length_nm(scales[0][-1], unit)


def read_ome_zarr(path: Path, max_pixels: int):
    """Level 0 of an OME-Zarr image as a `Frame`; leading axes must be single planes."""
    levels, pixel, provenance = multiscale_layer(path)
    check_pixel_count(path, levels[0].shape, max_pixels)
    return Frame(data=np.asarray(levels[0]), path=path, pixel_size_nm=pixel,
                 metadata={"axes": "YX", "pixel_size_source": "OME-Zarr" if pixel else None,
                           "provenance": provenance})


def read_zarr_provenance(path: Path) -> dict:
    zarr = require_zarr()
    try:
        return dict(zarr.open_group(str(path), mode="r").attrs.get(PROVENANCE_KEY) or {})
    except Exception:  # not a group, unreadable
        return {}


def multiscale_layer(path: Path) -> tuple[list, float | None, dict]:
    """The levels of one 2D OME-Zarr image (lazy dask arrays: nothing is decoded yet), level
    0's pixel size and the provenance. Raises ReadError naming the file."""
    try:
        levels, metadata = _multiscale(path)
    except Exception as err:  # ImportError included: its message names the extra to install
        raise ReadError(f"{path}: cannot read it as OME-Zarr ({err})") from None
    _check_one_plane(path, levels[0].shape)
    levels = [level.reshape(level.shape[-2:]) if level.ndim > 2 else level for level in levels]
    return levels, _pixel_size_nm(metadata), read_zarr_provenance(path)


def _check_one_plane(path: Path, shape: tuple[int, ...]) -> None:
    if len(shape) < 2 or any(n != 1 for n in shape[:-2]):
        raise ReadError(f"{path}: expected one 2D image, got shape {tuple(shape)}; write one plane per file")


def scratch_bytes(height: int, width: int, settings) -> int:
    """Disk for stage 2's work arrays of one frame, at most: its state, previous x0 and mean
    (uncompressed float32; with several draws, their spread too)."""
    x4 = 16 * height * width * 4
    return (3 + (1 if settings.samples > 1 else 0)) * x4 if settings.super_resolve else 0


def disk_needed_bytes(height: int, width: int, settings) -> int:
    """Disk for one input's run, at most: stage 2's work arrays and the outputs (counted
    uncompressed), in float32."""
    x4 = 16 * height * width * 4
    outputs = (2 + (1 if settings.super_resolve else 0) + (1 if settings.samples > 1 else 0)) * x4
    return scratch_bytes(height, width, settings) + outputs + height * width * 4


def check_disk(folder: Path, height: int, width: int, settings) -> None:
    needed = disk_needed_bytes(height, width, settings)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise OSError(f"{folder}: a {height}x{width} frame needs up to {needed / 2**30:.1f} GiB of disk for its "
                      f"OME-Zarr outputs and work arrays, {free / 2**30:.1f} GiB is free; choose another "
                      "--output folder")


class ZarrArrays:
    """The pipeline's `ArrayFactory` on disk: uncompressed float32 arrays under `folder`."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def empty(self, name: str, shape: tuple[int, int]):
        zarr = require_zarr()
        chunks = (min(STATE_CHUNK[0], shape[0]), min(STATE_CHUNK[1], shape[1]))
        return zarr.create_array(store=str(self.folder / name), shape=shape, chunks=chunks, dtype="float32",
                                 compressors=None, fill_value=0.0, overwrite=True)


class OmeZarrOutputs:
    """The pipeline's `ArrayFactory` for one input: the arrays named in `outputs` (Result
    fields) are level 0 of OME-Zarr images staged under `folder`; the others (stage 2's
    state) are scratch arrays beside them."""

    def __init__(self, folder: Path, outputs: list[str]):
        self.folder = Path(folder)
        self.outputs = outputs
        self.scratch = ZarrArrays(self.folder / "scratch")

    def staged(self, name: str) -> Path:
        return self.folder / f"{name}.ome.zarr"

    def empty(self, name: str, shape: tuple[int, int]):
        if name not in self.outputs:
            return self.scratch.empty(name, shape)
        zarr = require_zarr()
        group = zarr.open_group(str(self.staged(name)), mode="w")
        return group.create_array("0", shape=shape, chunks=(min(CHUNK, shape[0]), min(CHUNK, shape[1])),
                                  dtype="float32", fill_value=0.0)

    def finish(self, arrays: dict[str, object], pixel_size_nm: dict[str, float | None],
               provenance: dict) -> dict[str, Path]:
        """Complete each output: level 0 written from memory where the pipeline held it there
        (low-res outputs), the pyramid, and the metadata. Returns the staged folders."""
        zarr = require_zarr()
        shutil.rmtree(self.scratch.folder, ignore_errors=True)  # no longer needed: free the disk first
        staged = {}
        for name, data in arrays.items():
            if isinstance(data, np.ndarray):
                self.empty(name, data.shape)[:] = data
            group = zarr.open_group(str(self.staged(name)), mode="r+")
            _write_pyramid(group, pixel_size_nm[name], provenance | {"layer": name})
            staged[name] = self.staged(name)
        return staged


def output_levels(shape: tuple[int, ...]) -> int:
    """Levels of an output's pyramid over its last two axes: halved until the longer side is at
    most SMALLEST_LEVEL (or a side would vanish)."""
    levels, (h, w) = 1, shape[-2:]
    while max(h, w) > SMALLEST_LEVEL and min(h, w) >= 2:
        h, w, levels = h // 2, w // 2, levels + 1
    return levels


def halve_into(finer, coarser) -> None:
    """`coarser` (2D, half of `finer`'s rows and columns) = 2x2 means of `finer`, made band by
    band so neither is ever whole in memory."""
    h, w = coarser.shape[-2:]
    for top in range(0, 2 * h, BAND_ROWS):
        band = np.asarray(finer[top : min(top + BAND_ROWS, 2 * h), : 2 * w])
        coarser[top // 2 : top // 2 + band.shape[0] // 2] = band.reshape(band.shape[0] // 2, 2, w, 2).mean(axis=(1, 3))


def _write_pyramid(group, pixel_size_nm: float | None, provenance: dict) -> None:
    from ome_zarr.writer import write_multiscales_metadata

    level = group["0"]
    paths = ["0"]
    for _ in range(1, output_levels(level.shape)):
        coarser_shape = (level.shape[0] // 2, level.shape[1] // 2)
        coarser = group.create_array(str(len(paths)), shape=coarser_shape, dtype="float32", fill_value=0.0,
                                     chunks=(min(CHUNK, coarser_shape[0]), min(CHUNK, coarser_shape[1])))
        halve_into(level, coarser)
        level = coarser
        paths.append(str(len(paths)))
    spacing = pixel_size_nm or 1.0
    datasets = [{"path": p, "coordinateTransformations": [{"type": "scale", "scale": [spacing * 2**i] * 2}]}
                for i, p in enumerate(paths)]
    axes = [{"name": a, "type": "space", **({"unit": "nanometer"} if pixel_size_nm else {})} for a in "yx"]
    write_multiscales_metadata(group, datasets=datasets, axes=axes, name=provenance.get("layer"),
                               metadata={"method": "2x2 mean of the level above"})
    group.attrs[PROVENANCE_KEY] = to_jsonable(provenance)
