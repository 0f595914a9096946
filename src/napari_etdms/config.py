"""Validated configuration: model sizes, diffusion recipe, data and training settings.

JSON files follow the reference's spirit (one file per stage or one for both); any
unknown key or wrong type is rejected with the dotted path of the offending key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from napari_etdms.models.clsr import CLSRSize
from napari_etdms.models.swinir import SwinIRSize


class ConfigError(ValueError):
    """A configuration file or dictionary is invalid; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SwinIRConfig(_Strict):
    embed_dim: int = Field(32, gt=0)
    depths: tuple[int, ...] = (2, 2, 2)
    num_heads: tuple[int, ...] = (4, 4, 4)
    window_size: int = Field(8, gt=0)
    mlp_ratio: float = Field(2.0, gt=0)
    # noise-aware stage 1: input in the variance-stabilised domain plus a noise-level map
    noise_map: bool = False

    @model_validator(mode="after")
    def _consistent(self):
        if len(self.depths) != len(self.num_heads):
            raise ValueError("swinir.depths and swinir.num_heads must have the same length")
        for heads in self.num_heads:
            if self.embed_dim % heads:
                raise ValueError(f"swinir.embed_dim {self.embed_dim} is not divisible by {heads} heads")
        return self

    def size(self) -> SwinIRSize:
        return SwinIRSize(self.embed_dim, self.depths, self.num_heads, self.window_size, self.mlp_ratio, self.noise_map)


class CLSRConfig(_Strict):
    inner_channels: int = Field(32, gt=0)
    channel_multiplier: int = Field(4, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    # Condition on the measured low-res frame as well as the stage-1 output (the paper: the
    # stage-1 output only), so stage 2 can recover detail the denoiser removed.
    measured_input: bool = False
    # A second output, the log-variance of the mean's error per pixel (stage 2 "regression"):
    # the uncertainty of a one-evaluation stage 2 whose output is the posterior mean.
    uncertainty: bool = False

    @model_validator(mode="after")
    def _even(self):
        if self.inner_channels % 2 or (self.inner_channels * self.channel_multiplier) % 16:
            raise ValueError("clsr.inner_channels must be even and inner_channels*channel_multiplier a multiple of 16")
        return self

    def size(self) -> CLSRSize:
        return CLSRSize(self.inner_channels, self.channel_multiplier, self.dropout, self.measured_input,
                        self.uncertainty)


class DiffusionConfig(_Strict):
    num_train_timesteps: int = Field(2000, gt=1)
    beta_start: float = Field(5e-4, gt=0, lt=1)
    beta_end: float = Field(2e-2, gt=0, lt=1)
    # "image": the paper's formulation (diffuse the high-res frame itself).
    # "residual": diffuse high-res minus the bicubic-upsampled condition.
    target: Literal["image", "residual"] = "image"
    # The residual is multiplied by this before diffusion. SEM detail over bicubic has a std
    # of about 0.12 on the [-1, 1] scale: unscaled, it rises above the noise in only the last
    # ~1% of the 2000 steps, so training and few-step samplers barely see it.
    target_scale: float = Field(1.0, gt=0)
    # What the network predicts: "epsilon", the noise (the paper), or "v" = alpha*eps - sigma*x0.
    # At the noisiest steps v-prediction learns the mean of x0 given the condition (alpha -> 0,
    # v -> -x0), which an epsilon model cannot express: there x0 = (x_t - sigma*eps)/alpha
    # divides by alpha ~ 3e-5.
    prediction: Literal["epsilon", "v"] = "epsilon"

    @model_validator(mode="after")
    def _scale_for_residual_only(self):
        if self.target == "image" and self.target_scale != 1.0:
            raise ValueError("diffusion.target_scale applies to the residual target only "
                             "(the image is already on [-1, 1])")
        return self


class ModelConfig(_Strict):
    swinir: SwinIRConfig = SwinIRConfig()
    clsr: CLSRConfig = CLSRConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    # How stage 2 runs the CLSR: "diffusion" (the paper: a sampler over noisy states, many
    # evaluations) or "regression": one evaluation per tile on the bicubic x4 of the condition,
    # told how reliable the condition is, returning the posterior mean of the x4 frame (the
    # residual target of `diffusion`) and, with clsr.uncertainty, the variance of its error.
    stage2: Literal["diffusion", "regression"] = "diffusion"

    @model_validator(mode="after")
    def _regression_predicts_a_residual_with_its_variance(self):
        if self.stage2 == "regression" and not (self.diffusion.target == "residual" and self.clsr.uncertainty
                                                and self.swinir.noise_map):
            raise ValueError("stage2 'regression' needs diffusion.target 'residual', clsr.uncertainty true and a "
                             "noise-aware stage 1 (swinir.noise_map true: stage 2 is told the frame's noise level)")
        return self


PRESETS: dict[str, ModelConfig] = {
    "paper": ModelConfig(
        swinir=SwinIRConfig(embed_dim=180, depths=(6,) * 6, num_heads=(6,) * 6),
        clsr=CLSRConfig(inner_channels=32, channel_multiplier=12),
    ),
    # Sized by measurement on a 2-core Zen 5 CPU (native bf16 autocast, tcmalloc): CLSR step ~0.27 s at
    # batch 8 on 128x128 crops, SwinIR step ~0.45 s at batch 8 on 64x64 crops.
    "lite": ModelConfig(),
}


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown key '{key}'")
        else:
            lines.append(f"'{key}': {e['msg']}")
    return "; ".join(lines)


def parse(model: type[BaseModel], data: dict, source: str = "config"):
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source}: {format_validation_error(err)}") from None


def load_json(path: str | Path, model: type[BaseModel]):
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a JSON object")
    return parse(model, data, str(path))


def model_config(name_or_dict: str | dict | ModelConfig) -> ModelConfig:
    if isinstance(name_or_dict, ModelConfig):
        return name_or_dict
    if isinstance(name_or_dict, str):
        if name_or_dict not in PRESETS:
            raise ConfigError(f"unknown model preset '{name_or_dict}' (choose from {', '.join(PRESETS)})")
        return PRESETS[name_or_dict]
    return parse(ModelConfig, name_or_dict, "model config")
