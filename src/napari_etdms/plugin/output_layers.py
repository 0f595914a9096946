"""A run's outputs as napari layers, overlaying their input exactly (see `geometry`), with
their provenance in the layer metadata; large ones as pyramids."""

from __future__ import annotations

import time

import numpy as np

from napari_etdms import __version__
from napari_etdms.plugin.geometry import pyramid_levels, region_geometry, upscaled_geometry

OUTPUTS = {  # Result field -> layer name suffix
    "denoised": "denoised",
    "super_resolved": "ETDMS x4",
    "bicubic_input": "bicubic x4",
    "bicubic_denoised": "denoised bicubic x4",
    "std": "ETDMS x4 std",
}
# Compare: the grid's panels, in this order, after the input
COMPARED = ("denoised", "super_resolved", "bicubic_input", "std")


def add_output_layers(viewer, results: list, context: dict) -> list[str]:
    """Add (or replace) the output layers of `results` (one per processed slice) of the input
    layer `context["layer"]`; returns the names to compare: the input's, then its outputs'."""
    layer = context["layer"]
    seconds = time.monotonic() - context["started"]
    for field_name, suffix in OUTPUTS.items():
        frames = [getattr(r, field_name) for r in results]
        if frames[0] is None:
            continue
        data = frames[0] if len(frames) == 1 else np.stack(frames)
        provenance = results[0].metadata | {
            "input_layer": layer.name,
            "output": field_name,
            "region": {"mode": context["region"], "offset_px": list(context["offset"]),
                       "shape_px": list(results[0].bicubic_input.shape[-2:])},
            "slice": context["slice"],
            "noise_estimated_on": "whole slice" if context["noise_from_whole"] else "processed frame",
            "wall_time_s": round(seconds, 2),
            "plugin": f"napari-etdms {__version__}",
        }
        levels = pyramid(data, pyramid_levels(data.shape))  # [data] when it fits one texture
        _add_or_replace(viewer, layer, f"{layer.name} {suffix}", levels, field_name, context["offset"], provenance)
    return [layer.name] + [f"{layer.name} {OUTPUTS[f]}" for f in COMPARED if getattr(results[0], f) is not None]


def add_stack_layers(viewer, layer, stores: dict, context: dict) -> list[str]:
    """Add (or replace) the 3D OME-Zarr outputs of a stack run (`worker.stack_job`) as lazy
    layers over the input stack `layer`: napari reads only the slices and tiles it shows."""
    from napari_etdms.io import open_volume, volume_layer

    for field_name, suffix in OUTPUTS.items():
        if field_name not in stores:
            continue
        levels, provenance = volume_layer(open_volume(stores[field_name], max_pixels=2**62))
        provenance |= {"input_layer": layer.name, "output": field_name, "store": str(stores[field_name]),
                       "wall_time_s": round(time.monotonic() - context["started"], 2),
                       "plugin": f"napari-etdms {__version__}"}
        _add_or_replace(viewer, layer, f"{layer.name} {suffix}", levels, field_name, (0, 0), provenance)
    return [layer.name] + [f"{layer.name} {OUTPUTS[f]}" for f in COMPARED if f in stores]


def is_output(layer) -> bool:
    return "napari-etdms" in str(layer.metadata.get("plugin", ""))


def _add_or_replace(viewer, layer, name: str, levels: list, field_name: str, offset, provenance: dict) -> None:
    """The output `levels` (full resolution first) as a layer over `layer`'s pixels from
    `offset` (last two axes), replacing an earlier run's layer of that name."""
    scale, translate = list(layer.scale), list(layer.translate)
    if levels[0].ndim == 2 and layer.ndim == 3:  # one slice of a stack: a 2D layer on that slice's plane
        scale, translate = scale[1:], translate[1:]
    scale, translate = region_geometry(scale, translate, offset)
    if field_name != "denoised":
        scale, translate = upscaled_geometry(scale, translate, 4)
    kwargs = dict(scale=scale, translate=translate, metadata=provenance,
                  units=tuple(layer.units)[-len(scale):], axis_labels=tuple(layer.axis_labels)[-len(scale):])
    if field_name == "std":
        kwargs["colormap"] = "magma"
    else:
        kwargs["contrast_limits"] = tuple(layer.contrast_limits)
    if name in viewer.layers:  # re-running replaces the previous outputs of this input
        viewer.layers.remove(name)
    viewer.add_image(levels if len(levels) > 1 else levels[0], name=name, multiscale=len(levels) > 1, **kwargs)


def pyramid(data: np.ndarray, levels: int) -> list[np.ndarray]:
    """`levels` resolutions of `data` (2x2 block means over its last two axes), full first."""
    out = [data]
    for _ in range(levels - 1):
        prev = out[-1]
        h, w = prev.shape[-2] // 2 * 2, prev.shape[-1] // 2 * 2
        blocks = prev[..., :h, :w].reshape(*prev.shape[:-2], h // 2, 2, w // 2, 2)
        out.append(blocks.mean(axis=(-3, -1)).astype(data.dtype))
    return out
