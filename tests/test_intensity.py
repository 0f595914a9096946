import numpy as np

from napari_etdms.intensity import IntensityMap


def test_smoothed_fit_finds_the_signal_range_under_heavy_shot_noise():
    rng = np.random.default_rng(0)
    clean = np.tile(np.linspace(0.2, 0.8, 256), (256, 1))  # clean range 0.2..0.8
    electrons = 5.0
    noisy = rng.poisson(clean * electrons) / electrons
    raw, smoothed = IntensityMap.fit(noisy), IntensityMap.fit(noisy, smoothing=2.0)
    assert raw.high - raw.low >= 3 * 0.6  # the noise stretches the raw percentiles three times wider
    assert smoothed.low < 0.2 < 0.8 < smoothed.high < 1.0
    assert smoothed.high - smoothed.low < 1.4 * 0.6
    # no smoothing leaves a clean frame's fit as it was
    assert IntensityMap.fit(clean) == IntensityMap(*np.percentile(clean, (0.1, 99.9)))


def test_constant_frame_falls_back_to_its_full_range():
    flat = np.full((16, 16), 7.0)
    assert IntensityMap.fit(flat, smoothing=2.0).is_degenerate
