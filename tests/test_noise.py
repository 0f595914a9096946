"""estimate_noise: the Poisson-Gaussian model of one frame, recovered from synthetic frames.

The frames are real SEM content made clean (the EBC sample, 2 x 2 averaged and blurred, its own
noise then far below any level tested; `test_noise_free_content_*` checks that) with noise of
known parameters from `napari_etdms.simulation.degradation.poisson_gaussian`: shot variance y / electrons
(gain = 1 / electrons), read variance read_sigma^2, read noise Gaussian-correlated along the
rows, uniform per-row offsets (variance row_offset^2 / 3), and 8-bit storage (LSB^2 / 12).
"""

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

import napari_etdms
from napari_etdms.simulation.degradation import poisson_gaussian, quantise
from napari_etdms.simulation.ground_truth import load_normalised
from napari_etdms.stage1.noise import estimate_noise, estimate_noise_across_slices, slice_noise

SAMPLE = Path(napari_etdms.__file__).parent / "samples" / "nasa_ebc_032919-6_100cyc0007.png"
QUANT8 = (1 / 255) ** 2 / 12  # variance of 8-bit rounding, on the [0, 1] scale
TOLERANCE = 0.15
# a term of the model is checked on its own where it carries at least this share of the
# variance at mid-grey; a smaller one is within the estimate's noise, and only the total is
# checked (it always is)
TESTABLE_SHARE = 0.25


@pytest.fixture(scope="module")
def content() -> np.ndarray:
    frame = load_normalised(SAMPLE).astype(np.float64)
    assert frame.shape == (1024, 1024)
    return frame


@pytest.fixture(scope="module")
def clean(content) -> np.ndarray:
    """512 x 512, clean, levels spread over [0.08, 0.92] by a horizontal ramp."""
    small = ndimage.gaussian_filter(content.reshape(512, 2, 512, 2).mean(axis=(1, 3)), 1.5)
    ramp = np.linspace(0.0, 1.0, 512)[None, :]
    return np.clip(0.08 + 0.84 * (0.7 * np.clip(small, 0.0, 1.0) + 0.3 * ramp), 0.0, 1.0)


def noisy_frame(clean, electrons, read_sigma, line_correlation, row_offset, storage, seed=0):
    """The frame as stored, its scale (frame units per unit of the [0, 1] scale) and the true
    (gain, offset) on the [0, 1] scale. Storage: 'float'; 'q8': 8-bit levels, not clipped;
    'u8': uint8 0..255, clipped at black and white."""
    rng = np.random.default_rng([seed, electrons, int(read_sigma * 1e4), int(line_correlation * 10),
                                 int(row_offset * 1e4)])
    noisy = poisson_gaussian(clean, rng, electrons, read_sigma, line_correlation, row_offset)
    offset = read_sigma**2 + row_offset**2 / 3
    if storage == "float":
        return noisy, 1.0, (1 / electrons, offset)
    if storage == "q8":
        return quantise(noisy, 8, clip=False), 1.0, (1 / electrons, offset + QUANT8)
    frame = np.round(np.clip(noisy, 0.0, 1.0) * 255).astype(np.uint8)
    return frame, 255.0, (1 / electrons, offset + QUANT8)


def check_model(model, scale, truth, level=0.5):
    gain, offset = model.gain / scale, model.offset / scale**2
    true_gain, true_offset = truth
    true_var = true_gain * level + true_offset
    std_ratio = np.sqrt(max(gain * level + offset, 0.0) / true_var)
    assert std_ratio == pytest.approx(1.0, rel=TOLERANCE), f"std at mid-grey x{std_ratio:.3f}"
    gain_share = true_gain * level / true_var
    if gain_share >= TESTABLE_SHARE:
        assert gain == pytest.approx(true_gain, rel=TOLERANCE)
    if 1.0 - gain_share >= TESTABLE_SHARE:
        assert offset == pytest.approx(true_offset, rel=TOLERANCE)


