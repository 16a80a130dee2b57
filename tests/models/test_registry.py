"""Model sources parsed in one place; JSON model configs register themselves by file name."""

import json

import pytest

from mammolens.models import add_model_config, create_model, list_models, load_model_config, parse_model_source
from mammolens.models import factory


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (None, ("none", "")),
        ("hf-hub:microsoft/BiomedCLIP", ("hf-hub", "microsoft/BiomedCLIP")),
        ("local-dir:/models/biomedclip", ("local-dir", "/models/biomedclip")),
        ("local-dir:relative/dir:with-colon", ("local-dir", "relative/dir:with-colon")),
        ("openai", ("tag", "openai")),
        ("timm", ("tag", "timm")),
    ],
)
def test_parse_model_source_cases(source, expected):
    assert parse_model_source(source) == expected


def test_parse_model_source_file_and_empty_prefix(tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"")
    assert parse_model_source(weights) == ("file", str(weights))
    assert parse_model_source(str(tmp_path / "missing.pt")) == ("tag", str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="hf-hub:ORG/REPO"):
        parse_model_source("hf-hub:")
    with pytest.raises(ValueError, match="local-dir:PATH"):
        parse_model_source("local-dir: ")


def test_unknown_pretrained_source_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="not 'hf-hub:ORG/REPO', 'local-dir:PATH'"):
        create_model("tiny-clip", pretrained="no-such-weights.pt")


@pytest.fixture
def restore_configs():
    saved = list(factory._CONFIG_PATHS)
    yield
    factory._CONFIG_PATHS[:] = saved
    factory._rescan_model_configs()


def test_json_config_registers_a_model_by_file_name(tmp_path, restore_configs):
    cfg = load_model_config("tiny-clip")
    cfg["model_cfg"]["embed_dim"] = 32
    (tmp_path / "my-tiny.json").write_text(json.dumps(cfg))
    assert "my-tiny" not in list_models()
    add_model_config(tmp_path)  # a folder; a single .json file works the same
    assert "my-tiny" in list_models("my-*")
    model = create_model("my-tiny", image_size=32)
    assert model.model_name == "my-tiny" and model.embed_dim == 32
    assert model.model_kwargs == {"pretrained": None, "image_size": 32}


def test_json_config_removed_unregisters_and_builtins_stay(tmp_path, restore_configs):
    (tmp_path / "gone-soon.json").write_text(json.dumps(load_model_config("tiny-clip")))
    add_model_config(tmp_path / "gone-soon.json")
    assert "gone-soon" in list_models()
    factory._CONFIG_PATHS.pop()
    factory._rescan_model_configs()
    assert "gone-soon" not in list_models() and {"biomedclip", "tiny-clip"} <= set(list_models())
    with pytest.raises(FileNotFoundError, match="add_model_config"):
        load_model_config("gone-soon")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        add_model_config(tmp_path / "nothing.json")
