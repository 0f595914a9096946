"""OME-Zarr in and out: the same arrays as the in-memory run, multiscale with the pixel size,
written as one set, opened by the napari reader."""

import os

import numpy as np
import pytest
from conftest import sem_like

from napari_etdms.cli import main
from napari_etdms.io import read_frame, read_provenance, write_tiff

pytest.importorskip("ome_zarr", reason="the zarr extra is part of the test extra")  # CI installs it

QUICK = ["--sampler", "dpmpp-sde", "--steps", "2", "--tile", "32", "--overlap", "8", "--device", "cpu"]
FIELDS = ["denoised", "etdms_x4", "bicubic_x4", "denoised_bicubic_x4", "std_x4"]


def _run(tmp_path, source, out, *extra):
    return main(["infer", str(source), "-o", str(out), *QUICK, *extra])


@pytest.fixture
def frame_file(tmp_path):
    path = tmp_path / "in" / "frame.tif"
    path.parent.mkdir()
    write_tiff(path, sem_like((200, 72), np.uint16), 10.0, {})  # several tile rows, and a pyramid
    return path


def test_zarr_output_matches_the_in_memory_run_with_pixel_size_and_provenance(tiny_weights, frame_file, tmp_path):
    weights = ["-w", str(tiny_weights.folder), "--samples", "2"]
    assert _run(tmp_path, frame_file, tmp_path / "tif", *weights) == 0
    assert _run(tmp_path, frame_file, tmp_path / "zarr", *weights, "--output-format", "zarr") == 0
    assert sorted(os.listdir(tmp_path / "zarr")) == sorted(f"frame_{f}.ome.zarr" for f in FIELDS)  # no work folder
    for field in FIELDS:
        in_memory = read_frame(tmp_path / "tif" / f"frame_{field}.tif")
        on_disk = read_frame(tmp_path / "zarr" / f"frame_{field}.ome.zarr")
        np.testing.assert_array_equal(on_disk.data, in_memory.data)
        assert on_disk.pixel_size_nm == pytest.approx(10.0 if field == "denoised" else 2.5)
    info = read_provenance(tmp_path / "zarr" / "frame_etdms_x4.ome.zarr")
    assert info["provenance"]["weights"]["name"] == "tiny-test" and info["provenance"]["layer"] == "super_resolved"
    assert info["provenance"]["sampler"] == "dpmpp-sde" and info["provenance"]["steps"] == 2


def test_a_zarr_input_gives_zarr_outputs_and_they_are_never_taken_as_inputs(tiny_weights, frame_file, tmp_path):
    weights = ["-w", str(tiny_weights.folder)]
    assert _run(tmp_path, frame_file, tmp_path / "first", *weights, "--output-format", "zarr") == 0
    denoised = tmp_path / "first" / "frame_denoised.ome.zarr"
    out = tmp_path / "second"
    assert _run(tmp_path, denoised, out, *weights) == 0  # an OME-Zarr input: zarr outputs by default
    result = read_frame(out / "frame_denoised_etdms_x4.ome.zarr")
    assert result.data.shape == (800, 288) and result.pixel_size_nm == pytest.approx(2.5)
    # a rerun on the folder holding them finds no input: all are this package's outputs
    assert main(["infer", str(out), "-o", str(out), *QUICK, *weights]) == 1


def test_existing_zarr_outputs_refuse_the_set_and_overwrite_replaces_them(tiny_weights, frame_file, tmp_path,
                                                                          capsys):
    out = tmp_path / "out"
    existing = out / "frame_etdms_x4.ome.zarr"
    existing.mkdir(parents=True)
    (existing / "old-file").write_text("old")
    args = ["-w", str(tiny_weights.folder), "--output-format", "zarr", "--no-sr"]
    assert _run(tmp_path, frame_file, out, *args) == 1
    assert "exists already" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == ["frame_etdms_x4.ome.zarr"]  # nothing else was written
    assert _run(tmp_path, frame_file, out, *args, "--overwrite") == 0
    # an x4 output this run (--no-sr) does not make goes too: the set never mixes two runs
    assert sorted(os.listdir(out)) == ["frame_bicubic_x4.ome.zarr", "frame_denoised.ome.zarr",
                                       "frame_denoised_bicubic_x4.ome.zarr"]
    assert _run(tmp_path, frame_file, out, "-w", str(tiny_weights.folder), "--output-format", "zarr",
                "--overwrite") == 0
    assert sorted(os.listdir(out)) == sorted(f"frame_{f}.ome.zarr" for f in FIELDS if f != "std_x4")
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # no temporaries or work folders left


