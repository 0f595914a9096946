"""Lengths in nanometres from the units vendors write, and metadata made JSON-serialisable."""

from __future__ import annotations

import os

import numpy as np

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
