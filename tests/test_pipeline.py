import threading

import numpy as np
import pytest
from conftest import TINY, sem_like

from napari_etdms import Cancelled, InputError
from napari_etdms.engine.pipeline import Pipeline, estimate_memory_bytes
from napari_etdms.evaluation.metrics import consistency_psnr

FAST = dict(sampler="ddim", steps=3, tile=32, overlap=8)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64, np.int16])
def test_any_dtype_returns_float32_in_the_input_scale(tiny_pipeline, dtype):
    frame = sem_like((40, 36), dtype)
    before = frame.copy()
    result = tiny_pipeline.run(frame, **FAST)
    assert np.array_equal(frame, before)  # the caller's data is never modified
    assert result.denoised.shape == (40, 36) and result.denoised.dtype == np.float32
    for x4 in (result.super_resolved, result.bicubic_input, result.bicubic_denoised):
        assert x4.shape == (160, 144) and x4.dtype == np.float32
    lo, hi = np.percentile(frame, (1, 99))
    assert lo - 0.5 * (hi - lo) < np.median(result.bicubic_input) < hi + 0.5 * (hi - lo)


@pytest.mark.parametrize("shape", [(8, 8), (13, 29), (70, 33), (64, 64)])
def test_small_and_odd_frames(tiny_pipeline, shape):
    result = tiny_pipeline.run(sem_like(shape, np.uint8), **FAST)
    assert result.denoised.shape == shape
    assert result.super_resolved.shape == (4 * shape[0], 4 * shape[1])


def test_bicubic_baseline_is_an_upsampling_of_the_input(tiny_pipeline):
    frame = sem_like((32, 32), np.float32)
    result = tiny_pipeline.run(frame, denoise=False, super_resolve=False, **FAST)
    assert result.denoised is None and result.super_resolved is None
    down = result.bicubic_input.reshape(32, 4, 32, 4).mean(axis=(1, 3))
    assert np.abs(down - frame).mean() < 0.02


def test_grey_rgb_is_accepted_and_colour_rejected(tiny_pipeline):
    grey = sem_like((24, 24), np.uint8)
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])
    assert tiny_pipeline.run(rgba, super_resolve=False, **FAST).denoised.shape == (24, 24)
    colour = rgba.copy()
    colour[..., 1] = 0
    with pytest.raises(InputError, match="true-colour"):
        tiny_pipeline.run(colour, **FAST)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((4, 20, 20)), "2D frame"),
        (np.zeros((0, 10)), "empty"),
        (np.full((20, 20), 7.0), "constant"),
        (np.where(np.eye(20) > 0, np.nan, 1.0), "NaN"),
        (np.ones((20, 20), dtype=bool), "pixel type"),
        (np.ones((5, 50)), "at least 8"),
    ],
)
def test_bad_input_gets_a_clear_error(tiny_pipeline, image, message):
    with pytest.raises(InputError, match=message):
        tiny_pipeline.run(image)


def test_bad_settings(tiny_pipeline):
    frame = sem_like((32, 32))
    with pytest.raises(ValueError, match="tile"):
        tiny_pipeline.run(frame, tile=30)
    with pytest.raises(ValueError, match="overlap"):
        tiny_pipeline.run(frame, tile=32, overlap=32)
    with pytest.raises(ValueError, match="sampler"):
        tiny_pipeline.run(frame, sampler="heun")