def test_a_killed_runs_work_folder_is_removed_by_the_next_run(tiny_weights, frame_file, tmp_path):
    out = tmp_path / "out"
    stale = out / ".frame_denoised.ome.zarr.k1ll3d.part"
    (stale / "scratch").mkdir(parents=True)
    os.utime(stale, (1, 1))
    assert _run(tmp_path, frame_file, out, "-w", str(tiny_weights.folder), "--output-format", "zarr",
                "--no-sr") == 0
    assert not stale.exists()


def test_napari_reader_opens_an_output_as_multiscale_with_its_pixel_size(tiny_weights, frame_file, tmp_path):
    from napari_etdms.plugin.reader import napari_get_reader

    assert _run(tmp_path, frame_file, tmp_path / "out", "-w", str(tiny_weights.folder), "--output-format", "zarr",
                "--no-denoise") == 0
    path = tmp_path / "out" / "frame_etdms_x4.ome.zarr"
    reader = napari_get_reader(str(path))
    [(levels, kwargs, kind)] = reader(str(path))
    assert kind == "image" and kwargs["multiscale"] is True
    assert [level.shape for level in levels] == [(800, 288), (400, 144)]
    assert kwargs["scale"] == pytest.approx((2.5, 2.5)) and kwargs["units"] == ("nm", "nm")
    np.testing.assert_allclose(np.asarray(levels[1]), np.asarray(levels[0]).reshape(400, 2, 144, 2).mean((1, 3)),
                               rtol=1e-6)
    assert kwargs["metadata"]["provenance"]["layer"] == "super_resolved"


def test_reading_a_zarr_that_is_not_one_2d_image_is_a_clear_error(tmp_path):
    import zarr

    from napari_etdms.io import ReadError

    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w").create_array("a", shape=(4, 4), dtype="f4")
    with pytest.raises(ReadError, match="cannot read it as OME-Zarr"):
        read_frame(tmp_path / "plain.zarr")


def test_the_pixel_limit_applies_to_zarr_inputs(tiny_weights, frame_file, tmp_path):
    from napari_etdms.io import ReadError

    assert _run(tmp_path, frame_file, tmp_path / "out", "-w", str(tiny_weights.folder), "--output-format", "zarr",
                "--no-sr") == 0
    with pytest.raises(ReadError, match="more than the limit"):
        read_frame(tmp_path / "out" / "frame_denoised.ome.zarr", max_pixels=100)


def test_a_disk_too_small_for_the_run_is_refused_before_compute(tiny_weights, frame_file, tmp_path, capsys,
                                                                monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    out = tmp_path / "out"
    assert _run(tmp_path, frame_file, out, "-w", str(tiny_weights.folder), "--output-format", "zarr") == 1
    assert "of disk for its OME-Zarr outputs" in capsys.readouterr().err
    assert os.listdir(out) == []


def test_napari_opens_an_output_as_a_multiscale_layer_at_its_pixel_size(make_napari_viewer, tiny_weights,
                                                                         frame_file, tmp_path):
    assert _run(tmp_path, frame_file, tmp_path / "out", "-w", str(tiny_weights.folder), "--output-format", "zarr",
                "--no-denoise") == 0
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(tmp_path / "out" / "frame_etdms_x4.ome.zarr"), plugin="napari-etdms")
    assert layer.multiscale and len(layer.data) == 2 and layer.data[0].shape == (800, 288)
    assert tuple(layer.scale) == pytest.approx((2.5, 2.5)) and [str(u) for u in layer.units] == ["nanometer"] * 2
    assert layer.name == "frame_etdms_x4"


