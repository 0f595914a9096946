"""napari writer: one image layer to a TIFF with pixel size (from the layer's scale and units) and provenance."""

from __future__ import annotations

import math

import numpy as np

from napari_etdms.io import nm_per_unit, to_jsonable, write_tiff


def write_sem_tiff(path: str, data, meta: dict) -> list[str]:
    """Write an image layer (2D, 3D stack or RGB) as ImageJ TIFF; returns [path].

    napari's save dialog has already confirmed replacing an existing file, so the file is replaced
    atomically. The pixel size is `scale[-1]` in `units[-1]` converted to nm; none is written when the
    units are missing or not a length (e.g. 'pixel'). The layer's JSON-serialisable metadata (arrays such
    as the databar are left out), name, scale and units are stored as provenance.
    """
    if meta.get("multiscale") or isinstance(data, (list, tuple)):
        data = data[0]  # full-resolution level of a multiscale layer
    data = np.asarray(data)
    scale = [float(s) for s in (meta.get("scale") or [1.0] * data.ndim)]
    units = meta.get("units")
    units = list(units) if isinstance(units, (list, tuple)) else [units] * len(scale)
    rgb = bool(meta.get("rgb")) and data.ndim >= 3 and data.shape[-1] in (3, 4)

    pixel_size_nm = None
    factor = nm_per_unit(units[-1]) if units else None
    if factor and scale and math.isfinite(scale[-1]) and scale[-1] > 0:
        pixel_size_nm = scale[-1] * factor

    provenance = to_jsonable(meta.get("metadata") or {}) or {}
    provenance.pop("databar", None)
    provenance.update(
        layer_name=meta.get("name"),
        layer_scale=scale,
        layer_units=[None if u is None else (format(u, "~") if hasattr(u, "dimensionality") else str(u))
                     for u in units],
    )
    if len(scale) >= 2 and not math.isclose(scale[-1], scale[-2], rel_tol=1e-9):
        provenance["note"] = "anisotropic pixels: the TIFF resolution holds the x pixel size for both axes"

    if rgb:
        axes = "YXS" if data.ndim == 3 else None
    elif data.ndim == 2:
        axes = "YX"
    elif data.ndim == 3:
        labels = [str(a).lower() for a in (meta.get("axis_labels") or ())]
        axes = "TYX" if labels[:1] == ["t"] else "ZYX"
    else:
        axes = None
    if axes is None:
        raise ValueError(f"{path}: cannot write a layer of shape {data.shape} (2D, 3D or RGB only)")
    write_tiff(path, data, pixel_size_nm, provenance, overwrite=True, axes=axes)
    return [str(path)]
