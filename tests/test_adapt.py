"""Adapting stage 1 to the user's frames (`etdms adapt`, training/adapt.py)."""

import hashlib
import json
import threading

import numpy as np
import pytest
import tifffile
import torch
from conftest import sem_like

from napari_etdms.cli import EXIT_ERROR, EXIT_NOT_KEPT, EXIT_OK, main
from napari_etdms.engine.tiling import Cancelled
from napari_etdms.io import read_provenance
from napari_etdms.training.adapt import (
    VALIDATION_ROWS,
    Adaptation,
    AdaptError,
    AdaptFrame,
    adapt,
    validation_pairs,
    work_folder,
)
from napari_etdms.training.loop import CheckpointMismatch
from napari_etdms.training.recipes import neighbour_pairs
from napari_etdms.weights import resolve


def spiky_frame(shape=(192, 160), seed=0) -> np.ndarray:
    """An 8-bit SEM-like frame from a detector with impulsive spikes (not in any training noise)."""
    rng = np.random.default_rng(seed)
    frame = sem_like(shape, np.float32, seed=seed)
    frame = np.clip(frame + (rng.random(shape) < 0.03) * rng.uniform(0.3, 0.8, shape), 0, 1)
    return (frame * 255).astype(np.uint8)


@pytest.fixture
def frame_file(tmp_path):
    path = tmp_path / "frames" / "spiky.tif"
    path.parent.mkdir()
    tifffile.imwrite(path, spiky_frame())
    return path


