import pytest
import torch

from napari_etdms.config import DiffusionConfig
from napari_etdms.diffusion import NoiseSchedule, make_sampler


@pytest.mark.parametrize(
    "name, steps", [("ddpm", None), ("ddim", 200), ("ddim", 12), ("dpmpp", 20), ("dpmpp", 10), ("dpmpp-sde", 10)]
)
@pytest.mark.parametrize("target, scale, prediction", [("image", 1.0, "epsilon"), ("residual", 4.0, "epsilon"),
                                                       ("residual", 4.0, "v")])
def test_oracle_prediction_recovers_x0(name, steps, target, scale, prediction):
    config = DiffusionConfig(target=target, target_scale=scale, prediction=prediction)
    schedule = NoiseSchedule(config)
    # a scaled residual spans +-scale: the x0 clip must scale with it or sharp edges are cut
    x0 = (torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1) * scale
    sampler = make_sampler(name, config, steps)
    generator = torch.Generator().manual_seed(0)
    x = sampler.initial_noise(x0.shape, generator)
    for t in sampler.timesteps:
        x = sampler.step(schedule.prediction_from_x0(x, x0, torch.tensor([t])), t, x, generator)
    assert sampler.steps == (steps or 2000)
    assert torch.allclose(x, x0, atol=1e-4)


@pytest.mark.parametrize("name, eta, stochastic", [("ddim", 1.0, True), ("dpmpp-sde", 0.0, True),
                                                 ("ddim", 0.0, False), ("dpmpp", 0.0, False)])
def test_stochastic_samplers_draw_seeded_noise_at_every_step(name, eta, stochastic):
    config = DiffusionConfig(num_train_timesteps=100)
    start = torch.randn((1, 1, 4, 4), generator=torch.Generator().manual_seed(5))

    def run(step_seed):  # same start, only the per-step generator differs
        sampler = make_sampler(name, config, 10, eta=eta)
        g, x = torch.Generator().manual_seed(step_seed), start.clone()
        for t in sampler.timesteps:
            x = sampler.step(0.5 * x, t, x, g)
        return x

    assert torch.equal(run(0), run(0))
    assert torch.equal(run(0), run(1)) != stochastic


@pytest.mark.parametrize("name, steps", [("dpmpp", 1), ("dpmpp", 10), ("dpmpp-sde", 10), ("ddim", 12)])
def test_one_sampler_draws_many_chains(name, steps):
    """A second `sample` call must not resume the first chain's solver state."""
    config = DiffusionConfig(num_train_timesteps=100)

    def predict(x, t):
        return 0.5 * x

    def draw(sampler):
        return sampler.sample(predict, (1, 1, 4, 4), torch.Generator().manual_seed(3))

    reused = make_sampler(name, config, steps)
    first, second = draw(reused), draw(reused)
    assert torch.equal(first, draw(make_sampler(name, config, steps)))
    assert torch.equal(second, first)


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
@pytest.mark.parametrize("loss", ["l1", "mse"])
def test_training_loss_is_zero_for_an_oracle(prediction, loss):
    schedule = NoiseSchedule(DiffusionConfig(num_train_timesteps=50, prediction=prediction))
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    oracle = schedule.training_loss(lambda x_t, t: schedule.prediction_from_x0(x_t, x0, t), x0, loss)
    assert float(oracle) < 1e-4
    assert float(schedule.training_loss(lambda x_t, t: torch.zeros_like(x_t), x0, loss)) > 0.3


def test_v_prediction_at_the_last_step_is_minus_x0():
    """At pure noise v = alpha*eps - sigma*x0 is -x0: what lets a v model give the mean of
    x0 given the condition in one call, where an epsilon model's x0 divides by alpha ~ 3e-5."""
    config = DiffusionConfig(target="residual", target_scale=4.0, prediction="v")
    schedule = NoiseSchedule(config)
    x0 = torch.rand(1, 1, 8, 8) * 2 - 1
    last = torch.tensor([config.num_train_timesteps - 1])
    x_t = schedule.add_noise(x0, torch.randn_like(x0), last)
    assert torch.allclose(schedule.prediction_from_x0(x_t, x0, last), -x0, atol=1e-3)
    for name in ("ddim", "dpmpp"):  # one deterministic step from pure noise returns that x0
        sampler = make_sampler(name, config, 1)
        assert sampler.timesteps == [config.num_train_timesteps - 1]
        assert torch.allclose(sampler.step(-x0, sampler.timesteps[0], x_t, torch.Generator()), x0, atol=1e-3)


def test_target_scale_applies_to_the_residual_only():
    with pytest.raises(ValueError, match="residual target only"):
        DiffusionConfig(target="image", target_scale=4.0)


def test_bad_sampler_arguments():
    config = DiffusionConfig()
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler("euler", config)
    with pytest.raises(ValueError, match="steps must be between"):
        make_sampler("ddim", config, 5000)