def test_same_seed_same_output_and_seeds_differ(tiny_pipeline):
    frame = sem_like((32, 40))
    a = tiny_pipeline.run(frame, seed=3, **FAST).super_resolved
    b = tiny_pipeline.run(frame, seed=3, **FAST).super_resolved
    c = tiny_pipeline.run(frame, seed=4, **FAST).super_resolved
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_samples_give_mean_std_and_data_consistency(tiny_pipeline):
    frame = sem_like((32, 32))
    one = tiny_pipeline.run(frame, samples=1, **FAST)
    assert one.std is None and one.consistency_residual.shape == (32, 32)
    three = tiny_pipeline.run(frame, samples=3, **FAST)
    assert three.std.shape == (128, 128) and (three.std >= 0).all() and three.std.max() > 0
    draws = [tiny_pipeline.run(frame, seed=s, **FAST).super_resolved for s in range(3)]
    assert np.allclose(three.super_resolved, np.mean(draws, axis=0), atol=1e-3 * np.ptp(frame))
    assert np.allclose(three.std, np.std(draws, axis=0, ddof=1), atol=1e-3 * np.ptp(frame))
    assert np.isfinite(three.consistency_psnr)
    assert three.metadata["samples"] == 3
    # one definition of data consistency, shared with `etdms eval`
    assert three.consistency_psnr > 100  # exact up to float rounding: the projection's point
    assert three.metadata["consistency_psnr_db"] == three.consistency_psnr
    free = tiny_pipeline.run(frame, data_consistency=False, **FAST)  # not projected: a figure to compare
    assert free.consistency_psnr == pytest.approx(consistency_psnr(free.denoised, free.super_resolved), abs=0.01)
    assert free.consistency_psnr < 60


def test_a_clsr_with_the_measured_input_sees_the_stage1_output_and_the_input_frame():
    import torch

    from napari_etdms.engine.pipeline import SIGNAL_SMOOTHING
    from napari_etdms.stage1.intensity import IntensityMap

    measured = TINY.model_copy(update={"clsr": TINY.clsr.model_copy(update={"measured_input": True})})
    pipeline = Pipeline.from_config(measured, device="cpu", precision="float32")
    conditions = []
    forward = pipeline.clsr.forward
    pipeline.clsr.forward = lambda x, cond, t: (conditions.append(cond), forward(x, cond, t))[1]
    frame = sem_like((32, 32))
    result = pipeline.run(frame, sampler="ddim", steps=2, tile=32, overlap=0)
    mapping = IntensityMap.fit(frame, smoothing=SIGNAL_SMOOTHING)
    assert len(conditions) == 2 and conditions[0].shape == (1, 2, 32, 32)
    assert torch.allclose(conditions[0][0, 0], torch.from_numpy(mapping.forward(result.denoised)), atol=1e-5)
    assert torch.allclose(conditions[0][0, 1], torch.from_numpy(mapping.forward(frame)), atol=1e-6)


def test_data_consistency_is_high_for_an_oracle(oracle_pipeline):
    frame = sem_like((32, 48), np.float32)
    result = oracle_pipeline.run(frame, denoise=False, **FAST)
    assert result.consistency_psnr > 30


def test_progress_reports_every_step_and_reaches_total(tiny_pipeline):
    calls = []
    tiny_pipeline.run(sem_like((48, 48)), progress=lambda d, t, s: calls.append((d, t, s)), **FAST)
    done = [c[0] for c in calls]
    total = calls[0][1]
    # stage 1: one tile (its tiles are at least DENOISE_MIN_TILE, here the whole 48 px frame);
    # stage 2: 4 tiles (tile 32, overlap 8) at each of 3 sampling steps
    assert total == 1 + 3 * 4 and done == list(range(1, total + 1))
    assert {c[2] for c in calls} == {"denoise", "super-resolve"}


def test_cancel_stops_within_one_step_and_returns_nothing(tiny_pipeline):
    cancel = threading.Event()
    seen = []

    def progress(done, total, stage):
        seen.append(done)
        if stage == "super-resolve" and done >= 6:
            cancel.set()

    with pytest.raises(Cancelled):
        tiny_pipeline.run(sem_like((48, 48)), progress=progress, cancel=cancel, **FAST)
    assert max(seen) == 6  # not one more tile batch ran after the request


def test_provenance_metadata(tiny_pipeline):
    meta = tiny_pipeline.run(sem_like((32, 32)), seed=7, **FAST).metadata
    assert meta["software"].startswith("napari-etdms ")
    assert meta["weights"]["name"] == "random-init"
    assert meta["sampler"] == "ddim" and meta["steps"] == 3 and meta["seed"] == 7
    assert meta["tiling"]["tile"] == 32 and meta["tiling"]["overlap"] == 8
    assert set(meta["timings"]) == {"noise_estimate_s", "denoise_s", "super_resolve_s"}


