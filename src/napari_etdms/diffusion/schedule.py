"""Forward process and training loss: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..config import DiffusionConfig


class NoiseSchedule:
    def __init__(self, config: DiffusionConfig):
        self.config = config
        betas = torch.linspace(config.beta_start, config.beta_end, config.num_train_timesteps, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0).float()

    @property
    def num_train_timesteps(self) -> int:
        return self.config.num_train_timesteps

    def _coefficients(self, t: torch.Tensor, ndim: int):
        abar = self.alphas_cumprod.to(t.device)[t].view(-1, *([1] * (ndim - 1)))
        return abar.sqrt(), (1.0 - abar).sqrt()

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        signal, sigma = self._coefficients(t, x0.ndim)
        return signal * x0 + sigma * noise

    def noise_from_x0(self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The eps that maps x0 to x_t exactly (an oracle predictor, used in tests)."""
        signal, sigma = self._coefficients(t, x0.ndim)
        return (x_t - signal * x0) / sigma

    def training_loss(
        self,
        predict_noise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        x0: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Mean L1 between the true and the predicted noise at uniformly drawn steps."""
        t = torch.randint(0, self.num_train_timesteps, (x0.shape[0],), generator=generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        predicted = predict_noise(self.add_noise(x0, noise, t), t)
        return F.l1_loss(predicted.float(), noise.float())
