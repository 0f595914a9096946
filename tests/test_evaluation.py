import csv
import json

import numpy as np
import pytest
import tifffile
import torch
from conftest import sem_like
from PIL import Image

from napari_etdms.cli import main
from napari_etdms.evaluation import METHODS, run_evaluation
from napari_etdms.intensity import SIGNAL_SMOOTHING, IntensityMap
from napari_etdms.metrics import consistency_psnr, frc_resolution, matched_psnr, matched_ssim, nrmse

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
    outcome = run_evaluation(tiny_pipeline, clean_frames, out, crop=None, run_options=dict(samples=2, **QUICK),
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
    rows = {line.split(" | ")[0] for line in (raw / "report.md").read_text().splitlines() if line.startswith("| ")}
    assert rows == {"| method", "| bicubic of degraded", "| ETDMS (CLSR on the raw frame)"}
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
