"""Volumes: a stack of slices through `etdms infer` into 3D OME-Zarr outputs, slice by slice,
resumable, the same whether the input is an OME-Zarr or a TIFF stack, serial or on workers."""

import numpy as np
import pytest
import tifffile
from conftest import sem_like

from napari_etdms.cli import main
from napari_etdms.engine import Pipeline, RunSettings
from napari_etdms.engine.volume import volume_slice_noise
from napari_etdms.io.volume import VolumeStore, open_volume

pytest.importorskip("ome_zarr", reason="the zarr extra is part of the test extra")  # CI installs it

SLICES, SHAPE = 6, (40, 36)
QUICK = ["--sampler", "ddim", "--steps", "2", "--tile", "16", "--overlap", "4", "--device", "cpu", "--threads", "1"]
X4 = ("etdms_x4", "bicubic_x4", "denoised_bicubic_x4")


def stack() -> np.ndarray:
    """Slices whose content changes smoothly along z (a structure drifting by a pixel a slice)."""
    base = sem_like((SHAPE[0], SHAPE[1] + SLICES), np.uint16, seed=3)
    return np.stack([base[:, z : z + SHAPE[1]] for z in range(SLICES)])


@pytest.fixture
def zarr_volume(tmp_path):
    path = tmp_path / "in" / "vol.ome.zarr"
    path.parent.mkdir()
    store = VolumeStore(path)
    store.create((SLICES, *SHAPE), pixel_size_nm=8.0, z_spacing_nm=20.0, record={"layer": "input"})
    for z, image in enumerate(stack()):
        store.write_slice(z, image)
    return path


def infer(source, out, weights, *extra):
    return main(["infer", str(source), "-o", str(out), "-w", str(weights.folder), *QUICK, *extra])


def level0(path):
    return VolumeStore(path).level(0, "r")[:]


def test_a_3d_ome_zarr_gives_3d_outputs_each_slice_as_the_pipeline_makes_it(tiny_weights, zarr_volume, tmp_path):
    out = tmp_path / "out"
    assert infer(zarr_volume, out, tiny_weights) == 0
    denoised, x4 = level0(out / "vol_denoised.ome.zarr"), level0(out / "vol_etdms_x4.ome.zarr")
    assert denoised.shape == (SLICES, *SHAPE) and x4.shape == (SLICES, 4 * SHAPE[0], 4 * SHAPE[1])
    import torch

    torch.set_num_threads(1)
    pipeline = Pipeline.from_pretrained(str(tiny_weights.folder), device="cpu")
    settings = RunSettings(sampler="ddim", steps=2, tile=16, overlap=4)
    read = stack().__getitem__
    for z in (0, SLICES - 1):  # each with its noise estimated with its neighbours along z
        noise, how = volume_slice_noise(read, z, SLICES)
        alone = pipeline.run_with(stack()[z], settings, noise=noise)
        np.testing.assert_array_equal(x4[z], alone.super_resolved)
        np.testing.assert_array_equal(denoised[z], alone.denoised)
    volume = open_volume(out / "vol_etdms_x4.ome.zarr", 2**30)
    assert volume.z_spacing_nm == pytest.approx(20.0) and volume.pixel_size_nm == pytest.approx(2.0)
    record = VolumeStore(out / "vol_etdms_x4.ome.zarr").record()
    assert record["weights"]["name"] == "tiny-test" and record["settings"]["seed"] == 0
    assert VolumeStore(out / "vol_etdms_x4.ome.zarr").completed() == set(range(SLICES))


def test_a_tiff_stack_gives_what_its_ome_zarr_gives(tiny_weights, zarr_volume, tmp_path):
    tiff = tmp_path / "in" / "vol.tif"
    tifffile.imwrite(tiff, stack(), imagej=True, resolution=(1 / 0.008, 1 / 0.008),
                     metadata={"spacing": 0.02, "unit": "um", "axes": "ZYX"})
    volume = open_volume(tiff, 2**30)
    assert volume.shape == (SLICES, *SHAPE) and volume.z_spacing_nm == pytest.approx(20.0)
    assert infer(zarr_volume, tmp_path / "from-zarr", tiny_weights) == 0
    assert infer(tiff, tmp_path / "from-tiff", tiny_weights) == 0
    for name in ("denoised", *X4):
        np.testing.assert_array_equal(level0(tmp_path / "from-tiff" / f"vol_{name}.ome.zarr"),
                                      level0(tmp_path / "from-zarr" / f"vol_{name}.ome.zarr"))


def test_a_stopped_run_resumes_with_only_the_missing_slices(tiny_weights, zarr_volume, tmp_path, monkeypatch):
    computed = []
    run_with = Pipeline.run_with

    def counted(self, image, settings, **kwargs):
        if len(computed) == 2 and not resumed:
            raise KeyboardInterrupt  # the run is stopped during its third slice
        computed.append(image)
        return run_with(self, image, settings, **kwargs)

    monkeypatch.setattr(Pipeline, "run_with", counted)
    resumed = False
    out = tmp_path / "out"
    assert infer(zarr_volume, out, tiny_weights) == 1  # "interrupted"
    assert VolumeStore(out / "vol_etdms_x4.ome.zarr").completed() == {0, 1}
    resumed = True
    assert infer(zarr_volume, out, tiny_weights) == 0
    assert len(computed) == SLICES  # 2 before the stop, the 4 missing after it
    monkeypatch.setattr(Pipeline, "run_with", run_with)
    assert infer(zarr_volume, tmp_path / "in-one-go", tiny_weights) == 0
    for name in ("denoised", *X4):
        np.testing.assert_array_equal(level0(out / f"vol_{name}.ome.zarr"),
                                      level0(tmp_path / "in-one-go" / f"vol_{name}.ome.zarr"))


