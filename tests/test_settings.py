"""One set of run settings: validated in one place, one set of defaults for the API, CLI and widget."""

import dataclasses
import inspect

import pytest

from napari_etdms import Pipeline
from napari_etdms.engine.settings import DEFAULTS, RunSettings


@pytest.mark.parametrize("change, message", [
    ({"steps": 0}, "steps must be at least 1"), ({"tile": 30}, "tile must be a multiple of 4"),
    ({"tile": 12}, "at least 16 px"), ({"overlap": 64}, "overlap must be in"), ({"samples": 0}, "samples"),
    ({"batch_size": 0}, "batch_size"), ({"strength": 4.5}, "strength"), ({"sampler": "euler"}, "unknown sampler"),
    ({"eta": -1.0}, "eta"), ({"seed": -1}, "seed must be >= 0"),
])
def test_bad_settings_are_refused_with_the_setting_named(change, message):
    with pytest.raises(ValueError, match=message):
        RunSettings(**change)


def test_pipeline_run_takes_its_defaults_from_the_settings():
    parameters = inspect.signature(Pipeline.run).parameters
    for field in dataclasses.fields(RunSettings):
        assert parameters[field.name].default == getattr(DEFAULTS, field.name), field.name


def test_cli_defaults_are_the_settings_defaults():
    from napari_etdms.cli import build_parser

    args = build_parser().parse_args(["infer", "-o", "out"])
    for name in ("eta", "seed", "samples", "strength", "tile", "overlap", "batch_size", "sampler", "steps"):
        assert getattr(args, name) == getattr(DEFAULTS, name), name
    assert args.consistency == DEFAULTS.data_consistency


def test_widget_starts_on_the_settings_defaults(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_ETDMS_CONFIG_DIR", str(tmp_path))
    from napari_etdms.plugin.widget import ETDMSWidget

    widget = ETDMSWidget(make_napari_viewer())
    for name in ("denoise", "super_resolve", "seed", "samples", "strength", "tile", "overlap"):
        assert getattr(widget, name).value == getattr(DEFAULTS, name), name
