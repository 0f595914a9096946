import numpy as np
import pytest
import torch
from conftest import TINY
from torch.utils.flop_counter import FlopCounterMode

from napari_etdms.config import PRESETS
from napari_etdms.models import CLSR, build_clsr, build_denoiser, parameter_count


def test_paper_clsr_matches_published_size_and_compute():
    model = build_clsr(PRESETS["paper"]).eval()
    assert parameter_count(model) / 1e6 == pytest.approx(11.59, abs=0.005)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 1, 256, 256), torch.randn(1, 1, 64, 64), torch.tensor([10]))
    multiply_adds = counter.get_total_flops() / 2
    assert multiply_adds / 1e9 == pytest.approx(56.7, rel=0.003)


def test_paper_swinir_size():
    assert parameter_count(build_denoiser(PRESETS["paper"])) / 1e6 == pytest.approx(11.5, abs=0.05)


def test_lite_models_are_much_smaller_than_paper():
    lite, paper = PRESETS["lite"], PRESETS["paper"]
    assert parameter_count(build_clsr(lite)) < parameter_count(build_clsr(paper)) / 5
    assert parameter_count(build_denoiser(lite)) < parameter_count(build_denoiser(paper)) / 20


@pytest.mark.parametrize("shape", [(64, 64), (37, 53), (8, 120)])
def test_denoiser_keeps_any_frame_size(shape):
    model = build_denoiser(TINY).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, *shape))
    assert out.shape == (2, 1, *shape)


def test_denoiser_is_a_global_residual_at_init_scale():
    model = build_denoiser(TINY).eval()
    torch.nn.init.zeros_(model.conv_last.weight)
    torch.nn.init.zeros_(model.conv_last.bias)
    x = torch.randn(1, 1, 24, 24)
    with torch.no_grad():
        assert torch.equal(model(x), x)


def test_clsr_output_and_shape_checks():
    model = build_clsr(TINY).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 64, 96), torch.randn(2, 1, 16, 24), torch.tensor([1, 150]))
    assert out.shape == (2, 1, 64, 96)
    with pytest.raises(ValueError, match="divisible by 4"):
        model(torch.randn(1, 1, 72, 72), torch.randn(1, 1, 18, 18), torch.tensor([1]))
    with pytest.raises(ValueError, match="4x the low-res"):
        model(torch.randn(1, 1, 64, 64), torch.randn(1, 1, 32, 32), torch.tensor([1]))


MEASURED = TINY.model_copy(update={"clsr": TINY.clsr.model_copy(update={"measured_input": True})})


def test_clsr_with_the_measured_input_grows_from_one_without_it_then_learns_to_use_it():
    torch.manual_seed(0)
    plain, grown = build_clsr(TINY).eval(), build_clsr(MEASURED).eval()
    grown.grow_from(plain.state_dict())
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([3, 90])
    restored, measured = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    condition = grown.condition(restored, measured)
    assert torch.equal(condition[:, 1:], measured) and plain.condition(restored, measured) is restored
    assert torch.allclose(grown(x, condition, t), plain(x, restored, t), atol=1e-6)  # starts as the same function
    grown(x, condition, t).square().mean().backward()
    assert grown.measured_in.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="2 channel"):
        grown(x, restored, t)
    with pytest.raises(ValueError, match="1 channel"):
        plain(x, condition, t)
    with pytest.raises(ValueError, match="does not fit this CLSR"):
        plain.grow_from(grown.state_dict())  # a branch with no place here
    with pytest.raises(ValueError, match="does not fit this CLSR"):
        build_clsr(MEASURED).grow_from({k: v for k, v in plain.state_dict().items() if k != "conv_out.bias"})


def test_clsr_shares_encoder_weights_between_branches():
    model = build_clsr(TINY)
    names = [n for n, _ in model.named_modules()]
    # one encoder (no separate condition encoder), two fusions, two cross-attentions
    assert sum(n in ("conv_in", "enc0", "enc1") for n in names) == 3
    assert {"fuse0", "fuse1", "attn.0", "attn.1"} <= set(names)
    assert isinstance(model, CLSR)


