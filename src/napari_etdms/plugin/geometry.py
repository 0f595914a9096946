"""Where output layers go so they overlay the input exactly (no napari import).

napari places pixel centres at index * scale + translate. A x4 output pixel (4i + k) must
sit inside input pixel i, so the x4 grid has scale / 4 and its first centre 3/8 of an input
pixel before the input's first centre: translate - 0.375 * scale (for f = 4, in general
translate - scale * (f - 1) / (2 f)). This matches bicubic/area upsampling with
align_corners=False, which the pipeline uses.
"""

from __future__ import annotations

from collections.abc import Sequence

MAX_TEXTURE_SIDE = 16384


def region_geometry(scale: Sequence[float], translate: Sequence[float], offset: Sequence[int]):
    """Geometry of a crop starting at `offset` (pixels, last two axes) of a layer."""
    scale, translate = list(map(float, scale)), list(map(float, translate))
    lead = len(scale) - len(offset)
    translate = [t + (s * o if i >= lead else 0.0) for i, (t, s, o) in
                 enumerate(zip(translate, scale, [0] * lead + list(offset)))]
    return scale, translate


def upscaled_geometry(scale: Sequence[float], translate: Sequence[float], factor: int = 4):
    """Scale and translate of an output upsampled by `factor` along the last two axes."""
    scale, translate = list(map(float, scale)), list(map(float, translate))
    for axis in (-2, -1):
        translate[axis] -= scale[axis] * (factor - 1) / (2 * factor)
        scale[axis] /= factor
    return scale, translate


def pyramid_levels(shape: Sequence[int], max_side: int = MAX_TEXTURE_SIDE) -> int:
    """How many 2x levels a multiscale layer needs so its coarsest level fits one texture."""
    levels, side = 1, max(shape[-2:])
    while side > max_side:
        side = (side + 1) // 2
        levels += 1
    return levels
