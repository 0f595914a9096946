"""Samplers over the trained noise schedule, each a list of per-pixel linear updates.

Every sampler here moves the state by the same rule at every pixel:

    x_next = a * x_t + b * x0 + c * x0_previous + d * noise

where x0 is the step's (clipped, optionally corrected) estimate of the clean target,
x0_previous the previous step's, and (a, b, c, d) numbers fixed by the schedule. So a step
can run on any part of the frame by itself: the pipeline steps a state of any size in
bands, kept on disk when it does not fit in memory, and the result does not depend on how
the frame is cut. The formulas are those of diffusers' DDPMScheduler, DDIMScheduler and
DPMSolverMultistepScheduler (the tests check ours against them), over "trailing" timesteps:
the first visited step is the last training step (pure noise), the last lands on x0.

- "ddpm": ancestral sampling (the paper's Ts = T when run over every training step).
- "ddim": deterministic (eta = 0) or stochastic DDIM (the paper's Ts = 200 mode).
- "dpmpp": DPM-Solver++(2M), the deterministic (ODE) solver, 10-20 network evaluations.
- "dpmpp-sde": DPM-Solver++(2M) SDE, its stochastic form: fresh noise at every step washes
  out the network's small errors instead of carrying them to the end as grain, which
  measured better on SEM (see the model card) at the same 10-20 evaluations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from napari_etdms.config import DiffusionConfig


@dataclass(frozen=True)
class Update:
    """One step from timestep `t`: x_next = x * x + x0 * x0 + x0_previous * previous + noise * noise."""

    t: int
    x: float
    x0: float
    previous: float = 0.0
    noise: float = 0.0


@dataclass(frozen=True)
class Level:
    """Where a step starts or lands: x_t = alpha x0 + sigma eps (alpha 1, sigma 0 is x0 itself)."""

    alpha: float
    sigma: float

    @property
    def log_snr(self) -> float:  # DPM-Solver's lambda; +inf at x0
        return math.log(self.alpha / self.sigma) if self.sigma > 0 else math.inf


def _levels(alphas_cumprod: np.ndarray, timesteps: list[int]) -> list[Level]:
    """The level of every visited timestep, then x0's: step k goes from levels[k] to levels[k + 1]."""
    abar = [float(alphas_cumprod[t]) for t in timesteps]
    return [Level(math.sqrt(a), math.sqrt(1.0 - a)) for a in abar] + [Level(1.0, 0.0)]


def ddpm_update(k: int, t: int, levels: list[Level], eta: float) -> Update:
    """Ancestral steps with the posterior's variance (diffusers' "fixed_small")."""
    now, nxt = levels[k], levels[k + 1]
    abar_t, abar_next = now.alpha**2, nxt.alpha**2
    step_alpha = abar_t / abar_next
    step_beta = 1.0 - step_alpha
    last = k == len(levels) - 2
    variance = (1.0 - abar_next) / (1.0 - abar_t) * step_beta
    return Update(t, x=math.sqrt(step_alpha) * (1.0 - abar_next) / (1.0 - abar_t),
                  x0=nxt.alpha * step_beta / (1.0 - abar_t), noise=0.0 if last else math.sqrt(max(variance, 1e-20)))


def ddim_update(k: int, t: int, levels: list[Level], eta: float) -> Update:
    """x_next = alpha' x0 + sqrt(sigma'^2 - s^2) eps + s noise, eps from x_t and x0, s = eta * DDPM's std."""
    now, nxt = levels[k], levels[k + 1]
    abar_t, abar_next = now.alpha**2, nxt.alpha**2
    spread = eta * math.sqrt((1.0 - abar_next) / (1.0 - abar_t) * (1.0 - abar_t / abar_next))
    to_eps = math.sqrt(max(1.0 - abar_next - spread**2, 0.0)) / now.sigma  # eps = (x_t - alpha x0) / sigma
    return Update(t, x=to_eps, x0=nxt.alpha - to_eps * now.alpha, noise=spread)


def dpm_solver_update(stochastic: bool) -> Callable[[int, int, list[Level], float], Update]:
    def update(k: int, t: int, levels: list[Level], eta: float) -> Update:
        """DPM-Solver++(2M), midpoint form; first order at the first step and at the last
        (which lands on x0), as diffusers' lower_order_final with final sigma zero."""
        now, nxt = levels[k], levels[k + 1]
        decay = (nxt.sigma * now.alpha) / (nxt.alpha * now.sigma)  # exp(-h), h the log-SNR gap: 0 at x0
        if stochastic:
            x, gain, noise = nxt.sigma / now.sigma * decay, nxt.alpha * (1 - decay**2), nxt.sigma * math.sqrt(
                1 - decay**2)
        else:
            x, gain, noise = nxt.sigma / now.sigma, nxt.alpha * (1 - decay), 0.0
        if k == 0 or k == len(levels) - 2:
            return Update(t, x=x, x0=gain, noise=noise)
        # D0 + D1 / 2 with D1 = (x0 - x0_previous) / r, r = h_previous / h
        ratio = (now.log_snr - levels[k - 1].log_snr) / (nxt.log_snr - now.log_snr)
        return Update(t, x=x, x0=gain * (1 + 0.5 / ratio), previous=-gain * 0.5 / ratio, noise=noise)

    return update


