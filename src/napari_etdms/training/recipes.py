"""What each training stage learns: a recipe is a loss and a validation on batches of crops,
beside the one training loop of `loop.py` (resume, EMA, schedule, DDP, logging).

Batches are dicts of `CropStream.sample` tensors: `degraded`, `clean_lr`, `clean_hr` and
`noiseless` on the clean crop's [-1, 1] scale, `noise` and `noise_estimate` (gain, offset of
the degraded crop on that crop's [0, 1] scale: added, and estimated from the crop) and `fit`
(low, high: the crop's signal range as the pipeline fits it on a frame, on that scale); the
last two only where a noise-aware stage 1 runs. `NeighbourPairDenoising` (adaptation to
the user's frames) has no clean data: its batches are `noisy` crops with their frame's
`gain` and `offset`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from napari_etdms.diffusion import make_sampler
from napari_etdms.diffusion.target import from_target, to_target, upsample_condition
from napari_etdms.evaluation.metrics import psnr, ssim, uncertainty_calibration
from napari_etdms.models.clsr import LOG_VARIANCE_RANGE, reliability_step
from napari_etdms.stage1.denoise import apply_denoiser
from napari_etdms.stage1.noise import Stabiliser

CRITERIA = {"l1": F.l1_loss, "mse": F.mse_loss}

# below this level (about 1 % of the range) crops count as much as a crop at this level
LEVEL_WEIGHT_FLOOR = 0.01


def refit(batch: dict, key: str) -> torch.Tensor:
    """`batch[key]` on the [-1, 1] scale of the crop's fitted signal range (the pipeline's
    normalisation of the degraded frame)."""
    low, high = (batch["fit"][:, i].view(-1, 1, 1, 1) for i in (0, 1))
    return ((batch[key] + 1.0) * 0.5 - low) / (high - low) * 2.0 - 1.0


def unfit(batch: dict, x: torch.Tensor) -> torch.Tensor:
    """Back from the fitted range to the clean crop's [-1, 1] scale."""
    low, high = (batch["fit"][:, i].view(-1, 1, 1, 1) for i in (0, 1))
    return ((x + 1.0) * 0.5 * (high - low) + low) * 2.0 - 1.0


