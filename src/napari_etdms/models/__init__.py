"""Networks of the two stages, built from validated configs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from napari_etdms.models.clsr import CLSR, CLSRSize
from napari_etdms.models.swinir import SwinIRDenoiser, SwinIRSize

if TYPE_CHECKING:
    from napari_etdms.config import ModelConfig


def build_denoiser(config: ModelConfig) -> SwinIRDenoiser:
    return SwinIRDenoiser(config.swinir.size())


def build_clsr(config: ModelConfig) -> CLSR:
    return CLSR(config.clsr.size())


def tile_inputs(net: SwinIRDenoiser | CLSR, side: int, device: torch.device | str = "cpu",
                memory_format=torch.contiguous_format) -> tuple:
    """The inputs of one `side` px low-res tile, as a run feeds the network (zeros): what a
    precision is timed on. CLSR takes the 4x state, the condition and a step."""
    low_res = torch.zeros(1, 1, side, side, device=device).contiguous(memory_format=memory_format)
    if isinstance(net, CLSR):
        state = torch.zeros(1, 1, 4 * side, 4 * side, device=device).contiguous(memory_format=memory_format)
        return state, net.condition(low_res, low_res), torch.full((1,), 500, device=device)
    return (low_res, torch.full((1, 1, 1, 1), 0.05, device=device)) if net.noise_map else (low_res,)


def parameter_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["CLSR", "CLSRSize", "SwinIRDenoiser", "SwinIRSize", "build_denoiser", "build_clsr", "parameter_count",
           "tile_inputs"]
