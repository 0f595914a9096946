import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from conftest import sem_like
from PIL import Image

from napari_etdms.cli import main
from napari_etdms.engine.settings import RunSettings
from napari_etdms.evaluation import baselines
from napari_etdms.evaluation.metrics import consistency_psnr, frc_resolution, matched_psnr, matched_ssim, nrmse
from napari_etdms.evaluation.protocol import CLEAN, METHODS, parse_doses, read_sigma_for_dose, source_of
from napari_etdms.evaluation.sweep import dose_degradation, pick_frames, run_evaluation
from napari_etdms.simulation.degradation import DegradationConfig, degrade_with_details
from napari_etdms.stage1.intensity import SIGNAL_SMOOTHING, IntensityMap

QUICK = dict(sampler="ddim", steps=3, tile=32, overlap=8)


class L1Distance(torch.nn.Module):
    def forward(self, x, y):
        return (x - y).abs().mean()


class PatchStats(torch.nn.Module):
    def forward(self, x):
        return torch.stack([x.mean((1, 2, 3)), x.std((1, 2, 3)), x[:, :, ::2].mean((1, 2, 3))], 1)


@pytest.fixture
def clean_frames(tmp_path):
    paths = []
    for i, shape in enumerate([(128, 128), (96, 136)]):
        path = tmp_path / f"clean{i}.tif"
        tifffile.imwrite(path, sem_like(shape, np.uint16, seed=i))
        paths.append(path)
    return paths


def test_metrics_behave():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(rng.random((128, 128)), 1.0)
    assert matched_psnr(image, 3 * image + 1) > 100  # gain and offset do not count
    assert matched_ssim(image, image) == pytest.approx(1.0)
    assert nrmse(image, image) < 1e-9
    sharp = frc_resolution(image, image + rng.normal(0, 1e-3, image.shape))
    blurred = frc_resolution(image, ndimage.gaussian_filter(image, 3))
    assert sharp == pytest.approx(2.0) and blurred > 3


def test_consistency_psnr_holds_an_upsampled_frame_to_its_low_res_source():
    from scipy import ndimage

    rng = np.random.default_rng(1)
    low = ndimage.zoom(rng.random((8, 8)), 8, order=3)  # smooth: its signal range is its range
    blocks = np.kron(low, np.ones((4, 4)))
    assert consistency_psnr(low, blocks) == float("inf")  # block means equal the source exactly
    signal = IntensityMap.fit(low, smoothing=SIGNAL_SMOOTHING)
    offset = 0.01 * (signal.high - signal.low)
    assert consistency_psnr(low, blocks + offset) == pytest.approx(40.0, abs=0.01)  # 1 % of the range: 40 dB
    # the scale is the signal's: the same offset reads (nearly) the same over a noisy source,
    # whose raw range its noise stretches
    noisy = low + rng.normal(0, 0.1 * np.ptp(low), low.shape)
    assert consistency_psnr(noisy, np.kron(noisy, np.ones((4, 4))) + offset) == pytest.approx(40.0, abs=1.0)
    assert 20 * np.log10(np.ptp(noisy) / offset) > 43  # what the raw range would have read
    with pytest.raises(ValueError, match="whole multiple"):
        consistency_psnr(low, blocks[:-1])


def test_evaluation_writes_report_figures_and_learned_metrics(tiny_pipeline, clean_frames, tmp_path):
    example = torch.rand(1, 3, 64, 64)
    any_size = {2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}
    torch.export.save(torch.export.export(L1Distance(), (example, example), dynamic_shapes=(any_size, any_size)),
                      tmp_path / "lpips.pt2")
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(PatchStats(), (torch.rand(4, 3, 64, 64),), dynamic_shapes=({0: batch},)),
                      tmp_path / "features.pt2")
    out = tmp_path / "report"
    outcome = run_evaluation(tiny_pipeline, clean_frames, out, crop=None, settings=RunSettings(samples=2, **QUICK),
                             lpips_weights=tmp_path / "lpips.pt2", fid_weights=tmp_path / "features.pt2")
    assert {p.name for p in out.iterdir()} == {"report.md", "metrics.csv", "summary.json", "crops.png", "metrics.png"}
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert set(METHODS) <= set(summary)
    assert summary["super_resolved"]["seed_std"] > 0
    assert "(lower is better)" in outcome["optional"]["LPIPS"]
    assert "patches of 64 px" in outcome["optional"]["FID"]
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 2 * len(METHODS)
    for row in rows:  # per frame: every method's data consistency; the seed spread for ETDMS alone
        assert float(row["consistency_psnr_db"]) > 0
        assert (row["seed_std"] != "") == (row["method"] == "super_resolved")
    # ETDMS is projected onto its stage-1 frame (exact up to rounding); bicubic is not
    assert summary["super_resolved"]["consistency_psnr"] > 100 > summary["bicubic_denoised"]["consistency_psnr"]
    assert "| data consistency (dB) |" in (out / "report.md").read_text()


