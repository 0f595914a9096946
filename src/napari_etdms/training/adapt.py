"""Adapting stage 1 to the user's own detector, on their noisy frames alone (`etdms adapt`,
the widget's "Adapt to this image").

Method (chosen by measurement: `training-runs/adapt-probe/`, `benchmarks/bench_adapt.py`):
the base weights' denoiser is fine-tuned with Neighbor2Neighbor
(`recipes.NeighbourPairDenoising`). Noise2Void and plain neighbour pairs assume that
neighbouring pixels' noises are independent; along an SEM scan line they are not, so each
pair takes its two pixels from different rows, and each sub-image row from one scan line
(drawn per cell, line offsets became pixel noise and adapting cost 3.3 dB on a detector with
strong line offsets; drawn per row, 0.35 dB). Half the crops get extra noise (told to the
network), so it keeps its meaning of the noise level. The frames are normalised and told
their estimated noise exactly as `Pipeline.run` does.

Guard: a band of rows of every frame is held out (its pieces with content), and the adapted
weights are kept only if their pair loss there (the sub-image error plus a constant) is below the base's. It rejects
adapting that did not help at all; it does not catch a small loss at full resolution where
the base already fits the noise well (bench_adapt.py's "rows" detector).

The work (checkpoint, log) lives in a hidden folder beside the output, so an interrupted run
resumes; the weights folder appears, complete, in one rename, and a cancelled run leaves
nothing behind.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from napari_etdms.engine.pipeline import prepare_frame
from napari_etdms.engine.tiling import Cancelled
from napari_etdms.io import DEFAULT_MAX_PIXELS, read_frame
from napari_etdms.models import build_denoiser
from napari_etdms.runtime import describe
from napari_etdms.stage1.intensity import SIGNAL_SMOOTHING, IntensityMap
from napari_etdms.stage1.noise import frame_noise
from napari_etdms.training.loop import TrainingLoop
from napari_etdms.training.recipes import NeighbourPairDenoising, neighbour_pairs
from napari_etdms.training.trainer import StageConfig
from napari_etdms.weights import ADAPTATION_RECORD, WeightsEntry, load_state, resolve, sha256_of, write_entry

METHOD = ("Neighbor2Neighbor (self-supervised) with scan-line pairs: the pair's pixels from different rows, each "
          "sub-image row from one scan line; regulariser weight 1; extra noise of up to 1x on half the crops")
CROP = 128  # training crops (px, square)
VALIDATION_ROWS = 64  # the held-out band of each frame
VALIDATION_WIDTH = 128  # the band is cut into pieces of this width
MIN_HEIGHT, MIN_WIDTH = CROP + VALIDATION_ROWS, CROP
# half the training crops get extra noise of up to this many times their own (see the recipe):
# on the detector inside the training range it raised the gain on other frames from +0.21 to
# +0.70 dB and the worst frame from -1.65 to -0.71 dB (60 steps, bench_adapt.py's frames)
EXTRA_NOISE = 1.0
DEFAULT_MINUTES = 4.0  # with reading, the guard and writing: within 5 minutes on 2 CPU threads
# ~115 steps fit 5 minutes on 2 threads of a Zen 5 (native bfloat16), ~50 on an AVX2 Zen 3
# (float32); on a detector the base mishandles, 100 gained +5.9 dB (adapt-probe) and more
# steps add little
SETTINGS = StageConfig(iterations=100, batch_size=8, learning_rate=5e-5, ema_decay=0.99, validate_every=25,
                       checkpoint_every=10, loss="mse")


class AdaptError(ValueError):
    """The frames cannot be adapted on; the message says why and what to do."""


@dataclass(frozen=True)
class AdaptFrame:
    """One frame as stage 1 sees it: normalised like `Pipeline.run`, with its noise model."""

    normalised: np.ndarray  # float32 on [-1, 1] of the frame's fitted signal range
    gain: float  # the estimated noise model on that range's [0, 1] scale
    offset: float
    name: str
    sha256: str  # of the frame's pixels (dtype, shape and bytes)
    band: int  # first row of the held-out band (VALIDATION_ROWS rows)
    pieces: tuple[int, ...]  # first column of each VALIDATION_WIDTH-wide piece of the band the guard scores

    @classmethod
    def from_image(cls, image, name: str) -> AdaptFrame:
        frame = prepare_frame(image)
        if frame.shape[0] < MIN_HEIGHT or frame.shape[1] < MIN_WIDTH:
            raise AdaptError(f"{name}: {frame.shape[0]}x{frame.shape[1]} px is too small to adapt on; at least "
                             f"{MIN_HEIGHT}x{MIN_WIDTH} px (height x width) is needed")
        mapping = IntensityMap.fit(frame, smoothing=SIGNAL_SMOOTHING)
        noise = frame_noise(frame)[0].rescaled(mapping.low, mapping.high)
        digest = hashlib.sha256(f"{frame.dtype.str}{frame.shape}".encode())
        digest.update(np.ascontiguousarray(frame).tobytes())
        return cls(mapping.forward(frame).astype(np.float32), float(noise.gain), float(noise.offset), name,
                   digest.hexdigest(), *held_out_band(frame))

    def crop_starts(self) -> np.ndarray:
        """The rows a training crop may start at: every crop misses the held-out band."""
        height = self.normalised.shape[0]
        above = np.arange(0, self.band - CROP + 1)
        below = np.arange(self.band + VALIDATION_ROWS, height - CROP + 1)
        return np.concatenate([above, below])


def held_out_band(frame: np.ndarray) -> tuple[int, tuple[int, ...]]:
    """The band of rows held out for the guard, and its pieces with content. A piece has
    content when under half its pixels sit at the frame's darkest or brightest value: a
    clipped or black area (a cavity, the bottom of a Zeiss data zone) tests no denoiser. The
    band with the most such pieces wins, the lowest of equals; it leaves CROP rows to train on."""
    height, width = frame.shape
    extreme = (frame == frame.min()) | (frame == frame.max())
    best: tuple[int, tuple[int, ...]] | None = None
    for y in range(height - VALIDATION_ROWS, -1, -VALIDATION_ROWS // 2):  # from the bottom up
        if max(y, height - y - VALIDATION_ROWS) < CROP:
            continue
        pieces = tuple(x for x in range(0, width - VALIDATION_WIDTH + 1, VALIDATION_WIDTH)
                       if extreme[y : y + VALIDATION_ROWS, x : x + VALIDATION_WIDTH].mean() < 0.5)
        if best is None or len(pieces) > len(best[1]):
            best = (y, pieces)
    return best


def frames_from_files(files: list[Path], max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[list[AdaptFrame], list[dict]]:
    """Every frame of the files (each slice of a stack; databars split off as `io.read_frame`
    does), and each file's sha256 for the record. Any unreadable file stops here, before
    training, with an error naming it."""
    frames, sources = [], []
    for path in files:
        data = read_frame(path, max_pixels).data
        stacked = data.ndim == 3 and data.shape[-1] not in (3, 4)
        slices = list(data) if stacked else [data]
        for index, image in enumerate(slices):
            frames.append(AdaptFrame.from_image(image, f"{path.name}[{index}]" if stacked else path.name))
        sources.append({"file": str(path), "sha256": sha256_of(path)})
    return frames, sources


class PairCrops(torch.utils.data.IterableDataset):
    """Endless random crops of the frames' training rows (frames drawn by area), flipped left
    to right at random (never up-down or transposed: rows must stay rows)."""

    def __init__(self, frames: list[AdaptFrame], seed: int = 0):
        self.frames = frames
        self.seed = seed
        self.starts = [f.crop_starts() for f in frames]
        areas = np.array([len(s) * f.normalised.shape[1] for s, f in zip(self.starts, frames)], dtype=np.float64)
        self.weights = areas / areas.sum()

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        while True:
            index = int(rng.choice(len(self.frames), p=self.weights))
            frame = self.frames[index]
            y = int(rng.choice(self.starts[index]))
            x = int(rng.integers(0, frame.normalised.shape[1] - CROP + 1))
            crop = frame.normalised[y : y + CROP, x : x + CROP]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            yield {"noisy": torch.from_numpy(crop.copy())[None], "gain": frame.gain, "offset": frame.offset}


def validation_pairs(frames: list[AdaptFrame], seed: int = 12345) -> dict:
    """Fixed neighbour pairs from the pieces of each frame's held-out band, for the guard."""
    pieces, gains, offsets = [], [], []
    for frame in frames:
        band = frame.normalised[frame.band : frame.band + VALIDATION_ROWS]
        for x in frame.pieces:
            pieces.append(torch.from_numpy(band[:, x : x + VALIDATION_WIDTH].copy())[None])
            gains.append(frame.gain)
            offsets.append(frame.offset)
    if not pieces:
        raise AdaptError("no held-out rows with content to check the adapted weights on: the frames are mostly "
                         "clipped, black or white; adapt on frames with detail")
    first, second, _ = neighbour_pairs(torch.stack(pieces), torch.Generator().manual_seed(seed))
    return {"first": first, "second": second, "gain": torch.tensor(gains, dtype=torch.float64),
            "offset": torch.tensor(offsets, dtype=torch.float64)}


