"""Checks that need an NVIDIA GPU: run where one is present (the CI machine has none)."""

import numpy as np
import pytest
import torch
from conftest import sem_like, tiny_train_config

from napari_etdms import Pipeline
from napari_etdms.runtime import choose_precision, select_device
from napari_etdms.training.trainer import StageTrainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

RUN = dict(sampler="dpmpp-sde", steps=4, tile=64, overlap=16)


def test_auto_device_is_cuda_with_a_half_precision():
    device = select_device("auto")
    assert device.type == "cuda"
    assert choose_precision(device).name in ("bfloat16", "float16")
    assert Pipeline.from_pretrained(device="cuda").auto_batch_size == 8


def test_shipped_weights_on_cuda_agree_with_cpu():
    frame = sem_like((96, 128))
    gpu = Pipeline.from_pretrained(device="cuda").run(frame, **RUN)
    cpu = Pipeline.from_pretrained(device="cpu", precision="float32").run(frame, **RUN)
    span = np.ptp(frame)
    assert gpu.super_resolved.shape == cpu.super_resolved.shape == (384, 512)
    # bf16 on the GPU against fp32 on the CPU: the denoiser is deterministic, the sampler's
    # noise comes from a CPU generator on both, so only rounding separates them.
    assert np.abs(gpu.denoised - cpu.denoised).mean() < 0.02 * span
    assert np.abs(gpu.super_resolved - cpu.super_resolved).mean() < 0.05 * span


def test_same_seed_same_output_on_cuda():
    frame = sem_like((64, 64))
    pipeline = Pipeline.from_pretrained(device="cuda")
    first, second = (pipeline.run(frame, seed=3, **RUN).super_resolved for _ in range(2))
    other = pipeline.run(frame, seed=4, **RUN).super_resolved
    assert np.allclose(first, second, atol=1e-3 * np.ptp(frame))
    assert not np.allclose(first, other, atol=1e-3 * np.ptp(frame))


@pytest.mark.parametrize("stage", ["stage1", "stage2", "finetune"])
def test_training_steps_and_validation_on_cuda(pool, tmp_path, stage):
    config = tiny_train_config(pool, iterations=2)
    config = config.model_copy(update={s: getattr(config, s).model_copy(update={"precision": "bfloat16"})
                                       for s in ("stage1", "stage2", "finetune")})
    if stage == "finetune":  # needs both stages' checkpoints
        for needed in ("stage1", "stage2"):
            StageTrainer(config, needed, tmp_path / "run", "cuda").train(show_progress=False)
    trainer = StageTrainer(config, stage, tmp_path / "run", "cuda")
    assert trainer.train(show_progress=False) == 2
    assert next(trainer.net.parameters()).is_cuda
    validation = trainer.validate()
    assert np.isfinite(validation["psnr"]) and np.isfinite(validation["ssim"])