def test_evaluation_without_learned_metric_weights_says_skipped(tiny_weights, clean_frames, tmp_path, capsys):
    out = tmp_path / "r"
    args = ["eval", *map(str, clean_frames), "-o", str(out), "-w", str(tiny_weights.folder), "--crop", "64",
            "--steps", "2", "--tile", "32", "--overlap", "8"]
    assert main(args) == 0
    report = (out / "report.md").read_text()
    assert "LPIPS: skipped: no weights" in report and "FID: skipped: no weights" in report
    assert "| ETDMS (stage 1 + CLSR) |" in report
    assert '"sampler": "ddim"' in report and '"steps": 2' in report  # the preset it resolved to, not null
    assert '"batch_size": 1' in report  # the CPU's default tile batch
    assert '"degradation": "shipped"' in report
    assert f'"weights_hash": "{tiny_weights.short_hash}"' in report and '"software": "napari-etdms' in report

    light = tmp_path / "light"
    assert main([*args[:args.index("-o") + 1], str(light), *args[args.index("-w"):],
                 "--degradation", '{"electrons": [1e6, 1e6]}']) == 0
    settings_line = next(line for line in (light / "report.md").read_text().splitlines() if "Settings" in line)
    assert '"degradation": {"electrons": [1000000.0, 1000000.0]}' in settings_line
    noisy, quiet = (json.loads((o / "summary.json").read_text())["summary"]["extra"]["degraded_psnr_lr"]
                    for o in (out, light))
    assert quiet > noisy + 5  # the dose reached the simulator

    raw = tmp_path / "raw"  # without stage 1: no stage-1 rows, and the CLSR row says what it ran on
    assert main([*args[:args.index("-o") + 1], str(raw), *args[args.index("-w"):], "--no-denoise"]) == 0
    table = (raw / "report.md").read_text().split("\n\n")[2]  # the methods table (per-source rows come later)
    rows = {line.split(" | ")[0] for line in table.splitlines() if line.startswith("| ")}
    assert rows == {"| method", "| bicubic of degraded", "| non-local means + bicubic", "| BM3D + bicubic",
                    "| ETDMS (CLSR on the raw frame)"}
    assert {p.name for p in raw.iterdir()} == {"report.md", "metrics.csv", "summary.json", "crops.png", "metrics.png"}
    denoised_only = tmp_path / "denoised-only"  # --no-sr: the baselines and the stage-1 row
    assert main([*args[:args.index("-o") + 1], str(denoised_only), *args[args.index("-w"):], "--no-sr"]) == 0
    report = (denoised_only / "report.md").read_text()
    assert "| stage 1 + bicubic |" in report and "| ETDMS" not in report

    assert main([*args, "--degradation", '{"electrons": [3, 100], "eletrons": 1}']) == 1
    assert "unknown key 'eletrons'" in capsys.readouterr().err


