"""Clean frames for evaluation and training: loading on a [0, 1] scale, and a training run's
validation frames (below training and evaluation, which both use them)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from napari_etdms.io import read_frame
from napari_etdms.stage1.intensity import IntensityMap


def load_normalised(path: Path) -> np.ndarray:
    """One frame on [0, 1] by its robust range; grey stored as RGB(A) is taken as grey, and
    anything else that is not one greyscale frame (colour, stacks, tiny) is a clear error."""
    from napari_etdms.engine.pipeline import InputError, prepare_frame

    try:
        data = prepare_frame(read_frame(path).data)
    except InputError as err:
        raise ValueError(f"{path}: {err}") from None
    mapping = IntensityMap.fit(data)
    return np.clip((mapping.forward(data) + 1.0) * 0.5, -0.05, 1.05)


# Noisy frames serve as targets or ground truths only after an area down-sampling by one of
# these factors averages their noise away (the noise std halves per 2x for white noise).
TRUTH_DOWNSAMPLING = (2, 4)


def estimate_noise(image01: np.ndarray) -> float:
    """Gaussian noise sigma of a [0, 1] frame (wavelet MAD estimator, scikit-image)."""
    from skimage.restoration import estimate_sigma

    return float(estimate_sigma(image01))


def area_downsample(image: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return image
    h, w = image.shape[0] - image.shape[0] % factor, image.shape[1] - image.shape[1] % factor
    return image[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def load_ground_truth(path: Path, max_noise: float | None) -> tuple[np.ndarray, int]:
    """A frame as a ground truth: `load_normalised`, and when its noise is above `max_noise`,
    area down-sampled by the smallest factor of TRUTH_DOWNSAMPLING that brings it under (else
    the largest). A noisy truth charges every method that removes noise for the truth's own
    noise. Returns the image and the factor used."""
    image = load_normalised(path)
    if max_noise is None or estimate_noise(image) <= max_noise:
        return image, 1
    for factor in TRUTH_DOWNSAMPLING:
        smaller = area_downsample(image, factor)
        if estimate_noise(smaller) <= max_noise:
            break
    return smaller, factor


def validation_frames(split_file: str | Path, frames_dir: str | Path | None = None) -> list[Path]:
    """The validation frames of a run's split.json. The split records each frame's path where
    it was trained; `frames_dir`, when given, is the folder that now holds them (found by file
    name, in preference to the recorded paths)."""
    rows = json.loads(Path(split_file).read_text())["validation"]
    recorded = [Path(row["path"]) for row in rows]
    if frames_dir is not None:
        names = [path.name for path in recorded]
        if len(set(names)) < len(names):
            twice = next(name for name in names if names.count(name) > 1)
            raise ValueError(f"{split_file}: two validation frames are named {twice}, so they cannot be found "
                             "by name in --frames-dir; run without it, from the recorded paths")
        recorded = [Path(frames_dir) / name for name in names]
    paths, missing = [], []
    for path in recorded:
        (paths if path.is_file() else missing).append(path)
    if missing:
        where = f"in {frames_dir}" if frames_dir is not None else "at the paths it records"
        raise FileNotFoundError(f"{len(missing)} of the {len(rows)} validation frames of {split_file} are not {where} "
                                f"(first: {missing[0].name}); give the folder that holds them (--frames-dir)")
    return paths
