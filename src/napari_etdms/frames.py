"""Clean frames for evaluation and training: loading on a [0, 1] scale, and a training run's
validation frames (below training and evaluation, which both use them)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .intensity import IntensityMap
from .io import read_frame


def load_normalised(path: Path) -> np.ndarray:
    """One frame on [0, 1] by its robust range; grey stored as RGB(A) is taken as grey, and
    anything else that is not one greyscale frame (colour, stacks, tiny) is a clear error."""
    from .pipeline import InputError, prepare_frame

    try:
        data = prepare_frame(read_frame(path).data)
    except InputError as err:
        raise ValueError(f"{path}: {err}") from None
    mapping = IntensityMap.fit(data)
    return np.clip((mapping.forward(data) + 1.0) * 0.5, -0.05, 1.05)



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
