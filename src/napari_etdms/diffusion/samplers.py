"""Samplers over the trained noise schedule, built on diffusers' schedulers.

- "ddpm": ancestral sampling over every training step (the paper's Ts = T).
- "ddim": deterministic (eta = 0) or stochastic DDIM over an evenly spaced subsequence
  (the paper's Ts = 200 mode).
- "dpmpp": DPM-Solver++(2M), the deterministic (ODE) solver, 10-20 network evaluations.
- "dpmpp-sde": DPM-Solver++(2M) SDE, its stochastic form: fresh noise at every step washes
  out the network's small errors instead of carrying them to the end as grain, which
  measured better on SEM (see the model card) at the same 10-20 evaluations.

One sampler steps one global state: the tiled pipeline fuses every tile's network
output (eps or v) first, so solver history (DPM-Solver's multistep memory) stays consistent.
"""

from __future__ import annotations

import torch

from ..config import DiffusionConfig

SAMPLERS = ("dpmpp-sde", "dpmpp", "ddim", "ddpm")
# Sampling of weights whose manifest names no preset (and the training config's default).
DEFAULT_PRESET = {"sampler": "dpmpp", "steps": 20, "data_consistency": True}


def default_steps(name: str, config: DiffusionConfig) -> int:
    return {"dpmpp-sde": 20, "dpmpp": 20, "ddim": 200, "ddpm": config.num_train_timesteps}[name]


class Sampler:
    """A stepping rule: `timesteps` to visit, and `step` from x_t to x_{t-1} given the
    network's output there (eps or v, as the weights were trained).

    Every sampler clips the x0 estimate to +-clip_range before stepping: at the noisiest
    steps an epsilon model's x0 = (x_t - sigma eps) / alpha divides by alpha ~ 1e-5, so an
    imperfect noise prediction would otherwise blow the few-step solvers up.
    """

    def __init__(self, name: str, scheduler, requested_steps: int, eta: float, clip_range: float, prediction: str):
        self.name = name
        self._scheduler = scheduler
        self._requested_steps = requested_steps  # what set_timesteps was asked for (it may visit fewer)
        self._eta = eta
        self._clip = clip_range
        self._prediction = prediction
        self._alphas_cumprod = scheduler.alphas_cumprod.double()
        self.timesteps = [int(t) for t in scheduler.timesteps]

    def _x0_estimate(self, output: torch.Tensor, t: int, x: torch.Tensor, x0_hook) -> torch.Tensor:
        """x0 from the network's output, clipped and optionally corrected: the schedulers take
        x0 itself ("sample"), so no step converts back through a division by alpha."""
        abar = self._alphas_cumprod[t]
        alpha, sigma = float(abar.sqrt()), float((1 - abar).sqrt())
        x0 = (x - sigma * output) / alpha if self._prediction == "epsilon" else alpha * x - sigma * output
        x0 = x0.clamp(-self._clip, self._clip)
        return x0_hook(x0) if x0_hook is not None else x0

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    def initial_noise(self, shape, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(shape, generator=generator) * float(self._scheduler.init_noise_sigma)

    def sample(self, predict, shape, generator: torch.Generator, x0_hook=None, device=None) -> torch.Tensor:
        """Run the whole chain from pure noise: `predict(x_t, t)` gives the network's output.
        Each call starts the solver afresh (its multistep memory), so one sampler can draw many."""
        self._scheduler.set_timesteps(self._requested_steps)
        x = self.initial_noise(shape, generator)
        if device is not None:
            x = x.to(device)
        for t in self.timesteps:
            x = self.step(predict(x, t), t, x, generator, x0_hook)
        return x

    def step(self, output: torch.Tensor, t: int, x: torch.Tensor, generator: torch.Generator, x0_hook=None):
        """One step from the network's `output` at t; `x0_hook` may correct the x0 estimate
        (e.g. a data-consistency projection)."""
        x0 = self._x0_estimate(output, t, x, x0_hook)
        kwargs = {"generator": generator}
        if self.name == "ddim":
            kwargs["eta"] = self._eta
        return self._scheduler.step(x0, t, x, **kwargs).prev_sample


def make_sampler(
    name: str,
    config: DiffusionConfig,
    steps: int | None = None,
    eta: float = 0.0,
) -> Sampler:
    """Build a sampler; it carries solver state from step to step, and `sample` resets it."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler '{name}' (choose from {', '.join(SAMPLERS)})")
    total = config.num_train_timesteps
    steps = default_steps(name, config) if steps is None else int(steps)
    if not 1 <= steps <= total:
        raise ValueError(f"steps must be between 1 and {total}, got {steps}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    common = dict(
        num_train_timesteps=total,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        beta_schedule="linear",
        prediction_type="sample",
    )
    if name == "ddpm":
        scheduler = DDPMScheduler(**common, clip_sample=False, variance_type="fixed_small")
    elif name == "ddim":
        # "linspace" spacing runs from the last training step (pure noise) to step 0, which
        # matters when Ts << T, and set_alpha_to_one makes that last step return the x0
        # estimate; a single step would land on t = 0, so it alone starts at pure noise.
        spacing = "linspace" if steps > 1 else "trailing"
        scheduler = DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True, timestep_spacing=spacing)
    else:
        scheduler = DPMSolverMultistepScheduler(
            **common,
            algorithm_type="sde-dpmsolver++" if name == "dpmpp-sde" else "dpmsolver++",
            solver_order=2,
            timestep_spacing="trailing",
            lower_order_final=True,
            final_sigmas_type="zero",
        )
    scheduler.set_timesteps(steps)
    # x0 estimates are clipped to +-1.5 in image units (a scaled residual's units scale with it)
    return Sampler(name, scheduler, steps, eta, 1.5 * config.target_scale, config.prediction)
