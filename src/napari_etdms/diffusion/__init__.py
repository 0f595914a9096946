"""The diffusion recipe (eps prediction, linear betas) and its samplers."""

from .schedule import NoiseSchedule
from .samplers import SAMPLERS, Sampler, default_steps, make_sampler

__all__ = ["NoiseSchedule", "SAMPLERS", "Sampler", "default_steps", "make_sampler"]
