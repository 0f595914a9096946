import numpy as np
import pytest
import torch

from napari_etdms.config import ModelConfig
from napari_etdms.diffusion import NoiseSchedule
from napari_etdms.diffusion.target import upsample_condition
from napari_etdms.models import build_clsr, build_denoiser
from napari_etdms.pipeline import Pipeline
from napari_etdms.weights import write_entry

TINY = ModelConfig.model_validate(
    {
        "swinir": {"embed_dim": 8, "depths": [1], "num_heads": [2]},
        "clsr": {"inner_channels": 16, "channel_multiplier": 2},
        "diffusion": {"num_train_timesteps": 200},
    }
)


class OracleCLSR(torch.nn.Module):
    """Predicts the exact noise for x0 = bicubic(condition) of its own tile: a perfect
    but tile-local model, so any seam in the output comes from the tiling."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.schedule = NoiseSchedule(config.diffusion)

    def forward(self, x_t, cond, t):
        return self.schedule.noise_from_x0(x_t.float(), upsample_condition(cond.float()), t.long().cpu())


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Record each phase's report on the test item: napari's make_napari_viewer fixture
    reads `item.rep_call` during teardown."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def tiny_pipeline():
    return Pipeline.from_config(TINY, device="cpu", precision="float32", seed=0)


@pytest.fixture
def oracle_pipeline():
    torch.manual_seed(0)
    return Pipeline(TINY, build_denoiser(TINY), OracleCLSR(TINY), device="cpu", precision="float32")


@pytest.fixture
def tiny_weights(tmp_path):
    torch.manual_seed(0)
    states = {"denoiser": build_denoiser(TINY).state_dict(), "clsr": build_clsr(TINY).state_dict()}
    return write_entry(tmp_path / "tiny-weights", "tiny-test", TINY, states, {"sampler": "ddim", "steps": 4})


def sem_like(shape=(96, 80), dtype=np.uint16, seed=0):
    """Smooth blobs plus noise, scaled to the dtype's range."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random(shape), 4)
    field = (field - field.min()) / (field.max() - field.min())
    field = np.clip(field + rng.normal(0, 0.05, shape), 0, 1)
    if np.dtype(dtype).kind == "f":
        return field.astype(dtype)
    return (field * np.iinfo(dtype).max).astype(dtype)
