import pytest
from conftest import copy_with_preset, sem_like

from napari_etdms import Pipeline, WeightsError
from napari_etdms.weights import available, load_state, resolve, sha256_of, write_entry


def test_round_trip_through_a_weights_folder(tiny_weights):
    entry = resolve(tiny_weights.folder)
    assert entry.name == "tiny-test" and set(entry.files) == {"denoiser", "clsr"}
    pipe = Pipeline.from_pretrained(tiny_weights.folder / "weights.json", device="cpu")
    assert pipe.recommended == {"sampler": "ddim", "steps": 4, "data_consistency": True}
    meta = pipe.run(sem_like((32, 32)), tile=32, overlap=8).metadata
    assert meta["weights"]["name"] == "tiny-test" and meta["weights"]["hash"] == entry.short_hash
    assert meta["sampler"] == "ddim" and meta["steps"] == 4


def test_exporting_the_same_weights_twice_gives_the_same_files(tiny_weights, tmp_path):
    states = {part: load_state(tiny_weights, part) for part in tiny_weights.files}
    again = write_entry(tmp_path / "again", "tiny-test", tiny_weights.config, states, {"sampler": "ddim", "steps": 4})
    assert {part: again.files[part]["sha256"] for part in again.files} == {
        part: tiny_weights.files[part]["sha256"] for part in tiny_weights.files}
    assert again.short_hash == tiny_weights.short_hash


def test_data_consistency_follows_the_weights_preset_unless_given(tiny_weights, tmp_path):
    entry = copy_with_preset(tiny_weights, tmp_path / "free", "free", {"sampler": "ddim", "steps": 2,
                                                                       "data_consistency": False})
    pipe = Pipeline.from_pretrained(entry.folder, device="cpu")
    frame = sem_like((32, 32))
    off = pipe.run(frame, tile=32, overlap=8)
    on = pipe.run(frame, tile=32, overlap=8, data_consistency=True)
    assert off.metadata["data_consistency"] is False and on.metadata["data_consistency"] is True
    # an untrained CLSR ignores the input's block means unless they are imposed
    assert on.consistency_psnr > 60 > off.consistency_psnr


def test_env_var_registers_a_folder_by_name(tiny_weights, monkeypatch):
    monkeypatch.setenv("NAPARI_ETDMS_WEIGHTS", str(tiny_weights.folder.parent))
    assert "tiny-test" in available()
    assert Pipeline.from_pretrained("tiny-test", device="cpu").weights.name == "tiny-test"


def test_unknown_name_lists_what_is_known(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_ETDMS_WEIGHTS", str(tmp_path))
    with pytest.raises(WeightsError, match="weights 'nope' not found"):
        resolve("nope")


def test_missing_file_is_named(tiny_weights):
    (tiny_weights.folder / "clsr.pt").unlink()
    with pytest.raises(WeightsError, match=r"clsr\.pt: weights file missing"):
        Pipeline.from_pretrained(tiny_weights.folder)


def test_truncated_file_fails_the_hash_check(tiny_weights):
    path = tiny_weights.folder / "denoiser.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"denoiser\.pt: sha256 mismatch"):
        Pipeline.from_pretrained(tiny_weights.folder)
    assert sha256_of(path) != tiny_weights.files["denoiser"]["sha256"]


def test_corrupt_manifest(tiny_weights):
    (tiny_weights.folder / "weights.json").write_text("{}")
    with pytest.raises(WeightsError, match="invalid weights manifest"):
        resolve(tiny_weights.folder)


def test_a_broken_weights_folder_is_named_in_errors_in_info_and_before_a_run(tiny_weights, tmp_path, monkeypatch,
                                                                            capsys):
    from napari_etdms.cli import main
    from napari_etdms.weights import WeightsError, broken_folders, resolve

    broken = tmp_path / "mine"
    broken.mkdir()
    (broken / "weights.json").write_text("{not json")
    monkeypatch.setenv("NAPARI_ETDMS_WEIGHTS", str(tmp_path))
    assert list(broken_folders()) == [broken]
    with pytest.raises(WeightsError, match="mine.*invalid weights manifest"):
        resolve("my-weights")
    main(["info"])
    out = capsys.readouterr().out
    assert "broken weights" in out and str(broken / "weights.json") in out
    frame = tmp_path / "frame.png"
    frame.write_bytes(b"")
    main(["infer", str(frame), "-o", str(tmp_path / "out"), "-w", str(tiny_weights.folder)])
    assert "skipped a broken weights folder" in capsys.readouterr().err
