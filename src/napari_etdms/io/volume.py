"""Volumes (FIB-SEM, serial block-face): stacks of slices read one slice at a time, and 3D
OME-Zarr outputs written one slice at a time, each store knowing which of its slices are complete.

Inputs: a 3D OME-Zarr image (z, y, x; other leading axes single planes) or a multi-page TIFF /
OME-TIFF / ImageJ stack (a page per slice). Only the header is read to tell a volume from a
frame; a slice is decoded when it is processed.

Outputs: one OME-Zarr image per result, (z, y, x) chunked one slice deep, levels coarser in x
and y only (the z spacing is kept on every level), provenance in the group attributes. A slice
is complete in a store once its file under `completed/` exists: written only after the slice's
level 0 and coarser levels were written and read back finite, it holds their sha256 and the
slice's own provenance (its noise estimate, timings). Separate slices are separate chunks, so
workers write their slices into the same stores without gathering anything.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np

from napari_etdms.io.frame import ZARR_SUFFIX, ReadError, check_pixel_count
from napari_etdms.io.metadata import tiff_metadata
from napari_etdms.io.ome_zarr import BAND_ROWS, CHUNK, PROVENANCE_KEY, halve_into, output_levels, require_zarr
from napari_etdms.io.units import length_nm, to_jsonable

COMPLETED = "completed"  # the folder, inside each output store, of the slices' completion records
TIFF_SUFFIXES = (".tif", ".tiff")


class Volume:
    """A stack of slices on disk, read one slice at a time (picklable: a cluster worker opens
    the file itself)."""

    def __init__(self, path: Path, shape: tuple[int, int, int], pixel_size_nm: float | None,
                 z_spacing_nm: float | None, kind: str):
        self.path, self.shape, self.kind = Path(path), tuple(int(n) for n in shape), kind
        self.pixel_size_nm, self.z_spacing_nm = pixel_size_nm, z_spacing_nm

    def __len__(self) -> int:
        return self.shape[0]

    def slice(self, z: int) -> np.ndarray:
        if self.kind == "tiff":
            import tifffile

            with tifffile.TiffFile(self.path) as tif:
                return np.asarray(tif.asarray(key=z, series=0))
        zarr = require_zarr()
        level = zarr.open_array(str(self.path / _first_level(self.path)), mode="r")
        index = (0,) * (level.ndim - 3) + (z,)
        return np.asarray(level[index])


def open_volume(path: str | Path, max_pixels: int) -> Volume | None:
    """The volume at `path`, or None when it holds one 2D frame (or is not a stack: RGB, a
    single page). Raises ReadError naming the file when it cannot be read."""
    path = Path(path)
    try:
        if path.suffix.lower() == ZARR_SUFFIX and path.is_dir():
            volume = _zarr_volume(path)
        elif path.suffix.lower() in TIFF_SUFFIXES and path.is_file():
            volume = _tiff_volume(path)
        else:
            return None
    except ReadError:
        raise
    except Exception as err:  # corrupt files raise many types
        raise ReadError(f"{path}: cannot read it as a stack ({type(err).__name__}: {err})") from None
    if volume is not None:
        check_pixel_count(path, volume.shape, max_pixels * volume.shape[0])  # the limit holds per slice
    return volume


def _tiff_volume(path: Path) -> Volume | None:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        shape, axes = tuple(series.shape), series.axes
        if len(shape) != 3 or axes.endswith("S") or shape[0] < 2:
            return None
        metadata, pixel_size_nm = tiff_metadata(tif, shape[-1])
    return Volume(path, shape, pixel_size_nm, _tiff_z_spacing_nm(metadata), "tiff")


def _tiff_z_spacing_nm(metadata: dict) -> float | None:
    ome = metadata.get("ome") or {}
    if ome.get("PhysicalSizeZ") is not None:
        return length_nm(ome["PhysicalSizeZ"], ome.get("PhysicalSizeZUnit", "µm"))
    imagej = metadata.get("imagej") or {}
    if imagej.get("spacing") is not None:
        return length_nm(imagej["spacing"], imagej.get("unit"))
    return None


def _first_level(path: Path) -> str:
    attrs = _group_attrs(path)
    return _multiscales(attrs)["datasets"][0]["path"]


def _group_attrs(path: Path) -> dict:
    zarr = require_zarr()
    return dict(zarr.open_group(str(path), mode="r").attrs)


def _multiscales(attrs: dict) -> dict:
    multiscales = (attrs.get("ome") or attrs).get("multiscales")
    if not multiscales:
        raise ReadError("no multiscale image in it")
    return multiscales[0]


def _zarr_volume(path: Path) -> Volume | None:
    zarr = require_zarr()
    multiscale = _multiscales(_group_attrs(path))
    level = zarr.open_array(str(path / multiscale["datasets"][0]["path"]), mode="r")
    shape = tuple(level.shape)
    if len(shape) < 3 or any(n != 1 for n in shape[:-3]) or shape[-3] < 2:
        return None
    axes = multiscale.get("axes") or []
    transforms = multiscale["datasets"][0].get("coordinateTransformations") or []
    scale = next((t["scale"] for t in transforms if t.get("type") == "scale"), None)

    def spacing(axis: int) -> float | None:
        if scale is None or len(axes) != len(shape) or not isinstance(axes[axis], dict):
            return None
        return length_nm(scale[axis], axes[axis].get("unit"))

    return Volume(path, shape[-3:], spacing(-1), spacing(-3), "zarr")


def volume_layer(volume: Volume) -> tuple[list, dict]:
    """The levels of a 3D OME-Zarr image as lazy dask arrays (nothing is decoded yet) and its
    provenance: a viewer reads only the slices and tiles it shows."""
    import dask.array as da

    attrs = _group_attrs(volume.path)
    levels = [da.from_zarr(str(volume.path / d["path"])) for d in _multiscales(attrs)["datasets"]]
    levels = [level.reshape(level.shape[-3:]) for level in levels]
    return levels, dict(attrs.get(PROVENANCE_KEY) or {})


class VolumeStore:
    """One output of a volume run: a 3D OME-Zarr image whose slices are written one at a time."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def create(self, shape: tuple[int, int, int], pixel_size_nm: float | None, z_spacing_nm: float | None,
               record: dict) -> None:
        """Empty arrays for every level, the NGFF metadata and the run record (provenance)."""
        zarr = require_zarr()
        from ome_zarr.writer import write_multiscales_metadata

        group = zarr.open_group(str(self.path), mode="w")
        z, h, w = shape
        datasets = []
        for level in range(output_levels((h, w))):
            level_shape = (z, h // 2**level, w // 2**level)
            group.create_array(str(level), shape=level_shape, dtype="float32", fill_value=0.0,
                               chunks=(1, min(CHUNK, level_shape[1]), min(CHUNK, level_shape[2])))
            xy = (pixel_size_nm or 1.0) * 2**level
            datasets.append({"path": str(level),
                             "coordinateTransformations": [{"type": "scale", "scale": [z_spacing_nm or 1.0, xy, xy]}]})
        axes = [{"name": "z", "type": "space", **({"unit": "nanometer"} if z_spacing_nm else {})}]
        axes += [{"name": a, "type": "space", **({"unit": "nanometer"} if pixel_size_nm else {})} for a in "yx"]
        write_multiscales_metadata(group, datasets=datasets, axes=axes, name=record.get("layer"),
                                   metadata={"method": "2x2 mean of the level above, per slice"})
        group.attrs[PROVENANCE_KEY] = to_jsonable(record)
        (self.path / COMPLETED).mkdir()

    def record(self) -> dict:
        try:
            return dict(_group_attrs(self.path).get(PROVENANCE_KEY) or {})
        except Exception:  # not a store we can read: not ours
            return {}

    def level(self, index: int, mode: str = "r+"):
        zarr = require_zarr()
        return zarr.open_array(str(self.path / str(index)), mode=mode)

    def levels(self) -> int:
        return len(_multiscales(_group_attrs(self.path))["datasets"])

    def completed(self) -> set[int]:
        folder = self.path / COMPLETED
        return {int(p.stem[1:]) for p in folder.glob("z*.json")} if folder.is_dir() else set()

    def slice_view(self, z: int) -> SliceView:
        return SliceView(self.level(0), z)

    def write_slice(self, z: int, data: np.ndarray) -> None:
        self.level(0)[z] = np.asarray(data, np.float32)

    def finish_slice(self, z: int, provenance: dict) -> None:
        """The slice's coarser levels from its level 0, every level read back and checked, then
        its completion record."""
        for index in range(1, self.levels()):
            halve_into(SliceView(self.level(index - 1, "r"), z), SliceView(self.level(index), z))
        digests = [self._checked_digest(index, z) for index in range(self.levels())]
        record = {"slice": z, "sha256": digests, "provenance": to_jsonable(provenance)}
        temporary = self.path / COMPLETED / f".z{z:06d}.json.part"
        temporary.write_text(json.dumps(record))
        temporary.replace(self.path / COMPLETED / f"z{z:06d}.json")

    def _checked_digest(self, index: int, z: int) -> str:
        level = self.level(index, "r")
        digest = hashlib.sha256()
        for top in range(0, level.shape[1], BAND_ROWS):
            band = np.ascontiguousarray(level[z, top : top + BAND_ROWS], np.float32)
            if not np.isfinite(band).all():
                raise ValueError(f"{self.path}: slice {z} of level {index} reads back with non-finite values")
            digest.update(band.tobytes())
        return digest.hexdigest()

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class SliceView:
    """One z slice of a 3D array as the 2D array the pipeline writes its x4 outputs into, band
    by band (`engine.bands.ArrayFactory`): nothing of the slice is held in memory."""

    def __init__(self, array, z: int):
        self.array, self.z = array, z
        self.shape = tuple(array.shape[1:])
        self.dtype = np.dtype(np.float32)

    def _key(self, key):
        return (self.z, *key) if isinstance(key, tuple) else (self.z, key)

    def __getitem__(self, key):
        return np.asarray(self.array[self._key(key)])

    def __setitem__(self, key, value) -> None:
        self.array[self._key(key)] = value


def slice_bytes(shape: tuple[int, int], outputs: dict[str, int]) -> int:
    """Uncompressed float32 bytes of one slice in every output (`outputs`: field -> scale), all levels."""
    levels = {scale: sum(math.prod((n * scale) // 2**i for n in shape) for i in range(output_levels(
        (shape[0] * scale, shape[1] * scale)))) for scale in set(outputs.values())}
    return 4 * sum(levels[scale] for scale in outputs.values())
