"""Training data: frame discovery, noise screening, scene-grouped split, streaming crops."""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from napari_etdms.io import iter_image_files
from napari_etdms.simulation.degradation import SCALE, DegradationConfig, degrade_with_details
from napari_etdms.simulation.ground_truth import TRUTH_DOWNSAMPLING, area_downsample, estimate_noise, load_normalised
from napari_etdms.stage1.intensity import SIGNAL_SMOOTHING, IntensityMap
from napari_etdms.stage1.noise import frame_noise


@dataclass(frozen=True)
class FrameInfo:
    path: Path
    scene: str
    noise_sigma: float
    # the noise after each of TRUTH_DOWNSAMPLING (empty: not measured)
    downsampled_noise_sigma: tuple[float, ...] = ()
    downsample: int = 1  # the factor a training stream applies to this frame

    @property
    def source(self) -> str:
        """The training pool names its files <source>__<name>."""
        return self.path.name.split("__")[0] if "__" in self.path.name else ""

    def as_target(self, max_noise: float) -> FrameInfo | None:
        """This frame as a high-res target no noisier than `max_noise`: as it is, down-sampled
        by the smallest factor that is clean enough, or None."""
        if self.noise_sigma <= max_noise:
            return self
        for factor, sigma in zip(TRUTH_DOWNSAMPLING, self.downsampled_noise_sigma):
            if sigma <= max_noise:
                return replace(self, downsample=factor)
        return None

    def as_row(self) -> dict:
        return {"path": str(self.path), "scene": self.scene, "noise_sigma": round(self.noise_sigma, 5),
                "downsampled_noise_sigma": [round(s, 5) for s in self.downsampled_noise_sigma],
                "downsample": self.downsample}

    @classmethod
    def from_row(cls, row: dict) -> FrameInfo:
        return cls(Path(row["path"]), row["scene"], row["noise_sigma"],
                   tuple(row.get("downsampled_noise_sigma", ())), row.get("downsample", 1))


