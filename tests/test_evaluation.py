import json

import numpy as np
import pytest
import tifffile
import torch
from conftest import sem_like

from napari_etdms.cli import main
from napari_etdms.evaluation import METHODS, run_evaluation
from napari_etdms.metrics import frc_resolution, matched_psnr, matched_ssim, nrmse

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
    assert "seed_std_mean" in summary["extra"]
    assert "(lower is better)" in outcome["optional"]["LPIPS"]
    assert "patches of 64 px" in outcome["optional"]["FID"]
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * len(METHODS)


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


def test_degrade_command_writes_examples(clean_frames, tmp_path):
    out = tmp_path / "deg"
    assert main(["degrade", str(clean_frames[0]), "-o", str(out), "--count", "2", "--crop", "64"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["clean0_0_clean_lr.tif", "clean0_0_degraded_lr.tif", "clean0_1_clean_lr.tif",
                     "clean0_1_degraded_lr.tif", "clean0_clean_hr.tif"]
    assert tifffile.imread(out / "clean0_0_degraded_lr.tif").shape == (16, 16)
