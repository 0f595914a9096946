"""The two-stage ETDMS pipeline on whole frames: validate, normalise once, denoise
(tiled, blended), super-resolve x4 (tiled diffusion fused at every step, in bands), report.

    from napari_etdms import Pipeline
    pipe = Pipeline.from_pretrained()            # shipped SEM weights, device="auto"
    result = pipe.run(frame, sampler="dpmpp", steps=20, seed=0)
    result.denoised, result.super_resolved, result.metadata
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from napari_etdms import __version__
from napari_etdms.config import ModelConfig, model_config
from napari_etdms.diffusion import DEFAULT_PRESET, default_steps, make_sampler
from napari_etdms.engine.bands import (
    ArrayFactory,
    BandedChain,
    DrawStatistics,
    MemoryArrays,
    PredictedMean,
    block_means_psnr,
    consistency_weight,
    read_rows,
    row_bands,
    upsample_rows,
)
from napari_etdms.engine.settings import DEFAULTS, RunSettings
from napari_etdms.engine.tiling import Cancelled, TileGrid, blend_tiles
from napari_etdms.models import build_clsr, build_denoiser, tile_inputs
from napari_etdms.models.clsr import SCALE, reliability_step
from napari_etdms.runtime import Precision, architecture_key, choose_precision, forward_probe, select_device
from napari_etdms.stage1.denoise import apply_denoiser
from napari_etdms.stage1.intensity import SIGNAL_SMOOTHING, IntensityMap
from napari_etdms.stage1.noise import NoiseModel, Stabiliser, frame_noise
from napari_etdms.weights import WeightsEntry, load_state, resolve

MIN_SIDE = 8
# Stage 1 sees this much of the frame around each tile and keeps only the tile: its output
# is biased within a few px of what it sees, and blending biased edges drew the tile grid.
DENOISE_CONTEXT = 16
# Stage 1's smallest tile: with the context above, a 64 px tile computes 2.25x its area and a
# 128 px one 1.56x; its output does not depend on the tile (seam-free), so a larger one is free.
DENOISE_MIN_TILE = 128
ProgressCallback = Callable[[int, int, str], None]


def release_freed_memory() -> None:
    """Hand what stage 1 freed back to the system before stage 2: glibc keeps freed blocks in
    its arenas, and stage 2's peak then builds on them. A no-op where glibc's malloc_trim is
    missing (macOS, Windows, musl)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def condition_level(noise: NoiseModel, settings: RunSettings = DEFAULTS) -> float:
    """The noise std of a frame on the stabilised [-1, 1] scale, from its noise model on the
    normalised [0, 1] scale, times the strength (up to 1) when stage 1 runs: what stage 1 was
    told, and how far stage 2 can trust its output. A strength below 1 says the frame is
    cleaner than estimated (e.g. fine texture the estimate took for noise), to both stages."""
    scale = min(settings.strength, 1.0) if settings.denoise else 1.0
    return float(Stabiliser(noise.gain, noise.offset).sigma) * scale


class InputError(ValueError):
    """The image cannot be processed as an SEM frame; the message says why and what to do."""


def prepare_frame(image) -> np.ndarray:
    """Check a frame and return it as a 2D array (the caller's array is never modified)."""
    a = np.asarray(image)
    if a.dtype == bool or a.dtype.kind not in "uif":
        raise InputError(f"unsupported pixel type {a.dtype}; expected integer or floating-point intensities")
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        rgb = a[..., :3]
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise InputError("this is a true-colour image; SEM frames are greyscale: convert it to one channel first")
        a = a[..., 0]
    if a.ndim != 2:
        raise InputError(
            f"expected one 2D frame, got an array of shape {a.shape}; for a stack, run each slice "
            "(e.g. [pipeline.run(s) for s in stack])"
        )
    if a.size == 0:
        raise InputError("the image is empty")
    if min(a.shape) < MIN_SIDE:
        raise InputError(f"the frame is {a.shape[0]}x{a.shape[1]} px; at least {MIN_SIDE} px per side is needed")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise InputError("the frame contains NaN or infinite values; replace them before processing")
    if a.min() == a.max():
        raise InputError("the frame is constant; there is nothing to restore")
    return a