def test_intensity_range_is_fitted_to_the_signal_not_the_noise(tiny_pipeline):
    rng = np.random.default_rng(1)
    clean = sem_like((64, 64), np.float32)
    noisy = (rng.poisson(clean * 4.0) / 4.0).astype(np.float32)
    meta = tiny_pipeline.run(noisy, super_resolve=False, **FAST).metadata
    fitted = meta["intensity_map"]["high"] - meta["intensity_map"]["low"]
    raw = np.subtract(*np.percentile(noisy, (99.9, 0.1)))
    signal = np.subtract(*np.percentile(clean, (99.9, 0.1)))
    assert fitted < 0.6 * raw
    assert 0.7 < fitted / signal < 1.3
    assert meta["intensity_map"]["smoothing_sigma_px"] > 0


def test_tile_batch_defaults_to_the_device_s_fastest_and_is_recorded(tiny_pipeline):
    frame = sem_like((64, 64))
    assert tiny_pipeline.auto_batch_size == 1  # CPU
    assert tiny_pipeline.run(frame, **FAST).metadata["tiling"]["batch_size"] == 1
    tiny_pipeline.auto_batch_size = 4
    auto = tiny_pipeline.run(frame, **FAST)
    assert auto.metadata["tiling"]["batch_size"] == 4
    explicit = tiny_pipeline.run(frame, batch_size=1, **FAST)
    assert explicit.metadata["tiling"]["batch_size"] == 1
    assert np.allclose(auto.super_resolved, explicit.super_resolved, atol=1e-4 * np.ptp(frame))


def test_huge_frames_are_refused_before_allocating(tiny_pipeline, monkeypatch):
    import napari_etdms.engine.pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "available_memory_bytes", lambda: 2**30)
    with pytest.raises(MemoryError, match="process a region, or denoise only"):
        tiny_pipeline.run(np.random.default_rng(0).integers(0, 255, (4000, 4000), dtype=np.uint8))
    # the bicubic x4 outputs alone are 2 x 0.96 GiB; on disk only the low-res frames stay
    assert estimate_memory_bytes(4000, 4000, False) > 2**30 > estimate_memory_bytes(4000, 4000, True,
                                                                                    x4_in_memory=False)


def test_bfloat16_autocast_stays_close_to_float32(tiny_weights):
    from napari_etdms import Pipeline

    frame = sem_like((32, 32))
    f32 = Pipeline.from_pretrained(tiny_weights.folder, device="cpu", precision="float32").run(frame, **FAST)
    bf16 = Pipeline.from_pretrained(tiny_weights.folder, device="cpu", precision="bfloat16").run(frame, **FAST)
    span = np.ptp(frame)
    assert np.abs(f32.denoised - bf16.denoised).mean() < 0.02 * span
    assert np.abs(f32.super_resolved - bf16.super_resolved).mean() < 0.05 * span


def test_shipped_weights_agree_across_precisions_within_the_spread_of_seeds():
    """bfloat16 and float32 runs of the same seed differ less than two float32 seeds do: the
    automatic precision can change with the processor without changing what a user sees."""
    import tifffile

    frame = tifffile.imread("tests/data/zeiss_auriga_inlens_UB19_14_databar.tif")[400:464, 300:364]
    float32 = Pipeline.from_pretrained("etdms-sem-v2", device="cpu", precision="float32")
    bfloat16 = Pipeline.from_pretrained("etdms-sem-v2", device="cpu", precision="bfloat16")
    reference = float32.run(frame, seed=0)
    rounded = bfloat16.run(frame, seed=0)
    other_seed = float32.run(frame, seed=1)

    def rms(a, b):
        return float(np.sqrt(np.mean((a.astype(np.float64) - b) ** 2)))

    assert rms(reference.super_resolved, rounded.super_resolved) < 0.5 * rms(reference.super_resolved,
                                                                             other_seed.super_resolved)
    assert rms(reference.denoised, rounded.denoised) < 0.01 * np.ptp(frame)


