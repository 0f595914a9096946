"""The one training loop every recipe runs on: optimizer and learning-rate schedule, EMA of
the weights, atomic checkpoints and resume, a JSONL log, a wall-clock budget, progress with
ETA, cancel, and DDP under torchrun. What is learnt (the loss, the validation) is a recipe
(`recipes.py`); where the weights start from and the data come from is the caller's.

Checkpoints are written atomically (temp file + rename), so a kill -9 at any moment leaves
the previous checkpoint intact; a restarted loop resumes from it.
"""

from __future__ import annotations

import copy
import ctypes
import functools
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from napari_etdms.engine.tiling import Cancelled
from napari_etdms.io import write_file_atomically
from napari_etdms.models import tile_inputs
from napari_etdms.runtime import Precision, architecture_key, choose_precision, describe, forward_probe, use_threads

MAX_NON_FINITE_IN_A_ROW = 20  # batches with a non-finite loss or gradient before training stops


class EMA:
    """Exponential moving average of weights with the usual warm-up, so early
    validation and exports are not dominated by the random initialisation."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema, live = self.module.state_dict(), model.state_dict()
        for name, value in live.items():
            if value.dtype.is_floating_point:
                ema[name].lerp_(value, 1.0 - decay)
            else:
                ema[name].copy_(value)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


def is_lead() -> bool:
    """True in a single-process run and in rank 0 of a distributed one (the one that writes)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def start_distributed(device: str) -> str:
    """Join the process group that torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK in the
    environment) and return this process's device; a plain run is left as it is."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    cuda = torch.device(device).type == "cuda"
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    return device


def stop_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def lead_decides(value: float, device: str | torch.device = "cpu") -> float:
    """Rank 0's value on every rank (time left, whether to stop): ranks that each read their
    own clock could stop at different iterations and leave the others waiting forever."""
    if not dist.is_initialized():
        return value
    shared = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.broadcast(shared, src=0)
    return float(shared.item())


# glibc mallopt parameters
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def reuse_freed_memory() -> None:
    """Let glibc serve the large, short-lived buffers of attention from its heap (mmap
    threshold at its 32 MiB maximum, up to 1 GiB of freed heap kept) instead of mapping and
    unmapping fresh pages for each: an adaptation step on 2 CPU threads took 5.5 s with the
    defaults, 3.0 s with these (2.1 s under tcmalloc). Process-wide and for good (glibc cannot
    say what it was before); `pipeline.release_freed_memory` still trims the heap between a
    run's stages. A no-op without glibc's mallopt."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
        libc.mallopt(_M_TOP_PAD, 64 << 20)
    except (OSError, AttributeError):
        pass


class CheckpointMismatch(ValueError):
    """A checkpoint in the loop's folder belongs to another job (other data or base weights)."""