class Adaptation(TrainingLoop):
    """The base weights' denoiser, fine-tuned on `frames` in `folder` (resumed if the folder
    holds a checkpoint of the same base and frames)."""

    label = "adapt"

    def __init__(self, frames: list[AdaptFrame], base: WeightsEntry, folder: Path, settings: StageConfig = SETTINGS,
                 device: str = "cpu"):
        denoiser = build_denoiser(base.config)
        denoiser.load_state_dict(load_state(base, "denoiser"))
        identity = {"base": base.short_hash, "frames": [f.sha256 for f in frames]}
        validation = validation_pairs(frames)  # refused frames leave no work folder behind
        super().__init__(denoiser, settings, folder, device, identity)
        self.base = copy.deepcopy(self.net).eval().requires_grad_(False)
        self.stream = PairCrops(frames)
        self.validation = validation
        self.recipe = NeighbourPairDenoising(self, extra_noise=EXTRA_NOISE)
        if self.resume():  # new crops and pairs after a resume, not the first steps' again
            self.stream.seed = self.iteration
            self.recipe.generator.manual_seed(self.iteration)


@dataclass
class AdaptOutcome:
    kept: bool  # the adapted weights were written (they beat the base on the held-out rows, or kept anyway)
    entry: WeightsEntry | None  # the written weights folder
    record: dict = field(default_factory=dict)  # what adaptation.json holds

    @property
    def message(self) -> str:
        r = self.record
        before, after = r["pair_loss_base"], r["pair_loss_adapted"]
        change = f" ({100 * (after / before - 1):+.1f} %)" if before > 0 else ""
        speed = r["runtime"]
        threads = f", {speed['threads']} threads" if speed.get("threads") else ""
        scores = f"held-out pair loss {before:.5f} -> {after:.5f}{change} after {r['iterations']} steps, " \
                 f"{r['minutes']:.1f} min ({speed['precision']}{threads})"
        if self.kept:
            return f"adapted weights '{self.entry.name}' written to {self.entry.folder}: {scores}"
        return (f"not kept: the base weights '{r['base']['name']}' fit these frames better ({scores}); "
                "keep using them (or pass --keep-anyway)")


