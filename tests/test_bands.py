import numpy as np
import pytest
import torch

from napari_etdms.config import DiffusionConfig
from napari_etdms.diffusion import make_sampler
from napari_etdms.diffusion.target import from_target, to_target, upsample_condition
from napari_etdms.engine.bands import (
    NOISE_BLOCK,
    BandedChain,
    BlockNoise,
    MemoryArrays,
    project_onto_low_res,
    upsample_rows,
)
from napari_etdms.engine.tiling import TileGrid, blend_tiles


def test_upsampled_rows_are_the_whole_frames_rows():
    low = torch.rand(1, 1, 37, 23, generator=torch.Generator().manual_seed(0))
    whole = upsample_condition(low)
    for top, bottom in [(0, 4), (0, 148), (8, 40), (140, 148), (60, 64)]:
        assert torch.equal(upsample_rows(low, top, bottom), whole[..., top:bottom, :])


def test_block_noise_does_not_depend_on_the_bands_asked_for():
    width, height = NOISE_BLOCK + 70, 2 * NOISE_BLOCK + 30
    whole = BlockNoise(5, width).rows(3, 0, height)
    cuts = [0, 17, 255, 256, 300, 511, height]
    banded = torch.cat([BlockNoise(5, width).rows(3, a, b) for a, b in zip(cuts, cuts[1:])])
    assert torch.equal(whole, banded)
    assert abs(float(whole.mean())) < 0.02 and abs(float(whole.std()) - 1) < 0.02
    assert not torch.equal(whole, BlockNoise(5, width).rows(4, 0, height))  # every step its own
    assert not torch.equal(whole, BlockNoise(6, width).rows(3, 0, height))  # every seed its own


def _predict_tiles(x_tiles, c_tiles, t):
    """A tile-dependent stand-in network: output depends on the tile's own mean and on t."""
    up = upsample_condition(c_tiles)
    return 0.6 * x_tiles - 0.3 * up + 0.01 * x_tiles.mean(dim=(2, 3), keepdim=True) + t * 1e-4


@pytest.mark.parametrize("name, consistency", [("dpmpp-sde", True), ("dpmpp", False), ("ddim", True)])
def test_banded_chain_equals_stepping_the_whole_frame(name, consistency):
    """The chain stepped in bands is the chain stepped on the whole frame at once, with
    every tile blended before any pixel is updated."""
    config = DiffusionConfig(num_train_timesteps=200, target="residual", target_scale=4.0)
    sampler = make_sampler(name, config, 4)
    grid = TileGrid(40, 56, 16, 6)
    restored = torch.rand(1, 1, 40, 56, generator=torch.Generator().manual_seed(1)) * 2 - 1
    chain = BandedChain(sampler, grid, _predict_tiles, restored, restored, config, MemoryArrays(), consistency,
                        batch_size=3, tick=lambda: None)
    banded = torch.from_numpy(np.array(chain.draw(7)))

    noise = BlockNoise(7, 4 * 56)
    x, previous = noise.rows(-1, 0, 160)[None, None], None
    upsampled = upsample_condition(restored)
    for k, t in enumerate(sampler.timesteps):
        output = blend_tiles(lambda a, b, t=t: _predict_tiles(a, b, t), [(x, 4), (restored, 1)], grid, 4, 1)
        x0 = sampler.x0_estimate(k, output, x)
        if consistency:
            x0 = to_target(project_onto_low_res(from_target(x0, upsampled, config), restored), upsampled, config)
        x, previous = sampler.update(k, x, x0, previous, noise.rows(k, 0, 160)[None, None]), x0
    assert torch.allclose(banded, x[0, 0], atol=1e-5)