def test_neighbour_pairs_take_their_pixels_from_different_rows_of_each_cell():
    h, w = 8, 12
    index = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w).repeat(3, 1, 1, 1)
    first, second, pick = neighbour_pairs(index, torch.Generator().manual_seed(0))
    assert first.shape == second.shape == (3, 1, h // 2, w // 2)
    rows1, cols1 = first // w, first % w
    rows2, cols2 = second // w, second % w
    cell_rows, cell_cols = torch.arange(h // 2).view(-1, 1) * 2, torch.arange(w // 2).view(1, -1) * 2
    for rows, cols in ((rows1, cols1), (rows2, cols2)):  # each pixel inside its own 2x2 cell
        assert ((rows - cell_rows >= 0) & (rows - cell_rows <= 1)).all()
        assert ((cols - cell_cols >= 0) & (cols - cell_cols <= 1)).all()
    assert (rows1 != rows2).all()  # never the same scan line
    for rows in (rows1, rows2):  # each sub-image row is one scan line (its offset and correlation kept)
        assert (rows == rows[..., :1]).all()
    assert len({tuple(c.flatten().tolist()) for c in cols1 - cell_cols}) > 1  # the column is drawn too
    again = pick(index * 2)  # the same pixels from another frame
    assert torch.equal(again[0], first * 2) and torch.equal(again[1], second * 2)


def test_the_held_out_band_has_detail_and_no_training_crop_touches_it():
    image = spiky_frame((400, 300))
    image[-150:] = 0  # a black bottom, as under many Zeiss frames' data zones
    frame = AdaptFrame.from_image(image, "f")
    assert frame.band + VALIDATION_ROWS // 2 <= 250  # under half of the band is black
    assert frame.pieces == (0, 128)  # 300 px wide: two 128 px pieces
    starts = frame.crop_starts()
    assert all(s + 128 <= frame.band or s >= frame.band + VALIDATION_ROWS for s in starts)
    assert len(starts) > 0 and starts.max() == 400 - 128
    pairs = validation_pairs([frame])
    assert pairs["first"].shape == (2, 1, VALIDATION_ROWS // 2, 64)
    band = torch.from_numpy(frame.normalised[frame.band : frame.band + VALIDATION_ROWS])
    assert set(pairs["first"].flatten().tolist()) <= set(band.flatten().tolist())
    plain = AdaptFrame.from_image(spiky_frame((400, 300)), "g")
    assert plain.band == 400 - VALIDATION_ROWS  # with detail everywhere: the bottom rows


def test_frames_without_detail_to_hold_out_are_refused():
    image = spiky_frame()
    image[:, :] = np.where(np.arange(image.shape[1]) % 2, 255, 0)  # two values only: every pixel extreme
    with pytest.raises(AdaptError, match="no held-out rows with content"):
        validation_pairs([AdaptFrame.from_image(image, "f")])


def test_adapt_cli_writes_weights_with_provenance_that_infer_uses(frame_file, noise_aware_weights, tmp_path,
                                                                   capsys):
    out = tmp_path / "weights" / "my-detector"
    code = main(["adapt", str(frame_file), "-o", str(out), "-w", str(noise_aware_weights.folder),
                 "--iterations", "2", "--keep-anyway"])
    assert code == EXIT_OK
    entry = resolve(out)
    assert entry.name == "my-detector"
    record = json.loads((out / "adaptation.json").read_text())
    assert record["base"]["hash"] == noise_aware_weights.short_hash and "Neighbor2Neighbor" in record["method"]
    assert record["iterations"] == 2 and record["loss_curve"][-1][0] == 2
    assert record["sources"][0]["sha256"] == hashlib.sha256(frame_file.read_bytes()).hexdigest()
    assert len(record["frames"][0]["pixels_sha256"]) == 64 and record["minutes"] >= 0
    assert {"pair_loss_base", "pair_loss_adapted"} <= set(record)
    # stage 2 is the base's, bit for bit; stage 1 is new
    assert entry.files["clsr"]["sha256"] == noise_aware_weights.files["clsr"]["sha256"]
    assert entry.files["denoiser"]["sha256"] != noise_aware_weights.files["denoiser"]["sha256"]
    assert not work_folder(out).exists()
    assert "etdms infer -w" in capsys.readouterr().out

    results = tmp_path / "results"
    assert main(["infer", str(frame_file), "-o", str(results), "-w", str(out), "--no-sr"]) == EXIT_OK
    provenance = read_provenance(results / "spiky_denoised.tif")["provenance"]
    assert provenance["weights"]["name"] == "my-detector" and provenance["weights"]["hash"] == entry.short_hash
    adapted_from = provenance["weights"]["adapted_from"]
    assert adapted_from["base"]["hash"] == noise_aware_weights.short_hash and adapted_from["iterations"] == 2


def test_adapting_one_evaluation_weights_keeps_their_stage2_and_preset(frame_file, regression_weights, tmp_path):
    out = tmp_path / "weights" / "my-detector-v3"
    assert main(["adapt", str(frame_file), "-o", str(out), "-w", str(regression_weights.folder),
                 "--iterations", "2", "--keep-anyway"]) == EXIT_OK
    entry = resolve(out)
    assert entry.config.stage2 == "regression" and entry.recommended == regression_weights.recommended
    assert entry.files["clsr"]["sha256"] == regression_weights.files["clsr"]["sha256"]
    results = tmp_path / "results"
    assert main(["infer", str(frame_file), "-o", str(results), "-w", str(out), "--samples", "2", "--tile", "32",
                 "--overlap", "8"]) == EXIT_OK
    provenance = read_provenance(results / "spiky_etdms_x4.tif")["provenance"]
    assert provenance["stage2"] == "regression" and provenance["weights"]["adapted_from"]["base"]["hash"] == (
        regression_weights.short_hash)


def test_weights_that_are_not_better_are_not_written(frame_file, noise_aware_weights, tmp_path, capsys):
    out = tmp_path / "weights" / "unchanged"
    # no time for a single step: the "adapted" weights are the base, not better on the held-out rows
    code = main(["adapt", str(frame_file), "-o", str(out), "-w", str(noise_aware_weights.folder),
                 "--minutes", "0.000001"])
    assert code == EXIT_NOT_KEPT
    assert "not kept" in capsys.readouterr().out
    assert not out.exists() and not work_folder(out).exists()


def test_a_corrupt_frame_is_a_clear_error_before_any_training(frame_file, noise_aware_weights, tmp_path, capsys):
    broken = frame_file.parent / "broken.tif"
    broken.write_bytes(b"II*\x00" + b"\x00" * 20)
    out = tmp_path / "weights" / "never"
    code = main(["adapt", str(frame_file.parent), "-o", str(out), "-w", str(noise_aware_weights.folder)])
    assert code == EXIT_ERROR
    assert "broken.tif" in capsys.readouterr().err
    assert not out.exists() and not work_folder(out).exists()


def test_a_frame_too_small_to_hold_out_rows_is_refused():
    with pytest.raises(AdaptError, match="too small to adapt on"):
        AdaptFrame.from_image(spiky_frame((150, 160)), "small")


def test_cancel_leaves_no_weights_folder_and_no_work(noise_aware_weights, tmp_path):
    cancel = threading.Event()
    out = tmp_path / "weights" / "cancelled"
    with pytest.raises(Cancelled):
        adapt([AdaptFrame.from_image(spiky_frame(), "f")], out, noise_aware_weights.folder, iterations=50,
              progress=lambda done, total: cancel.set(), cancel=cancel)
    assert not out.exists() and not work_folder(out).exists()
    assert list((tmp_path / "weights").iterdir()) == []


def test_an_interrupted_adaptation_resumes_only_on_the_same_frames_and_base(noise_aware_weights, tmp_path):
    from napari_etdms.training.adapt import SETTINGS

    frame = AdaptFrame.from_image(spiky_frame(), "f")
    settings = SETTINGS.model_copy(update={"iterations": 1})
    first = Adaptation([frame], noise_aware_weights, tmp_path / "work", settings)
    assert first.train(show_progress=False) == 1
    resumed = Adaptation([frame], noise_aware_weights, tmp_path / "work", settings)
    assert resumed.iteration == 1
    for name, value in first.ema.module.state_dict().items():
        assert torch.equal(value, resumed.ema.module.state_dict()[name])
    other = AdaptFrame.from_image(spiky_frame(seed=1), "g")
    with pytest.raises(CheckpointMismatch, match="belongs to another job"):
        Adaptation([other], noise_aware_weights, tmp_path / "work", settings)


def test_the_widget_job_adapts_on_every_slice_of_a_stack(noise_aware_weights, tmp_path):
    from napari_etdms.plugin.worker import AdaptJob, Progress, adapt_job

    stack = [spiky_frame(seed=0), spiky_frame(seed=1)]
    job = AdaptJob(stack, "stack", str(noise_aware_weights.folder), tmp_path / "adapted", "cpu", 10.0, 2)
    run = adapt_job(job, threading.Event())
    reports = []
    try:
        while True:
            reports.append(next(run))
    except StopIteration as done:
        outcome = done.value
    assert [r.done for r in reports] == [1, 2] and all(isinstance(r, Progress) for r in reports)
    assert [f["name"] for f in outcome.record["frames"]] == ["stack[0]", "stack[1]"]
    assert outcome.record["iterations"] == 2 and outcome.record["sources"] == [{"layer": "stack"}]


def test_a_cancel_after_the_last_step_still_leaves_nothing(noise_aware_weights, tmp_path):
    cancel = threading.Event()
    out = tmp_path / "weights" / "late"
    with pytest.raises(Cancelled):  # pressed during the final validation or the writing
        adapt([AdaptFrame.from_image(spiky_frame(), "f")], out, noise_aware_weights.folder, iterations=1,
              keep_anyway=True, progress=lambda done, total: cancel.set(), cancel=cancel)
    assert list((tmp_path / "weights").iterdir()) == []
