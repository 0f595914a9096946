import numpy as np
import pytest
import tifffile
import torch

from napari_etdms.config import ModelConfig
from napari_etdms.diffusion import NoiseSchedule
from napari_etdms.diffusion.target import upsample_condition
from napari_etdms.engine.pipeline import Pipeline
from napari_etdms.models import build_clsr, build_denoiser
from napari_etdms.training.trainer import TrainConfig
from napari_etdms.weights import load_state, write_entry

TINY = ModelConfig.model_validate(
    {
        "swinir": {"embed_dim": 8, "depths": [1], "num_heads": [2]},
        "clsr": {"inner_channels": 16, "channel_multiplier": 2},
        "diffusion": {"num_train_timesteps": 200},
    }
)


class OracleCLSR(torch.nn.Module):
    """Predicts the exact eps (or v) for x0 = bicubic(condition) of its own tile: a perfect
    but tile-local model, so any seam in the output comes from the tiling."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.schedule = NoiseSchedule(config.diffusion)

    @staticmethod
    def condition(restored, measured):
        return restored

    def forward(self, x_t, cond, t):
        return self.schedule.prediction_from_x0(x_t.float(), upsample_condition(cond.float()), t.long().cpu())


@pytest.fixture(scope="session")
def test_cache_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def private_precision_cache(test_cache_folder, monkeypatch):
    """Precision measurements made by tests go to a folder of their own (one for the session:
    a processor that needs measuring is measured once), not the user's cache."""
    monkeypatch.setenv("NAPARI_ETDMS_CACHE", str(test_cache_folder))


@pytest.fixture(autouse=True)
def torch_threads_restored():
    """Runs choose their threads from the machine's load; the next test starts as torch did."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


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


@pytest.fixture(params=["epsilon", "v"])
def oracle_pipeline(request):
    """The oracle under each network parametrization: the pipeline must turn either into x0."""
    torch.manual_seed(0)
    diffusion = TINY.diffusion.model_copy(update={"prediction": request.param})
    config = TINY.model_copy(update={"diffusion": diffusion})
    return Pipeline(config, build_denoiser(config), OracleCLSR(config), device="cpu", precision="float32")


def random_weights(folder, name: str, config: ModelConfig, preset: dict):
    """A weights folder of randomly initialised (seeded) networks of `config`."""
    torch.manual_seed(0)
    states = {"denoiser": build_denoiser(config).state_dict(), "clsr": build_clsr(config).state_dict()}
    return write_entry(folder, name, config, states, preset)


@pytest.fixture
def tiny_weights(tmp_path):
    return random_weights(tmp_path / "tiny-weights", "tiny-test", TINY, {"sampler": "ddim", "steps": 4})


TINY_NOISE_AWARE = TINY.model_copy(update={"swinir": TINY.swinir.model_copy(update={"noise_map": True})})


@pytest.fixture
def noise_aware_weights(tmp_path):
    return random_weights(tmp_path / "tiny-noise-aware", "tiny-noise-aware", TINY_NOISE_AWARE,
                          {"sampler": "ddim", "steps": 2})


TINY_REGRESSION = ModelConfig.model_validate(TINY.model_dump(mode="json") | {
    "swinir": TINY.swinir.model_dump() | {"noise_map": True},
    "clsr": TINY.clsr.model_dump() | {"measured_input": True, "uncertainty": True},
    "diffusion": TINY.diffusion.model_dump() | {"target": "residual", "target_scale": 4.0},
    "stage2": "regression",
})


@pytest.fixture
def regression_weights(tmp_path):
    """Tiny one-evaluation (regression) weights beside `tiny_weights`' folder."""
    return random_weights(tmp_path / "tiny-regression", "tiny-regression", TINY_REGRESSION,
                          {"data_consistency": False})


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


def tiny_train_config(data_dir, iterations=3):
    """A training config of the tiny models on a folder of frames, fast enough for tests."""
    stage = {"iterations": iterations, "batch_size": 2, "hr_crop": 64, "validate_every": 2, "validation_crops": 2,
             "validation_steps": 2, "checkpoint_every": 1, "precision": "float32"}
    return TrainConfig.model_validate({
        "name": "tiny-run", "model": TINY.model_dump(mode="json"),
        "data": {"inputs": [str(data_dir)], "max_target_noise": 0.2, "validation_fraction": 0.3},
        "stage1": stage, "stage2": stage, "finetune": stage,
    })


def write_frames(folder, frames: dict[str, np.ndarray]):
    """A folder of 8-bit TIFF frames (arrays on [0, 1] or uint8), a training pool."""
    folder.mkdir()
    for name, frame in frames.items():
        data = frame if frame.dtype == np.uint8 else (np.clip(frame, 0, 1) * 255).astype(np.uint8)
        tifffile.imwrite(folder / name, data)
    return folder


@pytest.fixture
def pool(tmp_path):
    frames = {f"scene{i}_detectorA.tif": sem_like((96, 96), np.uint8, seed=i) for i in range(4)}
    frames["scene0_detectorB.tif"] = sem_like((96, 96), np.uint8, seed=9)
    frames["pure_noise.tif"] = np.random.default_rng(0).integers(0, 255, (96, 96), dtype=np.uint8)
    return write_frames(tmp_path / "pool", frames)


def copy_with_preset(entry, folder, name, preset):
    """The same weights under another name and sampling preset."""
    states = {part: load_state(entry, part) for part in entry.files}
    return write_entry(folder, name, entry.config, states, preset)
