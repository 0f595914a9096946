"""Stage 2 as one regression per tile (v3): the posterior mean and its error's std."""

import numpy as np
import pytest
import torch
from conftest import TINY, TINY_REGRESSION, sem_like, tiny_train_config

from napari_etdms.config import ConfigError, model_config
from napari_etdms.diffusion.target import upsample_condition
from napari_etdms.engine.pipeline import SIGNAL_SMOOTHING, Pipeline
from napari_etdms.evaluation.metrics import uncertainty_calibration
from napari_etdms.models import build_clsr
from napari_etdms.models.clsr import RELIABILITY_STEPS, reliability_step
from napari_etdms.stage1.intensity import IntensityMap
from napari_etdms.training.trainer import StageTrainer, TrainConfig, export
from napari_etdms.weights import resolve

REGRESSION = TINY_REGRESSION


def regression_pipeline(variance: float | None = None) -> Pipeline:
    """A tiny regression pipeline whose CLSR is grown from a diffusion one (mean residual 0) and,
    with `variance`, predicts that error variance (target units) everywhere."""
    pipeline = Pipeline.from_config(REGRESSION, device="cpu", precision="float32", seed=0)
    diffusion_clsr = build_clsr(TINY.model_copy(update={"clsr": TINY.clsr.model_copy(update={"measured_input": True})}))
    pipeline.clsr.grow_from(diffusion_clsr.state_dict())
    if variance is not None:
        with torch.no_grad():
            pipeline.clsr.log_variance_out.bias.fill_(float(np.log(variance)))
    return pipeline


def test_regression_needs_a_residual_target_an_uncertainty_output_and_a_noise_aware_stage1():
    for part, change in (("diffusion", {"target": "image", "target_scale": 1.0}), ("clsr", {"uncertainty": False}),
                         ("swinir", {"noise_map": False})):
        data = REGRESSION.model_dump(mode="json")
        data[part] |= change
        with pytest.raises(ConfigError, match="regression"):
            model_config(data)


def test_reliability_step_is_zero_for_a_clean_condition_and_rises_with_the_noise():
    levels = torch.tensor([0.0, 0.001, 0.01, 0.05, 0.5, 5.0])
    steps = reliability_step(levels)
    assert steps[0] == 0 and (steps.diff() > 0).all() and steps[-1] < RELIABILITY_STEPS


def test_a_regression_clsr_grown_from_a_diffusion_one_starts_as_the_bicubic_of_its_condition():
    pipeline = regression_pipeline()
    frame = sem_like((40, 48))
    result = pipeline.run(frame, data_consistency=False, tile=32, overlap=8)
    mapping = IntensityMap.fit(frame, smoothing=SIGNAL_SMOOTHING)
    expected = upsample_condition(torch.from_numpy(mapping.forward(result.denoised))[None, None])[0, 0].numpy()
    assert np.allclose(mapping.forward(result.super_resolved), expected, atol=1e-5)
    assert np.allclose(result.super_resolved, result.bicubic_denoised, atol=1e-4 * np.ptp(frame))


def test_one_network_evaluation_per_tile_whatever_the_samples():
    pipeline = regression_pipeline()
    steps = []
    forward = pipeline.clsr.forward
    pipeline.clsr.forward = lambda x, cond, t: (steps.append(t), forward(x, cond, t))[1]
    frame = sem_like((64, 64))
    plan = pipeline.plan(frame, pipeline_settings(samples=4, tile=32, overlap=8))
    pipeline.run(frame, samples=4, tile=32, overlap=8)
    assert len(steps) == len(plan.grid.origins) == 9
    assert plan.total_batches == len(plan.denoise_grid.origins) + len(plan.grid.origins)
    assert len({float(t[0]) for t in steps}) == 1  # one reliability for the frame


def pipeline_settings(**changes):
    from napari_etdms.engine.settings import RunSettings

    return RunSettings(**changes)


