"""The diffusion recipe (eps prediction, linear betas) and its samplers."""

from .samplers import SAMPLERS, Sampler, default_steps, make_sampler
from .schedule import NoiseSchedule

__all__ = ["NoiseSchedule", "SAMPLERS", "Sampler", "default_steps", "make_sampler"]
