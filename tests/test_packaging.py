"""The wheel a user installs: built from this checkout, it holds the trained weights, the
napari manifest and the samples, and in a fresh virtual environment (only the wheel, its
dependencies from the package index, and the CPU torch wheel) `etdms demo` runs and the
manifest validates."""

import json
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)], check=True,
                   capture_output=True, text=True)
    (built,) = out.glob("napari_etdms-*.whl")
    return built


def test_the_wheel_holds_the_weights_the_manifest_and_the_samples(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = sorted(ROOT.glob("weights/*/weights.json"))
    assert shipped
    for manifest in shipped:
        folder = manifest.parent
        for file in json.loads(manifest.read_text())["files"].values():
            assert f"napari_etdms/shipped_weights/{folder.name}/{file['file']}" in names
    assert "napari_etdms/napari.yaml" in names
    assert {f"napari_etdms/samples/{p.name}" for p in (ROOT / "src/napari_etdms/samples").iterdir()
            if p.is_file()} <= names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "etdms = napari_etdms.cli:main" in text and "napari-etdms = napari_etdms:napari.yaml" in text


@pytest.mark.slow
def test_a_fresh_environment_with_the_wheel_runs_the_demo_and_validates_the_manifest(wheel, tmp_path):
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    install = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*install, "torch==2.13.0"], check=True)  # the CPU wheel, as the README says
    subprocess.run([*install, str(wheel), "npe2"], check=True)
    demo = subprocess.run([str(env / "bin" / "etdms"), "demo", "-o", str(tmp_path / "demo")], capture_output=True,
                          text=True, cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr[-2000:]
    written = {p.name for p in (tmp_path / "demo").iterdir()}
    assert {f"nasa_superalloy_spot3_0d_3_{kind}.tif" for kind in ("denoised", "etdms_x4", "bicubic_x4")} <= written
    checked = subprocess.run([str(env / "bin" / "npe2"), "validate", "napari-etdms"], capture_output=True, text=True,
                             cwd=tmp_path)
    assert checked.returncode == 0 and "valid" in checked.stdout.lower(), checked.stdout + checked.stderr