def test_the_reliability_follows_the_frame_s_noise():
    pipeline = regression_pipeline()
    told = []
    forward = pipeline.clsr.forward
    pipeline.clsr.forward = lambda x, cond, t: (told.append(float(t[0])), forward(x, cond, t))[1]
    clean = sem_like((64, 64), np.float32, seed=1)
    from scipy import ndimage
    clean = ndimage.gaussian_filter(clean, 2)
    noisy = clean + np.random.default_rng(0).normal(0, 0.1, clean.shape).astype(np.float32)
    pipeline.run(clean, tile=64, overlap=0)
    pipeline.run(noisy, tile=64, overlap=0)
    assert told[0] < told[1]


def test_samples_give_the_predicted_std_in_input_units():
    variance = 0.04  # target units: std 0.2 / target_scale 4 = 0.05 on the [-1, 1] scale
    pipeline = regression_pipeline(variance)
    frame = sem_like((32, 40))
    result = pipeline.run(frame, samples=2, tile=32, overlap=8)
    mapping = IntensityMap.fit(frame, smoothing=SIGNAL_SMOOTHING)
    assert result.std.shape == (128, 160)
    assert np.allclose(result.std, mapping.scale(np.full((1,), 0.05))[0], rtol=1e-4)
    assert "predicted" in result.metadata["uncertainty"] and result.metadata["stage2"] == "regression"
    assert pipeline.run(frame, samples=1, tile=32, overlap=8).std is None


def test_data_consistency_is_weighted_by_how_far_the_condition_can_be_trusted():
    from napari_etdms.engine.bands import CONSISTENCY_LEVEL, consistency_weight
    from napari_etdms.engine.pipeline import condition_level
    from napari_etdms.stage1.noise import NoiseModel

    pipeline = regression_pipeline()
    with torch.no_grad():  # a mean residual that is not block-consistent
        pipeline.clsr.conv_out.bias.fill_(0.3)
    frame = sem_like((32, 32))
    scale = float(np.ptp(frame))
    run = lambda noise, consistency: pipeline.run(frame, data_consistency=consistency, noise=noise,  # noqa: E731
                                                  tile=32, overlap=0)
    noise_free = NoiseModel(0.0, 0.0)
    half = NoiseModel(0.0, (CONSISTENCY_LEVEL / 2 * scale) ** 2)  # about CONSISTENCY_LEVEL once stabilised
    free = run(noise_free, False)
    full = run(noise_free, True)
    halfway = run(half, True)
    assert full.consistency_psnr > 100 > 40 > free.consistency_psnr
    assert full.metadata["data_consistency_weight"] == pytest.approx(1.0)
    mapping = halfway.metadata["intensity_map"]
    weight = consistency_weight(condition_level(half.rescaled(mapping["low"], mapping["high"])))
    assert 0.1 < weight < 0.9 and halfway.metadata["data_consistency_weight"] == pytest.approx(weight)
    gap = np.abs(run(half, False).consistency_residual).mean()  # the projection moves block means linearly
    assert np.abs(halfway.consistency_residual).mean() == pytest.approx((1 - weight) * gap, rel=0.02)
    assert free.metadata["data_consistency_weight"] is None


def test_a_strength_below_1_tells_stage_2_the_frame_is_cleaner_too():
    """Strength scales the level both stages are told (up to 1): at 0 the frame counts as
    noise-free, so data consistency is full; --no-denoise leaves stage 2 the estimate."""
    from napari_etdms.engine.pipeline import condition_level
    from napari_etdms.engine.settings import RunSettings
    from napari_etdms.stage1.noise import NoiseModel

    noise = NoiseModel(0.01, 0.001)
    estimated = condition_level(noise)
    assert estimated > 0
    assert condition_level(noise, RunSettings(strength=0.5)) == pytest.approx(0.5 * estimated)
    assert condition_level(noise, RunSettings(strength=3.0)) == pytest.approx(estimated)
    assert condition_level(noise, RunSettings(strength=0.5, denoise=False)) == pytest.approx(estimated)
    pipeline = regression_pipeline()
    frame = sem_like((32, 32))
    noisy = NoiseModel(0.0, (0.05 * float(np.ptp(frame))) ** 2)
    weights = [pipeline.run(frame, noise=noisy, strength=s, tile=32, overlap=0).metadata["data_consistency_weight"]
               for s in (1.0, 0.5, 0.0)]
    assert weights[0] < weights[1] < weights[2] == pytest.approx(1.0)


