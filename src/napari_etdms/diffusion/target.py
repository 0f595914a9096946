"""What stage 2 diffuses: the high-res frame ("image", the paper) or its residual over
the bicubic-upsampled condition ("residual"), multiplied by `target_scale`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from napari_etdms.config import DiffusionConfig
from napari_etdms.models.clsr import SCALE


def upsample_condition(cond: torch.Tensor) -> torch.Tensor:
    return F.interpolate(cond, scale_factor=SCALE, mode="bicubic", align_corners=False)


def to_target(hr: torch.Tensor, upsampled: torch.Tensor, config: DiffusionConfig) -> torch.Tensor:
    """`upsampled`: the condition upsampled (`upsample_condition`) over the same pixels as `hr`."""
    if config.target == "residual":
        return (hr - upsampled) * config.target_scale
    return hr


def from_target(x0: torch.Tensor, upsampled: torch.Tensor, config: DiffusionConfig) -> torch.Tensor:
    if config.target == "residual":
        return x0 / config.target_scale + upsampled
    return x0
