import subprocess
import sys

import numpy as np
import pytest
import tifffile
from conftest import sem_like

from napari_etdms.cli import main
from napari_etdms.io import read_provenance

QUICK = ["--steps", "2", "--tile", "32", "--overlap", "8"]


@pytest.mark.parametrize("command", [[], ["infer"], ["demo"], ["info"], ["train"]])
def test_help_for_every_command(command):
    proc = subprocess.run([sys.executable, "-m", "napari_etdms.cli", *command, "--help"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "usage: etdms" in proc.stdout


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["infer"])  # -o missing
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2


@pytest.mark.parametrize("option", [["--steps", "0"], ["--samples", "0"], ["--tile", "8"], ["--overlap", "-1"],
                                    ["--batch-size", "0"], ["--steps", "two"]])
def test_bad_run_settings_are_usage_errors_before_any_work(option, tmp_path, capsys):
    frame = tmp_path / "frame.tif"
    frame.write_bytes(b"not read: the settings are refused first")
    with pytest.raises(SystemExit) as exc:
        main(["infer", str(frame), "-o", str(tmp_path / "out"), *option])
    assert exc.value.code == 2 and option[0] in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_infer_writes_all_outputs_with_pixel_size_and_provenance(tiny_weights, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "frame.tif", sem_like((40, 44), np.uint16))
    out = tmp_path / "out"
    assert main(["infer", str(src), "-o", str(out), "-w", str(tiny_weights.folder), *QUICK, "--samples", "2"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "frame_bicubic_x4.tif", "frame_denoised.tif", "frame_denoised_bicubic_x4.tif", "frame_etdms_x4.tif",
        "frame_std_x4.tif",
    ]
    assert tifffile.imread(out / "frame_etdms_x4.tif").shape == (160, 176)
    info = read_provenance(out / "frame_etdms_x4.tif")
    assert info["provenance"]["weights"]["name"] == "tiny-test"
    assert info["provenance"]["samples"] == 2 and info["provenance"]["layer"] == "super_resolved"


def test_x4_pixel_size_is_a_quarter_of_the_input(tiny_weights, tmp_path):
    from napari_etdms.io import write_tiff

    write_tiff(tmp_path / "scaled.tif", sem_like((32, 36), np.uint16), 10.0, {})
    out = tmp_path / "out"
    assert main(["infer", str(tmp_path / "scaled.tif"), "-o", str(out), "-w", str(tiny_weights.folder), *QUICK]) == 0
    assert read_provenance(out / "scaled_denoised.tif")["pixel_size_nm"] == pytest.approx(10.0)
    assert read_provenance(out / "scaled_etdms_x4.tif")["pixel_size_nm"] == pytest.approx(2.5)
    assert read_provenance(out / "scaled_bicubic_x4.tif")["pixel_size_nm"] == pytest.approx(2.5)


def test_batch_continues_after_a_bad_file_and_never_overwrites(tiny_weights, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    (src / "broken.tif").write_bytes(b"II*\x00not a tiff")
    tifffile.imwrite(src / "good.tif", sem_like((32, 32), np.uint8))
    out = tmp_path / "out"
    args = ["infer", str(src), "-o", str(out), "-w", str(tiny_weights.folder), *QUICK, "--no-sr"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "broken.tif: error" in err and "1 of 2 file(s) failed" in err
    assert (out / "good_denoised.tif").is_file()
    before = (out / "good_denoised.tif").read_bytes()
    assert main(args) == 1  # second run: outputs exist, refused
    assert "exists already; --overwrite replaces" in capsys.readouterr().err
    assert (out / "good_denoised.tif").read_bytes() == before
    assert main(args + ["--overwrite"]) == 1  # only the broken file fails now
    assert "good.tif: error" not in capsys.readouterr().err


def test_output_folder_equal_to_input_folder_cannot_clobber_inputs(tiny_weights, tmp_path, capsys):
    tifffile.imwrite(tmp_path / "a.tif", sem_like((32, 32), np.uint8))
    original = (tmp_path / "a.tif").read_bytes()
    main(["infer", str(tmp_path / "a.tif"), "-o", str(tmp_path), "-w", str(tiny_weights.folder), *QUICK, "--no-sr"])
    assert (tmp_path / "a.tif").read_bytes() == original


def test_missing_weights_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NAPARI_ETDMS_WEIGHTS", str(tmp_path))
    assert main(["infer", "-o", str(tmp_path / "o"), "-w", "no-such-model"]) == 1
    assert "weights 'no-such-model' not found" in capsys.readouterr().err


def test_info_lists_versions_and_weights(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "auto device" in out and "weights" in out


@pytest.mark.parametrize("flag, expected", [([], None), (["--consistency"], True), (["--no-consistency"], False)])
def test_data_consistency_flag_defaults_to_the_preset(flag, expected):
    from napari_etdms.cli import build_parser
    from napari_etdms.cli.common import run_options

    args = build_parser().parse_args(["infer", "-o", "out", *flag])
    assert run_options(args)["data_consistency"] is expected


@pytest.mark.parametrize("option, message", [(["--tile", "18"], "tile must be a multiple of 4"),
                                             (["--tile", "32", "--overlap", "32"], "overlap must be in")])
def test_settings_checked_together_are_usage_errors_before_any_work(option, message, tmp_path, capsys):
    frame = tmp_path / "frame.tif"
    frame.write_bytes(b"not read: the settings are refused first")
    with pytest.raises(SystemExit) as exc:
        main(["infer", str(frame), "-o", str(tmp_path / "out"), *option])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_existing_output_refuses_the_whole_set_before_compute(tiny_weights, tmp_path, capsys):
    tifffile.imwrite(tmp_path / "a.tif", sem_like((32, 32), np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_etdms_x4.tif").write_bytes(b"a colleague's file")
    assert main(["infer", str(tmp_path / "a.tif"), "-o", str(out), "-w", str(tiny_weights.folder), *QUICK]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["a_etdms_x4.tif"]  # no new output mixed with the old
    assert "a_etdms_x4.tif exists already" in capsys.readouterr().err


def test_overwrite_replaces_the_set_and_stale_temporaries_are_cleared(tiny_weights, tmp_path):
    import os

    tifffile.imwrite(tmp_path / "a.tif", sem_like((32, 32), np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_denoised.tif").write_bytes(b"old")
    stale = out / ".a_denoised.tif.k1ll3d.part"  # what a killed write leaves
    stale.write_bytes(b"half")
    os.utime(stale, (1, 1))
    fresh = out / ".a_etdms_x4.tif.wr1t1ng.part"  # another process writing now: left alone
    fresh.write_bytes(b"half")
    args = ["infer", str(tmp_path / "a.tif"), "-o", str(out), "-w", str(tiny_weights.folder), *QUICK, "--overwrite"]
    assert main(args) == 0
    assert tifffile.imread(out / "a_denoised.tif").shape == (32, 32)
    assert not stale.exists() and fresh.exists()


def test_an_unusable_output_folder_is_reported_before_compute(tiny_weights, tmp_path, capsys):
    tifffile.imwrite(tmp_path / "a.tif", sem_like((32, 32), np.uint8))
    (tmp_path / "taken").write_text("a file, not a folder")
    assert main(["infer", str(tmp_path / "a.tif"), "-o", str(tmp_path / "taken" / "out"),
                 "-w", str(tiny_weights.folder), *QUICK]) == 2
    err = capsys.readouterr().err
    assert "cannot write outputs there" in err and "a.tif" not in err  # no file was started


def test_rerun_into_the_input_folder_skips_its_own_outputs_and_logs_one_line_per_file(tiny_weights, tmp_path,
                                                                                      capsys):
    tifffile.imwrite(tmp_path / "a.tif", sem_like((32, 32), np.uint8))
    args = ["infer", str(tmp_path), "-o", str(tmp_path), "-w", str(tiny_weights.folder), *QUICK, "--overwrite"]
    assert main(args) == 0
    first = capsys.readouterr()
    assert main(args) == 0  # its outputs are in the folder now, and are not inputs
    second = capsys.readouterr()
    assert second.out.count("done in") == 1 and "a.tif: done" in second.out
    assert sorted(p.name for p in tmp_path.glob("*.tif")) == [
        "a.tif", "a_bicubic_x4.tif", "a_denoised.tif", "a_denoised_bicubic_x4.tif", "a_etdms_x4.tif"]
    # not a terminal (pytest captures it): no progress bar redraws, one line per file, and one
    # line saying what the run computes on
    assert first.err.startswith("running on ") and first.err.count("\n") == 1 and first.out.count("\n") == 1


def test_a_huge_header_is_refused_before_decoding(tiny_weights, tmp_path, capsys):
    # the header declares 100000 x 100000 px, the file holds a few kB: decoding would need 10 GB
    bomb = tmp_path / "bomb.tif"
    tifffile.imwrite(bomb, np.zeros((64, 64), np.uint8), compression="zlib")
    with tifffile.TiffFile(bomb, mode="r+b") as tif:
        for tag in ("ImageWidth", "ImageLength"):
            tif.pages[0].tags[tag].overwrite(100_000)
    tifffile.imwrite(tmp_path / "small.tif", sem_like((64, 64), np.uint8))
    out = tmp_path / "out"
    args = ["infer", str(bomb), str(tmp_path / "small.tif"), "-o", str(out), "-w", str(tiny_weights.folder), *QUICK]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "100000 x 100000 = 10,000,000,000 pixels, more than the limit of 1,073,741,824" in err
    assert (out / "small_etdms_x4.tif").is_file()  # the batch went on
    assert main(args[:2] + ["-o", str(tmp_path / "o2"), "-w", str(tiny_weights.folder), *QUICK,
                            "--max-pixels", "4000"]) == 1
    assert "more than the limit of 4,000" in capsys.readouterr().err
