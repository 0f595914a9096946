"""Training configs and their stages: stage 1 (denoiser), stage 2 (CLSR) and stage 2
fine-tuned on stage-1 outputs, each a `StageTrainer` on the one loop of `loop.py`. One run
folder holds each stage's checkpoint, JSONL log and the data split; `export` writes the
trained weights as a registry folder.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, model_validator

from napari_etdms.config import ModelConfig, _Strict, load_json
from napari_etdms.diffusion import DEFAULT_PRESET, SAMPLERS, NoiseSchedule
from napari_etdms.io import write_file_atomically
from napari_etdms.models import build_clsr, build_denoiser
from napari_etdms.simulation.degradation import DegradationConfig
from napari_etdms.training.data import CropStream, FrameInfo, list_frames, screen_frames, split_frames
from napari_etdms.training.loop import TrainingLoop, is_lead
from napari_etdms.training.recipes import (
    BlindDenoising,
    ConditionalDiffusion,
    ConditionalRegression,
    NoiseAwareDenoising,
)
from napari_etdms.weights import write_entry

STAGES = ("stage1", "stage2", "finetune")


class DataConfig(_Strict):
    inputs: list[str]
    validation_fraction: float = Field(0.12, gt=0, lt=1)
    max_target_noise: float = Field(0.05, gt=0)
    # frames noisier than max_target_noise: "exclude" them, or "downsample" them (2x or 4x area
    # averaging) into cleaner training targets; validation frames are always clean as stored
    noisy_frames: Literal["exclude", "downsample"] = "exclude"
    # whole sources (file-name prefix before "__") kept out of training, for validation only
    held_out_sources: list[str] = []
    seed: int = 0
    degradation: DegradationConfig = DegradationConfig()


class StageConfig(_Strict):
    iterations: int = Field(10000, gt=0)
    batch_size: int = Field(8, gt=0)
    hr_crop: int = Field(256, gt=0)  # stage 1 sees hr_crop/4 low-res crops
    learning_rate: float = Field(2e-4, gt=0)
    optimizer: Literal["adam", "adamw"] = "adam"
    weight_decay: float = Field(0.0, ge=0)  # decoupled (AdamW) or L2 (Adam)
    # step schedule: at each of these iterations the rate is multiplied by lr_gamma
    lr_milestones: tuple[int, ...] = ()
    lr_gamma: float = Field(0.5, gt=0, le=1)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    # largest gradient norm a step may take (None: unclipped); a rare outlier batch then cannot
    # throw the weights into a region where the loss turns non-finite
    gradient_clip: float | None = Field(None, gt=0)
    condition_noise: float = Field(0.03, ge=0)  # stage 2 on clean low-res: sigma on [0, 1]
    validate_every: int = Field(500, gt=0)
    validation_crops: int = Field(16, gt=0)
    validation_steps: int = Field(10, gt=0)
    checkpoint_every: int = Field(200, gt=0)
    # auto: bfloat16 where the processor computes it natively and faster (runtime.choose_precision)
    precision: Literal["auto", "bfloat16", "float32"] = "auto"
    threads: int | None = None  # None: the cores free when training starts
    # data-loading processes (crops are degraded on the CPU); each keeps its own copy of the frames
    workers: int = Field(0, ge=0)
    # stricter than data.max_target_noise for this stage's high-res targets (validation unchanged)
    max_target_noise: float | None = Field(None, gt=0)
    # start from a checkpoint (or an exported .pt) that this stage's network grows from.
    # stage 1: a denoiser with fewer groups (same width); fine-tune: a CLSR, e.g. another run's
    # fine-tune, instead of this run's stage 2 (one without the measured input gains it)
    grow_from: str | None = None
    # "mse" trains for the posterior mean (what PSNR rewards), "l1" (the paper) for the median;
    # in the diffusion stages it compares the predicted eps or v
    loss: Literal["l1", "mse"] = "l1"
    # diffusion stages, residual target: the detail over the clean low-res frame ("clean", which
    # the condition's own errors cannot be learnt from), or over the condition itself
    # ("condition": then stage 2 also learns to correct what stage 1 got wrong)
    residual_over: Literal["clean", "condition"] = "clean"


class SamplerPreset(_Strict):
    sampler: Literal[tuple(SAMPLERS)] = DEFAULT_PRESET["sampler"]
    steps: int = Field(DEFAULT_PRESET["steps"], gt=0)
    data_consistency: bool = DEFAULT_PRESET["data_consistency"]


class TrainConfig(_Strict):
    name: str
    model: ModelConfig = ModelConfig()
    recommended: SamplerPreset = SamplerPreset()  # default sampling of the exported weights
    data: DataConfig
    stage1: StageConfig = StageConfig()
    stage2: StageConfig = StageConfig(hr_crop=128, learning_rate=1e-4)
    finetune: StageConfig = StageConfig(hr_crop=128, learning_rate=5e-5, iterations=2000)

    @model_validator(mode="after")
    def _options_fit_their_stage(self):
        if self.stage2.grow_from:
            raise ValueError("stage2.grow_from: only stage 1 and the fine-tune can grow")
        if self.stage1.residual_over != "clean":
            raise ValueError("stage1.residual_over: only the diffusion stages have a residual target")
        if self.model.stage2 == "regression" and not (self.finetune.grow_from and self.finetune.residual_over ==
                                                      "condition"):
            raise ValueError("model.stage2 'regression' learns from stage-1 outputs: set finetune.grow_from (a "
                             "trained CLSR to start from) and finetune.residual_over 'condition'")
        return self


def load_train_config(path: str | os.PathLike) -> TrainConfig:
    config = load_json(path, TrainConfig)
    base = Path(path).resolve().parent
    beside_config = lambda p: str(p if Path(p).is_absolute() else (base / p).resolve())  # noqa: E731
    update = {"data": config.data.model_copy(update={"inputs": [beside_config(p) for p in config.data.inputs]})}
    for stage in ("stage1", "finetune"):
        settings = getattr(config, stage)
        if settings.grow_from:
            update[stage] = settings.model_copy(update={"grow_from": beside_config(settings.grow_from)})
    return config.model_copy(update=update)


class StageTrainer(TrainingLoop):
    """A stage of a training config in its run folder: the network the stage trains, where it
    starts from (grown from a smaller one, or the fine-tune from stage 2), its data split and
    crop streams, and its recipe."""

    def __init__(self, config: TrainConfig, stage: str, run_dir: Path, device: str = "cpu"):
        if stage not in STAGES:
            raise ValueError(f"unknown stage '{stage}'")
        if stage == "stage2" and config.model.stage2 == "regression":
            raise ValueError("a regression stage 2 trains only as the fine-tune on stage-1 outputs (etdms train -s 0)")
        self.config, self.stage, self.label = config, stage, stage
        self.run_dir = Path(run_dir)
        settings: StageConfig = getattr(config, stage)
        net = (build_denoiser if stage == "stage1" else build_clsr)(config.model)
        growing = settings.grow_from and not (self.run_dir / stage / "checkpoint.pt").is_file()
        if growing:  # before the loop takes the network: its EMA starts from the grown weights
            source = torch.load(settings.grow_from, map_location="cpu", weights_only=True)
            # a training checkpoint (its EMA weights) or an exported .pt (a bare state dict)
            net.grow_from(source["ema"]["module"] if "ema" in source else source)
        super().__init__(net, settings, self.run_dir / stage, device)
        self.schedule = NoiseSchedule(config.model.diffusion)
        conditioner = self._stage1_model() if stage == "finetune" else None
        if not self.resume() and stage == "finetune" and not growing:
            self._start_from(self.run_dir / "stage2" / "checkpoint.pt")
        self.wrap_distributed()
        train, val = self._split()
        if self.settings.max_target_noise is not None:
            limit = self.settings.max_target_noise
            if config.data.noisy_frames == "downsample":
                cleaner = [t for t in (f.as_target(limit) for f in train) if t is not None]
            else:
                cleaner = [f for f in train if f.noise_sigma <= limit]
            if not cleaner:
                limit = self.settings.max_target_noise
                raise ValueError(f"{stage}: no training frame is below max_target_noise={limit}")
            train = cleaner
        self.train_frames = len(train)
        crop = self.settings.hr_crop
        # a noise-aware stage 1 is run on the estimate, in training and as the fine-tune's conditioner
        estimate = config.model.swinir.noise_map and stage in ("stage1", "finetune")
        self.stream = CropStream(train, crop, config.data.seed * 1000 + self.iteration, config.data.degradation,
                                 estimate)
        self.validation = CropStream(val, crop, config.data.seed, config.data.degradation, estimate).fixed_batch(
            self.settings.validation_crops, seed=12345
        )
        if stage == "stage1":
            self.recipe = (NoiseAwareDenoising if config.model.swinir.noise_map else BlindDenoising)(self)
        elif config.model.stage2 == "regression":
            self.recipe = ConditionalRegression(self, conditioner)
        else:
            self.recipe = ConditionalDiffusion(self, conditioner)

    @property
    def settings_history_path(self) -> Path:
        return self.dir / "settings.jsonl"

    def on_start(self) -> None:
        """Add the resolved config (model, data, this stage's settings) whenever this stage
        trains on under settings that differ from the last ones recorded, so a run continued
        with, e.g., a lower learning rate keeps the history of what it was trained with.
        Rewritten whole and renamed: a kill -9 cannot leave a torn line behind."""
        if not is_lead():
            return
        config = json.loads(self.config.model_dump_json())
        resolved = {key: config[key] for key in ("name", "model", "data", self.stage)}  # what this stage depends on
        history = read_settings_history(self.settings_history_path)
        if not history or history[-1]["config"] != resolved:
            history.append({"from_iteration": self.iteration, "time": time.time(), "config": resolved})
            text = "".join(json.dumps(entry) + "\n" for entry in history)
            write_file_atomically(self.settings_history_path, lambda tmp: Path(tmp).write_text(text), overwrite=True)

    def _start_from(self, checkpoint: Path) -> None:
        if not checkpoint.is_file():
            raise FileNotFoundError(f"{checkpoint}: stage 2 must be trained before fine-tuning")
        state = torch.load(checkpoint, map_location=self.device, weights_only=True)
        self.net.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])

    def _stage1_model(self):
        path = self.run_dir / "stage1" / "checkpoint.pt"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: stage 1 must be trained before fine-tuning stage 2")
        model = build_denoiser(self.config.model).to(self.device)
        model.load_state_dict(torch.load(path, map_location=self.device, weights_only=True)["ema"]["module"])
        return model.eval().requires_grad_(False)

    def _split(self) -> tuple[list[FrameInfo], list[FrameInfo]]:
        split_file = self.run_dir / "split.json"
        data = self.config.data
        if split_file.is_file():
            saved = json.loads(split_file.read_text())
            return [FrameInfo.from_row(r) for r in saved["train"]], [FrameInfo.from_row(r) for r in saved["validation"]]
        frames = screen_frames(list_frames(data.inputs))
        held_out = [f for f in frames if f.source in data.held_out_sources]
        pool = [f for f in frames if f.source not in data.held_out_sources]
        clean = [f for f in pool if f.noise_sigma <= data.max_target_noise]
        noisy = [f for f in pool if f.noise_sigma > data.max_target_noise]
        downsampled = []
        if data.noisy_frames == "downsample":
            downsampled = [t for t in (f.as_target(data.max_target_noise) for f in noisy) if t is not None]
        excluded = [f for f in noisy if f.path not in {t.path for t in downsampled}]
        excluded += [f for f in held_out if f.noise_sigma > data.max_target_noise]
        if not clean:
            raise ValueError(f"every frame is noisier than max_target_noise={data.max_target_noise}")
        train, val = split_frames(clean, data.validation_fraction, data.seed)
        if not train or not val:
            train, val = (train or val), (val or train)  # a tiny pool: validate on training frames
        # noisy frames train (down-sampled) but never validate: their scene's clean frames may
        train = [f for f in train + downsampled if f.scene not in {v.scene for v in val}]
        val += [f for f in held_out if f.noise_sigma <= data.max_target_noise]
        if is_lead():
            payload = {"held_out_sources": list(data.held_out_sources), "noisy_frames": data.noisy_frames,
                       "train": [f.as_row() for f in train], "validation": [f.as_row() for f in val],
                       "excluded_noisy": [f.as_row() for f in excluded]}
            # atomic: stages started side by side may read it while it is written
            text = json.dumps(payload, indent=1)
            write_file_atomically(split_file, lambda tmp: Path(tmp).write_text(text), overwrite=True)
            names = ", ".join(f.path.name for f in excluded[:5]) + (", ..." if len(excluded) > 5 else "")
            print(f"split: {len(train)} training ({len(downsampled)} down-sampled to clean them) and {len(val)} "
                  f"validation frames ({len(held_out)} of held-out sources {', '.join(data.held_out_sources)}); "
                  f"{len(excluded)} frames noisier than max_target_noise={data.max_target_noise} are not used"
                  f"{': ' + names if excluded else ''} (all listed in {split_file})")
        return train, val


def read_settings_history(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


TRAINING_RECORD = "training.json"


def export(run_dir: str | os.PathLike, config: TrainConfig, out_dir: str | os.PathLike, name: str | None = None,
           card: str | None = "MODEL_CARD.md", clsr_from: str | None = None):
    """Write the EMA weights of stage 1 and the best stage 2 (fine-tuned if present) as a
    registry weights folder, with `training.json`: for each stage behind them, the iterations
    reached and every resolved config it was trained under (from which iteration on).
    `clsr_from` (registry weights name or folder) takes stage 2 from other weights instead,
    recorded by name and hash: a new denoiser paired with an existing CLSR."""
    run_dir = Path(run_dir)
    trained = [stage for stage in STAGES if (run_dir / stage / "checkpoint.pt").is_file()]
    sources = {"denoiser": "stage1", "clsr": "finetune" if "finetune" in trained else "stage2"}
    sources = {part: stage for part, stage in sources.items() if stage in trained}
    if clsr_from is not None:
        sources.pop("clsr", None)
    if not sources:
        raise FileNotFoundError(f"{run_dir}: no stage checkpoints to export")
    checkpoints = {stage: torch.load(run_dir / stage / "checkpoint.pt", map_location="cpu", weights_only=True)
                   for stage in trained}
    states = {part: checkpoints[stage]["ema"]["module"] for part, stage in sources.items()}
    borrowed = {}
    if clsr_from is not None:
        from napari_etdms.weights import load_state, resolve

        other = resolve(clsr_from)
        if other.config.clsr != config.model.clsr or other.config.diffusion != config.model.diffusion:
            raise ValueError(f"the CLSR of '{other.name}' has another configuration than this run's model.clsr / "
                             "model.diffusion; make them equal in the config")
        states["clsr"] = load_state(other, "clsr")
        borrowed = {"clsr": {"from_weights": other.name, "hash": other.short_hash,
                             "sha256": other.files["clsr"]["sha256"]}}
    behind = set(sources.values())
    if "finetune" in behind and not config.finetune.grow_from:
        behind.add("stage2")  # the fine-tune started from this run's stage 2
    record = {stage: {"iterations": int(checkpoints[stage]["iteration"]),
                      "settings": read_settings_history(run_dir / stage / "settings.jsonl")}
              for stage in trained if stage in behind} | borrowed
    preset = config.recommended.model_dump()
    if config.model.stage2 == "regression":  # one evaluation: no sampler or steps to recommend
        preset = {"data_consistency": preset["data_consistency"]}
    entry = write_entry(out_dir, name or config.name, config.model, states, preset, card)
    (entry.folder / TRAINING_RECORD).write_text(json.dumps(record, indent=1) + "\n")
    return entry