def test_the_default_weights_agree_across_precisions_well_within_their_predicted_error():
    """The one-evaluation default has no seeds to compare with: bfloat16 and float32 differ
    by a small fraction of the error std the model predicts for its own output."""
    import tifffile

    frame = tifffile.imread("tests/data/zeiss_auriga_inlens_UB19_14_databar.tif")[400:464, 300:364]
    runs = [Pipeline.from_pretrained(device="cpu", precision=p).run(frame, samples=2) for p in ("float32", "bfloat16")]
    assert runs[0].metadata["stage2"] == "regression"
    difference = np.sqrt(np.mean((runs[0].super_resolved.astype(np.float64) - runs[1].super_resolved) ** 2))
    assert difference < 0.1 * float(np.sqrt(np.mean(runs[0].std.astype(np.float64) ** 2)))
    assert np.sqrt(np.mean((runs[0].denoised - runs[1].denoised.astype(np.float64)) ** 2)) < 0.01 * np.ptp(frame)


@pytest.mark.parametrize("diffusion", [{}, {"target": "residual", "target_scale": 4.0}])
def test_data_consistency_projection_makes_block_means_match(diffusion):
    scaled = TINY.diffusion.model_validate(TINY.diffusion.model_dump() | diffusion)
    config = TINY.model_copy(update={"diffusion": scaled})
    pipeline = Pipeline.from_config(config, device="cpu", precision="float32", seed=0)
    frame = sem_like((32, 32), np.float32)
    free = pipeline.run(frame, denoise=False, data_consistency=False, **FAST)
    tied = pipeline.run(frame, denoise=False, data_consistency=True, **FAST)
    assert tied.consistency_psnr > 60 > free.consistency_psnr
    assert tied.metadata["data_consistency"] is True


def test_projection_is_exact_for_area_averaging():
    import torch

    from napari_etdms.engine.bands import project_onto_low_res

    high, low = torch.randn(1, 1, 32, 40), torch.randn(1, 1, 8, 10)
    projected = project_onto_low_res(high, low)
    assert torch.allclose(torch.nn.functional.avg_pool2d(projected, 4), low, atol=1e-6)
    assert torch.allclose(project_onto_low_res(projected, low), projected, atol=1e-6)  # idempotent


def test_noise_aware_denoiser_gets_the_estimated_noise_and_a_strength(noise_aware_weights):
    from napari_etdms.stage1.noise import NoiseModel, estimate_noise

    pipe = Pipeline.from_pretrained(noise_aware_weights.folder, device="cpu", precision="float32")
    frame = sem_like((96, 80), np.uint16)
    result = pipe.run(frame, super_resolve=False, tile=32, overlap=8)
    expected = estimate_noise(frame)
    assert result.noise == expected
    assert result.metadata["noise"]["gain"] == expected.gain and result.metadata["strength"] == 1.0
    assert "Poisson-Gaussian" in result.metadata["noise"]["source"]
    # strength 0 is no denoising at all; other strengths change what the network is told
    untouched = pipe.run(frame, super_resolve=False, strength=0.0).denoised
    assert np.allclose(untouched, frame, rtol=0, atol=0.01)  # float32 round trip of the normalisation
    told = {s: pipe.run(frame, super_resolve=False, strength=s).denoised for s in (0.5, 2.0)}
    assert not np.allclose(told[0.5], told[2.0])
    given = NoiseModel(gain=0.0, offset=float(frame.std()) ** 2)
    assert pipe.run(frame, super_resolve=False, noise=given).metadata["noise"]["source"] == "given"
    with pytest.raises(ValueError, match="strength"):
        pipe.run(frame, strength=-1)


