"""What stage 2 diffuses: the high-res frame ("image", the paper) or its residual over
the bicubic-upsampled condition ("residual")."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.clsr import SCALE


def upsample_condition(cond: torch.Tensor) -> torch.Tensor:
    return F.interpolate(cond, scale_factor=SCALE, mode="bicubic", align_corners=False)


def to_target(hr: torch.Tensor, cond: torch.Tensor, kind: str) -> torch.Tensor:
    return hr - upsample_condition(cond) if kind == "residual" else hr


def from_target(x0: torch.Tensor, cond: torch.Tensor, kind: str) -> torch.Tensor:
    return x0 + upsample_condition(cond) if kind == "residual" else x0