def seconds_left(elapsed: float, done: int, total: int, minutes: float) -> float | None:
    """Adapting stops at its last step or at its time budget, whichever comes first."""
    if done <= 0:
        return None
    return max(0.0, min(elapsed * (total - done) / done, 60 * minutes - elapsed))


def training_seconds(steps: list[dict]) -> float:
    """The time spent in training steps, from the loop's log (across resumed runs)."""
    done, seconds = 0, 0.0
    for record in steps:
        seconds += record["seconds_per_step"] * (record["iteration"] - done)
        done = record["iteration"]
    return seconds


def work_folder(output: Path) -> Path:
    """Where an adaptation into `output` keeps its checkpoint and log until it is done."""
    return output.parent / f".{output.name}.adapting"


def adapt(frames: list[AdaptFrame], output: str | os.PathLike, base: str | os.PathLike | None = None,
          minutes: float | None = DEFAULT_MINUTES, iterations: int | None = None, device: str = "cpu",
          keep_anyway: bool = False, restart: bool = False, progress=None, cancel=None,
          show_progress: bool = False, sources: list[str] | None = None, precision: str = "auto",
          threads: int | None = None) -> AdaptOutcome:
    """Fine-tune `base`'s stage 1 on `frames` for up to `iterations` steps or `minutes`, and
    write it with `base`'s stage 2 as the weights folder `output` (registry name: its folder
    name) if it beats the base on the held-out rows (or `keep_anyway`). `sources` (e.g. the
    files' sha256) go on record. A set `cancel` raises `Cancelled` and removes the work.
    `precision` and `threads` as for a run (auto: `runtime.choose_precision`; None: the free cores)."""
    output = Path(output)
    if output.exists():
        raise FileExistsError(f"{output} already exists: choose another name, or remove it first")
    if not frames:
        raise AdaptError("no frames to adapt on")
    base_entry = resolve(base)
    settings = StageConfig.model_validate(SETTINGS.model_dump() | {
        "iterations": iterations or SETTINGS.iterations, "precision": precision, "threads": threads})
    if torch.device(device).type == "mps":
        device = "cpu"  # the noise model's float64 arithmetic has no MPS kernels
    work = work_folder(output)
    if restart:
        shutil.rmtree(work, ignore_errors=True)
    loop = Adaptation(frames, base_entry, work, settings, device)
    before = loop.validate(loop.base)["pair_loss"]
    try:
        loop.train(max_minutes=minutes, show_progress=show_progress, progress=progress, cancel=cancel)
    except BaseException:
        if cancel is not None and cancel.is_set():
            shutil.rmtree(work, ignore_errors=True)
        raise  # anything else (e.g. Ctrl-C) keeps the checkpoint: the same command resumes
    after = loop.validate()["pair_loss"]
    log = loop.read_log()
    steps = [r for r in log if "loss" in r]
    record = {
        "method": METHOD,
        "base": {"name": base_entry.name, "hash": base_entry.short_hash,
                 "files": {p: f["sha256"] for p, f in base_entry.files.items()}},
        "frames": [{"name": f.name, "pixels_sha256": f.sha256, "shape": list(f.normalised.shape),
                    "held_out_rows": [f.band, f.band + VALIDATION_ROWS]} for f in frames],
        "sources": sources or [],
        "iterations": loop.iteration,
        "minutes": round(training_seconds(steps) / 60, 2),
        "settings": json.loads(settings.model_dump_json(include={"iterations", "batch_size", "learning_rate",
                                                                    "ema_decay"})) | {"crop": CROP},
        "runtime": describe(loop.device, loop.precision, loop.threads),
        "loss_curve": [[r["iteration"], round(r["loss"], 6)] for r in steps],
        "validation_curve": [[r["iteration"], r["validation"]["pair_loss"]] for r in log if "validation" in r],
        "pair_loss_base": before,
        "pair_loss_adapted": after,
        "kept_because": "lower held-out pair loss than the base" if math.isfinite(after) and after < before else
                        ("--keep-anyway" if keep_anyway and math.isfinite(after) else None),
    }
    better = math.isfinite(after) and after < before  # a diverged run (NaN) is never better
    if not math.isfinite(after) or (not better and not keep_anyway):
        shutil.rmtree(work, ignore_errors=True)
        return AdaptOutcome(False, None, record)
    staging = work / "weights"
    shutil.rmtree(staging, ignore_errors=True)
    states = {"denoiser": loop.ema.module.state_dict(), "clsr": load_state(base_entry, "clsr")}
    write_entry(staging, output.name, base_entry.config, states, base_entry.recommended)
    (staging / ADAPTATION_RECORD).write_text(json.dumps(record, indent=1) + "\n")
    output.parent.mkdir(parents=True, exist_ok=True)
    if cancel is not None and cancel.is_set():  # pressed while validating or writing: still nothing left
        shutil.rmtree(work, ignore_errors=True)
        raise Cancelled("adapting cancelled")
    os.rename(staging, output)  # the folder appears complete, or not at all
    shutil.rmtree(work, ignore_errors=True)
    return AdaptOutcome(True, resolve(output), record)


__all__ = ["AdaptError", "AdaptFrame", "AdaptOutcome", "Adaptation", "DEFAULT_MINUTES", "adapt"]
