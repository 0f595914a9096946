"""Networks of the two stages, built from validated configs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .clsr import CLSR, CLSRSize
from .swinir import SwinIRDenoiser, SwinIRSize

if TYPE_CHECKING:
    from ..config import ModelConfig


def build_denoiser(config: ModelConfig) -> SwinIRDenoiser:
    return SwinIRDenoiser(config.swinir.size())


def build_clsr(config: ModelConfig) -> CLSR:
    return CLSR(config.clsr.size())


def parameter_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["CLSR", "CLSRSize", "SwinIRDenoiser", "SwinIRSize", "build_denoiser", "build_clsr", "parameter_count"]