def _deeper(groups: int, embed_dim: int = 8):
    swinir = {"embed_dim": embed_dim, "depths": [1] * groups, "num_heads": [2] * groups}
    return build_denoiser(TINY.model_copy(update={"swinir": TINY.swinir.model_validate(swinir)}))


def test_a_denoiser_grows_deeper_computing_the_same_then_learns():
    torch.manual_seed(0)
    small, grown = build_denoiser(TINY), _deeper(3)
    for p in small.parameters():  # a "trained" network: nothing at its init values
        p.data.add_(0.05 * torch.randn_like(p))
    grown.grow_from(small.state_dict())
    x = torch.randn(2, 1, 24, 24)
    assert parameter_count(grown) > parameter_count(small)
    assert torch.allclose(grown(x), small(x), atol=1e-6)
    grown(x).square().mean().backward()  # the new groups learn: their closing conv gets a gradient
    assert grown.groups[2].conv.weight.grad.abs().sum() > 0


def test_growing_refuses_another_width():
    with pytest.raises(ValueError, match="only the number of groups may grow"):
        _deeper(2, embed_dim=16).grow_from(build_denoiser(TINY).state_dict())
    with pytest.raises(ValueError, match="no place in this network"):
        build_denoiser(TINY).grow_from(_deeper(2).state_dict())
    deeper_groups = TINY.swinir.model_validate({"embed_dim": 8, "depths": [2], "num_heads": [2]})
    with pytest.raises(ValueError, match="not their depth"):  # groups of more blocks: not an identity
        build_denoiser(TINY.model_copy(update={"swinir": deeper_groups})).grow_from(build_denoiser(TINY).state_dict())


def test_stabiliser_inverts_exactly_and_equalises_the_noise():
    from napari_etdms.stage1.noise import Stabiliser

    y = torch.linspace(0, 1, 101, dtype=torch.float64)
    for gain, offset in [(1 / 3, 1e-4), (1e-3, 1e-6), (0.0, 1e-4), (0.0, 0.0), (0.05, -1e-3)]:
        stab = Stabiliser(gain, offset)
        assert torch.allclose(stab.inverse(stab.forward(y)), y, atol=1e-9)
        assert torch.isclose(stab.forward(torch.tensor([0.0, 1.0], dtype=torch.float64)),
                             torch.tensor([-1.0, 1.0], dtype=torch.float64)).all()
    # Poisson-Gaussian noise becomes one standard deviation, sigma, at every level
    rng = np.random.default_rng(0)
    gain, read = 1 / 30, 0.01
    stab = Stabiliser(gain, read**2)
    spreads = []
    for level in (0.1, 0.5, 0.9):
        z = rng.poisson(level / gain, 200_000) * gain + rng.normal(0, read, 200_000)
        spreads.append(float(stab.forward(torch.from_numpy(z)).std()))
    assert np.allclose(spreads, float(stab.sigma), rtol=0.05)


def test_noise_aware_denoiser_takes_a_level_map_and_grows_from_a_blind_one():
    from napari_etdms.config import ModelConfig

    blind = ModelConfig.model_validate({"swinir": {"embed_dim": 8, "depths": [1], "num_heads": [2]}})
    aware = blind.model_copy(update={"swinir": blind.swinir.model_copy(update={"noise_map": True})})
    source, grown = build_denoiser(blind), build_denoiser(aware)
    grown.grow_from(source.state_dict())
    x = torch.randn(2, 1, 16, 16)
    # the level channel starts with zero weights: at level 1 the grown network computes what the
    # blind one did; its correction scales with the level, and a noise-free input passes through
    assert torch.allclose(grown(x, torch.ones(2, 1, 1, 1)), source(x), atol=1e-6)
    half = grown(x, torch.full((2, 1, 1, 1), 0.5))
    assert torch.allclose(half - x, 0.5 * (source(x) - x), atol=1e-6)
    assert torch.equal(grown(x, torch.zeros(2, 1, 1, 1)), x)
    with pytest.raises(ValueError, match="noise-level map"):
        grown(x)
    with pytest.raises(ValueError, match="no noise-level map"):
        source(x, torch.zeros(2, 1, 1, 1))
