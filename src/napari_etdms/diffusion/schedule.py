"""Forward process and training loss: x_t = alpha_t x0 + sigma_t eps, with alpha_t = sqrt(abar_t)
and sigma_t = sqrt(1 - abar_t). The network predicts eps or v = alpha_t eps - sigma_t x0."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from napari_etdms.config import DiffusionConfig


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

    def _prediction_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.config.prediction == "epsilon":
            return noise
        signal, sigma = self._coefficients(t, x0.ndim)
        return signal * noise - sigma * x0

    def prediction_from_x0(self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network output (eps or v) that maps x0 to x_t exactly (an oracle, used in tests)."""
        signal, sigma = self._coefficients(t, x0.ndim)
        return self._prediction_target(x0, (x_t - signal * x0) / sigma, t)

    def training_loss(
        self,
        predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        x0: torch.Tensor,
        loss: str = "l1",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """L1 (the paper) or MSE between the true and the predicted eps or v at uniformly drawn steps."""
        t = torch.randint(0, self.num_train_timesteps, (x0.shape[0],), generator=generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        target = self._prediction_target(x0.float(), noise.float(), t)
        criterion = F.mse_loss if loss == "mse" else F.l1_loss
        return criterion(predict(self.add_noise(x0, noise, t), t).float(), target)