def list_frames(inputs: list[str | Path]) -> list[Path]:
    """Files and folders of frames, or CSV files whose 'file' column lists frames."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.suffix.lower() in (".csv", ".txt") and item.is_file():
            files.extend(_list_file(item))
        else:
            files.extend(iter_image_files([item]))
    if not files:
        raise ValueError(f"no SEM frames (TIFF/PNG) found in {', '.join(map(str, inputs))}")
    return files


def _list_file(listing: Path) -> list[Path]:
    if listing.suffix.lower() == ".csv":
        with listing.open(newline="") as fh:
            names = [row["file"] for row in csv.DictReader(fh)]
    else:
        names = [ln.strip() for ln in listing.read_text().splitlines() if ln.strip()]
    return [p if p.is_absolute() else listing.parent / p for p in map(Path, names)]


_DETECTOR = re.compile(r"(detector|multiBSE_)[A-Z](?=_|$)")
_REPEAT = re.compile(r"_\d{3}$")


def scene_key(path: Path) -> str:
    """Frames of one scene (detector channels A/B/C, numbered repeats) share a key and a split."""
    stem = _DETECTOR.sub(r"\1*", path.stem)
    while _REPEAT.search(stem):
        stem = _REPEAT.sub("", stem)
    return stem


def screen_frames(paths: list[Path]) -> list[FrameInfo]:
    def info(path: Path) -> FrameInfo:
        image = load_normalised(path)
        sigmas = tuple(estimate_noise(area_downsample(image, f)) for f in TRUTH_DOWNSAMPLING)
        return FrameInfo(path, scene_key(path), estimate_noise(image), sigmas)

    return [info(p) for p in paths]


def split_frames(frames: list[FrameInfo], validation_fraction: float, seed: int) -> tuple[list, list]:
    """Split by scene so no field of view lands in both; deterministic for a seed."""
    scenes = sorted({f.scene for f in frames})
    order = sorted(scenes, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())
    target = validation_fraction * len(frames)
    validation: set[str] = set()
    count = 0
    for scene in order:
        if count >= target:
            break
        validation.add(scene)
        count += sum(f.scene == scene for f in frames)
    train = [f for f in frames if f.scene not in validation]
    val = [f for f in frames if f.scene in validation]
    return train, val


def augment(arrays: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """The same flip / 90-degree rotation for every array of a pair (joint augmentation)."""
    k = int(rng.integers(0, 4))
    flip = rng.random() < 0.5
    out = []
    for a in arrays:
        a = np.rot90(a, k)
        out.append(np.ascontiguousarray(a[:, ::-1] if flip else a))
    return out


class CropStream(torch.utils.data.IterableDataset):
    """Endless random crops, each a dict: degraded low-res, clean low-res, clean high-res and
    the noiseless recorded low-res frame on the clean crop's [-1, 1] scale; the noise model
    added (`noise`: gain, offset on the [0, 1] scale); with `noise_estimate`, also the one
    estimated from the degraded crop as the pipeline estimates a frame's (`noise_estimate`)
    and the crop's fitted signal range (`fit`: low, high on that scale, as the pipeline fits
    a frame).

    Frames are read lazily and kept once in memory, normalised to [0, 1] float16
    (half the footprint of float32); crops are degraded on the fly.
    """

    def __init__(self, frames: list[FrameInfo], hr_crop: int, seed: int, degradation: DegradationConfig,
                 noise_estimate: bool = False):
        if hr_crop % SCALE:
            raise ValueError(f"high-res crop {hr_crop} must be a multiple of {SCALE}")
        self.frames = frames
        self.hr_crop = hr_crop
        self.seed = seed
        self.degradation = degradation
        # the estimate and the fit feed only a noise-aware stage 1: spared on the CLSR's hot path
        self.noise_estimate = noise_estimate
        self._cache: dict[tuple[Path, int], np.ndarray] = {}

    def frame(self, info: FrameInfo) -> np.ndarray:
        key = (info.path, info.downsample)
        if key not in self._cache:
            self._cache[key] = area_downsample(load_normalised(info.path), info.downsample).astype(np.float16)
        return self._cache[key]

    def sample(self, rng: np.random.Generator):
        for _ in range(100):  # a frame down-sampled below the crop size is drawn again
            info = self.frames[int(rng.integers(len(self.frames)))]
            image = self.frame(info)
            if info.downsample == 1 or min(image.shape) >= self.hr_crop:
                break
        h, w = image.shape
        c = min(self.hr_crop, h - h % SCALE, w - w % SCALE)
        y, x = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
        crop = augment([image[y : y + c, x : x + c].astype(np.float64)], rng)[0]
        # Degraded crops keep the simulated gain/offset, in the clean frame's intensity scale;
        # the pipeline matches that scale by fitting its range to the smoothed frame.
        made = degrade_with_details(crop, rng, self.degradation)
        sample = {key: torch.from_numpy(getattr(made, key) * 2.0 - 1.0)[None]
                  for key in ("degraded", "clean_lr", "clean_hr", "noiseless")}
        sample["noise"] = torch.tensor([made.noise.gain, made.noise.offset], dtype=torch.float32)
        if self.noise_estimate:
            fit = IntensityMap.fit(made.degraded, smoothing=SIGNAL_SMOOTHING)
            estimate = frame_noise(made.degraded)[0]
            sample["noise_estimate"] = torch.tensor([estimate.gain, estimate.offset], dtype=torch.float32)
            sample["fit"] = torch.tensor([fit.low, fit.high], dtype=torch.float32)
        return sample

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        rng = np.random.default_rng([self.seed, rank, info.id if info else 0])
        while True:
            yield self.sample(rng)

    def fixed_batch(self, count: int, seed: int) -> dict[str, torch.Tensor]:
        """A reproducible set of crops (validation)."""
        rng = np.random.default_rng(seed)
        samples = [self.sample(rng) for _ in range(count)]
        return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}