def test_a_store_of_another_run_is_refused_and_overwrite_starts_over(tiny_weights, zarr_volume, tmp_path, capsys):
    out = tmp_path / "out"
    assert infer(zarr_volume, out, tiny_weights) == 0
    assert infer(zarr_volume, out, tiny_weights, "--seed", "7") == 1
    assert "made by another run (settings differ); --overwrite starts over" in capsys.readouterr().err
    assert infer(zarr_volume, out, tiny_weights, "--seed", "7", "--overwrite") == 0
    assert VolumeStore(out / "vol_etdms_x4.ome.zarr").record()["settings"]["seed"] == 7


def test_workers_give_the_arrays_of_the_serial_run(tiny_weights, zarr_volume, tmp_path):
    pytest.importorskip("distributed", reason="the distributed extra is part of the test extra")
    assert infer(zarr_volume, tmp_path / "serial", tiny_weights) == 0
    assert infer(zarr_volume, tmp_path / "workers", tiny_weights, "--workers", "2") == 0
    for name in ("denoised", *X4):
        np.testing.assert_array_equal(level0(tmp_path / "workers" / f"vol_{name}.ome.zarr"),
                                      level0(tmp_path / "serial" / f"vol_{name}.ome.zarr"))


def test_a_disk_too_small_for_the_slices_is_refused_before_compute(tiny_weights, zarr_volume, tmp_path, capsys,
                                                                   monkeypatch):
    import shutil
    from collections import namedtuple

    from napari_etdms.engine import volume as volume_module

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(volume_module.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    computed = []
    monkeypatch.setattr(Pipeline, "run_with", lambda *a, **k: computed.append(1))
    assert infer(zarr_volume, tmp_path / "out", tiny_weights) == 1
    assert "GiB of disk" in capsys.readouterr().err and computed == []
    assert shutil is volume_module.shutil


def test_the_napari_reader_opens_a_3d_output_lazily_with_its_scale(tiny_weights, zarr_volume, tmp_path):
    from napari_etdms.plugin.reader import napari_get_reader

    assert infer(zarr_volume, tmp_path / "out", tiny_weights, "--no-denoise") == 0
    path = tmp_path / "out" / "vol_etdms_x4.ome.zarr"
    [(data, kwargs, kind)] = napari_get_reader(str(path))(str(path))
    assert kind == "image" and kwargs["axis_labels"] == ("z", "y", "x")
    assert kwargs["scale"] == pytest.approx((20.0, 2.0, 2.0)) and kwargs["units"] == ("nm", "nm", "nm")
    assert data.shape == (SLICES, 4 * SHAPE[0], 4 * SHAPE[1]) and type(data).__module__.startswith("dask")


def test_frames_rgb_images_and_single_pages_are_not_stacks(tmp_path):
    rgb, page, corrupt = tmp_path / "rgb.tif", tmp_path / "page.tif", tmp_path / "corrupt.tif"
    tifffile.imwrite(rgb, np.zeros((32, 32, 3), np.uint8), photometric="rgb")
    tifffile.imwrite(page, np.zeros((1, 32, 32), np.uint16))
    corrupt.write_bytes(b"II*\x00" + b"\x00" * 12)
    assert open_volume(rgb, 2**30) is None and open_volume(page, 2**30) is None
    from napari_etdms.io import ReadError

    with pytest.raises(ReadError, match="corrupt.tif"):
        open_volume(corrupt, 2**30)


def test_a_stack_is_refused_as_tiff_output_before_any_work(tiny_weights, zarr_volume, tmp_path, capsys):
    assert infer(zarr_volume, tmp_path / "out", tiny_weights, "--output-format", "tiff") == 1
    assert "a stack of slices is written as 3D OME-Zarr" in capsys.readouterr().err
    assert not (tmp_path / "out" / "vol_etdms_x4.ome.zarr").exists()


def test_a_rerun_into_the_folder_of_the_outputs_does_not_take_them_as_stacks(tiny_weights, zarr_volume, tmp_path):
    from napari_etdms.io import is_our_output, read_provenance

    out = zarr_volume.parent  # the outputs land beside the input
    assert infer(zarr_volume, out, tiny_weights) == 0
    x4 = out / "vol_etdms_x4.ome.zarr"
    info = read_provenance(x4)
    assert is_our_output(x4) and info["pixel_size_nm"] == pytest.approx(2.0)
    assert info["provenance"]["weights"]["name"] == "tiny-test"
    assert not is_our_output(zarr_volume)
    computed = len(VolumeStore(x4).completed())
    assert infer(out, out, tiny_weights) == 0  # the folder: only the input stack, already complete
    assert len(VolumeStore(x4).completed()) == computed == SLICES