def test_degrade_command_writes_examples(clean_frames, tmp_path, capsys):
    out = tmp_path / "deg"
    assert main(["degrade", str(clean_frames[0]), "-o", str(out), "--count", "2", "--crop", "64"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"clean0_{k}{suffix}" for k in (0, 1)
                     for suffix in ("_clean_hr.tif", "_clean_lr.tif", "_degraded_lr.tif", "_preview.png")]
    assert tifffile.imread(out / "clean0_0_degraded_lr.tif").shape == (16, 16)
    assert np.asarray(Image.open(out / "clean0_0_preview.png")).shape == (64, 3 * 64 + 2 * 8)

    # a file already there is never replaced, the preview included: a clear error instead
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "clean0_0_preview.png").write_bytes(b"the user's own file")
    assert main(["degrade", str(clean_frames[0]), "-o", str(kept), "--crop", "64"]) == 1
    assert (kept / "clean0_0_preview.png").read_bytes() == b"the user's own file"
    assert "exists" in capsys.readouterr().err

    # every draw's clean low-res frame is the block means of that draw's own target, which
    # drift and the sampling phase move from draw to draw
    drifting = tmp_path / "drifting"
    assert main(["degrade", str(clean_frames[0]), "-o", str(drifting), "--count", "3", "--crop", "64",
                 "--degradation", '{"p_drift": 1.0}']) == 0
    targets = [tifffile.imread(drifting / f"clean0_{k}_clean_hr.tif") for k in range(3)]
    for k, target in enumerate(targets):
        clean_lr = tifffile.imread(drifting / f"clean0_{k}_clean_lr.tif")
        np.testing.assert_allclose(target.reshape(16, 4, 16, 4).mean(axis=(1, 3)), clean_lr, atol=1e-5)
    assert not np.array_equal(targets[0], targets[1])

    # nothing but area sampling and an 8-bit scale: the degraded frame is the clean low-res one
    settings = tmp_path / "ideal.json"
    settings.write_text(json.dumps({
        "p_blur": 0, "p_drift": 0, "p_jitter": 0, "p_contrast": 0, "p_charging": 0, "p_clip": 0,
        "sampling_modes": {"area": 1}, "electrons": [1e9, 1e9], "read_sigma": [0, 0], "row_offset": 0,
    }))
    ideal = tmp_path / "ideal"
    command = ["degrade", str(clean_frames[0]), "-o", str(ideal), "--count", "1", "--degradation", str(settings)]
    assert main(command) == 0
    degraded, clean_lr = (tifffile.imread(ideal / f"clean0_0_{label}.tif") for label in ("degraded_lr", "clean_lr"))
    assert np.abs(degraded - clean_lr).max() <= 0.5 / 255 * np.ptp(clean_lr) + 1e-6


# ---- dose sweep, classical baselines, sources ---------------------------------------------


@pytest.fixture
def sourced_frames(tmp_path):
    """Two small frames of two sources, named as in the training pool (<source>__<rest>.tif)."""
    paths = []
    for i, (source, shape) in enumerate([("alpha", (64, 64)), ("beta", (64, 80))]):
        path = tmp_path / f"{source}__frame{i}.tif"
        tifffile.imwrite(path, sem_like(shape, np.uint16, seed=i))
        paths.append(path)
    return paths


def test_dose_presets_set_what_they_claim():
    shipped = DegradationConfig()
    plain, full = dose_degradation("plain", 30), dose_degradation("full", 30)
    assert plain.p_blur == plain.p_drift == plain.p_jitter == plain.p_contrast == plain.p_charging == 0
    assert plain.sampling_modes == {"area": 1.0} and plain.line_correlation_px == (0, 0)
    assert plain.row_offset == plain.p_clip == 0
    # full: the shipped degradation with only the dose (and its read noise) set
    assert full.model_dump(exclude={"electrons", "read_sigma"}) == shipped.model_dump(exclude={"electrons",
                                                                                               "read_sigma"})
    for config in (plain, full):
        assert config.electrons == (30, 30) and config.read_sigma == (0.01, 0.01) and config.p_noise_free == 0
    assert read_sigma_for_dose(30) == 0.01 and read_sigma_for_dose(1000) == pytest.approx(0.00316, abs=1e-5)
    assert dose_degradation("full", 3000).read_sigma == (read_sigma_for_dose(3000),) * 2
    assert dose_degradation("plain", CLEAN).p_noise_free == 1
    custom = dose_degradation("full", 100, DegradationConfig(p_blur=0.0))  # --degradation is the full kind's base
    assert custom.p_blur == 0 and custom.electrons == (100, 100)
    with pytest.raises(ValueError, match="unknown degradation kind"):
        dose_degradation("medium", 30)
    assert parse_doses("clean, 300,3,30,3") == [3.0, 30.0, 300.0, CLEAN]
    for bad in ("0", "ten", ""):
        with pytest.raises(ValueError, match="--doses"):
            parse_doses(bad)


def test_clean_dose_adds_no_noise_and_plain_is_area_sampling():
    clean = sem_like((64, 64), np.float64, seed=3)
    rng = np.random.default_rng(0)
    out = degrade_with_details(clean, rng, dose_degradation("plain", CLEAN))
    assert out.noise.gain == 0  # no shot noise
    # plain + clean: the recorded frame is the clean low-res frame up to 8/16-bit quantisation
    assert np.abs(out.degraded - out.clean_lr).max() <= 0.5 / 255 + 1e-6
    np.testing.assert_allclose(out.clean_hr, clean, atol=1e-6)  # no drift, no phase shift: area sampling
    noisy = degrade_with_details(clean, np.random.default_rng(0), dose_degradation("plain", 30))
    assert np.abs(noisy.degraded - noisy.clean_lr).max() > 0.05


