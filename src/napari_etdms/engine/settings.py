"""The settings of one run, validated in one place, with one set of defaults: `Pipeline.run`
takes its keyword defaults from `DEFAULTS`, the CLI its option defaults, the widget its
controls' starting values. None means "from the weights' preset" (sampler, steps, data
consistency) or "from the device" (tiles per batch)."""

from __future__ import annotations

from dataclasses import dataclass

from napari_etdms.diffusion import SAMPLERS
from napari_etdms.models.clsr import SCALE

MAX_STRENGTH = 4.0
MIN_TILE = 16


@dataclass(frozen=True)
class RunSettings:
    denoise: bool = True
    super_resolve: bool = True
    sampler: str | None = None
    steps: int | None = None
    eta: float = 0.0  # DDIM only
    seed: int = 0
    samples: int = 1  # > 1: the mean and a per-pixel std of that many draws
    data_consistency: bool | None = None
    strength: float = 1.0  # noise level told to a noise-aware denoiser, relative to the estimate
    tile: int = 64  # low-res px
    overlap: int = 16
    batch_size: int | None = None

    def __post_init__(self):
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler '{self.sampler}' (choose from {', '.join(SAMPLERS)})")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.tile % SCALE or self.tile < MIN_TILE:
            raise ValueError(f"tile must be a multiple of {SCALE} and at least {MIN_TILE} px, got {self.tile}")
        if not 0 <= self.overlap < self.tile:
            raise ValueError(f"overlap must be in [0, tile), got {self.overlap}")
        if self.samples < 1:
            raise ValueError(f"samples must be at least 1, got {self.samples}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if not 0 <= self.strength <= MAX_STRENGTH:
            raise ValueError(f"strength must be in [0, {MAX_STRENGTH}], got {self.strength}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.eta < 0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")


DEFAULTS = RunSettings()