class TrainingLoop:
    """Trains `net` with `recipe` on batches from `stream` under `settings` (a `StageConfig`),
    keeping its checkpoint and log in `folder`.

    `identity` names what the checkpoint belongs to (e.g. the base weights' hash and the
    frames' sha256): a checkpoint of another identity is refused rather than resumed.
    Subclasses set `stream`, `validation` and `recipe` after this constructor, then call
    `resume()` (and `wrap_distributed()` under torchrun).
    """

    label = "train"

    def __init__(self, net: torch.nn.Module, settings, folder: str | os.PathLike, device: str | torch.device = "cpu",
                 identity: dict | None = None):
        self.settings = settings
        self.dir = Path(folder)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed crop sizes: pick the fastest conv kernels once
        # processes of one torchrun on this machine share its cores
        share = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if dist.is_initialized() else 1
        self.threads = use_threads(settings.threads, share)
        self.identity = identity or {}
        self.net = net.to(self.device)
        self.model = self.net
        self.ema = EMA(self.net, settings.ema_decay)
        optimizer = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[settings.optimizer]
        self.optimizer = optimizer(self.net.parameters(), lr=settings.learning_rate,
                                   weight_decay=settings.weight_decay)
        self.iteration = 0
        self.stream = self.validation = self.recipe = None

    # ---- state -----------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.dir / "checkpoint.pt"

    def resume(self) -> bool:
        """Continue from this folder's checkpoint, if there is one."""
        if not self.checkpoint_path.is_file():
            return False
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
        if state.get("identity", {}) != self.identity:
            raise CheckpointMismatch(
                f"{self.checkpoint_path} belongs to another job ({state.get('identity')}, not {self.identity}): "
                "remove that folder, or start again (e.g. --restart)")
        self.net.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration = int(state["iteration"])
        self._apply_learning_rate()
        return True

    def wrap_distributed(self) -> None:
        if dist.is_initialized():
            self.model = torch.nn.parallel.DistributedDataParallel(self.net)

    def save(self) -> None:
        if not is_lead():
            return
        state = {
            "model": self.net.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "iteration": self.iteration,
            "stage": self.label,
            "identity": self.identity,
        }
        write_file_atomically(self.checkpoint_path, lambda tmp: torch.save(state, tmp), overwrite=True)

    def learning_rate_at(self, iteration: int) -> float:
        passed = sum(iteration >= milestone for milestone in self.settings.lr_milestones)
        return self.settings.learning_rate * self.settings.lr_gamma**passed

    def _apply_learning_rate(self) -> None:
        """The settings decide, also over a resumed optimizer's saved rate, so a run can be
        continued at another rate or schedule."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate_at(self.iteration)

    def on_start(self) -> None:
        """Called before the first step a `train` call makes (e.g. to record the settings)."""

    # ---- steps -----------------------------------------------------------------------
    @functools.cached_property
    def precision(self) -> Precision:
        """The settings' precision; `auto` chooses as a run does (`runtime.choose_precision`,
        never float16), timing the network's forward pass on a 64 px tile where the processor
        cannot tell. Under torchrun every rank takes rank 0's choice."""
        calls = [(self.net, tile_inputs(self.net, 64, self.device))]
        chosen = choose_precision(self.device, self.settings.precision, forward_probe(calls, self.device),
                                  architecture_key([self.net]), training=True)
        if dist.is_initialized():
            lead_bfloat16 = bool(lead_decides(float(chosen.name == "bfloat16"), self.device))
            if lead_bfloat16 != (chosen.name == "bfloat16"):
                chosen = Precision("bfloat16" if lead_bfloat16 else "float32", "rank 0's choice")
        return chosen

    def autocast(self):
        return self.precision.autocast(self.device)

    def _on_device(self, batch: dict) -> dict:
        return {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}

    def loss(self, batch: dict) -> torch.Tensor:
        with self.autocast():
            return self.recipe.loss(self._on_device(batch))

    @torch.no_grad()
    def validate(self, model: torch.nn.Module | None = None) -> dict:
        """The recipe's validation of `model` (default: the EMA weights)."""
        model = self.ema.module if model is None else model
        was_training = model.training
        result = self.recipe.validate(model.eval(), self._on_device(self.validation))
        model.train(was_training)
        return result

    def _clip_gradient(self) -> torch.Tensor:
        """The gradient's norm (non-finite if any part is), clipped to `gradient_clip` when set."""
        limit = self.settings.gradient_clip or math.inf
        return torch.nn.utils.clip_grad_norm_(self.net.parameters(), limit)

    def log(self, record: dict) -> None:
        if is_lead():
            with (self.dir / "log.jsonl").open("a") as fh:
                fh.write(json.dumps(record) + "\n")

    def read_log(self) -> list[dict]:
        path = self.dir / "log.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []

    def train(self, max_minutes: float | None = None, show_progress: bool = True,
              progress: Callable[[int, int], None] | None = None, cancel=None) -> int:
        """Train until the configured iterations or the wall-clock budget; returns the
        iteration reached. `progress(iteration, total)` is called after each step; a set
        `cancel` event raises `Cancelled` between steps (the last checkpoint stays)."""
        from tqdm import tqdm

        total = self.settings.iterations
        deadline = time.monotonic() + 60 * max_minutes if max_minutes else math.inf
        loader = self._batches()
        bar = tqdm(total=total, initial=self.iteration, desc=self.label, disable=not show_progress or not is_lead())
        losses: list[float] = []
        skipped = 0  # batches whose loss or gradient was not finite, since the last log line
        started = time.monotonic()
        self._prepare(total)

        def out_of_time() -> bool:  # no collective call per step when there is no budget to agree on
            return deadline != math.inf and bool(lead_decides(time.monotonic() >= deadline, self.device))

        try:
            while self.iteration < total and not out_of_time():
                if cancel is not None and cancel.is_set():
                    raise Cancelled("training cancelled")
                loss = self._step(next(loader))
                if loss is None:
                    skipped += 1
                    continue
                losses.append(loss)
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
                if progress is not None:
                    progress(self.iteration, total)
                done = self.iteration == total
                if self.iteration % self.settings.checkpoint_every == 0 or done:
                    self.save()
                    self._log_steps(losses, started, skipped)
                    losses, skipped, started = [], 0, time.monotonic()
                if self.iteration % self.settings.validate_every == 0 or done:
                    self.log({"iteration": self.iteration, "validation": self.validate(), "time": time.time()})
        finally:
            bar.close()
        if losses:  # stopped between checkpoints (the budget): these steps count too
            self.save()
            self._log_steps(losses, started, skipped)
        if dist.is_initialized():
            dist.barrier()  # the next stage may read this checkpoint on every rank
        return self.iteration

    def _batches(self):
        workers = self.settings.workers
        return iter(torch.utils.data.DataLoader(self.stream, batch_size=self.settings.batch_size, num_workers=workers,
                                                persistent_workers=workers > 0, pin_memory=self.device.type == "cuda"))

    def _prepare(self, total: int) -> None:
        if self.device.type == "cpu":
            reuse_freed_memory()
        self.net.train()
        self._non_finite_in_a_row = 0
        if self.iteration < total:
            self.on_start()
            # chosen here, on every rank at once; the log says what the steps' speed rests on
            self.log({"iteration": self.iteration, "runtime": describe(self.device, self.precision, self.threads),
                      "time": time.time()})

    def _step(self, batch) -> float | None:
        """One optimiser step on `batch`, returning its loss; None where the loss or its gradient
        is not finite: that batch is skipped (as mixed-precision scalers do), and
        MAX_NON_FINITE_IN_A_ROW of them stop training before a step or a checkpoint can take a
        diverged model in."""
        self._apply_learning_rate()
        loss = self.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # on every rank, finite or not: the gradients' all-reduce must not wait
        if not torch.isfinite(loss) or not torch.isfinite(self._clip_gradient()):
            self._non_finite_in_a_row += 1
            if self._non_finite_in_a_row >= MAX_NON_FINITE_IN_A_ROW:
                raise FloatingPointError(
                    f"{self.label}: the loss or its gradient is not finite for {self._non_finite_in_a_row} batches "
                    f"in a row at iteration {self.iteration + 1}; the last checkpoint is kept: lower the learning "
                    "rate in the config and rerun to resume")
            return None
        self._non_finite_in_a_row = 0
        self.optimizer.step()
        self.ema.update(self.net)
        self.iteration += 1
        return loss.item()

    def _log_steps(self, losses: list[float], started: float, skipped: int) -> None:
        self.log({"iteration": self.iteration, "loss": float(np.mean(losses)), "time": time.time(),
                  "seconds_per_step": (time.monotonic() - started) / len(losses)}
                 | ({"skipped_non_finite": skipped} if skipped else {}))

