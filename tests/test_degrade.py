import numpy as np
import pytest

from napari_etdms.simulation import degradation as d


def rng(seed=0):
    return np.random.default_rng(seed)


def test_probe_blur_keeps_the_mean_and_removes_high_frequencies():
    image = rng().random((64, 64))
    blurred = d.probe_blur(image, 1.2, 1.5, 0.7)
    assert blurred.mean() == pytest.approx(image.mean(), rel=1e-3)
    assert np.abs(np.diff(blurred, axis=1)).mean() < 0.5 * np.abs(np.diff(image, axis=1)).mean()
    k = d.gaussian_kernel(1.0, 1.6, 0.0)
    assert k.sum() == pytest.approx(1.0)
    assert k.shape[0] > 1 and (k[k.shape[0] // 2] > k[:, k.shape[1] // 2]).sum() > 0  # wider along x


def test_jitter_moves_rows_only():
    image = np.repeat(np.linspace(0, 1, 32)[:, None], 40, axis=1)  # each row is constant
    shifts = d.jitter_shifts(8, rng(), 0.3, 1.0, 10.0)
    moved = d.shift_rows(image, 4 * np.repeat(shifts, 4))
    assert np.allclose(moved, image)  # a horizontal shift cannot change a constant row
    ramp = np.tile(np.arange(40.0), (32, 1))
    moved = d.shift_rows(ramp, np.full(32, 2.0))
    assert np.allclose(moved[:, 5:-5], ramp[:, 5:-5] + 2.0)


@pytest.mark.parametrize("mode", ["point", "line", "area"])
def test_undersampling_keeps_the_mean(mode):
    image = rng(1).random((128, 128))
    low = d.undersample(image, mode, (1, 2))
    assert low.shape == (32, 32)
    assert low.mean() == pytest.approx(image.mean(), abs=1e-9 if mode == "area" else 0.01)


def test_area_downsample_is_the_block_mean():
    image = np.arange(64, dtype=float).reshape(8, 8)
    assert d.area_downsample(image)[0, 0] == image[:4, :4].mean()


def test_poisson_branch_variance_follows_the_mean():
    electrons = 20.0
    variances = []
    for level in (0.1, 0.4, 0.8):
        noisy = d.poisson_gaussian(np.full((200, 200), level), rng(2), electrons, read_sigma=0.0)
        variances.append(noisy.var())
        assert noisy.mean() == pytest.approx(level, rel=0.02)
    expected = np.array([0.1, 0.4, 0.8]) / electrons
    assert np.allclose(variances, expected, rtol=0.08)


def test_read_noise_is_correlated_along_rows_only():
    noisy = d.poisson_gaussian(np.zeros((256, 256)), rng(3), 1e9, read_sigma=0.05, line_correlation=1.5)
    along = np.corrcoef(noisy[:, :-1].ravel(), noisy[:, 1:].ravel())[0, 1]
    across = np.corrcoef(noisy[:-1].ravel(), noisy[1:].ravel())[0, 1]
    assert along > 0.5 and abs(across) < 0.05
    assert noisy.std() == pytest.approx(0.05, rel=0.05)


def test_drift_is_zero_at_the_first_row_and_grows():
    image = np.tile(np.sin(np.arange(64) / 3.0), (64, 1))
    drifted = d.drift(image, dx_fine=4.0, dy_fine=0.0)
    assert np.allclose(drifted[0], image[0])
    assert not np.allclose(drifted[-1], image[-1])


def test_contrast_charging_and_quantisation():
    image = np.linspace(0, 1, 100).reshape(10, 10)
    assert np.allclose(d.contrast(image, 1.0, 0.0, 1.0), image)
    assert d.contrast(image, 1.2, 0.1, 1.0).max() == pytest.approx(1.3)
    streaked = d.charging(np.zeros((32, 64)), rng(4), amplitude=0.2, decay=10.0, flicker=0.0)
    assert streaked.max() > 0.05 and (streaked >= 0).all()
    q = d.quantise(image, 8, clip=True)
    assert np.allclose(q * 255, np.round(q * 255)) and np.abs(q - image).max() <= 0.5 / 255 + 1e-12


def test_full_chain_is_seeded_and_shaped():
    clean = rng(5).random((130, 98))
    a = d.degrade(clean, rng(9))
    b = d.degrade(clean, rng(9))
    c = d.degrade(clean, rng(10))
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    degraded, clean_lr, hr = a
    assert degraded.shape == clean_lr.shape == (32, 24) and hr.shape == (128, 96)
    assert np.allclose(clean_lr, d.area_downsample(hr), atol=1e-6)


def _geometry_only(mode: str, **changes) -> d.DegradationConfig:
    """Every intensity effect off, so only sampling geometry (and drift) remains."""
    settings = dict(
        p_blur=0.0, p_drift=0.0, p_jitter=0.0, sampling_modes={mode: 1.0}, p_contrast=0.0, p_charging=0.0,
        electrons=(1e9, 1e9), read_sigma=(0.0, 0.0), row_offset=0.0, p_clip=0.0,
    )
    return d.DegradationConfig(**(settings | changes))


@pytest.mark.parametrize("mode", ["point", "line"])
def test_targets_follow_the_sampling_phase(mode):
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(rng(11).random((128, 128)), 3.0)
    smooth = (smooth - smooth.min()) / np.ptp(smooth)
    for seed in range(6):  # several random phases
        degraded, clean_lr, hr = d.degrade(smooth, rng(seed), _geometry_only(mode))
        # the sample sits at its cell's centre on the target grid: fine px 1.5 of 0..3
        at_centre = hr.reshape(32, 4, 32, 4)[:, 1:3, :, 1:3].mean(axis=(1, 3))
        inner = (slice(2, -2), slice(2, -2))
        assert np.abs(degraded - at_centre)[inner].max() < 0.03
        assert np.allclose(clean_lr, d.area_downsample(hr), atol=1e-6)


def test_targets_keep_the_drift():
    yy, xx = np.mgrid[0:128, 0:128] / 127.0
    ramp = (xx + yy) / 2  # a shift in any direction changes the values
    config = _geometry_only("area", p_drift=1.0, drift_coarse_px=(2.0, 2.0))
    degraded, clean_lr, hr = d.degrade(ramp, rng(3), config)
    assert not np.allclose(hr, ramp, atol=1e-3)  # the target moved with the specimen
    assert np.abs(degraded - clean_lr)[2:-2, 2:-2].max() < 3e-3  # matches the input (8-bit steps)


def test_charging_streaks_decay_along_the_scan_line_and_flicker_scales_whole_rows():
    streaked = d.charging(np.zeros((32, 64)), rng(4), amplitude=0.2, decay=10.0, flicker=0.0)
    rows = np.flatnonzero(streaked.max(axis=1) > 0)
    assert 0 < len(rows) <= 32 // 16 + 1
    for row in rows:
        values = streaked[row]
        start = int(np.flatnonzero(values)[0])
        tail = values[start:]
        assert np.allclose(tail[1:] / tail[:-1], np.exp(-1 / 10.0))  # exponential decay, left to right
    assert not streaked[np.setdiff1d(np.arange(32), rows)].any()  # other rows untouched

    flickered = d.charging(np.full((64, 48), 0.5), rng(5), amplitude=0.0, decay=10.0, flicker=0.05)
    assert np.allclose(flickered.std(axis=1), 0.0)  # one gain per row
    assert flickered[:, 0].std() == pytest.approx(0.5 * 0.05, rel=0.3)


def test_row_offsets_are_constant_along_each_row():
    noisy = d.poisson_gaussian(np.full((64, 48), 0.5), rng(6), 1e12, read_sigma=0.0, row_offset=0.02)
    offsets = noisy[:, 0] - 0.5
    assert np.allclose(noisy - 0.5, offsets[:, None], atol=1e-5)
    assert np.abs(offsets).max() <= 0.02 + 1e-5 and offsets.std() > 0.005


def test_gamma_and_shading():
    image = np.full((48, 48), 0.5)
    assert np.allclose(d.contrast(image, 1.0, 0.0, 2.0), 0.25)  # gamma acts before gain and offset
    shading = d.smooth_shading((48, 48), rng(7), strength=0.1)
    assert 0.9 - 1e-9 <= shading.min() and shading.max() <= 1.1 + 1e-9 and shading.std() > 0
    assert np.abs(np.diff(shading, axis=0)).max() < 0.02  # smooth: no step between neighbours
    assert np.allclose(d.contrast(image, 1.0, 0.0, 1.0, shading), 0.5 * shading)


def test_defocus_replaces_the_probe_blur_when_drawn():
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(rng(8).random((64, 64)), 1.0)
    config = _geometry_only("area", p_blur=1.0, p_defocus=1.0, defocus_sigma=2.5)
    degraded, _, hr = d.degrade(smooth, rng(0), config)
    expected = d.area_downsample(d.probe_blur(hr, 2.5))
    assert np.abs(degraded - expected).max() <= 0.5 / 255 + 1e-6  # up to the quantisation


def test_quantisation_at_16_bits_and_without_clipping():
    image = np.linspace(-0.1, 1.1, 1000)
    q16 = d.quantise(image, 16, clip=True)
    assert np.allclose(q16 * 65535, np.round(q16 * 65535))
    assert q16.min() == 0.0 and q16.max() == 1.0
    free = d.quantise(image, 8, clip=False)  # a detector that does not saturate keeps the excursions
    assert free.min() < -0.09 and free.max() > 1.09
    inside = (image >= 0) & (image <= 1)
    assert np.abs(free - image)[inside].max() <= 0.5 / 255 + 1e-12