def test_an_overwrite_that_fails_midway_puts_the_old_output_back(tmp_path, monkeypatch):
    from napari_etdms.io import write_files_atomically

    old = tmp_path / "out.ome.zarr"
    old.mkdir()
    (old / "old-file").write_text("old")
    real_rename = os.rename

    def rename(src, dst):
        if str(dst) == str(old) and "old-file" not in os.listdir(src):  # the new output going in
            raise OSError("disk gone")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="disk gone"):
        write_files_atomically({old: lambda tmp: open(os.path.join(tmp, "new-file"), "w").close()},
                               overwrite=True, folders=True)
    assert os.listdir(old) == ["old-file"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # the new one's temporary is gone


def test_a_folder_that_appears_during_the_write_is_not_replaced_without_overwrite(tmp_path):
    from napari_etdms.io import write_files_atomically

    target = tmp_path / "out.ome.zarr"

    def write(tmp):
        target.mkdir()  # another run published meanwhile
        (target / "theirs").write_text("")

    with pytest.raises(FileExistsError):
        write_files_atomically({target: write}, folders=True)
    assert os.listdir(target) == ["theirs"]


def test_a_long_run_keeps_its_work_folder_fresh(tmp_path, monkeypatch):
    import time

    from napari_etdms.engine.batch import _keeping_alive

    folder = tmp_path / "work"
    folder.mkdir()
    os.utime(folder, (1, 1))
    seen = []
    relay = _keeping_alive(folder, lambda *a: seen.append(a), every_s=0.0)
    time.sleep(0.01)
    relay(1, 2, "super-resolve")
    assert seen == [(1, 2, "super-resolve")] and folder.stat().st_mtime > time.time() - 60


def test_a_thin_frame_gets_a_pyramid_without_failing(tmp_path):
    import zarr

    from napari_etdms.io.ome_zarr import OmeZarrOutputs

    outputs = OmeZarrOutputs(tmp_path, ["denoised"])
    staged = outputs.finish({"denoised": np.ones((3, 5000), np.float32)}, {"denoised": 2.0}, {})
    group = zarr.open_group(str(staged["denoised"]), mode="r")
    assert [group[str(i)].shape for i in range(len(list(group.array_keys())))] == [(3, 5000), (1, 2500)]


def test_the_reader_opens_a_3d_zarr_as_a_stack_and_read_frame_names_it(tmp_path):
    import zarr
    from ome_zarr.writer import write_image

    from napari_etdms.io import ReadError
    from napari_etdms.plugin.reader import read_sem

    path = tmp_path / "stack.ome.zarr"
    write_image(np.zeros((3, 64, 64), np.float32), zarr.open_group(str(path), mode="w"), axes="zyx")
    [(data, kwargs, kind)] = read_sem(str(path))
    levels = data if kwargs["multiscale"] else [data]
    assert kind == "image" and levels[0].shape == (3, 64, 64) and kwargs["axis_labels"] == ("z", "y", "x")
    with pytest.raises(ReadError, match="expected one 2D image, got shape \\(3, 64, 64\\)"):
        read_frame(path)


def test_one_evaluation_weights_write_their_std_to_zarr_as_in_memory(regression_weights, frame_file, tmp_path):
    """The regression stage 2's own error-std rows and the run's std output are different arrays."""
    args = ["-w", str(regression_weights.folder), "--samples", "2", "--tile", "32", "--overlap", "8",
            "--device", "cpu"]
    assert main(["infer", str(frame_file), "-o", str(tmp_path / "tif"), *args]) == 0
    assert main(["infer", str(frame_file), "-o", str(tmp_path / "zarr"), *args, "--output-format", "zarr"]) == 0
    for field in ("etdms_x4", "std_x4"):
        np.testing.assert_array_equal(read_frame(tmp_path / "zarr" / f"frame_{field}.ome.zarr").data,
                                      read_frame(tmp_path / "tif" / f"frame_{field}.tif").data)