def estimate_memory_bytes(height: int, width: int, super_resolve: bool, samples: int = 1,
                          x4_in_memory: bool = True) -> int:
    """Host memory for the global buffers of one run (float32): the low-res frames, and the
    x4 ones when they are held in memory (bicubic outputs, state, the solver's previous x0,
    the mean; with several draws their spread and std)."""
    low_res = height * width * 4
    x4_arrays = (6 if super_resolve else 2) + (2 if super_resolve and samples > 1 else 0)
    return low_res * (8 + (x4_arrays * SCALE * SCALE if x4_in_memory else 0))


def available_memory_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        if hasattr(os, "sysconf") and "SC_AVPHYS_PAGES" in os.sysconf_names:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return None


@dataclass(frozen=True)
class RunPlan:
    """A run decided before any compute (`Pipeline.plan`)."""

    settings: RunSettings  # with the weights' preset and the device's batch size filled in
    frame: np.ndarray  # the 2D frame as the models take it
    grid: TileGrid  # stage 2's tiles, over the frame padded to stage 1's window
    denoise_grid: TileGrid  # stage 1's tiles (at least DENOISE_MIN_TILE, with context)
    total_batches: int  # tile batches of both stages: the progress total


class _Ticker:
    """Counts tile batches for the progress callback and stops the run when cancelled."""

    def __init__(self, total: int, progress: ProgressCallback | None, cancel):
        self.total, self.progress, self.cancel = total, progress, cancel
        self.done, self.stage = 0, ""

    def tick(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("cancelled by the user")
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total, self.stage)


@dataclass
class Result:
    """Outputs in the input's intensity scale (float32); x4 outputs are 4H x 4W: numpy
    arrays, or the arrays of the `ArrayFactory` given to `run_with` (e.g. zarr on disk)."""

    bicubic_input: np.ndarray
    denoised: np.ndarray | None = None
    super_resolved: np.ndarray | None = None  # mean over samples when samples > 1
    bicubic_denoised: np.ndarray | None = None
    std: np.ndarray | None = None  # per-pixel standard deviation over samples
    consistency_psnr: float | None = None
    consistency_residual: np.ndarray | None = None
    noise: NoiseModel | None = None  # the frame's noise, estimated (input units)
    metadata: dict = field(default_factory=dict)


# each image output's size relative to the input frame (Result fields)
OUTPUT_SCALES = {"denoised": 1, "bicubic_input": SCALE, "bicubic_denoised": SCALE, "super_resolved": SCALE,
                 "std": SCALE}