def test_strength_is_monotone_over_its_whole_range_on_flat_and_textured_frames():
    """0 is the input, higher is smoother, never speckled (v2 told a level above the truth
    scattered speckles: 19x the roughness of strength 1 at 4). Roughness: the std of a frame
    minus its 3x3 median, on flat and on textured parts of 30 e-/px frames."""
    from scipy import ndimage

    pipe = Pipeline.from_pretrained("etdms-sem-v2", device="cpu", precision="float32")
    rng = np.random.default_rng(0)
    flat_truth = np.full((96, 96), 0.25)
    textured_truth = sem_like((96, 96), np.float32, seed=3)
    for truth in (flat_truth, textured_truth):
        frame = (rng.poisson(truth * 30) / 30 + rng.normal(0, 0.01, truth.shape)).astype(np.float32)
        roughness = []
        for strength in (0.0, 0.5, 1.0, 2.0, 4.0):
            out = pipe.run(frame, super_resolve=False, strength=strength).denoised
            roughness.append(float(np.std(out - ndimage.median_filter(out, 3))))
        assert np.allclose(pipe.run(frame, super_resolve=False, strength=0.0).denoised, frame, atol=1e-5)
        assert all(later < earlier for earlier, later in zip(roughness, roughness[1:])), roughness
        speckles = np.abs(out - ndimage.median_filter(out, 3)).max()
        assert speckles < np.abs(frame - ndimage.median_filter(frame, 3)).max() / 4


def test_a_frame_too_small_for_the_noise_fit_gets_a_gaussian_estimate(noise_aware_weights):
    pipe = Pipeline.from_pretrained(noise_aware_weights.folder, device="cpu", precision="float32")
    result = pipe.run(sem_like((40, 36), np.uint8), super_resolve=False, tile=32, overlap=8)
    assert "Gaussian only" in result.metadata["noise"]["source"] and result.noise.offset > 0


def test_stage1_is_seam_free_on_a_real_zeiss_frame_at_any_tile_size():
    """The dark cavity of a Zeiss InLens frame, contrast as users stretch it: stage-1 tiles of
    128 and 192 px must agree (>= 50 dB over the frame's 0-255 range); blending the biased
    edges of tiles once drew a 48 px grid here (41.9 dB)."""
    import tifffile

    from napari_etdms.evaluation.metrics import psnr

    frame = tifffile.imread("tests/data/zeiss_auriga_inlens_UB19_14_databar.tif")[380:676, 200:800]
    pipe = Pipeline.from_pretrained()
    runs = {t: pipe.run(frame, super_resolve=False, tile=t, overlap=16) for t in (128, 192)}
    assert [r.metadata["denoise_tiling"]["tile"] for r in runs.values()] == [128, 192]
    out = {t: r.denoised for t, r in runs.items()}
    cavity = (slice(40, 260), slice(50, 550))
    assert psnr(out[128][cavity], out[192][cavity], data_range=255) >= 50
    # and the agreement is not that of two untouched copies: the denoiser changes the frame
    # far more than the two tilings differ
    agreement = psnr(out[128], out[192], data_range=255)
    assert agreement >= 50 and psnr(out[128], frame.astype(np.float32), data_range=255) < agreement - 20


def test_zero_steps_is_an_error_not_the_default(tiny_pipeline):
    with pytest.raises(ValueError, match="steps must be at least 1"):
        tiny_pipeline.run(sem_like((32, 32)), sampler="ddim", steps=0, tile=32, overlap=8)


def test_plan_decides_the_run_before_any_compute(tiny_pipeline):
    from napari_etdms.engine.settings import RunSettings

    plan = tiny_pipeline.plan(sem_like((48, 48)), RunSettings(sampler="ddim", steps=3, tile=32, overlap=8))
    assert plan.settings.batch_size == tiny_pipeline.auto_batch_size
    assert plan.settings.data_consistency == tiny_pipeline.recommended["data_consistency"]
    assert len(plan.grid.origins) == 4 and plan.total_batches == 1 + 3 * 4
    preset = tiny_pipeline.plan(sem_like((48, 48)), RunSettings())  # the weights' sampler and steps
    assert (preset.settings.sampler, preset.settings.steps) == (tiny_pipeline.recommended["sampler"],
                                                                tiny_pipeline.recommended["steps"])
    with pytest.raises(ValueError, match="no CLSR"):
        Pipeline(tiny_pipeline.config, denoiser=tiny_pipeline.denoiser, clsr=None).plan(sem_like((48, 48)),
                                                                                         RunSettings())
