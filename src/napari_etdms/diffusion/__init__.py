"""The diffusion recipe (eps or v prediction, linear betas) and its samplers."""

from napari_etdms.diffusion.samplers import DEFAULT_PRESET, SAMPLERS, Sampler, default_steps, make_sampler
from napari_etdms.diffusion.schedule import NoiseSchedule

__all__ = ["DEFAULT_PRESET", "NoiseSchedule", "SAMPLERS", "Sampler", "default_steps", "make_sampler"]