class Pipeline:
    def __init__(
        self,
        config: ModelConfig | str | dict,
        denoiser: torch.nn.Module | None = None,
        clsr: torch.nn.Module | None = None,
        weights: WeightsEntry | None = None,
        device: str | torch.device = "auto",
        precision: str = "auto",
    ):
        self.config = model_config(config)
        self.device = select_device(device)
        self.weights = weights
        # channels_last for the conv-heavy CLSR: 2.35x with bfloat16 autocast on a CPU with
        # native bfloat16, 12-14 % in float32 on an AVX2 one (benchmarks/bench_precision.py)
        memory_format = torch.contiguous_format if self.device.type == "mps" else torch.channels_last
        # Tiles per network call when not given. On an H200, 8 per call (the largest measured)
        # ran 3.6-6.7x the tiles/s of 1; on the 2-core CPU here batching gained nothing, and
        # other devices are unmeasured, so they keep one tile per call.
        self.auto_batch_size = 8 if self.device.type == "cuda" else 1
        self.denoiser = denoiser.to(self.device).eval() if denoiser is not None else None
        self.clsr = clsr.to(self.device, memory_format=memory_format).eval() if clsr is not None else None
        self.memory_format = memory_format
        networks = [net for net in (self.denoiser, self.clsr) if net is not None]
        self.precision_choice: Precision = choose_precision(self.device, precision, self._tile_seconds,
                                                            architecture_key(networks))
        self.precision = self.precision_choice.name

    def _tile_seconds(self, precision: str) -> float:
        """One tile of each network, at the sizes a run feeds them, in `precision`."""
        calls = []
        if self.denoiser is not None:
            side = DENOISE_MIN_TILE + 2 * DENOISE_CONTEXT
            calls.append((self.denoiser, tile_inputs(self.denoiser, side, self.device)))
        if self.clsr is not None:
            calls.append((self.clsr, tile_inputs(self.clsr, RunSettings().tile, self.device, self.memory_format)))
        return forward_probe(calls, self.device)(precision)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike | None = None, device="auto", precision="auto"):
        """Named registry weights, a weights folder, or the default shipped model."""
        entry = resolve(name_or_path)
        denoiser = clsr = None
        if "denoiser" in entry.files:
            denoiser = build_denoiser(entry.config)
            denoiser.load_state_dict(load_state(entry, "denoiser"))
        if "clsr" in entry.files:
            clsr = build_clsr(entry.config)
            clsr.load_state_dict(load_state(entry, "clsr"))
        return cls(entry.config, denoiser, clsr, entry, device, precision)

    @classmethod
    def from_config(cls, config: ModelConfig | str | dict, device="cpu", precision="float32", seed: int = 0):
        """Randomly initialised models (tests, benchmarks): outputs are not meaningful."""
        config = model_config(config)
        torch.manual_seed(seed)
        return cls(config, build_denoiser(config), build_clsr(config), None, device, precision)

    @property
    def weights_provenance(self) -> dict:
        if self.weights is not None:
            return self.weights.provenance()
        return {"name": "random-init", "hash": None, "config": self.config.model_dump(mode="json")}

    @property
    def recommended(self) -> dict:
        """Default sampler, steps and data consistency: the weights' measured preset, filled in
        from DEFAULT_PRESET (DPM-Solver++ 20, consistency on)."""
        preset = (self.weights.recommended if self.weights else {}) or {}
        return {key: preset.get(key, default) for key, default in DEFAULT_PRESET.items()}

    def _autocast(self):
        return self.precision_choice.autocast(self.device)

    def run(
        self,
        image,
        denoise: bool = DEFAULTS.denoise,
        super_resolve: bool = DEFAULTS.super_resolve,
        sampler: str | None = DEFAULTS.sampler,
        steps: int | None = DEFAULTS.steps,
        eta: float = DEFAULTS.eta,
        seed: int = DEFAULTS.seed,
        tile: int = DEFAULTS.tile,
        overlap: int = DEFAULTS.overlap,
        batch_size: int | None = DEFAULTS.batch_size,
        samples: int = DEFAULTS.samples,
        data_consistency: bool | None = DEFAULTS.data_consistency,
        strength: float = DEFAULTS.strength,
        noise: NoiseModel | None = None,
        progress: ProgressCallback | None = None,
        cancel=None,
    ) -> Result:
        """Process one 2D frame. Raises InputError for bad input, Cancelled if `cancel.is_set()`.

        `noise`: the frame's noise model in its own units (default: estimated from the frame).
        `strength` scales the noise level a noise-aware denoiser and a regression stage 2 are
        told (1: the estimate, 0: no denoising and a noise-free frame to stage 2, > 1: smoother
        stage 1); blind denoisers (v1) ignore both.

        `data_consistency` projects every x0 estimate so that its 4x4 block means equal the
        (denoised) low-res input: generated detail may add texture but cannot change the
        input's resolution scale. None takes the weights' preset (on unless it says otherwise).

        In four steps: `plan` (everything checked before any compute), stage 1, stage 2, and
        `describe` (the provenance in `Result.metadata`).
        """
        settings = RunSettings(denoise=denoise, super_resolve=super_resolve, sampler=sampler, steps=steps, eta=eta,
                               seed=seed, samples=samples, data_consistency=data_consistency, strength=strength,
                               tile=tile, overlap=overlap, batch_size=batch_size)
        return self.run_with(image, settings, noise, progress, cancel)

    def run_with(self, image, settings: RunSettings, noise: NoiseModel | None = None,
                 progress: ProgressCallback | None = None, cancel=None, arrays: ArrayFactory | None = None) -> Result:
        """`run` with its settings as one validated `RunSettings` (as the CLI and the widget
        build them once, before any work). `arrays` makes the x4 arrays (outputs and
        stage 2's state); by default numpy arrays in memory, or e.g. zarr arrays on disk for
        frames whose x4 output does not fit in memory."""
        arrays = arrays or MemoryArrays()
        plan = self.plan(image, settings, x4_in_memory=isinstance(arrays, MemoryArrays))
        ticker = _Ticker(plan.total_batches, progress, cancel)
        frame, settings = plan.frame, plan.settings
        height, width = frame.shape
        mapping = IntensityMap.fit(frame, smoothing=SIGNAL_SMOOTHING)
        timings = {}
        noise_source = "given"
        if noise is None:
            started = time.perf_counter()
            noise, noise_source = frame_noise(frame)
            timings["noise_estimate_s"] = round(time.perf_counter() - started, 3)
        padded_h, padded_w = plan.grid.height, plan.grid.width
        normalised = np.pad(mapping.forward(frame), ((0, padded_h - height), (0, padded_w - width)), mode="symmetric")
        low_res = torch.from_numpy(normalised)[None, None]
        result = Result(bicubic_input=self._upsampled(low_res, mapping, height, width, arrays, "bicubic_input"),
                        noise=noise)

        cond = low_res
        normalised_noise = noise.rescaled(mapping.low, mapping.high)
        if settings.denoise:
            ticker.stage = "denoise"
            started = time.perf_counter()
            cond = self._denoise(low_res, normalised_noise, settings.strength,
                                 plan.denoise_grid, settings.batch_size, ticker.tick)
            timings["denoise_s"] = round(time.perf_counter() - started, 3)
            result.denoised = mapping.inverse(cond[0, 0, :height, :width].numpy())
            result.bicubic_denoised = self._upsampled(cond, mapping, height, width, arrays, "bicubic_denoised")
            release_freed_memory()

        if settings.super_resolve:
            ticker.stage = "super-resolve"
            started = time.perf_counter()
            draws = self._super_resolve(cond, low_res, normalised_noise, plan.grid, settings, arrays, ticker.tick)
            timings["super_resolve_s"] = round(time.perf_counter() - started, 3)
            self._summarise_draws(result, draws, cond, mapping, height, width, arrays)

        result.metadata = self.describe(plan, result, mapping, noise_source, timings)
        return result

    def plan(self, image, settings: RunSettings, x4_in_memory: bool = True) -> RunPlan:
        """Everything decided before any compute: the frame as the models take it, the
        settings with the weights' preset and the device's batch filled in, both tile grids,
        and the work in tile batches. Raises InputError / ValueError / MemoryError."""
        frame = prepare_frame(image)
        if self.one_evaluation:
            if settings.super_resolve and (settings.sampler is not None or settings.steps not in (None, 1)):
                raise ValueError(f"the stage 2 of {self.weights_provenance['name']} is one network evaluation (the "
                                 "posterior mean): sampler and steps apply only to diffusion weights "
                                 "(e.g. etdms-sem-v2)")
            sampler, steps = None, 1
        else:
            sampler = settings.sampler or self.recommended["sampler"]
            steps = settings.steps
            if steps is None:
                steps = self.recommended["steps"] if sampler == self.recommended["sampler"] else None
            if steps is None:
                steps = default_steps(sampler, self.config.diffusion)
        consistency = settings.data_consistency
        settings = dataclasses.replace(
            settings, sampler=sampler, steps=steps,
            batch_size=self.auto_batch_size if settings.batch_size is None else settings.batch_size,
            data_consistency=self.recommended["data_consistency"] if consistency is None else consistency)
        if settings.denoise and self.denoiser is None:
            raise ValueError("these weights have no denoiser (stage 1); run with denoise=False")
        if settings.super_resolve and self.clsr is None:
            raise ValueError("these weights have no CLSR model (stage 2); run with super_resolve=False")
        needed = estimate_memory_bytes(*frame.shape, settings.super_resolve, settings.samples, x4_in_memory)
        free = available_memory_bytes()
        if free is not None and needed > free:
            hint = "; or write OME-Zarr (etdms infer --output-format zarr), which keeps x4 arrays on disk" \
                if x4_in_memory else ""
            raise MemoryError(
                f"a {frame.shape[0]}x{frame.shape[1]} frame needs about {needed / 2**30:.1f} GiB but "
                f"{free / 2**30:.1f} GiB is free: process a region, or denoise only{hint}"
            )
        height, width = frame.shape
        tile, overlap = settings.tile, settings.overlap
        window = self.denoiser.window if self.denoiser is not None else SCALE
        window_tile = -(-tile // window) * window
        padded_h = max(window_tile, -(-height // window) * window)
        padded_w = max(window_tile, -(-width // window) * window)
        grid = TileGrid(padded_h, padded_w, tile, overlap)
        # stage 1's windows stay on one frame-wide grid whatever the tile
        denoise_tile = min(max(window_tile, DENOISE_MIN_TILE // window * window), padded_h, padded_w)
        denoise_grid = TileGrid(padded_h, padded_w, denoise_tile, overlap, align=window,
                                context=DENOISE_CONTEXT // window * window)
        batches = -(-len(denoise_grid.origins) // settings.batch_size)
        # stage 2 batches tiles within a row of the grid
        band_batches = len(grid.row_starts) * -(-len(grid.column_starts) // settings.batch_size)
        if self.one_evaluation:
            evaluations = band_batches  # one evaluation gives the mean and, for samples > 1, its error's std
        else:
            evaluations = settings.samples * band_batches * make_sampler(settings.sampler, self.config.diffusion,
                                                                         settings.steps).steps
        total = (batches if settings.denoise else 0) + (evaluations if settings.super_resolve else 0)
        return RunPlan(settings, frame, grid, denoise_grid, total)

    def describe(self, plan: RunPlan, result: Result, mapping: IntensityMap, noise_source: str,
                 timings: dict) -> dict:
        """The provenance of a run: weights, sampling, tiling, noise, device, timings."""
        settings = plan.settings
        sr, dn = settings.super_resolve, settings.denoise
        return {
            "software": f"napari-etdms {__version__}",
            "weights": self.weights_provenance,
            "stages": [s for s, on in (("denoise", dn), ("super-resolve", sr)) if on],
            "stage2": self.config.stage2 if sr else None,
            "sampler": settings.sampler if sr else None,
            "steps": settings.steps if sr else None,
            "eta": settings.eta if sr and settings.sampler == "ddim" else None,
            "seed": settings.seed,
            "samples": settings.samples,
            "uncertainty": (("predicted error std of the mean (one evaluation)" if self.one_evaluation else
                             f"std of {settings.samples} draws") if sr and settings.samples > 1 else None),
            "data_consistency": settings.data_consistency if sr else None,
            "data_consistency_weight": (consistency_weight(condition_level(result.noise.rescaled(mapping.low,
                                                                                                  mapping.high),
                                                                           settings))
                                        if sr and settings.data_consistency and self.one_evaluation else None),
            "tiling": plan.grid.describe() | {"batch_size": settings.batch_size},
            "denoise_tiling": plan.denoise_grid.describe() if dn else None,
            "noise": result.noise.as_dict() | {"units": "input intensity", "model": "var = gain * level + offset",
                                               "source": noise_source},
            "strength": settings.strength if dn and self.noise_aware else None,
            "device": str(self.device),
            "precision": self.precision,
            "precision_reason": self.precision_choice.reason,
            "threads": torch.get_num_threads() if self.device.type == "cpu" else None,
            "input_shape": list(plan.frame.shape),
            "input_dtype": str(plan.frame.dtype),
            "intensity_map": {"low": mapping.low, "high": mapping.high, "smoothing_sigma_px": SIGNAL_SMOOTHING},
            "consistency_psnr_db": result.consistency_psnr,
            "timings": timings,
        }

    @staticmethod
    def _upsampled(low_res: torch.Tensor, mapping: IntensityMap, height: int, width: int, arrays: ArrayFactory,
                   name: str):
        """The bicubic x4 of a (padded) low-res frame, cropped, in input units, band by band."""
        out = arrays.empty(name, (SCALE * height, SCALE * width))
        for top, bottom in row_bands(SCALE * height):
            out[top:bottom] = mapping.inverse(upsample_rows(low_res, top, bottom)[0, 0, :, : SCALE * width].numpy())
        return out

    def _summarise_draws(self, result: Result, draws: DrawStatistics, cond: torch.Tensor, mapping: IntensityMap,
                         height: int, width: int, arrays: ArrayFactory) -> None:
        """The mean of the draws (and their std when more than one), and its consistency with
        the low-res frame it was made from, written band by band."""
        shape = (SCALE * height, SCALE * width)
        result.super_resolved = arrays.empty("super_resolved", shape)
        result.std = arrays.empty("std", shape) if draws.has_spread else None
        block_means = np.empty((height, width), np.float32)
        for top, bottom in row_bands(shape[0]):
            rows = mapping.inverse(read_rows(draws.mean, top, bottom)[:, : shape[1]].numpy())
            result.super_resolved[top:bottom] = rows
            if result.std is not None:
                result.std[top:bottom] = mapping.scale(draws.std_rows(top, bottom)[:, : shape[1]].numpy())
            block_means[top // SCALE : bottom // SCALE] = rows.reshape(-1, SCALE, width, SCALE).mean(axis=(1, 3))
        restored = mapping.inverse(cond[0, 0, :height, :width].numpy())
        result.consistency_residual = restored - block_means
        # the same definition as `etdms eval` reports, in the frame's own units
        result.consistency_psnr = block_means_psnr(restored, block_means)

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device).contiguous(memory_format=self.memory_format)

    @property
    def one_evaluation(self) -> bool:
        """Stage 2 is one regression per tile (posterior mean and its error's variance), not a sampler."""
        return self.config.stage2 == "regression"

    @property
    def noise_aware(self) -> bool:
        return bool(getattr(self.denoiser, "noise_map", False))

    @torch.no_grad()
    def _denoise(self, low_res, noise: NoiseModel, strength, grid, batch_size, tick) -> torch.Tensor:
        """`noise` on the [0, 1] scale of the normalised frame."""

        def run(network, frames, level):
            def run_tiles(x):
                with self._autocast():
                    if level is None:
                        return network(x.to(self.device))
                    return network(x.to(self.device), level.to(self.device))

            return blend_tiles(run_tiles, [(frames, 1)], grid, 1, batch_size, tick)

        as_tensor = lambda v: torch.tensor(v, dtype=torch.float64).view(1, 1, 1, 1)  # noqa: E731
        return apply_denoiser(self.denoiser, low_res, as_tensor(noise.gain), as_tensor(noise.offset), strength, run)

    @torch.no_grad()
    def _super_resolve(self, cond, measured, noise: NoiseModel, grid, settings: RunSettings, arrays: ArrayFactory,
                       tick) -> DrawStatistics | PredictedMean:
        """`settings.samples` draws of stage 2, summarised as they end; or, for a regression
        CLSR, its one prediction (told the reliability of `cond` from the frame's `noise` on the
        normalised [0, 1] scale), with its error's std when samples > 1."""

        def predict_tiles(x_tiles, c_tiles, t):
            steps_t = torch.full((x_tiles.shape[0],), t, device=self.device)
            with self._autocast():
                return self.clsr(self._to_device(x_tiles), self._to_device(c_tiles), steps_t)

        condition = self.clsr.condition(cond, measured)
        if self.one_evaluation:
            level = condition_level(noise, settings)
            weight = consistency_weight(level) if settings.data_consistency else 0.0
            return PredictedMean(grid, predict_tiles, condition, cond, float(reliability_step(torch.tensor(level))),
                                 self.config.diffusion, arrays, weight, settings.samples > 1,
                                 settings.batch_size, tick)
        sampler = make_sampler(settings.sampler, self.config.diffusion, settings.steps, settings.eta)
        chain = BandedChain(sampler, grid, predict_tiles, condition, cond, self.config.diffusion, arrays,
                            settings.data_consistency, settings.batch_size, tick)
        draws = DrawStatistics(arrays, chain.shape, spread=settings.samples > 1)
        for draw in range(settings.samples):  # draw k is the single draw of seed + k
            draws.add(chain.draw(settings.seed + draw), cond, self.config.diffusion)
        return draws
