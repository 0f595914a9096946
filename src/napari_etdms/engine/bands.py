"""Stage 2 over a frame of any size: one global diffusion state, stepped in horizontal bands.

At each sampling step the tiles of one row of the grid are predicted and taper-blended into
a band buffer. Rows that no later tile reaches are then final for this step: they get their
x0 estimate, the data-consistency projection and the sampler's per-pixel update, and are
written back at once. The state is thus read and written once per step, a band at a time,
in arrays that may be numpy arrays in memory or zarr arrays on disk (`ArrayFactory`), so a
frame's x4 state need not fit in memory. The result is the same either way, and the same
as stepping the whole frame at once: tiles only ever read rows of the current step.

Each step's noise is drawn per NOISE_BLOCK x NOISE_BLOCK block from a seed of its own
(seed, step, block), so a band of it is the same whichever bands are asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from napari_etdms.diffusion.samplers import Sampler
from napari_etdms.diffusion.target import from_target, to_target, upsample_condition
from napari_etdms.engine.tiling import TileGrid, taper
from napari_etdms.models.clsr import LOG_VARIANCE_RANGE, SCALE
from napari_etdms.stage1.intensity import SIGNAL_SMOOTHING, IntensityMap

NOISE_BLOCK = 256  # x4 px
BAND_ROWS = 256  # x4 rows per band in the passes that are not tied to the tile grid (a multiple of SCALE)
# bicubic reads two low-res rows either side of the one an output row falls in
BICUBIC_REACH = 2

TilePredictor = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]  # (x tiles, condition tiles, t)


class ArrayFactory(Protocol):
    def empty(self, name: str, shape: tuple[int, int]):
        """A float32 2D array (numpy or zarr-like: row slices read as numpy and can be assigned)."""


class MemoryArrays:
    def empty(self, name: str, shape: tuple[int, int]) -> np.ndarray:
        return np.zeros(shape, np.float32)


def row_bands(height: int, rows: int = BAND_ROWS):
    for top in range(0, height, rows):
        yield top, min(top + rows, height)


def read_rows(array, top: int, bottom: int) -> torch.Tensor:
    """A copy: a view of a numpy array would change under the writes that follow."""
    return torch.from_numpy(np.array(array[top:bottom], dtype=np.float32))


def upsample_rows(low_res: torch.Tensor, top: int, bottom: int) -> torch.Tensor:
    """Rows [top, bottom) of `upsample_condition(low_res)` (x4 rows, multiples of SCALE),
    computed from only the low-res rows they depend on: bit-identical to the whole frame's."""
    height = low_res.shape[-2]
    first = max(top // SCALE - BICUBIC_REACH, 0)
    last = min(bottom // SCALE + BICUBIC_REACH, height)
    up = upsample_condition(low_res[..., first:last, :])
    return up[..., top - SCALE * first : bottom - SCALE * first, :]


def project_onto_low_res(high_res: torch.Tensor, low_res: torch.Tensor) -> torch.Tensor:
    """The nearest frame whose 4x4 block means equal `low_res` (exact for area averaging)."""
    residual = low_res - F.avg_pool2d(high_res, SCALE)
    return high_res + F.interpolate(residual, scale_factor=SCALE, mode="nearest")


def consistent_rows(high_res: torch.Tensor, restored: torch.Tensor, top: int, end: int) -> torch.Tensor:
    """x4 rows [top, end) of an image projected onto the (padded) low-res frame `restored`."""
    measured = restored[..., top // SCALE : end // SCALE, :]
    return project_onto_low_res(high_res[None, None], measured)[0, 0]


class BlockNoise:
    """Standard normal noise over a (height, width) x4 frame for one seed, block by block."""

    def __init__(self, seed: int, width: int):
        self.seed, self.width = seed, width
        self._cached: tuple[tuple[int, int], torch.Tensor] | None = None  # a band's last block row is the next's first

    def _block_row(self, step: int, index: int) -> torch.Tensor:
        if self._cached is not None and self._cached[0] == (step, index):
            return self._cached[1]
        blocks = []
        for column in range(-(-self.width // NOISE_BLOCK)):
            entropy = [self.seed, step + 1, index, column]  # step -1: the starting noise
            seed = int(np.random.SeedSequence(entropy).generate_state(1, np.uint32)[0])
            blocks.append(torch.randn(NOISE_BLOCK, NOISE_BLOCK, generator=torch.Generator().manual_seed(seed)))
        row = torch.cat(blocks, dim=1)[:, : self.width]
        self._cached = ((step, index), row)
        return row

    def rows(self, step: int, top: int, bottom: int) -> torch.Tensor:
        first, last = top // NOISE_BLOCK, -(-bottom // NOISE_BLOCK)
        strip = torch.cat([self._block_row(step, i) for i in range(first, last)])
        return strip[top - first * NOISE_BLOCK : bottom - first * NOISE_BLOCK]


class TileRowBlender:
    """Stage 2's tiles of a frame, predicted a row of the grid at a time and taper-blended,
    handed on as soon as rows are complete (no later tile reaches them)."""

    def __init__(self, grid: TileGrid, condition: torch.Tensor, batch_size: int, tick: Callable[[], None]):
        if grid.context:
            raise ValueError("stage 2's tiles take no context")
        self.grid, self.condition, self.batch_size, self.tick = grid, condition, batch_size, tick
        self.shape = (SCALE * grid.height, SCALE * grid.width)
        self.tile_rows, self.tile_columns = grid.row_starts, grid.column_starts
        side = taper(grid.tile * SCALE, grid.overlap * SCALE // 2)
        self.tile_weight = side[:, None] * side[None, :]
        # the taper weights' sum at each pixel: a product, since every tile row has the same columns
        self.row_total = self._placed(side, self.tile_rows, self.shape[0])
        self.column_total = self._placed(side, self.tile_columns, self.shape[1])

    @staticmethod
    def _placed(side: torch.Tensor, starts: list[int], length: int) -> torch.Tensor:
        total = torch.zeros(length)
        for start in starts:
            total[SCALE * start : SCALE * start + len(side)] += side
        return total

    def rows(self, read_band: Callable[[int, int], torch.Tensor],
             predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        """Yield (top, end, x rows, blended output rows (C, rows, width)) for consecutive bands
        of x4 rows. `read_band(top, bottom)` gives the x4 input rows (rows, width) the tiles
        take; `predict(x tiles, low-res condition tiles)` their (n, C, h, w) outputs."""
        tile = self.grid.tile
        span = SCALE * tile
        carried = None
        for i, y in enumerate(self.tile_rows):
            top = SCALE * y
            band = read_band(top, top + span)
            blended = None
            for start in range(0, len(self.tile_columns), self.batch_size):
                columns = self.tile_columns[start : start + self.batch_size]
                x_tiles = torch.stack([band[None, :, SCALE * x : SCALE * x + span] for x in columns])
                c_tiles = torch.cat([self.condition[..., y : y + tile, x : x + tile] for x in columns])
                out = predict(x_tiles, c_tiles).float().cpu()
                if blended is None:
                    blended = torch.zeros(out.shape[1], span, self.shape[1])
                    if carried is not None:
                        blended[:, : carried.shape[1]] = carried
                for j, x in enumerate(columns):
                    blended[:, :, SCALE * x : SCALE * x + span] += out[j] * self.tile_weight
                self.tick()
            # rows above the next tile row are complete
            end = SCALE * self.tile_rows[i + 1] if i + 1 < len(self.tile_rows) else self.shape[0]
            done = end - top
            yield top, end, band[:done], blended[:, :done] / (self.row_total[top:end, None] *
                                                              self.column_total[None, :])
            carried = blended[:, done:]


class BandedChain:
    """Draws of stage 2 for one frame (padded to `grid`), into x4 arrays from `arrays`."""

    def __init__(self, sampler: Sampler, grid: TileGrid, predict: TilePredictor, condition: torch.Tensor,
                 restored: torch.Tensor, diffusion, arrays: ArrayFactory, data_consistency: bool,
                 batch_size: int, tick: Callable[[], None]):
        self.blender = TileRowBlender(grid, condition, batch_size, tick)
        self.sampler, self.predict = sampler, predict
        self.restored, self.diffusion, self.data_consistency = restored, diffusion, data_consistency
        self.shape = self.blender.shape
        self.state = arrays.empty("state", self.shape)
        self.previous = arrays.empty("previous", self.shape) if sampler.uses_previous else None

    def draw(self, seed: int):
        """One chain from pure noise; returns the x4 array of the draw's target x0."""
        noise = BlockNoise(seed, self.shape[1])
        for top, bottom in row_bands(self.shape[0]):
            self.state[top:bottom] = noise.rows(-1, top, bottom).numpy()
        for k in range(self.sampler.steps):
            self._step(k, noise)
        return self.state

    def _step(self, k: int, noise: BlockNoise) -> None:
        t = self.sampler.updates[k].t
        predict = lambda x_tiles, c_tiles: self.predict(x_tiles, c_tiles, t)  # noqa: E731
        for top, end, x, output in self.blender.rows(lambda top, bottom: read_rows(self.state, top, bottom),
                                                     predict):
            self._update_rows(k, top, end, x, output[0], noise)

    def _update_rows(self, k, top, end, x, output, noise: BlockNoise) -> None:
        update = self.sampler.updates[k]
        x0 = self.sampler.x0_estimate(k, output, x)
        if self.data_consistency:
            upsampled = upsample_rows(self.restored, top, end)[0, 0]
            x0 = to_target(consistent_rows(from_target(x0, upsampled, self.diffusion), self.restored, top, end),
                           upsampled, self.diffusion)
        previous = read_rows(self.previous, top, end) if update.previous else None
        fresh = noise.rows(k, top, end) if update.noise else None
        self.state[top:end] = self.sampler.update(k, x, x0, previous, fresh).numpy()
        if self.previous is not None:
            self.previous[top:end] = x0.numpy()


class DrawStatistics:
    """The mean of the draws (image units, x4 padded frame) and, when asked, the sum of
    squared deviations from it, updated band by band as each draw ends (Welford's update,
    stable in float32)."""

    def __init__(self, arrays: ArrayFactory, shape: tuple[int, int], spread: bool):
        self.mean = arrays.empty("mean", shape)
        self.squares = arrays.empty("squares", shape) if spread else None
        self.count = 0

    def add(self, target, restored: torch.Tensor, diffusion) -> None:
        self.count += 1
        for top, bottom in row_bands(self.mean.shape[0]):
            draw = from_target(read_rows(target, top, bottom), upsample_rows(restored, top, bottom)[0, 0], diffusion)
            if self.count == 1:
                self.mean[top:bottom] = draw.numpy()
                continue
            mean = read_rows(self.mean, top, bottom)
            moved = mean + (draw - mean) / self.count
            self.mean[top:bottom] = moved.numpy()
            if self.squares is not None:
                squares = read_rows(self.squares, top, bottom) + (draw - mean) * (draw - moved)
                self.squares[top:bottom] = squares.numpy()

    @property
    def has_spread(self) -> bool:
        return self.squares is not None and self.count > 1

    def std_rows(self, top: int, bottom: int) -> torch.Tensor:
        return (read_rows(self.squares, top, bottom) / (self.count - 1)).clamp_min(0).sqrt()


# A one-evaluation stage 2 is projected onto its condition in proportion to how much the
# condition can be trusted: fully where it is noise-free, half at this noise level (std on
# the stabilised [-1, 1] scale, about 100 e-/px at white), little where stage 1 had much to
# remove: there the projection would pin the output to the denoiser's errors, which the
# regression has learnt to correct. Chosen among 0.05, 0.1, 0.2 and a full projection on 8
# validation frames, plain and full degradation (the v3 model card).
CONSISTENCY_LEVEL = 0.1


def block_means_psnr(low_res, block_means) -> float:
    """Data consistency from the x4 frame's block means (one per low-res pixel): their PSNR against
    the low-res frame, over the range of its signal (`evaluation.metrics.consistency_psnr` for
    whole frames; this form serves x4 frames held on disk)."""
    # band by band in float64, and the fit on the frame as given: no whole-frame float64 copies
    low, means = (np.asarray(a.detach().cpu() if hasattr(a, "detach") else a) for a in (low_res, block_means))
    squares = sum(float(np.sum((means[top : top + 256].astype(np.float64) - low[top : top + 256]) ** 2))
                  for top in range(0, low.shape[0], 256))
    mse = squares / low.size
    signal = IntensityMap.fit(low, smoothing=SIGNAL_SMOOTHING)
    return float(10 * np.log10(max(signal.high - signal.low, 1e-12) ** 2 / mse)) if mse > 0 else float("inf")


def consistency_weight(level: float) -> float:
    return CONSISTENCY_LEVEL**2 / (CONSISTENCY_LEVEL**2 + level**2)


class PredictedMean:
    """Stage 2 as one regression (`ModelConfig.stage2 == "regression"`): each tile's posterior
    mean of the x4 frame and the variance of its error, taper-blended in bands into x4 arrays.
    The network takes the bicubic x4 of the condition where a diffusion CLSR takes its noisy
    state, and `step`, the condition's reliability (`models.clsr.reliability_step`); the mean
    moves by `consistency` (0-1, `consistency_weight`) of the way to its data-consistent
    projection.

    Offers what `DrawStatistics` offers the pipeline: `mean` (image units, padded x4 frame),
    `has_spread` and `std_rows` (the predicted standard deviation of the mean's error)."""

    def __init__(self, grid: TileGrid, predict: TilePredictor, condition: torch.Tensor, restored: torch.Tensor,
                 step: float, diffusion, arrays: ArrayFactory, consistency: float, with_std: bool,
                 batch_size: int, tick: Callable[[], None]):
        blender = TileRowBlender(grid, condition, batch_size, tick)
        self.mean = arrays.empty("mean", blender.shape)
        # not "std": that name is the run's output, which the pipeline makes from these rows
        self.std = arrays.empty("predicted_std", blender.shape) if with_std else None

        def mean_and_variance(x_tiles, c_tiles):
            out = predict(x_tiles, c_tiles, step).float()
            return torch.cat([out[:, :1], out[:, 1:].clamp(max=LOG_VARIANCE_RANGE[1]).exp()], dim=1)

        def upsampled(top, bottom):
            return upsample_rows(restored, top, bottom)[0, 0]

        for top, end, x, output in blender.rows(upsampled, mean_and_variance):
            mean = from_target(output[0], x, diffusion)
            if consistency:
                mean = mean + consistency * (consistent_rows(mean, restored, top, end) - mean)
            self.mean[top:end] = mean.numpy()
            if self.std is not None:
                self.std[top:end] = (output[1].sqrt() / diffusion.target_scale).numpy()

    @property
    def has_spread(self) -> bool:
        return self.std is not None

    def std_rows(self, top: int, bottom: int) -> torch.Tensor:
        return read_rows(self.std, top, bottom)
