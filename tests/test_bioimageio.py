"""`etdms export`: stage 1 as a bioimage.io model (bioimageio.py), validated and run by
bioimageio.core, offline (nothing in the package is looked up online)."""

import hashlib
import importlib.util
import json
import zipfile

import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage

from napari_etdms.cli import EXIT_ERROR, EXIT_OK, main
from napari_etdms.engine.pipeline import DENOISE_CONTEXT, Pipeline
from napari_etdms.export.bioimageio import (
    ExportError,
    architecture_kwargs,
    architecture_source,
    build_exported,
    choose_noise,
    export_model,
    frame_units,
    input_range,
    noise_on_input_scale,
    read_first_frame,
)
from napari_etdms.models import build_denoiser
from napari_etdms.samples import sample_path
from napari_etdms.stage1.denoise import apply_denoiser
from napari_etdms.stage1.intensity import SIGNAL_SMOOTHING, IntensityMap
from napari_etdms.stage1.noise import NoiseModel
from napari_etdms.weights import ADAPTATION_RECORD, load_state, resolve, sha256_of, write_entry

bioimageio_core = pytest.importorskip("bioimageio.core")  # the test extra installs it

pytestmark = [
    # bioimageio.spec 0.5.12 warns about every file while it loads a package (its own code, harmless)
    pytest.mark.filterwarnings("ignore:Found mapping with 'source':UserWarning"),
    # torch 2.13 deprecates TorchScript, which the spec's torchscript weights (and deepImageJ) are
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning"),
]

SHIPPED = "etdms-sem-v2"
DIMS = ("batch", "channel", "y", "x")


def sample_crop(side: int) -> np.ndarray:
    """The centre of the bundled 512 x 512 8-bit sample frame."""
    frame = read_first_frame(sample_path("superalloy"))
    top = (frame.shape[0] - side) // 2
    return frame[top : top + side, top : top + side]


def passed(summary) -> bool:
    if summary.status != "passed":
        failed = [(d.name, [e.msg for e in d.errors]) for d in summary.details if d.status != "passed"]
        pytest.fail(f"bioimageio.core test_model: {summary.status}: {failed}")
    return True


def bioimageio_denoised(package, frame: np.ndarray) -> np.ndarray:
    """Run the package as the spec describes it, in bioimageio.core: the declared preprocessing on
    the frame (its own percentiles), the halo padded as declared (reflect) and cropped; mapped
    back to the frame's units with the same percentiles."""
    from bioimageio.core import Sample, Tensor, create_prediction_pipeline, load_model_description

    model = load_model_description(package)
    sample = Sample(members={"input": Tensor(frame.astype(np.float32)[None, None], dims=DIMS)}, stat={}, id="frame")
    with create_prediction_pipeline(model, devices=["cpu"]) as prediction:
        prediction.apply_preprocessing(sample)
        out = prediction.predict_sample_without_blocking(sample, skip_preprocessing=True)
    denoised = np.asarray(out.members["output"].data)[0, 0]
    low, high = input_range(frame)
    return denoised * (high - low + 1e-6) + low


def package_test_output(package) -> np.ndarray:
    """The package's test output, in its test input's units."""
    with zipfile.ZipFile(package) as contents:
        test_input = np.load(contents.open("test_input.npy"))[0, 0]
        test_output = np.load(contents.open("test_output.npy"))[0, 0]
    low, high = input_range(test_input)
    return test_output * (high - low + 1e-6) + low


def model_config(package) -> dict:
    from bioimageio.core import load_model_description

    return load_model_description(package).config.model_extra["etdms"]