@dataclass(frozen=True)
class SamplerSpec:
    update: Callable[[int, int, list[Level], float], Update]  # (step index, timestep, levels, eta)
    default_steps: int | None  # None: every training step
    summary: str


SAMPLERS: dict[str, SamplerSpec] = {
    "dpmpp-sde": SamplerSpec(dpm_solver_update(stochastic=True), 20, "DPM-Solver++(2M) SDE"),
    "dpmpp": SamplerSpec(dpm_solver_update(stochastic=False), 20, "DPM-Solver++(2M), deterministic"),
    "ddim": SamplerSpec(ddim_update, 200, "DDIM (eta 0: deterministic)"),
    "ddpm": SamplerSpec(ddpm_update, None, "ancestral DDPM"),
}
# Sampling of weights whose manifest names no preset (and the training config's default).
DEFAULT_PRESET = {"sampler": "dpmpp", "steps": 20, "data_consistency": True}


def default_steps(name: str, config: DiffusionConfig) -> int:
    return SAMPLERS[name].default_steps or config.num_train_timesteps


def trailing_timesteps(total: int, steps: int) -> list[int]:
    """`steps` evenly spaced training steps from the last one (pure noise) down. (Built from
    step indices: a float `arange` over the timesteps returns one too many for some counts.)"""
    return [int(t) for t in np.round(total - np.arange(steps) * (total / steps)).astype(np.int64) - 1]


def alphas_cumprod(config: DiffusionConfig) -> np.ndarray:
    """The training schedule's cumulative alphas (linear betas), in float64."""
    betas = np.linspace(config.beta_start, config.beta_end, config.num_train_timesteps, dtype=np.float64)
    return np.cumprod(1.0 - betas)


class Sampler:
    """The updates of one sampler at one step count, and the x0 estimate each one starts from.

    Every x0 estimate is clipped to +-clip_range: at the noisiest steps an epsilon model's
    x0 = (x_t - sigma eps) / alpha divides by alpha ~ 1e-5, so an imperfect noise prediction
    would otherwise blow the few-step solvers up."""

    def __init__(self, name: str, config: DiffusionConfig, updates: list[Update]):
        self.name = name
        self.updates = updates
        self._clip = 1.5 * config.target_scale  # +-1.5 in image units; a scaled residual's units scale
        self._prediction = config.prediction
        self._alphas_cumprod = alphas_cumprod(config)

    @property
    def timesteps(self) -> list[int]:
        return [u.t for u in self.updates]

    @property
    def steps(self) -> int:
        return len(self.updates)

    @property
    def uses_previous(self) -> bool:
        return any(u.previous for u in self.updates)

    def x0_estimate(self, k: int, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x0 from the network's output (eps or v) at step k, clipped."""
        abar = self._alphas_cumprod[self.updates[k].t]
        alpha, sigma = math.sqrt(abar), math.sqrt(1.0 - abar)
        x0 = (x - sigma * output) / alpha if self._prediction == "epsilon" else alpha * x - sigma * output
        return x0.clamp(-self._clip, self._clip)

    def update(self, k: int, x: torch.Tensor, x0: torch.Tensor, previous: torch.Tensor | None = None,
               noise: torch.Tensor | None = None) -> torch.Tensor:
        """The state after step k. `previous` (step k-1's x0) and `noise` (standard normal)
        are read only when this step uses them."""
        u = self.updates[k]
        out = u.x * x + u.x0 * x0
        if u.previous:
            out = out + u.previous * previous
        if u.noise:
            out = out + u.noise * noise
        return out

    def sample(self, predict, shape, generator: torch.Generator, x0_hook=None, device=None) -> torch.Tensor:
        """A whole chain on one tensor from pure noise (`predict(x_t, t)` gives the network's
        output); `x0_hook` may correct each x0 estimate. Training's validation uses this; the
        pipeline steps frames in bands with the same updates."""
        x = torch.randn(shape, generator=generator).to(device)
        previous = None
        for k, u in enumerate(self.updates):
            x0 = self.x0_estimate(k, predict(x, u.t), x)
            if x0_hook is not None:
                x0 = x0_hook(x0)
            noise = torch.randn(shape, generator=generator).to(device) if u.noise else None
            x, previous = self.update(k, x, x0, previous, noise), x0
        return x


def make_sampler(name: str, config: DiffusionConfig, steps: int | None = None, eta: float = 0.0) -> Sampler:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler '{name}' (choose from {', '.join(SAMPLERS)})")
    total = config.num_train_timesteps
    steps = default_steps(name, config) if steps is None else int(steps)
    if not 1 <= steps <= total:
        raise ValueError(f"steps must be between 1 and {total}, got {steps}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    timesteps = trailing_timesteps(total, steps)
    levels = _levels(alphas_cumprod(config), timesteps)
    return Sampler(name, config, [SAMPLERS[name].update(k, t, levels, eta) for k, t in enumerate(timesteps)])