# (electrons at white, read sigma, line correlation (px), row offset, storage): every dose with
# every read sigma once, the other effects in turn. 8-bit storage with clipping where it leaves
# bins to fit (at 3 and 10 e-/px a tenth to a third of the frame would be clipped).
CASES = [
    (3, 0.005, 0.0, 0.0, "float"),
    (3, 0.02, 1.5, 0.02, "float"),
    (3, 0.05, 0.7, 0.0, "q8"),
    (10, 0.005, 1.5, 0.0, "q8"),
    (10, 0.02, 0.0, 0.02, "float"),
    (10, 0.05, 1.5, 0.02, "float"),
    (30, 0.005, 0.0, 0.02, "u8"),
    (30, 0.02, 1.5, 0.0, "u8"),
    (30, 0.05, 0.0, 0.0, "float"),
    (100, 0.005, 1.5, 0.02, "u8"),
    (100, 0.02, 0.0, 0.0, "float"),
    (100, 0.05, 1.5, 0.0, "u8"),
    (300, 0.005, 0.0, 0.0, "u8"),
    (300, 0.02, 1.5, 0.02, "float"),
    (300, 0.05, 0.0, 0.02, "u8"),
    (1000, 0.005, 1.5, 0.0, "float"),
    (1000, 0.02, 0.0, 0.02, "u8"),
    (1000, 0.05, 1.5, 0.02, "u8"),
]


@pytest.mark.parametrize(("electrons", "read_sigma", "line_correlation", "row_offset", "storage"), CASES)
def test_recovers_gain_and_offset(clean, electrons, read_sigma, line_correlation, row_offset, storage):
    frame, scale, truth = noisy_frame(clean, electrons, read_sigma, line_correlation, row_offset, storage)
    check_model(estimate_noise(frame), scale, truth)


@pytest.mark.parametrize(("electrons", "read_sigma"), [(30, 0.02), (100, 0.02), (1000, 0.03)])
def test_clipping_at_black_and_white_is_left_out(clean, electrons, read_sigma):
    stretched = np.clip(1.3 * clean - 0.12, 0.0, 1.0)  # the bright phase saturates, pores go black
    frame, scale, truth = noisy_frame(stretched, electrons, read_sigma, 0.7, 0.0, "u8")
    assert np.mean(frame == 255) > 0.02 and np.mean(frame == 0) > 0.0005
    check_model(estimate_noise(frame), scale, truth)


def test_noise_free_content_gives_no_noise(clean):
    model = estimate_noise(clean)
    assert model.std_at(0.5) < 0.002
    assert model.gain < 1e-4
    # stored as 8 bits, still noise free (flat areas round to a constant, so not even LSB^2/12)
    model = estimate_noise(np.round(clean * 255).astype(np.uint8))
    assert model.std_at(127.5) < 0.002 * 255


