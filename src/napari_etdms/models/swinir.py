"""Stage 1: a single-channel SwinIR denoiser (global residual, no upsampler).

Written here rather than imported because the packaged SwinIR implementations depend
on torchvision. Frames of any size are reflect-padded to a multiple of the window.

This module needs torch alone and compiles with torch.jit.script: `etdms export` ships its
source, with a fixed-noise wrapper, as the architecture of a bioimage.io model (Java consumers
run the TorchScript, whose attention is written out for their older libtorch builds).
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple, Optional  # noqa: UP035  (TorchScript and older Pythons read it)

import torch
import torch.nn.functional as F
from torch import nn


class SwinIRSize(NamedTuple):  # a NamedTuple: the exported source runs however a consumer imports it
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int = 8
    mlp_ratio: float = 2.0
    # a second input channel carries the noise level (FFDNet / DRUNet convention)
    noise_map: bool = False


def _relative_position_index(window: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij"))
    coords = coords.flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def _shift_mask(height: int, width: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    """Additive mask (n_windows, N, N) that stops attention across the cyclic-shift seam: the
    regions [0, -window), [-window, -shift), [-shift, end) of each axis, labelled 3 * row + column."""
    rows = torch.arange(height, device=device)
    columns = torch.arange(width, device=device)
    row_label = (rows >= height - window).long() + (rows >= height - shift).long()
    column_label = (columns >= width - window).long() + (columns >= width - shift).long()
    region = (row_label[:, None] * 3 + column_label[None, :]).to(torch.float32)
    windows = _partition(region[None, :, :, None], window).squeeze(-1)  # (nW, N)
    diff = windows[:, None, :] - windows[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, float("-inf"))


_cached_shift_mask = functools.lru_cache(maxsize=16)(_shift_mask)  # tile sizes repeat: made once each


def _partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, window*window, C)."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def _merge(windows: torch.Tensor, window: int, b: int, h: int, w: int) -> torch.Tensor:
    c = windows.shape[-1]
    x = windows.view(b, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


# The level channel carries log10(sigma), mapped so that 1e-4 (far below one 16-bit grey
# level) -> 0 and 1 (a few electrons per pixel) -> 1: every dose gets the same resolution,
# where a linear map would squeeze all clean-ish frames next to 0.
LEVEL_FLOOR = 1e-4


def encode_noise_level(sigma: torch.Tensor) -> torch.Tensor:
    return (torch.log10(sigma.clamp(min=1e-4)) + 4.0) / 4.0  # 1e-4: LEVEL_FLOOR (a literal for TorchScript)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, window: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.empty((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        self.register_buffer("rel_index", _relative_position_index(window).flatten(), persistent=False)

    def forward(self, x: torch.Tensor, batch: int, mask: Optional[torch.Tensor]) -> torch.Tensor:  # noqa: UP045
        bw, n, c = x.shape
        n_windows = bw // batch
        qkv = self.qkv(x).view(batch, n_windows, n, 3, self.heads, c // self.heads).permute(3, 0, 1, 4, 2, 5)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (B, nW, heads, N, d)
        bias = self.bias_table[self.rel_index].view(n, n, self.heads).permute(2, 0, 1)
        if mask is not None:
            bias = bias[None] + mask[:, None]  # (nW, heads, N, N), broadcast over batch
        bias = bias.to(q.dtype)
        if torch.jit.is_scripting():
            # written out: the same up to float rounding, and runnable by the older libtorch builds
            # of Java consumers (deepImageJ, QuPath's DJL), which lack the fused kernel
            scores = torch.matmul(q, k.transpose(-2, -1)) * (float(c // self.heads) ** -0.5) + bias
            out = torch.matmul(torch.softmax(scores, dim=-1), v)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.permute(0, 1, 3, 2, 4).reshape(bw, n, c)
        return self.proj(out)


class SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, shift: int, mlp_ratio: float):
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # (B, H, W, C); mask: `_shift_mask`
        b, h, w, _ = x.shape
        y = self.norm1(x)
        if self.shift > 0:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
            y = self.attn(_partition(y, self.window), b, mask)
        else:
            y = self.attn(_partition(y, self.window), b, None)
        y = _merge(y, self.window, b, h, w)
        if self.shift > 0:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y
        return x + self.mlp(self.norm2(x))


class ResidualSwinGroup(nn.Module):
    """RSTB: a stack of (shifted) window blocks closed by a 3x3 conv and a residual."""

    def __init__(self, dim: int, depth: int, heads: int, window: int, mlp_ratio: float):
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio)
            for i in range(depth)
        )
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        y = x
        for block in self.blocks:
            y = block(y, mask)
        y = self.conv(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + y


class SwinIRDenoiser(nn.Module):
    """1-channel SwinIR with the denoising head: output = input + learned correction."""

    def __init__(self, size: SwinIRSize):
        super().__init__()
        if len(size.depths) != len(size.num_heads):
            raise ValueError("depths and num_heads must have the same length")
        self.window = size.window_size
        self.noise_map = size.noise_map
        dim = size.embed_dim
        self.conv_first = nn.Conv2d(2 if size.noise_map else 1, dim, 3, padding=1)
        self.embed_norm = nn.LayerNorm(dim)
        self.groups = nn.ModuleList(
            ResidualSwinGroup(dim, d, h, size.window_size, size.mlp_ratio)
            for d, h in zip(size.depths, size.num_heads)
        )
        self.body_norm = nn.LayerNorm(dim)
        self.conv_after_body = nn.Conv2d(dim, dim, 3, padding=1)
        self.conv_last = nn.Conv2d(dim, 1, 3, padding=1)

    @torch.no_grad()
    def grow_from(self, state: dict[str, torch.Tensor]) -> None:
        """Start from a trained denoiser of the same width with fewer residual groups (or a
        blind one, when this one takes a noise-level map).

        Its weights are copied; each extra group starts with a zero closing conv, so it is
        an identity and the grown network computes exactly what the trained one did, then
        learns with more capacity (cheaper than training the deeper network from scratch).
        """
        own = self.state_dict()
        state = dict(state)
        first = state.get("conv_first.weight")
        if first is not None and self.noise_map and first.shape[1] == 1:
            # a blind denoiser grows the noise-level channel, starting with zero weights on it
            state["conv_first.weight"] = torch.cat([first, torch.zeros_like(first)], dim=1)
        for name, value in state.items():
            if name not in own:
                raise ValueError(f"cannot grow from these weights: '{name}' has no place in this network")
            if own[name].shape != value.shape:
                raise ValueError(f"cannot grow from these weights: '{name}' is {tuple(value.shape)}, "
                                 f"here {tuple(own[name].shape)} (only the number of groups may grow)")
        source_groups = len({int(name.split(".")[1]) for name in state if name.startswith("groups.")})
        new_group = re.compile(r"groups\.(\d+)\.")
        for name in own.keys() - state.keys():  # only whole new groups may be missing from the source
            match = new_group.match(name)
            if not match or int(match.group(1)) < source_groups:
                raise ValueError(f"cannot grow from these weights: they lack '{name}' "
                                 "(only the number of groups may grow, not their depth or heads)")
        self.load_state_dict(state, strict=False)
        for index in range(source_groups, len(self.groups)):
            self.groups[index].conv.weight.zero_()
            self.groups[index].conv.bias.zero_()

    @torch.jit.unused
    def _cached_mask(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        return _cached_shift_mask(height, width, self.window, self.window // 2, device)

    def forward(self, x: torch.Tensor, noise_level: Optional[torch.Tensor] = None) -> torch.Tensor:  # noqa: UP045
        """`noise_level` (noise-map models only): the noise standard deviation of `x`, a
        (B, 1, H, W) map or anything that broadcasts to it, e.g. (B, 1, 1, 1).

        A noise-map model returns x + noise_level * correction: the network estimates the
        noise in units of its level (as EDM-style preconditioning does for small levels), so
        a noise-free input passes through exactly and no level can make it remove more than
        a few of its own standard deviations."""
        if self.noise_map and noise_level is None:
            raise ValueError("this denoiser takes a noise-level map")
        if not self.noise_map and noise_level is not None:
            raise ValueError("this denoiser takes no noise-level map")
        h, w = x.shape[-2], x.shape[-1]
        pad_h, pad_w = (self.window - h % self.window) % self.window, (self.window - w % self.window) % self.window
        image = x
        if noise_level is not None:
            noise_level = noise_level.to(x.dtype).expand_as(x)
            x = torch.cat([x, encode_noise_level(noise_level)], dim=1)
        if pad_h > 0 or pad_w > 0:
            x = F.pad(x, [0, pad_w, 0, pad_h], mode="reflect")
        feat = self.conv_first(x)
        # one mask for every shifted block, made once per size (TorchScript: per call, for any size)
        if torch.jit.is_scripting():
            mask = _shift_mask(h + pad_h, w + pad_w, self.window, self.window // 2, x.device)
        else:
            mask = self._cached_mask(h + pad_h, w + pad_w, x.device)
        tokens = self.embed_norm(feat.permute(0, 2, 3, 1))
        for group in self.groups:
            tokens = group(tokens, mask)
        body = self.body_norm(tokens).permute(0, 3, 1, 2)
        res = self.conv_after_body(body) + feat
        correction = self.conv_last(res)[:, :, :h, :w]
        if noise_level is None:
            return image + correction
        return image + noise_level * correction