def test_sources_and_quick_frame_picks():
    assert source_of("llnl-list__Au_spheres.tif") == "llnl-list" and source_of("/a/b/nasa-pmm__x__y.tif") == "nasa-pmm"
    assert source_of("frame.tif") == "other" and source_of("__odd.tif") == "other"
    frames = [Path(f"{s}__{i}.tif") for s, i in [("a", 0), ("a", 1), ("a", 2), ("b", 3)]]
    assert pick_frames(frames, 2) == [frames[0], frames[3]]  # one of each source first
    assert pick_frames(frames, None) == frames


def test_nlm_baseline_beats_bicubic_of_the_noisy_frame():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    clean_hr = ndimage.gaussian_filter(rng.random((256, 256)), 6)
    clean_hr = (clean_hr - clean_hr.min()) / np.ptp(clean_hr)
    degraded, _, hr = degrade_with_details(clean_hr, np.random.default_rng(1), dose_degradation("plain", 30))[:3]
    denoised, nlm = baselines.restore("nlm", degraded)
    assert nlm.shape == hr.shape and denoised.shape == degraded.shape
    assert abs(denoised.mean() - degraded.mean()) < 0.01  # back on the frame's own scale
    assert matched_psnr(hr, nlm) > matched_psnr(hr, baselines.upsample(degraded)) + 2


def test_dose_sweep_has_every_kind_dose_and_method_and_holds_out_sources(tiny_pipeline, sourced_frames, tmp_path):
    out = tmp_path / "sweep"
    outcome = run_evaluation(tiny_pipeline, sourced_frames, out, crop=None, settings=RunSettings(**QUICK),
                             doses=[30.0, CLEAN], held_out_sources=["beta"])
    assert {p.name for p in out.iterdir()} == {"report.md", "metrics.csv", "summary.json", "dose-sweep.png"}
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    combos = {(r["kind"], r["dose"], r["method"]) for r in rows}
    assert combos == {(k, d, m) for k in ("full", "plain") for d in ("30", "clean") for m in METHODS}
    assert len(rows) == 2 * 2 * 2 * len(METHODS)  # kinds x doses x frames x methods
    assert {(r["source"], r["held_out"]) for r in rows} == {("alpha", "0"), ("beta", "1")}
    sweep = json.loads((out / "summary.json").read_text())["sweep"]
    for kind in ("full", "plain"):
        point = sweep[kind]["30"]
        assert point["frames"] == {"all": 2, "held_out": 1, "same_sources": 1}
        assert set(point["sources"]) == {"alpha", "beta"}
        # the held-out table is the held-out frame's own figures
        beta = next(r for r in outcome["reports"] if r.kind == kind and r.dose == "30" and r.source == "beta")
        assert point["held_out"]["nlm_bicubic"]["psnr"] == pytest.approx(beta.metrics["nlm_bicubic"]["psnr"])
        assert sweep[kind]["clean"]["all"]["extra"]["degraded_psnr_lr"] > point["all"]["extra"]["degraded_psnr_lr"]
    report = (out / "report.md").read_text()
    assert "## full degradation" in report and "## plain degradation" in report
    assert "### Held-out sources (never trained on: beta; 1 frame): PSNR (dB) / SSIM" in report
    assert "### Same sources as training (1 frame)" in report and "| beta (held out) | 1 | clean |" in report
    header = next(line for line in report.splitlines() if line.startswith("| e-/px | degraded"))
    assert all(f"| {label} |" in header for label in METHODS.values())  # the baselines among them
    assert Image.open(out / "dose-sweep.png").size[0] > 600


def test_bm3d_missing_is_reported_as_skipped(tiny_pipeline, sourced_frames, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "bm3d", None)  # `import bm3d` now raises ImportError
    assert baselines.unavailable(["nlm", "bm3d"]) == {"bm3d": "skipped, install napari-etdms[baselines]"}
    out = tmp_path / "no-bm3d"
    outcome = run_evaluation(tiny_pipeline, sourced_frames[:1], out, crop=None, held_out_sources=["alpha"],
                             settings=RunSettings(super_resolve=False, **QUICK))
    report = (out / "report.md").read_text()
    # one degradation: held-out and same-source rows apart (here no same-source frame), and per-source rows
    assert "| Held-out sources (never trained on: alpha; 1 frame) | " in report
    assert "| Same sources as training (0 frames) |" in report and "| alpha (held out) | 1 |" in report
    assert "- BM3D: skipped, install napari-etdms[baselines]" in report
    assert "| non-local means + bicubic |" in report and "| BM3D + bicubic |" not in report
    assert outcome["skipped"] == {"BM3D": "skipped, install napari-etdms[baselines]"}
    assert "bm3d_bicubic" not in {r["method"] for r in csv.DictReader((out / "metrics.csv").open())}