def test_noise_free_sharp_shapes_give_no_noise():
    """Texture and edges are not noise: discs with sharp edges on a ramp, no blur at all."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:400, 0:500]
    frame = 0.2 + 0.5 * xx / 499
    for _ in range(60):
        cy, cx, r = rng.uniform(0, 400), rng.uniform(0, 500), rng.uniform(3, 40)
        frame[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0.05, 0.95)
    model = estimate_noise(frame)
    assert model.std_at(0.5) < 1e-4


def test_parameters_are_in_the_frames_units(clean):
    noisy, _, _ = noisy_frame(clean, 100, 0.02, 1.0, 0.01, "float")
    frame01 = np.clip(noisy, 0.0, 1.0)
    frame16 = np.round(frame01 * 65535).astype(np.uint16)
    unit, wide = estimate_noise(frame01), estimate_noise(frame16)
    assert wide.gain == pytest.approx(unit.gain * 65535, rel=0.02)
    assert wide.offset == pytest.approx(unit.offset * 65535**2, rel=0.02)
    assert wide.row_offset_std == pytest.approx(unit.row_offset_std * 65535, rel=0.02)
    assert wide.row_correlation == pytest.approx(unit.row_correlation, abs=0.02)
    check_model(wide, 65535.0, (1 / 100, 0.02**2 + 0.01**2 / 3))


def lag1_correlation(sigma: float) -> float:
    """Correlation of neighbours in white noise filtered as poisson_gaussian does."""
    delta = np.zeros(101)
    delta[50] = 1.0
    kernel = ndimage.gaussian_filter1d(delta, sigma)
    return float(np.dot(kernel[:-1], kernel[1:]) / np.dot(kernel, kernel))


def test_row_correlation(clean):
    electrons, read_sigma = 1000, 0.03  # read noise 2/3 of the variance at mid-grey
    white = estimate_noise(noisy_frame(clean, electrons, read_sigma, 0.0, 0.0, "float")[0])
    correlated = estimate_noise(noisy_frame(clean, electrons, read_sigma, 1.5, 0.0, "float")[0])
    assert abs(white.row_correlation) < 0.05
    assert correlated.row_correlation > white.row_correlation + 0.3
    # only the read noise is correlated: rho = rho_read * read var / total var, at the frame's level
    level = float(clean.mean())
    expected = lag1_correlation(1.5) * read_sigma**2 / (level / electrons + read_sigma**2)
    assert correlated.row_correlation == pytest.approx(expected, abs=0.1)
    # row offsets are measured apart: they do not count as correlation along the row
    with_rows = estimate_noise(noisy_frame(clean, electrons, read_sigma, 0.0, 0.03, "float")[0])
    assert abs(with_rows.row_correlation) < 0.05


def dense_vertical_wires(shape, seed, tilt_degrees=2.0):
    """Noise-free nanowires: bright lines 1.5-5 px wide, every ~10 px, nearly vertical (dense
    detail along every scan line, none across rows), slightly blurred, on a dark background."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    frame = np.full(shape, 0.15)
    for _ in range(shape[1] // 10):
        centre, width = rng.uniform(0, shape[1]), rng.uniform(1.5, 5)
        slope = np.tan(np.deg2rad(rng.uniform(-tilt_degrees, tilt_degrees)))
        distance = np.abs(columns - (centre + slope * rows))
        frame = np.maximum(frame, rng.uniform(0.5, 1.0) * np.clip(1 - distance / width, 0, 1) ** 0.5)
    return ndimage.gaussian_filter(frame, 0.7)


@pytest.mark.parametrize("electrons", [30, 1000])
@pytest.mark.parametrize("shape", [(64, 64), (172, 256)])
def test_dense_vertical_structures_are_not_taken_for_correlated_noise(electrons, shape):
    """White noise over nanowires along the columns: every scan line crosses their edges, so
    differences along a row are mostly signal; the correlation is measured without them."""
    for seed in range(3):
        clean = dense_vertical_wires(shape, seed)
        rng = np.random.default_rng(seed + 10)
        frame = rng.poisson(clean * electrons) / electrons + rng.normal(0, 0.01, shape)
        model = estimate_noise(frame)
        assert abs(model.row_correlation) < 0.12
        truth = np.sqrt(0.5 / electrons + 0.01**2)
        assert model.std_at(0.5) == pytest.approx(truth, rel=0.25)


@pytest.mark.parametrize("row_offset", [0.0, 0.01, 0.03])
def test_row_offsets(clean, row_offset):
    frame, scale, truth = noisy_frame(clean, 100, 0.02, 1.0, row_offset, "float")
    model = estimate_noise(frame)
    if row_offset:
        assert model.row_offset_std == pytest.approx(row_offset / np.sqrt(3), rel=0.2)
    else:
        assert model.row_offset_std < 0.002
    check_model(model, scale, truth)  # the offset holds the rows' variance too


def test_leaves_the_input_alone_and_checks_it(clean):
    frame, _, _ = noisy_frame(clean, 30, 0.02, 0.0, 0.0, "u8")
    before = frame.copy()
    estimate_noise(frame)
    assert np.array_equal(frame, before)
    floating = clean.astype(np.float32)
    before = floating.copy()
    estimate_noise(floating)
    assert np.array_equal(floating, before)
    assert estimate_noise(np.full((64, 64), 7, np.uint8)).std_at(7) == 0.0
    with pytest.raises(ValueError):
        estimate_noise(np.zeros((4, 64, 64)))


def test_a_full_frame_is_estimated_right(content):
    """1024 x 768, 8-bit (its time is in benchmarks/bench_default_preset.py, not here)."""
    ramp = np.linspace(0.0, 1.0, 1024)[None, :]
    smooth = np.clip(ndimage.gaussian_filter(content, 1.5)[:768], 0.0, 1.0)
    clean = 0.08 + 0.84 * (0.7 * smooth + 0.3 * ramp)
    frame, scale, truth = noisy_frame(clean, 100, 0.02, 1.0, 0.01, "u8")
    assert frame.shape == (768, 1024)
    model = estimate_noise(frame)
    check_model(model, scale, truth)


def test_the_noise_is_described_in_a_microscopist_s_terms():
    from napari_etdms.stage1.noise import NoiseModel

    shot = NoiseModel(gain=255 / 30, offset=(0.01 * 255) ** 2, row_correlation=0.3)
    assert shot.describe(0, 255).startswith("~30 e-/px at white, std 13 % of the range at mid-grey")
    assert "row correlation 0.30" in shot.describe(0, 255)
    read_only = NoiseModel(gain=1e-5, offset=0.009)  # a dose with no meaning: shot noise is 0.05 % of it
    assert read_only.describe(0, 1).startswith("mostly signal-independent noise, std 9.5 %")
    assert NoiseModel(0.0, 0.0).describe(0, 1).startswith("no noise found")


def test_large_frames_are_measured_on_a_bounded_central_window():
    from napari_etdms.stage1.noise import NOISE_SAMPLE_PIXELS, frame_noise, noise_sample

    rng = np.random.default_rng(0)
    small = rng.normal(100, 5, (64, 64))
    assert noise_sample(small) is small
    wide = np.zeros((3000, 5000))
    sample = noise_sample(wide)
    assert sample.size <= NOISE_SAMPLE_PIXELS and sample.shape == (2048, 2048) and np.shares_memory(sample, wide)
    tall = np.zeros((9000, 1000))
    assert noise_sample(tall).shape == (4194, 1000)  # whole rows where they fit
    frame = rng.normal(100, 5, (2100, 2100))  # white noise of std 5: the window measures it
    model, source = frame_noise(frame)
    assert "on the central 2048x2048 px" in source
    assert model.gain * 100 + model.offset == pytest.approx(25, rel=0.05)


def _textured_volume(slices=5, side=192, seed=0):
    """Particles with sharp edges and fine texture, changing smoothly along z."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal((slices + 24, side, side)), sigma=(6, 1.5, 1.5))[12:-12]
    texture = ndimage.gaussian_filter(rng.standard_normal(field.shape), sigma=(3, 0.7, 0.7))
    return np.clip(0.2 + 0.6 / (1 + np.exp(-6 * field / field.std())) + 0.3 * texture, 0, 1)


@pytest.mark.parametrize("dose", [30.0, 300.0])
def test_across_slices_the_noise_is_found_where_texture_fools_the_single_frame_fit(dose):
    clean = _textured_volume()
    rng = np.random.default_rng(1)
    noisy = rng.poisson(clean * dose) / dose
    level = float(np.median(noisy[2]))
    true_std = np.sqrt(level / dose)
    single = estimate_noise(noisy[2])
    assert single.std_at(level) > 1.15 * true_std  # the texture reads as noise in one slice
    model, how = slice_noise(noisy[1], noisy[2], noisy[3])
    assert "across slices" in how
    assert model.std_at(level) == pytest.approx(true_std, rel=0.1)


def test_on_smooth_content_both_fits_agree_and_the_single_frame_one_is_kept():
    rng = np.random.default_rng(2)
    y, x = np.mgrid[0:192, 0:192] / 192
    clean = np.stack([0.3 + 0.4 * np.sin(3 * x + 0.05 * z) * np.cos(2 * y) for z in range(3)])
    noisy = clean + rng.normal(0, 0.02, clean.shape)
    across = estimate_noise_across_slices(*noisy)
    assert across.std_at(0.3) == pytest.approx(0.02, rel=0.1)
    model, how = slice_noise(*noisy)
    assert model.std_at(0.3) == pytest.approx(0.02, rel=0.1)
