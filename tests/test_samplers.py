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
    x = sampler.sample(lambda x, t: schedule.prediction_from_x0(x, x0, torch.tensor([t])), x0.shape,
                       torch.Generator().manual_seed(0))
    assert sampler.steps == (steps or 2000)
    assert torch.allclose(x, x0, atol=1e-4)


@pytest.mark.parametrize("name, eta, stochastic", [("ddim", 1.0, True), ("dpmpp-sde", 0.0, True),
                                                 ("ddim", 0.0, False), ("dpmpp", 0.0, False)])
def test_stochastic_samplers_draw_seeded_noise_at_every_step(name, eta, stochastic):
    config = DiffusionConfig(num_train_timesteps=100)
    start = torch.randn((1, 1, 4, 4), generator=torch.Generator().manual_seed(5))

    def run(step_seed):  # same start, only the per-step noise differs
        sampler = make_sampler(name, config, 10, eta=eta)
        g, x, previous = torch.Generator().manual_seed(step_seed), start.clone(), None
        for k in range(sampler.steps):
            x0 = sampler.x0_estimate(k, 0.5 * x, x)
            x, previous = sampler.update(k, x, x0, previous, torch.randn(x.shape, generator=g)), x0
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
        assert torch.allclose(sampler.update(0, x_t, sampler.x0_estimate(0, -x0, x_t)), x0, atol=1e-3)


def test_target_scale_applies_to_the_residual_only():
    with pytest.raises(ValueError, match="residual target only"):
        DiffusionConfig(target="image", target_scale=4.0)


def test_bad_sampler_arguments():
    config = DiffusionConfig()
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler("euler", config)
    with pytest.raises(ValueError, match="steps must be between"):
        make_sampler("ddim", config, 5000)


def _diffusers_scheduler(name: str, config: DiffusionConfig):
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    common = dict(num_train_timesteps=config.num_train_timesteps, beta_start=config.beta_start,
                  beta_end=config.beta_end, beta_schedule="linear", prediction_type="sample")
    if name == "ddpm":
        return DDPMScheduler(**common, clip_sample=False, variance_type="fixed_small", timestep_spacing="trailing")
    if name == "ddim":
        return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing")
    return DPMSolverMultistepScheduler(**common, algorithm_type="sde-dpmsolver++" if name == "dpmpp-sde"
                                       else "dpmsolver++", solver_order=2, timestep_spacing="trailing",
                                       lower_order_final=True, final_sigmas_type="zero")


@pytest.mark.parametrize("name, steps, eta", [("dpmpp", 1, 0.0), ("dpmpp", 10, 0.0), ("dpmpp-sde", 10, 0.0),
                                              ("ddim", 20, 0.0), ("ddim", 20, 1.0), ("ddpm", 100, 0.0),
                                              ("ddpm", 20, 0.0)])
def test_updates_match_diffusers_schedulers(name, steps, eta):
    """Our per-pixel updates are the formulas of diffusers' schedulers: stepped side by side
    from one start with the same x0 estimates and the same noise, the chains agree."""
    config = DiffusionConfig(num_train_timesteps=100 if name == "ddpm" else 2000)
    sampler = make_sampler(name, config, steps, eta)
    reference = _diffusers_scheduler(name, config)
    reference.set_timesteps(steps)
    assert sampler.timesteps == [int(t) for t in reference.timesteps]
    x = ours = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    previous = None
    for k, t in enumerate(sampler.timesteps):
        x0 = sampler.x0_estimate(k, 0.3 * ours, ours)  # any network output will do
        # diffusers draws its noise from the generator it is given; the same seed gives ours
        kwargs = {"eta": eta} if name == "ddim" else {}
        x = reference.step(x0, t, ours, generator=torch.Generator().manual_seed(k), **kwargs).prev_sample
        noise = torch.randn(ours.shape, generator=torch.Generator().manual_seed(k))
        ours, previous = sampler.update(k, ours, x0, previous, noise), x0
        assert torch.allclose(ours, x, rtol=1e-4, atol=1e-4), f"step {k} (t={t})"


def test_every_step_count_gives_that_many_distinct_timesteps_from_pure_noise():
    """A float arange over the timesteps returns one too many for some counts (61 of 2000
    gave a last step at t = -1, the pure-noise level): every count is checked."""
    config = DiffusionConfig()
    total = config.num_train_timesteps
    for steps in range(1, total + 1):
        timesteps = make_sampler("ddim", config, steps).timesteps
        assert len(timesteps) == steps and timesteps[0] == total - 1 and timesteps[-1] >= 0
        assert all(a > b for a, b in zip(timesteps, timesteps[1:])), steps
