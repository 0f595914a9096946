import json

import pytest

from napari_etdms.config import PRESETS, ConfigError, ModelConfig, load_json, model_config, parse


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown key 'clsr.inner_chanels'"):
        parse(ModelConfig, {"clsr": {"inner_chanels": 32}})


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"'swinir.embed_dim'"):
        parse(ModelConfig, {"swinir": {"embed_dim": "big"}})


def test_inconsistent_heads_rejected():
    with pytest.raises(ConfigError, match="same length"):
        parse(ModelConfig, {"swinir": {"depths": [2, 2], "num_heads": [4]}})


def test_presets_and_unknown_preset():
    assert model_config("paper").swinir.embed_dim == 180
    assert model_config("lite") == PRESETS["lite"]
    with pytest.raises(ConfigError, match="unknown model preset"):
        model_config("huge")


def test_json_round_trip_and_errors(tmp_path):
    path = tmp_path / "model.json"
    path.write_text(json.dumps(PRESETS["paper"].model_dump(mode="json")))
    assert load_json(path, ModelConfig) == PRESETS["paper"]
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_json(path, ModelConfig)
    with pytest.raises(ConfigError, match="not found"):
        load_json(tmp_path / "missing.json", ModelConfig)


def test_shipped_training_configs_validate():
    from pathlib import Path

    from napari_etdms.training.trainer import load_train_config

    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.json"))
    assert configs
    for path in configs:
        assert load_train_config(path).name
