import numpy as np
import pytest

from napari_etdms.stage1.intensity import IntensityMap


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


def test_flat_frames_fall_back_to_the_full_range():
    sparse = np.zeros((256, 256))
    sparse[100, 100] = 1.0  # the percentiles are both 0; smoothing alone would give 0..0.003
    assert IntensityMap.fit(sparse, smoothing=2.0) == IntensityMap(0.0, 1.0)
    assert IntensityMap.fit(sparse) == IntensityMap(0.0, 1.0)


def test_negative_smoothing_is_refused():
    with pytest.raises(ValueError, match="smoothing"):
        IntensityMap.fit(np.ones((8, 8)), smoothing=-1.0)
