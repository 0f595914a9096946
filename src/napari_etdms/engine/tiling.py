"""Overlapping tiles with taper-weighted blending, at any output scale.

`blend_tiles` crops every input at its own scale (low-res condition at 1x, high-res state
at 4x), runs a function on batches of tiles, and averages the outputs with weights that
fall smoothly to near zero at tile edges. Stage 1 uses it once; stage 2 uses it at every
sampling step on one global state, so neighbouring tiles never disagree (no seams).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


class Cancelled(RuntimeError):
    """The caller asked to stop; no partial result is returned."""


def tile_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Evenly spread tile origins covering [0, length) with at least `overlap` shared px,
    each a multiple of `align` (which must divide length - tile)."""
    if length <= tile:
        return [0]
    if (length - tile) % align:
        raise ValueError(f"tiles aligned to {align} px cannot end at {length} with tile {tile}")
    slots = (length - tile) // align
    count = math.ceil((length - overlap) / (tile - overlap))
    while True:  # rounding to the alignment may shrink a gap below the overlap: add a tile
        starts = sorted({align * round(i * slots / (count - 1)) for i in range(count)})
        if all(b - a <= tile - overlap for a, b in zip(starts, starts[1:])):
            return starts
        count += 1


def taper(length: int, ramp: int) -> torch.Tensor:
    """1D weights: raised-cosine ramps of `ramp` px at both ends, 1 in the middle, never 0."""
    w = torch.ones(length, dtype=torch.float64)
    ramp = min(ramp, length // 2)
    if ramp > 0:
        x = (torch.arange(ramp, dtype=torch.float64) + 0.5) / ramp
        rise = 0.5 - 0.5 * torch.cos(math.pi * x)
        w[:ramp] = rise
        w[length - ramp :] = rise.flip(0)
    return w.float()


@dataclass(frozen=True)
class TileGrid:
    """Tiles of `tile` px overlapping by `overlap`, origins on multiples of `align`.

    `context` px of the frame around each tile (reflected at the frame's borders) go into
    `fn` with it and are cut from its output: a network's output is biased near the edges of
    what it sees, so only the centre of what it saw is kept, and tiles of any size agree.
    Origins on multiples of a windowed network's window keep its windows on one frame-wide
    grid, whatever the tile size."""

    height: int  # low-res frame size
    width: int
    tile: int
    overlap: int
    align: int = 1
    context: int = 0

    def __post_init__(self):
        if self.tile <= 0 or self.overlap < 0 or self.overlap >= self.tile:
            raise ValueError(f"need 0 <= overlap < tile, got tile={self.tile}, overlap={self.overlap}")
        if self.height < self.tile or self.width < self.tile:
            raise ValueError(f"frame {self.height}x{self.width} is smaller than the tile {self.tile}; pad it first")
        if self.context < 0 or self.context % self.align:
            raise ValueError(f"context {self.context} must be a non-negative multiple of align {self.align}")

    @property
    def row_starts(self) -> list[int]:
        return tile_starts(self.height, self.tile, self.overlap, self.align)

    @property
    def column_starts(self) -> list[int]:
        return tile_starts(self.width, self.tile, self.overlap, self.align)

    @property
    def origins(self) -> list[tuple[int, int]]:
        columns = self.column_starts
        return [(y, x) for y in self.row_starts for x in columns]

    def weights(self, scale: int) -> torch.Tensor:
        side = taper(self.tile * scale, self.overlap * scale // 2)
        return side[:, None] * side[None, :]

    def describe(self) -> dict:
        return {"tile": self.tile, "overlap": self.overlap, "tiles": len(self.origins), "blend": "raised-cosine taper",
                "context": self.context, "align": self.align}


def blend_tiles(
    fn: Callable[..., torch.Tensor],
    inputs: Sequence[tuple[torch.Tensor, int]],
    grid: TileGrid,
    out_scale: int,
    batch_size: int,
    on_batch: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Apply `fn` tile-wise to (tensor, scale) inputs of shape (1, C, H*scale, W*scale).

    Returns the taper-weighted average of `fn`'s outputs, shape (1, C', H*s, W*s), s = out_scale.
    `on_batch` runs after each batch (progress, cancellation).
    """
    origins = grid.origins
    tile, context = grid.tile, grid.context
    weight = grid.weights(out_scale)
    if context:
        inputs = [(_pad(t, context * s), s) for t, s in inputs]
    seen = tile + 2 * context
    out = None
    total = torch.zeros(1, 1, grid.height * out_scale, grid.width * out_scale)
    for start in range(0, len(origins), batch_size):
        batch = origins[start : start + batch_size]
        crops = [
            torch.cat([t[..., y * s : (y + seen) * s, x * s : (x + seen) * s] for y, x in batch])
            for t, s in inputs
        ]
        result = fn(*crops).float().cpu()
        if context:
            cut = context * out_scale
            result = result[..., cut:-cut, cut:-cut]
        if out is None:
            out = torch.zeros(1, result.shape[1], grid.height * out_scale, grid.width * out_scale)
        for i, (y, x) in enumerate(batch):
            ys = slice(y * out_scale, (y + tile) * out_scale)
            xs = slice(x * out_scale, (x + tile) * out_scale)
            out[0, :, ys, xs] += result[i] * weight
            total[0, :, ys, xs] += weight
        if on_batch is not None:
            on_batch()
    return out / total


def _pad(t: torch.Tensor, amount: int) -> torch.Tensor:
    """Reflect where the frame is large enough to mirror, else repeat the edge."""
    mode = "reflect" if amount < min(t.shape[-2:]) else "replicate"
    return torch.nn.functional.pad(t, (amount,) * 4, mode=mode)
