import numpy as np
import pytest
import torch
from conftest import TINY, sem_like

from napari_etdms.engine.tiling import TileGrid, blend_tiles, taper, tile_starts


@pytest.mark.parametrize("length, tile, overlap", [(64, 64, 16), (65, 64, 16), (300, 64, 16), (1000, 96, 32)])
def test_tiles_cover_the_frame_with_the_requested_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] + tile == length
    gaps = np.diff(starts)
    assert (tile - gaps >= overlap).all()


def test_taper_is_positive_and_flat_inside():
    w = taper(64, 8)
    assert (w > 0).all() and w.max() == 1
    assert torch.allclose(w[8:-8], torch.ones(48))
    assert torch.allclose(w, w.flip(0))


def test_blending_an_identity_reproduces_the_input_exactly():
    x = torch.rand(1, 1, 150, 130)
    grid = TileGrid(150, 130, 32, 12)
    out = blend_tiles(lambda t: t, [(x, 1)], grid, 1, batch_size=3)
    assert torch.allclose(out, x, atol=1e-6)


def test_blending_at_4x_scale_uses_matching_crops():
    low = torch.rand(1, 1, 40, 52)
    grid = TileGrid(40, 52, 16, 4)
    up = torch.nn.functional.interpolate(low, scale_factor=4, mode="nearest")
    out = blend_tiles(lambda hi, lo: hi + torch.nn.functional.interpolate(lo, scale_factor=4), [(up, 4), (low, 1)],
                      grid, 4, batch_size=2)
    assert torch.allclose(out, 2 * up, atol=1e-6)


def test_grid_rejects_bad_geometry():
    with pytest.raises(ValueError, match="overlap"):
        TileGrid(64, 64, 32, 32)
    with pytest.raises(ValueError, match="smaller than the tile"):
        TileGrid(20, 64, 32, 8)


def test_tiled_denoise_matches_single_pass(tiny_pipeline):
    frame = sem_like((96, 96), np.float32)
    tiled = tiny_pipeline.run(frame, super_resolve=False, tile=32, overlap=16).denoised
    single = tiny_pipeline.run(frame, super_resolve=False, tile=96, overlap=0).denoised
    span = frame.max() - frame.min()
    change = np.abs(single - frame).mean()  # what the (random) model does to the frame
    assert np.abs(tiled - single).max() < 0.05 * span
    assert np.abs(tiled - single).mean() < 0.05 * change


def _border_jump_ratio(image: np.ndarray, borders: list[int]) -> float:
    """Largest second difference across tile borders relative to the frame's typical one."""
    d2 = np.abs(np.diff(image, n=2, axis=1))
    at_borders = max(d2[:, b - 3 : b + 2].mean(axis=0).max() for b in borders)
    return at_borders / np.median(d2.mean(axis=0))


def test_tiled_diffusion_is_seam_free_on_a_smooth_frame(oracle_pipeline):
    yy, xx = np.mgrid[0:64, 0:96].astype(np.float32)
    smooth = np.sin(xx / 9.0) + 0.5 * np.cos(yy / 13.0) + xx / 40.0
    tiled = oracle_pipeline.run(smooth, denoise=False, sampler="ddim", steps=8, tile=32, overlap=16)
    single = oracle_pipeline.run(smooth, denoise=False, sampler="ddim", steps=8, tile=96, overlap=0)
    grid = TileGrid(64, 96, 32, 16)
    interior_starts = sorted({x for _, x in grid.origins if x > 0})
    # tile borders, and the ends of each tile's taper, in 4x pixels
    borders = sorted({4 * x for x in interior_starts} | {4 * (x + 32) for x in interior_starts if x + 32 < 96})
    span = smooth.max() - smooth.min()
    assert np.abs(tiled.super_resolved - single.super_resolved).max() < 0.01 * span
    assert _border_jump_ratio(tiled.super_resolved, borders) < 3.0
    # the independent-tile alternative is what this guards against: same oracle, no blending
    assert np.abs(tiled.super_resolved - tiled.bicubic_input).max() < 0.01 * span


def test_independent_tiles_would_show_seams():
    """Sanity check of the seam measure: hard-edged tiles of a brightness-shifted frame fail."""
    yy, xx = np.mgrid[0:64, 0:96].astype(np.float32)
    smooth = np.sin(xx / 9.0) + xx / 40.0
    seamed = smooth.copy()
    seamed[:, 48:] += 0.05
    assert _border_jump_ratio(seamed, [48]) > 3.0
    assert TINY.diffusion.num_train_timesteps == 200


def test_aligned_origins_and_context_keep_windowed_outputs_equal_across_tile_sizes():
    """A function whose output depends on where its input's 8 px grid lies and on how close
    a pixel is to the edge of what it sees: aligned origins and a context margin make the
    blended result the same for any tile size."""

    def windowed(t):
        blocks = torch.nn.functional.avg_pool2d(t, 8)  # depends on the crop's 8 px alignment
        out = t + torch.nn.functional.interpolate(blocks, scale_factor=8)
        edge = torch.zeros_like(t)
        edge[..., :2, :] = edge[..., -2:, :] = edge[..., :, :2] = edge[..., :, -2:] = 1.0  # edge bias
        return out + edge

    x = torch.rand(1, 1, 136, 200)
    results = [blend_tiles(windowed, [(x, 1)], TileGrid(136, 200, tile, 16, align=8, context=8), 1, 2)
               for tile in (32, 48, 64)]
    assert torch.allclose(results[0], results[1], atol=1e-5) and torch.allclose(results[0], results[2], atol=1e-5)
    # without them, the same function gives different frames for different tiles
    plain = [blend_tiles(windowed, [(x, 1)], TileGrid(136, 200, tile, 16), 1, 2) for tile in (32, 48)]
    assert not torch.allclose(plain[0], plain[1], atol=1e-3)


def test_aligned_origins_are_multiples_of_the_alignment_and_keep_the_overlap():
    starts = tile_starts(1000, 64, 16, align=8)
    assert all(s % 8 == 0 for s in starts) and starts[-1] + 64 == 1000
    assert (np.diff(starts) <= 64 - 16).all()
    with pytest.raises(ValueError, match="aligned"):
        tile_starts(1001, 64, 16, align=8)
