"""`etdms infer` on a dask.distributed cluster: a real scheduler and worker processes on 127.0.0.1."""

import numpy as np
import pytest
import tifffile
from conftest import sem_like

from napari_etdms.cli import EXIT_ERROR, EXIT_OK, main

distributed = pytest.importorskip("distributed")

QUICK = ["--sampler", "ddim", "--steps", "2", "--tile", "32", "--overlap", "8"]


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """--threads sets this process's thread count: give the other tests theirs back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def folder(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        tifffile.imwrite(frames / f"frame{i}.tif", sem_like((40, 48), np.uint16, seed=i))
    return frames


def outputs(out_dir):
    return {path.name: tifffile.imread(path) for path in sorted(out_dir.glob("*.tif"))}


def test_a_running_scheduler_with_two_workers_gives_the_serial_arrays(folder, tiny_weights, tmp_path, capsys):
    weights = ["-w", str(tiny_weights.folder), "--threads", "1"]  # float sums depend on the thread count
    assert main(["infer", str(folder), "-o", str(tmp_path / "serial"), *weights, *QUICK]) == EXIT_OK
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tcp://127.0.0.1:")
        code = main(["infer", str(folder), "-o", str(tmp_path / "cluster"), *weights, *QUICK, "--scheduler", address])
    assert code == EXIT_OK
    serial, clustered = outputs(tmp_path / "serial"), outputs(tmp_path / "cluster")
    assert len(serial) == 12 and serial.keys() == clustered.keys()
    for name in serial:
        assert np.array_equal(serial[name], clustered[name]), name
    assert "[3/3]" in capsys.readouterr().out  # progress aggregated over the files


def test_local_workers_report_a_failing_file_and_process_the_others(folder, tiny_weights, tmp_path, capsys):
    (folder / "broken.tif").write_bytes(b"II*\x00" + b"\x00" * 20)
    out = tmp_path / "out"
    code = main(["infer", str(folder), "-o", str(out), "-w", str(tiny_weights.folder), *QUICK, "--no-sr",
                 "--workers", "2"])
    assert code == EXIT_ERROR
    err = capsys.readouterr().err
    assert "broken.tif: error: ReadError" in err and "1 of 4 file(s) failed" in err
    assert sorted(p.name for p in out.glob("*_denoised.tif")) == [f"frame{i}_denoised.tif" for i in range(3)]
    assert not list(out.glob("broken*"))


def test_scheduler_and_workers_are_one_choice(folder, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["infer", str(folder), "-o", str(tmp_path / "o"), "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"])
    assert exit_info.value.code == 2