def fitted_noise(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The noise model estimated from each degraded crop, as the pipeline estimates a frame's
    (`noise.estimate_noise`), on the fitted [0, 1] scale (`NoiseModel.rescaled`). Trained
    with the estimate, not the truth, the network learns what an estimate means: on dense
    texture the estimate reads high, and the network must not smooth the texture away."""
    gain, offset = (batch["noise_estimate"][:, i].view(-1, 1, 1, 1).double() for i in (0, 1))
    low, high = (batch["fit"][:, i].view(-1, 1, 1, 1).double() for i in (0, 1))
    span = high - low
    return gain / span, (gain * low + offset) / span**2


def denoise_crops(denoiser, batch: dict) -> torch.Tensor:
    """Stage 1 on a batch of degraded crops as the pipeline runs it, on the clean scale."""
    if not getattr(denoiser, "noise_map", False):
        return denoiser(batch["degraded"])
    gain, offset = fitted_noise(batch)
    return unfit(batch, apply_denoiser(denoiser, refit(batch, "degraded"), gain, offset))


class BlindDenoising:
    """Stage 1 of v1: degraded low-res -> clean low-res, no noise model."""

    def __init__(self, trainer):
        self.trainer = trainer

    def loss(self, batch: dict) -> torch.Tensor:
        criterion = CRITERIA[self.trainer.settings.loss]
        return criterion(self.trainer.model(batch["degraded"]).float(), batch["clean_lr"])

    def validate(self, model, batch: dict) -> dict:
        with self.trainer.autocast():
            restored = model(batch["degraded"]).float()
        return self._scores(batch["clean_lr"], restored, batch["degraded"])

    @staticmethod
    def _scores(reference, restored, degraded) -> dict:
        return {"psnr": psnr(reference, restored), "ssim": ssim(reference, restored),
                "psnr_input": psnr(reference, degraded), "ssim_input": ssim(reference, degraded)}


class NoiseAwareDenoising(BlindDenoising):
    """Stage 1 of v2: remove the noise, and nothing else, given the frame's noise model.

    Input: the degraded crop, normalised as the pipeline normalises a frame, in the
    variance-stabilised domain of its estimated noise model, with the noise level as a second
    channel. Target: the same crop without its noise
    (blur, sampling and contrast stay: they are stage 2's business, and a clean frame must
    pass through). The loss is taken after the inverse transform, on the normalised scale
    (what the pipeline hands to stage 2, and what PSNR measures), each crop's in units of its
    noise level.
    """

    def loss(self, batch: dict) -> torch.Tensor:
        criterion = CRITERIA[self.trainer.settings.loss]
        gain, offset = fitted_noise(batch)
        restored = apply_denoiser(self.trainer.model, refit(batch, "degraded"), gain, offset)
        # each crop's error in units of its own noise level: unweighted, the few crops near
        # 1 e-/px would set the gradient and the doses microscopists mostly work at, with
        # errors 10-100x smaller, would barely be trained
        level = Stabiliser(gain, offset).sigma.float().clamp(min=LEVEL_WEIGHT_FLOOR)
        return criterion(restored / level, refit(batch, "noiseless") / level)

    def validate(self, model, batch: dict) -> dict:
        with self.trainer.autocast():
            restored = apply_denoiser(model, refit(batch, "degraded"), *fitted_noise(batch))
        return self._scores(refit(batch, "noiseless"), restored, refit(batch, "degraded"))


class ConditionalDiffusion:
    """Stage 2: the CLSR learns clean high-res given a low-res condition: the clean low-res
    frame plus a little noise, or, with a `conditioner` (the fine-tune), what stage 1 really
    makes of the degraded frame."""

    def __init__(self, trainer, conditioner=None):
        self.trainer = trainer
        self.conditioner = conditioner

    def condition(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.conditioner is not None:
            with torch.no_grad(), self.trainer.autocast():
                return denoise_crops(self.conditioner, batch).float()
        clean_lr = batch["clean_lr"]
        sigma = self.trainer.settings.condition_noise * 2.0  # [0, 1] units -> [-1, 1] units
        strength = torch.rand(clean_lr.shape[0], 1, 1, 1, generator=generator) * sigma
        noise = strength * torch.randn(clean_lr.shape, generator=generator)  # a CPU generator: same on any device
        return clean_lr + noise.to(clean_lr.device)

    def loss(self, batch: dict) -> torch.Tensor:
        trainer = self.trainer
        cond = self.condition(batch)
        base = cond if trainer.settings.residual_over == "condition" else batch["clean_lr"]
        x0 = to_target(batch["clean_hr"], upsample_condition(base), trainer.config.model.diffusion)
        model_cond = trainer.net.condition(cond, batch["degraded"])
        return trainer.schedule.training_loss(lambda x_t, t: trainer.model(x_t, model_cond, t), x0,
                                              trainer.settings.loss)

    def validate(self, model, batch: dict) -> dict:
        trainer = self.trainer
        diffusion = trainer.config.model.diffusion
        cond = self.condition(batch, torch.Generator().manual_seed(0))
        model_cond = model.condition(cond, batch["degraded"])
        sampler = make_sampler("dpmpp", diffusion, trainer.settings.validation_steps)

        def predict(x, t):
            with trainer.autocast():
                return model(x, model_cond, torch.full((x.shape[0],), t, device=trainer.device)).float()

        clean_hr = batch["clean_hr"]
        x = sampler.sample(predict, clean_hr.shape, torch.Generator().manual_seed(0), device=trainer.device)
        bicubic = upsample_condition(cond)
        sr = from_target(x, bicubic, diffusion).cpu().clamp(-1.5, 1.5)
        bicubic = bicubic.cpu()
        clean_hr = clean_hr.cpu()
        return {"psnr": psnr(clean_hr, sr), "ssim": ssim(clean_hr, sr),
                "psnr_bicubic": psnr(clean_hr, bicubic), "ssim_bicubic": ssim(clean_hr, bicubic)}


# a crop's loss is its squared error over its bicubic's (scaled residual units), at least this
MEAN_LOSS_FLOOR = 0.01


class ConditionalRegression(ConditionalDiffusion):
    """Stage 2 "regression": one CLSR evaluation from what stage 1 makes of the degraded crop
    (and the measured crop) to the posterior mean of the x4 frame, and the variance of that
    mean's error.

    Input: the bicubic x4 of the condition (where a diffusion CLSR takes its noisy state) and,
    as the step, the condition's noise level (`reliability_step`): with little noise the
    condition's texture is real and worth sharpening, with much it is the denoiser's guess.
    Outputs: the residual over that bicubic (x target_scale) and its error's log-variance.
    Losses: each crop's squared error over that of the bicubic (every dose and every crop
    counts on the log scale PSNR reports, and the start, a zero residual, scores 1), plus the
    Gaussian negative log-likelihood of the mean's error under the predicted variance, the
    error taken as it is (no gradient through the mean): the variance then learns the
    expected squared error at each pixel and the mean is left to the first loss."""

    def inputs(self, model, batch: dict, cond: torch.Tensor):
        level = Stabiliser(*fitted_noise(batch)).sigma
        return upsample_condition(cond), model.condition(cond, batch["degraded"]), reliability_step(level)

    def predict(self, model, batch: dict):
        cond = self.condition(batch)
        upsampled, model_cond, step = self.inputs(model, batch, cond)
        with self.trainer.autocast():
            out = model(upsampled, model_cond, step.to(upsampled.device)).float()
        target = to_target(batch["clean_hr"], upsampled, self.trainer.config.model.diffusion)
        return out[:, :1], out[:, 1:].clamp(*LOG_VARIANCE_RANGE), target, upsampled

    def loss(self, batch: dict) -> torch.Tensor:
        mean, log_variance, target, _ = self.predict(self.trainer.model, batch)
        squared = (target - mean).square()
        bicubic_error = target.square().mean(dim=(1, 2, 3), keepdim=True).clamp(min=MEAN_LOSS_FLOOR)
        likelihood = 0.5 * (squared.detach() * torch.exp(-log_variance) + log_variance)
        return (squared / bicubic_error).mean() + likelihood.mean()

    @torch.no_grad()
    def validate(self, model, batch: dict) -> dict:
        diffusion = self.trainer.config.model.diffusion
        mean, log_variance, target, upsampled = self.predict(model, batch)
        clean_hr = batch["clean_hr"].cpu()
        sr = from_target(mean, upsampled, diffusion).cpu()
        bicubic = upsampled.cpu()
        std = (0.5 * log_variance).exp().cpu() / diffusion.target_scale
        return {"psnr": psnr(clean_hr, sr), "ssim": ssim(clean_hr, sr),
                "psnr_bicubic": psnr(clean_hr, bicubic), "ssim_bicubic": ssim(clean_hr, bicubic)
                } | uncertainty_calibration(clean_hr, sr, std)


def neighbour_pairs(y: torch.Tensor, generator: torch.Generator):
    """Two half-size sub-images of (B, 1, H, W) frames (H, W even) whose pixels come from
    different rows of each 2x2 cell, and the function that takes the same pixels from any
    frame of that shape. SEM noise is correlated along the scan line, so two pixels of one row
    share noise; pixels of different rows do not (Neighbor2Neighbor, with the pair's rows
    forced apart). Each sub-image row is every other pixel of ONE scan line (row and column
    parity drawn per row, not per cell), so a line's offset and correlation stay as the
    full frame has them: the network is fine-tuned on the noise it will meet."""
    b, c, h, w = y.shape

    def cells(x):  # (B, C, H/2, W/2, 4): each 2x2 cell's pixels, row-major (top-left, top-right, ...)
        return x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(b, c, h // 2, w // 2, 4)

    shape, per_row = (b, c, h // 2, w // 2), (b, c, h // 2, 1)
    first_row = torch.randint(0, 2, per_row, generator=generator)
    first = (first_row * 2 + torch.randint(0, 2, per_row, generator=generator)).expand(shape)
    second = ((1 - first_row) * 2 + torch.randint(0, 2, per_row, generator=generator)).expand(shape)
    first, second = first.to(y.device), second.to(y.device)

    def pick(x):
        return tuple(cells(x).gather(-1, index[..., None])[..., 0] for index in (first, second))

    return *pick(y), pick


class NeighbourPairDenoising:
    """Stage 1 fine-tuned on noisy frames alone (self-supervised): the denoised first
    sub-image of a neighbour pair should predict the second, whose noise is independent, so
    the loss is the true error plus a constant; the regulariser (Neighbor2Neighbor, Huang et
    al. 2021) ties the sub-image task to the denoised full frame. Validation: the pair loss on
    fixed held-out pairs, which falls exactly when the true error does."""

    def __init__(self, trainer, regularisation: float = 1.0, extra_noise: float = 0.0, seed: int = 0):
        self.trainer = trainer
        self.regularisation = regularisation
        self.extra_noise = extra_noise
        self.generator = torch.Generator().manual_seed(seed)

    @staticmethod
    def _denoise(model, x: torch.Tensor, batch: dict, offset: torch.Tensor | None = None) -> torch.Tensor:
        gain = batch["gain"].view(-1, 1, 1, 1).double()
        offset = batch["offset"].view(-1, 1, 1, 1).double() if offset is None else offset
        return apply_denoiser(model, x, gain, offset).float()

    def _noisier(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Half the crops with extra Gaussian noise, up to `extra_noise` x their own noise std at
        mid-grey, and the noise model that says so: a frame gives one noise level, and fine-tuned
        on one level the network would unlearn what the level input means. The pair's target
        stays the original pixels, whose noise is independent of the input's."""
        noisy = batch["noisy"]
        gain, offset = (batch[key].view(-1, 1, 1, 1).double() for key in ("gain", "offset"))
        shape = (noisy.shape[0], 1, 1, 1)
        factor = torch.rand(shape, generator=self.generator) * self.extra_noise
        factor *= torch.rand(shape, generator=self.generator) < 0.5
        extra_variance = (factor.double().to(noisy.device) ** 2) * (0.5 * gain + offset).clamp(min=0.0)
        # [0, 1]-scale variance -> [-1, 1]-scale standard deviation: x 2
        noise = torch.randn(noisy.shape, generator=self.generator).to(noisy.device)
        return noisy + (2.0 * extra_variance.sqrt()).float() * noise, offset + extra_variance

    def loss(self, batch: dict) -> torch.Tensor:
        model = self.trainer.model
        noisier, offset = self._noisier(batch) if self.extra_noise else (batch["noisy"], None)
        _, second, pick = neighbour_pairs(batch["noisy"], self.generator)  # the target: the original pixels
        first = pick(noisier)[0]
        restored = self._denoise(model, first, batch, offset)
        with torch.no_grad():
            whole_first, whole_second = pick(self._denoise(model, noisier, batch, offset))
        gap = restored - second
        return gap.square().mean() + self.regularisation * F.mse_loss(gap, whole_first - whole_second)

    def validate(self, model, batch: dict, chunk: int = 32) -> dict:
        """The mean pair loss over all held-out pieces, `chunk` pieces per forward pass (a
        large stack holds thousands)."""
        total = 0.0
        for start in range(0, len(batch["first"]), chunk):
            part = {key: value[start : start + chunk] for key, value in batch.items()}
            with self.trainer.autocast():
                restored = self._denoise(model, part["first"], part)
            total += F.mse_loss(restored, part["second"], reduction="sum").item()
        return {"pair_loss": total / batch["second"].numel()}
