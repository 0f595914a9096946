from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_etdms.io import ReadError, read_frame, read_provenance, split_databar, write_tiff

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize(
    "name, dtype, pixel_nm",
    [("fei_bse_uint16_databar.tif", np.uint16, 65.1042), ("fei_lungcells_uint8_databar.tif", np.uint8, 134.896)],
)
def test_fei_databar_is_split_off_and_pixel_size_read(name, dtype, pixel_nm):
    frame = read_frame(DATA / name)
    assert frame.data.shape == (1024, 1536) and frame.data.dtype == dtype
    assert frame.databar.shape == (79, 1536)
    assert frame.pixel_size_nm == pytest.approx(pixel_nm, rel=1e-4)
    assert frame.metadata["fei"]["Scan"]["PixelWidth"] > 0
    whole = tifffile.imread(DATA / name)
    assert np.array_equal(np.vstack([frame.data, frame.databar]), whole)  # nothing lost


def test_split_databar_without_metadata_keeps_everything():
    image = np.arange(20).reshape(5, 4)
    scan, bar = split_databar(image, None)
    assert scan is image and bar is None


def test_corrupt_and_unsupported_files(tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00garbage")
    with pytest.raises(ReadError, match="bad.tif: cannot read"):
        read_frame(bad)
    with pytest.raises(ReadError, match="no such file"):
        read_frame(tmp_path / "missing.tif")
    other = tmp_path / "x.jpg"
    other.write_bytes(b"123")
    with pytest.raises(ReadError, match="unsupported file type"):
        read_frame(other)


def test_write_is_atomic_keeps_pixel_size_and_never_overwrites(tmp_path):
    out = tmp_path / "result.tif"
    data = np.random.default_rng(0).random((16, 12)).astype(np.float32)
    write_tiff(out, data, 12.5, {"seed": 3})
    assert np.array_equal(tifffile.imread(out), data)
    info = read_provenance(out)
    assert info["provenance"] == {"seed": 3}
    assert info["pixel_size_nm"] == pytest.approx(12.5, rel=1e-5)
    with pytest.raises(FileExistsError):
        write_tiff(out, data * 0, 12.5, {})
    assert np.array_equal(tifffile.imread(out), data)
    assert [p.name for p in tmp_path.iterdir()] == ["result.tif"]  # no temp files left


def test_written_files_follow_the_umask_like_any_new_file(tmp_path):
    import os

    from napari_etdms.io import write_file_atomically
    from napari_etdms.io.files import _UMASK

    path = write_file_atomically(tmp_path / "out.txt", lambda tmp: Path(tmp).write_text("x"))
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~_UMASK  # mkstemp alone gives 0600: colleagues could not read


def test_a_set_of_files_is_written_all_or_nothing(tmp_path):
    from napari_etdms.io import write_files_atomically

    def fails(tmp):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_files_atomically({tmp_path / "a.txt": lambda tmp: Path(tmp).write_text("a"), tmp_path / "b.txt": fails})
    assert list(tmp_path.iterdir()) == []  # neither file, no temporaries
    (tmp_path / "b.txt").write_text("old")
    with pytest.raises(FileExistsError):
        write_files_atomically({tmp_path / "a.txt": lambda tmp: Path(tmp).write_text("a"),
                                tmp_path / "b.txt": lambda tmp: Path(tmp).write_text("b")})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.txt"] and (tmp_path / "b.txt").read_text() == "old"