def adapted_like(folder, frame_files: list, base=SHIPPED):
    """A weights folder as `etdms adapt` writes it (the base's networks, adaptation.json naming
    the frames' files and sha256), without the minutes of training."""
    base_entry = resolve(base)
    entry = write_entry(folder, folder.name, base_entry.config,
                        {part: load_state(base_entry, part) for part in base_entry.files}, base_entry.recommended)
    record = {
        "method": "Neighbor2Neighbor (self-supervised) with scan-line pairs (test stand-in)",
        "base": {"name": base_entry.name, "hash": base_entry.short_hash,
                 "files": {p: f["sha256"] for p, f in base_entry.files.items()}},
        "frames": [{"name": path.name, "pixels_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                    "shape": list(tifffile.imread(path).shape), "held_out_rows": [0, 64]} for path in frame_files],
        "sources": [{"file": str(path), "sha256": sha256_of(path)} for path in frame_files],
        "iterations": 2, "minutes": 0.1, "pair_loss_base": 0.2, "pair_loss_adapted": 0.1,
        "kept_because": "lower held-out pair loss than the base",
    }
    (folder / ADAPTATION_RECORD).write_text(json.dumps(record, indent=1) + "\n")
    return entry


def detector_frame(gain: float, offset: float, shape=(256, 256), seed=0) -> np.ndarray:
    """A noise-free signal (the bundled sample, smoothed) on [0, 1] with Poisson-Gaussian noise of
    `gain`, `offset` (frame units), as float32."""
    rng = np.random.default_rng(seed)
    clean = ndimage.gaussian_filter(sample_crop(512)[: shape[0], : shape[1]].astype(np.float64), 2.0)
    clean = (clean - clean.min()) / (clean.max() - clean.min()) * 0.8 + 0.1
    noisy = rng.poisson(clean / gain) * gain + rng.normal(0.0, np.sqrt(offset), shape)
    return noisy.astype(np.float32)


def stage1_as_the_pipeline_runs_it(reference, y: torch.Tensor, noise: NoiseModel | None) -> torch.Tensor:
    """Each frame on its pipeline scale (`IntensityMap.fit` with the signal smoothing), the noise
    rescaled with it, `apply_denoiser` on the frame with the pipeline's context mirrored around
    it (as its tiles at the frame's borders), mapped back."""
    frames = []
    for frame in y.double():
        mapping = IntensityMap.fit(frame[0].numpy(), smoothing=SIGNAL_SMOOTHING)
        z = ((frame - mapping.low) / (mapping.high - mapping.low)).float()[None]
        z = torch.nn.functional.pad(z, [DENOISE_CONTEXT] * 4, mode="reflect")
        if noise is None:  # a blind denoiser
            out = (apply_denoiser(reference, z * 2 - 1) + 1) / 2
        else:
            scaled = noise.rescaled(mapping.low, mapping.high)
            as_tensor = lambda v: torch.full((1, 1, 1, 1), v, dtype=torch.float64)  # noqa: E731
            out = (apply_denoiser(reference, z * 2 - 1, as_tensor(scaled.gain), as_tensor(scaled.offset)) + 1) / 2
        out = out[..., DENOISE_CONTEXT:-DENOISE_CONTEXT, DENOISE_CONTEXT:-DENOISE_CONTEXT]
        frames.append(out.double() * (mapping.high - mapping.low) + mapping.low)
    return torch.cat(frames).float()


def test_the_exported_network_computes_what_stage_1_computes(tmp_path):
    """FixedNoiseDenoiser (TorchScript, and its standalone source file) = apply_denoiser with the
    registry's SwinIRDenoiser, each frame on the pipeline's intensity scale with the noise model
    rescaled to it, on frames of sizes off the window grid."""
    entry = resolve(SHIPPED)
    noise = NoiseModel(gain=0.004, offset=0.0003)
    reference = build_denoiser(entry.config)
    reference.load_state_dict(load_state(entry, "denoiser"))
    reference.eval()
    exported = build_exported(entry, noise)
    scripted = torch.jit.script(exported)
    source = tmp_path / "etdms_denoiser.py"
    source.write_text(architecture_source())
    spec = importlib.util.spec_from_file_location("etdms_denoiser", source)
    standalone = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(standalone)
    rebuilt = standalone.FixedNoiseDenoiser(**architecture_kwargs(entry, noise)).eval()
    rebuilt.load_state_dict(exported.state_dict())

    generator = torch.Generator().manual_seed(0)
    for shape in [(2, 1, 64, 72), (1, 1, 61, 70)]:
        y = torch.rand(shape, generator=generator) * 0.8 + torch.linspace(0.0, 0.4, shape[-1])
        with torch.no_grad():
            expected = stage1_as_the_pipeline_runs_it(reference, y, noise)
            assert (scripted(y) - expected).abs().max() < 1e-5
            assert torch.equal(rebuilt(y), scripted(y))


def test_a_blind_denoiser_is_exported_without_a_noise_model(tiny_weights, tmp_path):
    from bioimageio.core import test_model

    with pytest.raises(ExportError, match="blind"):
        choose_noise(tiny_weights, noise="0.01,0.0001")
    reference = build_denoiser(tiny_weights.config)
    reference.load_state_dict(load_state(tiny_weights, "denoiser"))
    y = torch.rand(1, 1, 40, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (build_exported(tiny_weights, None)(y) - stage1_as_the_pipeline_runs_it(reference, y, None)
                ).abs().max() < 1e-6
    result = export_model(tiny_weights.folder, tmp_path / "blind.zip")
    assert result.noise.model is None and model_config(result.path)["noise_model"] is None
    assert passed(test_model(result.path))


def test_the_shipped_weights_need_a_noise_model(tmp_path, capsys):
    out = tmp_path / "model.zip"
    with pytest.raises(ExportError, match=r"--from-frame FRAME .* or --noise GAIN,OFFSET"):
        export_model(SHIPPED, out)
    assert main(["export", SHIPPED, "-o", str(out)]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "etdms export: error:" in err and "--from-frame" in err and "--noise GAIN,OFFSET" in err
    assert main(["export", SHIPPED, "-o", str(out), "--noise", "0.01"]) == EXIT_ERROR
    assert "--noise takes GAIN,OFFSET" in capsys.readouterr().err
    assert main(["export", SHIPPED, "-o", str(out), "--noise", "0.01,-0.1"]) == EXIT_ERROR
    assert "no noise at mid-grey" in capsys.readouterr().err
    assert main(["export", SHIPPED, "-o", str(tmp_path / "model.bioimageio"), "--noise", "0.01,0.001"]) == EXIT_ERROR
    assert ".zip" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:  # one source of the noise, not both
        main(["export", SHIPPED, "-o", str(out), "--noise", "0.01,0.001", "--from-frame", "f.tif"])
    assert usage.value.code == 2
    assert not out.exists()


def test_adapted_weights_whose_frames_are_gone_need_a_noise_model(tmp_path):
    frame_file = tmp_path / "frames" / "detector.tif"
    frame_file.parent.mkdir()
    tifffile.imwrite(frame_file, detector_frame(0.02, 1e-4))
    entry = adapted_like(tmp_path / "my-detector", [frame_file])
    frame_file.unlink()
    with pytest.raises(ExportError, match=r"detector.tif \(not found\).*--from-frame FRAME .* or --noise"):
        choose_noise(entry)
    other = tmp_path / "other.tif"
    tifffile.imwrite(other, detector_frame(0.02, 1e-4, seed=1))
    chosen = choose_noise(entry, from_frame=other)
    assert chosen.source == "estimated from other.tif"
    estimate = noise_on_input_scale(read_first_frame(other))
    assert (chosen.model.gain, chosen.model.offset) == (estimate.gain, estimate.offset)


@pytest.mark.slow
def test_shipped_weights_with_a_given_noise_pass_the_bioimageio_model_test(tmp_path):
    from bioimageio.core import test_model
    from PIL import Image

    result = export_model(SHIPPED, tmp_path / "etdms-sem-v2.zip", noise="0.002,0.0005")
    assert passed(test_model(result.path))  # both weight formats reproduce the test output, all sizes, batch 1-2
    with zipfile.ZipFile(result.path) as package:
        names = set(package.namelist())
        assert {"rdf.yaml", "denoiser_torchscript.pt", "denoiser_state_dict.pt", "etdms_denoiser.py",
                "test_input.npy", "test_output.npy", "cover.png", "README.md", "weights.json"} <= names
        test_input = np.load(package.open("test_input.npy"))
        with package.open("cover.png") as cover:
            assert Image.open(cover).size == (512, 256)  # input | output, 2:1, enlarged 2x
        readme = package.read("README.md").decode()
    assert test_input.shape == (1, 1, 128, 128)  # one tile of stage 1 in napari-etdms
    np.testing.assert_array_equal(test_input[0, 0], sample_crop(128))
    assert "gain = 0.002, offset = 0.0005" in readme and "deepImageJ" in readme and "QuPath" in readme
    config = model_config(result.path)
    assert config["noise_model"]["gain"] == 0.002 and config["noise_model"]["source"] == "given (--noise)"
    assert config["weights"]["name"] == SHIPPED and config["weights"]["hash"] == resolve(SHIPPED).short_hash


def infer_denoised(frame_file, folder, weights) -> np.ndarray:
    """`etdms infer FRAME --no-sr` in float32 on the CPU: its denoised frame."""
    assert main(["infer", str(frame_file), "-o", str(folder), "--no-sr", "-w", str(weights), "--device", "cpu",
                 "--precision", "float32"]) == EXIT_OK
    return tifffile.imread(folder / f"{frame_file.stem}_denoised.tif")


@pytest.mark.slow
def test_the_exported_model_denoises_as_etdms_infer_does(tmp_path, capsys):
    """`etdms export --from-frame F` and `etdms infer F --no-sr` tell stage 1 the same noise (F's
    own, estimated) and take the same intensity range (the smoothed percentiles, inside the
    model): on a frame stage 1 runs as one tile (128 px, the package's test image), the package's
    test output (which bioimageio.core's model test reproduces) is etdms infer's output to float
    rounding. bioimageio.core's `predict` pads the declared halo first, so the range it takes
    includes 16 mirrored px of each side: a small difference."""
    from bioimageio.core import test_model

    frame = sample_crop(128)
    frame_file = tmp_path / "crop.tif"
    tifffile.imwrite(frame_file, frame)
    package = tmp_path / "model.zip"
    assert main(["export", SHIPPED, "-o", str(package), "--from-frame", str(frame_file)]) == EXIT_OK
    assert f"wrote {package}" in capsys.readouterr().out
    assert passed(test_model(package, weight_format="torchscript"))
    assert model_config(package)["noise_model"]["source"] == "estimated from crop.tif"
    assert main(["export", SHIPPED, "-o", str(package), "--from-frame", str(frame_file)]) == EXIT_ERROR
    assert "already exists" in capsys.readouterr().err  # --overwrite replaces it

    span = float(frame.max()) - float(frame.min())
    inferred = infer_denoised(frame_file, tmp_path / "infer", SHIPPED)
    assert np.abs(package_test_output(package) - inferred).max() < 1e-5 * span
    assert np.abs(inferred - frame).mean() > 0.01 * span  # it did denoise
    padded_first = np.abs(bioimageio_denoised(package, frame) - inferred)
    assert padded_first.max() < 0.02 * span and padded_first.mean() < 1e-3 * span


@pytest.mark.slow
def test_an_exported_adapted_denoiser_reproduces_etdms_infer_on_its_test_image(tmp_path):
    """Adapted weights exported with a frame of the detector: the package's test image is that
    frame (128 px, one stage-1 tile), bioimageio.core's model test passes, and `etdms infer
    --no-sr -w ADAPTED` on the test image gives the package's test output in the frame's units."""
    from bioimageio.core import test_model

    files = []
    for seed in range(2):
        path = tmp_path / "frames" / f"detector-{seed}.tif"
        path.parent.mkdir(exist_ok=True)
        tifffile.imwrite(path, detector_frame(0.02, 1e-4, seed=seed))
        files.append(path)
    entry = adapted_like(tmp_path / "weights" / "my-detector", files)
    typical = tmp_path / "typical.tif"
    tifffile.imwrite(typical, detector_frame(0.02, 1e-4, shape=(128, 128), seed=5))
    package = tmp_path / "my-detector.zip"
    assert main(["export", str(entry.folder), "-o", str(package), "--from-frame", str(typical)]) == EXIT_OK
    assert passed(test_model(package))
    with zipfile.ZipFile(package) as contents:
        np.testing.assert_array_equal(np.load(contents.open("test_input.npy"))[0, 0], tifffile.imread(typical))
    low, high = input_range(tifffile.imread(typical))
    inferred = infer_denoised(typical, tmp_path / "infer", entry.folder)
    assert np.abs(package_test_output(package) - inferred).max() < 1e-5 * (high - low)


@pytest.mark.slow
def test_tiles_share_the_noise_model_and_barely_change_the_result(tmp_path):
    """bioimageio.core in blocks of 128 px (halo included) against one pass over a 256 px frame:
    scale_range is taken over the whole frame, so every tile is told the same noise; only the
    signal range inside differs from tile to tile."""
    from bioimageio.core import Sample, Tensor, create_prediction_pipeline, load_model_description

    frame = detector_frame(0.02, 1e-4, seed=3)
    package = export_model(SHIPPED, tmp_path / "model.zip", noise="0.01,0.0005").path
    model = load_model_description(package)
    outputs = []
    for blocks in (None, 8):  # blocks of 64 + 8 * 8 = 128 px
        sample = Sample(members={"input": Tensor(frame[None, None], dims=DIMS)}, stat={}, id="frame")
        with create_prediction_pipeline(model, devices=["cpu"]) as prediction:
            prediction.apply_preprocessing(sample)
            if blocks is None:
                out = prediction.predict_sample_without_blocking(sample, skip_preprocessing=True)
            else:
                out = prediction.predict_sample_with_blocking(
                    sample, skip_preprocessing=True, ns={("input", "y"): blocks, ("input", "x"): blocks})
        outputs.append(np.asarray(out.members["output"].data)[0, 0])
    difference = np.abs(outputs[0] - outputs[1])
    assert 0 < difference.mean() < 1.5e-3 and difference.max() < 0.05, (difference.mean(), difference.max())


@pytest.mark.slow
def test_the_package_test_output_is_the_pipeline_told_the_same_noise(tmp_path):
    """With a given noise model: Pipeline.run(frame, super_resolve=False, noise=<it in the frame's
    units>) on the package's test image (the bundled sample's centre, one tile) is its test output."""
    noise = NoiseModel(gain=0.002, offset=0.0005)  # on the model's [0, 1] input scale
    package = export_model(SHIPPED, tmp_path / "model.zip", noise=noise).path
    frame = sample_crop(128)
    pipe = Pipeline.from_pretrained(SHIPPED, device="cpu", precision="float32")
    expected = pipe.run(frame, super_resolve=False, noise=frame_units(noise, frame)).denoised
    span = float(frame.max()) - float(frame.min())
    np.testing.assert_array_equal(np.load(zipfile.ZipFile(package).open("test_input.npy"))[0, 0], frame)
    assert np.abs(package_test_output(package) - expected).max() < 1e-5 * span


@pytest.mark.slow
def test_adapted_weights_export_with_the_noise_of_their_frames(tmp_path):
    from bioimageio.core import test_model

    gain, offset = 0.02, 1e-4  # 50 e-/px at white, read noise 1 % of white (frame units, white = 1)
    files = []
    for seed in range(2):
        path = tmp_path / "frames" / f"detector-{seed}.tif"
        path.parent.mkdir(exist_ok=True)
        tifffile.imwrite(path, detector_frame(gain, offset, seed=seed))
        files.append(path)
    entry = adapted_like(tmp_path / "weights" / "my-detector", files)
    result = export_model(entry.folder, tmp_path / "my-detector.zip")
    assert result.noise.source.startswith("estimated from the adaptation frames (detector-0.tif, detector-1.tif")
    estimates = [noise_on_input_scale(read_first_frame(path)) for path in files]
    assert result.noise.model.gain == pytest.approx(np.median([e.gain for e in estimates]))
    # the detector's own noise, put on the model's input scale of the first frame
    low, high = input_range(read_first_frame(files[0]))
    truth = NoiseModel(gain, offset).rescaled(low, high)
    assert result.noise.model.std_at(0.5) == pytest.approx(truth.std_at(0.5), rel=0.15)
    assert passed(test_model(result.path, weight_format="torchscript"))
    config = model_config(result.path)
    assert config["weights"]["adapted_from"]["base"]["name"] == SHIPPED
    with zipfile.ZipFile(result.path) as package:
        assert "adaptation.json" in package.namelist()
        assert "adapted by `etdms adapt` from 'etdms-sem-v2'" in package.read("README.md").decode()