def test_eval_command_sweeps_doses_and_reads_held_out_sources_from_the_split(tiny_weights, sourced_frames,
                                                                             tmp_path, capsys):
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [], "validation": [{"path": str(p)} for p in sourced_frames],
                                 "held_out_sources": ["alpha"]}))
    out = tmp_path / "cli-sweep"
    common = ["-w", str(tiny_weights.folder), "--steps", "2", "--tile", "32", "--overlap", "8"]
    assert main(["eval", "--split", str(split), "-o", str(out), "--doses", "clean", "--degradation-kind", "plain",
                 "--baselines", "nlm", *common]) == 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert {(r["kind"], r["dose"]) for r in rows} == {("plain", "clean")}
    assert {r["method"] for r in rows} == set(METHODS) - {"bm3d_bicubic"}
    assert {(r["source"], r["held_out"]) for r in rows} == {("alpha", "1"), ("beta", "0")}
    settings = json.loads((out / "summary.json").read_text())["settings"]
    assert settings["held_out_sources"] == ["alpha"] and settings["kinds"] == ["plain"]
    assert "never trained on: alpha" in (out / "report.md").read_text()
    capsys.readouterr()
    assert main(["eval", str(sourced_frames[0]), "-o", str(tmp_path / "x"), "--degradation-kind", "plain",
                 *common]) == 2
    assert "give --doses too" in capsys.readouterr().err
    assert main(["eval", str(sourced_frames[0]), "-o", str(tmp_path / "x"), "--doses", "3,zero", *common]) == 1
    assert "neither a number" in capsys.readouterr().err


def test_noisy_truths_are_down_sampled_and_flat_centres_avoided(tmp_path):
    from napari_etdms.evaluation.sweep import content_crop
    from napari_etdms.simulation.ground_truth import estimate_noise, load_ground_truth

    rng = np.random.default_rng(0)
    clean = sem_like((256, 256), np.float32, seed=3)
    grainy = np.clip(clean + rng.normal(0, 0.05, clean.shape), 0, 1)
    tifffile.imwrite(tmp_path / "grainy.tif", (grainy * 65535).astype(np.uint16))
    truth, factor = load_ground_truth(tmp_path / "grainy.tif", max_noise=0.035)
    assert factor in (2, 4) and truth.shape == (256 // factor, 256 // factor)
    assert estimate_noise(truth) <= 0.035 < estimate_noise(grainy)
    assert load_ground_truth(tmp_path / "grainy.tif", max_noise=None)[1] == 1
    # a frame whose centre is an empty cavity: the crop goes where the frame has content
    frame = np.zeros((300, 300))
    frame[:100, :100] = sem_like((100, 100), np.float32, seed=4)
    crop = content_crop(frame, 96)
    assert np.ptp(crop) > 0.5 and np.array_equal(content_crop(clean, 96), clean[80:176, 80:176])


def test_eval_names_a_bad_frame_and_goes_on_and_checks_its_folder_first(tiny_weights, clean_frames, tmp_path,
                                                                        capsys):
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00 not a tiff")
    common = ["-w", str(tiny_weights.folder), "--steps", "2", "--tile", "32", "--overlap", "8", "--baselines", "none"]
    out = tmp_path / "report"
    assert main(["eval", str(clean_frames[0]), str(corrupt), "-o", str(out), "--crop", "0", *common]) == 0
    report = (out / "report.md").read_text()
    assert "- frame corrupt.tif: not evaluated:" in report and "may be corrupt" in report
    assert {r["frame"] for r in csv.DictReader((out / "metrics.csv").open())} == {"clean0"}
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert main(["eval", str(clean_frames[0]), "-o", str(blocked / "sub"), *common]) == 2  # before any work
    assert "cannot write outputs there" in capsys.readouterr().err
    assert main(["eval", str(corrupt), "-o", str(tmp_path / "none"), *common]) == 1  # nothing to report on
    assert "no frame could be evaluated (frame corrupt.tif: not evaluated:" in capsys.readouterr().err
