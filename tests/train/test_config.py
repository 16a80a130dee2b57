from pathlib import Path

import pytest

from mammolens.train.config import DataCfg, TrainCfg, cfg_from_dict, load_cfg, parse_overrides, save_cfg

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_load_cfg_defaults_without_file():
    cfg = load_cfg(None)
    assert cfg == TrainCfg()
    assert isinstance(cfg.data, DataCfg)


def test_load_cfg_nested_overrides_are_typed(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: tiny-clip\nepochs: 2\ndata:\n  cache: /x\n")
    cfg = load_cfg(p, ["epochs=7", "lr=3e-4", "data.modalities=[DM, s2D]", "data.fold=1", "resume=true",
                       "data.modality_weights.DBT=0.5", "pretrained=null"])
    assert cfg.epochs == 7 and isinstance(cfg.epochs, int)
    assert cfg.lr == pytest.approx(3e-4)
    assert cfg.data.cache == "/x"  # kept from the file while a sibling key is overridden
    assert cfg.data.modalities == ["DM", "s2D"]
    assert cfg.data.fold == 1
    assert cfg.data.modality_weights == {"DBT": 0.5}
    assert cfg.resume is True
    assert cfg.pretrained is None


def test_load_cfg_unknown_key_lists_valid_keys(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("epochz: 3\n")
    with pytest.raises(ValueError, match=r"epochz.*valid keys.*epochs"):
        load_cfg(p)
    with pytest.raises(ValueError, match=r"data\.cach\b.*valid keys in data.*cache"):
        load_cfg(None, ["data.cach=/x"])


def test_load_cfg_bad_values_raise():
    with pytest.raises(ValueError, match="method"):
        cfg_from_dict({"method": "magic"})
    with pytest.raises(ValueError, match="precision"):
        cfg_from_dict({"precision": "fp16"})
    with pytest.raises(ValueError, match="epochs"):
        cfg_from_dict({"epochs": 0})
    with pytest.raises(ValueError, match="expects int"):
        cfg_from_dict({"batch_size": "many"})
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["epochs"])


def test_load_cfg_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_cfg(tmp_path / "nope.yaml")


def test_save_cfg_roundtrip(tmp_path):
    cfg = cfg_from_dict({"task": {"name": "t", "label_column": "x", "class_names": ["a", "b"]},
                         "data": {"modalities": ["DM"], "preprocess": {"size": 64}}, "resume": "runs/a"})
    path = save_cfg(cfg, tmp_path / "run" / "config.yaml")
    assert load_cfg(path) == cfg


@pytest.mark.parametrize("name", ["density_multimodality", "density_dm_only", "tiny_cpu"])
def test_example_configs_load(name):
    cfg = load_cfg(CONFIGS / f"{name}.yaml")
    assert cfg.task == "density"
    assert cfg.data.modalities == (["DM"] if name == "density_dm_only" else [])