def test_sampler_and_steps_are_refused_with_the_reason():
    pipeline = regression_pipeline()
    for settings in ({"sampler": "ddim"}, {"steps": 6}):
        with pytest.raises(ValueError, match="one network evaluation"):
            pipeline.run(sem_like((32, 32)), **settings)
    assert pipeline.run(sem_like((32, 32)), super_resolve=False, steps=6).super_resolved is None


def test_uncertainty_calibration_measures_scale_and_ranking_after_matching():
    rng = np.random.default_rng(0)
    truth = rng.random((64, 64))
    std = rng.uniform(0.005, 0.05, truth.shape)  # small beside the signal: matching barely shrinks the estimate
    estimate = truth + std * rng.standard_normal(truth.shape)
    lo, hi = np.percentile(truth, (0.1, 99.9))  # matching maps the truth to [0, 1] by these
    honest = uncertainty_calibration(truth, 3.0 * estimate + 7.0, 3.0 * std)  # units do not matter
    assert honest["std_over_rms_error"] == pytest.approx(1.0 / (hi - lo), rel=0.05)
    assert honest["std_error_rank_correlation"] > 0.4
    overconfident = uncertainty_calibration(truth, estimate, 0.1 * std)
    assert overconfident["std_over_rms_error"] == pytest.approx(0.1 * honest["std_over_rms_error"], rel=0.01)
    blind = uncertainty_calibration(truth, estimate, rng.permutation(std.ravel()).reshape(std.shape))
    assert abs(blind["std_error_rank_correlation"]) < 0.05


def test_training_a_regression_stage2_logs_calibration_and_exports(pool, tmp_path):
    base = tiny_train_config(pool, iterations=2)
    run = tmp_path / "run"
    stage1 = StageTrainer(TrainConfig.model_validate(base.model_dump() | {"model": REGRESSION.model_dump()} | {
        "finetune": base.finetune.model_dump() | {"grow_from": str(tmp_path / "clsr.pt"),
                                                  "residual_over": "condition"}}), "stage1", run)
    stage1.train(show_progress=False)
    diffusion = TINY.model_copy(update={"clsr": TINY.clsr.model_copy(update={"measured_input": True})})
    torch.save(build_clsr(diffusion).state_dict(), tmp_path / "clsr.pt")
    config = stage1.config
    with pytest.raises(ValueError, match="fine-tune"):
        StageTrainer(config, "stage2", run)
    trainer = StageTrainer(config, "finetune", run)
    assert trainer.train(show_progress=False) == 2
    log = [__import__("json").loads(line) for line in (run / "finetune" / "log.jsonl").read_text().splitlines()]
    validation = [rec["validation"] for rec in log if "validation" in rec][-1]
    assert validation["std_over_rms_error"] > 0 and -1 <= validation["std_error_rank_correlation"] <= 1
    assert validation["psnr_bicubic"] > 0
    entry = export(run, config, tmp_path / "weights")
    loaded = Pipeline.from_pretrained(entry.folder, device="cpu", precision="float32")
    assert loaded.one_evaluation
    assert loaded.run(sem_like((32, 32)), tile=32, overlap=0, samples=2).std is not None
    assert resolve(entry.folder).config.stage2 == "regression"


def test_regression_without_a_grown_start_is_refused(pool):
    base = tiny_train_config(pool)
    with pytest.raises(Exception, match="grow_from"):
        TrainConfig.model_validate(base.model_dump() | {"model": REGRESSION.model_dump()})
