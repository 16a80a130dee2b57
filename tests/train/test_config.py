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


# ------------------------------------------------------------------------------ the method: section
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "runs_v0"
FULL = {"name": "report-contrastive", "terms": {"exam_report": 1.0, "sentence_patch": 0.5, "multiview": 0.5,
                                                "prompt": 0.25},
        "pooling": "attention", "max_sentences": 8,
        "modality_weighting": {"mode": "fixed", "momentum": 0.5, "power": -1.0, "min_weight": 0.1,
                               "max_weight": 3.0}}


def test_method_section_full_form(tmp_path):
    import yaml

    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"method": FULL}))
    cfg = load_cfg(p)
    assert cfg.method == "report-contrastive"  # the name stays a plain string
    m = cfg.method_cfg
    assert m.terms == {"exam_report": 1.0, "sentence_patch": 0.5, "multiview": 0.5, "prompt": 0.25}
    assert (m.pooling, m.max_sentences) == ("attention", 8)
    mw = m.modality_weighting
    assert (mw.mode, mw.momentum, mw.power, mw.min_weight, mw.max_weight) == ("fixed", 0.5, -1.0, 0.1, 3.0)


def test_method_plain_name_gets_the_methods_default_terms():
    assert cfg_from_dict({"method": "contrastive"}).method_cfg.terms == {"contrastive": 1.0}
    assert cfg_from_dict({"method": "finetune-ce"}).method_cfg.terms == {"cross_entropy": 1.0}
    assert cfg_from_dict({"method": "zeroshot"}).method_cfg.terms == {}
    rep = cfg_from_dict({"method": {"name": "report-contrastive", "terms": {"prompt": 0.5}}})
    assert rep.method_cfg.terms == {"exam_report": 1.0, "sentence_patch": 1.0, "multiview": 0.5,
                                    "prompt": 0.5}  # the rest default
    assert cfg_from_dict({"method": {"name": "contrastive", "modality_weighting": "adaptive"}}
                         ).method_cfg.modality_weighting.mode == "adaptive"  # a plain mode is short for {mode: ...}
    # Python callers may pass the YAML form
    assert TrainCfg(method=dict(FULL)) == cfg_from_dict({"method": FULL})


@pytest.mark.parametrize("method", ["report-contrastive", "finetune-ce", "linear-probe"])
def test_adaptive_modality_weighting_is_refused_where_it_would_be_ignored(method):
    """Before issue 22 ``adaptive`` was silently ignored outside ``contrastive``."""
    with pytest.raises(ValueError, match=f"not supported by method '{method}'.*that take it: contrastive"):
        cfg_from_dict({"method": {"name": method, "modality_weighting": "adaptive"}})
    assert cfg_from_dict({"method": {"name": method, "modality_weighting": "fixed"}})


@pytest.mark.parametrize("old, value, new, read", [
    ("prompt_weight", 0.5, "method.terms.prompt", lambda c: c.method_cfg.terms["prompt"]),
    ("local_weight", 0.0, "method.terms.sentence_patch", lambda c: c.method_cfg.terms["sentence_patch"]),
    ("pooling", "attention", "method.pooling", lambda c: c.method_cfg.pooling),
    ("max_sentences", 4, "method.max_sentences", lambda c: c.method_cfg.max_sentences),
    ("modality_weighting", "fixed", "method.modality_weighting.mode",  # adaptive: contrastive only
     lambda c: c.method_cfg.modality_weighting.mode),
    ("adaptive_momentum", 0.5, "method.modality_weighting.momentum",
     lambda c: c.method_cfg.modality_weighting.momentum),
    ("adaptive_power", -1.0, "method.modality_weighting.power", lambda c: c.method_cfg.modality_weighting.power),
    ("adaptive_min_weight", 0.1, "method.modality_weighting.min_weight",
     lambda c: c.method_cfg.modality_weighting.min_weight),
    ("adaptive_max_weight", 3.0, "method.modality_weighting.max_weight",
     lambda c: c.method_cfg.modality_weighting.max_weight),
    ("report_column", "notes", "data.report_column", lambda c: c.data.report_column),
])
def test_old_flat_key_maps_to_its_new_place_with_a_message(tmp_path, caplog, old, value, new, read):
    import yaml

    from mammolens.train.config import LEGACY_KEYS

    assert LEGACY_KEYS[old] == new
    p = tmp_path / "c.yaml"
    p.write_text(f"method: report-contrastive\n{old}: {value}\n")
    with pytest.warns(DeprecationWarning, match=rf"{old} -> {new}\b"):
        from_yaml = load_cfg(p)
    assert read(from_yaml) == value
    assert f"{old} -> {new}" in caplog.text and str(p) in caplog.text  # logged too, naming the file
    with pytest.warns(DeprecationWarning, match=rf"--set.*{old} -> {new}\b"):
        from_set = load_cfg(None, ["method=report-contrastive", f"{old}={value}"])
    assert from_set == from_yaml
    saved = yaml.safe_load(save_cfg(from_yaml, tmp_path / "saved.yaml").read_text())
    assert old not in saved and load_cfg(tmp_path / "saved.yaml") == from_yaml  # saved in the new form


def test_old_flat_key_and_its_new_key_together_are_refused():
    with pytest.raises(ValueError, match=r"prompt_weight.*method\.terms\.prompt.*keep only"):
        cfg_from_dict({"method": {"name": "report-contrastive", "terms": {"prompt": 0.1}}, "prompt_weight": 0.2})


def test_old_run_config_with_other_methods_terms_still_loads():
    """An old contrastive run's config.yaml lists prompt_weight/local_weight (ignored then, dropped now)."""
    with pytest.warns(DeprecationWarning, match="ignored: method contrastive has no prompt term"):
        cfg = load_cfg(FIXTURES / "contrastive" / "config.yaml")
    assert cfg.method == "contrastive" and cfg.method_cfg.terms == {"contrastive": 1.0}
    with pytest.warns(DeprecationWarning):
        rep = load_cfg(FIXTURES / "report-contrastive" / "config.yaml")
    assert rep.method == "report-contrastive" and set(rep.method_cfg.terms) == {"exam_report", "sentence_patch",
                                                                              "multiview", "prompt"}


def test_unknown_term_is_refused_with_the_methods_terms():
    with pytest.raises(ValueError, match=r"method\.terms\.promt.*'report-contrastive'.*"
                                         r"its terms: exam_report, sentence_patch, multiview, prompt"):
        cfg_from_dict({"method": {"name": "report-contrastive", "terms": {"promt": 0.5}}})
    with pytest.raises(ValueError, match=r"method\.terms\.prompt.*'contrastive'.*its terms: contrastive"):
        load_cfg(None, ["method.terms.prompt=0.5"])
    with pytest.raises(ValueError, match="its terms: none"):
        cfg_from_dict({"method": {"name": "zeroshot", "terms": {"contrastive": 1.0}}})
    with pytest.raises(ValueError, match=r"method\.terms\.prompt must be >= 0"):
        cfg_from_dict({"method": {"name": "report-contrastive", "terms": {"prompt": -1}}})
    with pytest.raises(ValueError, match="give one a weight > 0"):
        cfg_from_dict({"method": {"name": "contrastive", "terms": {"contrastive": 0}}})
    with pytest.raises(ValueError, match=r"method\.term;.*valid keys in method: .*name.*terms"):
        cfg_from_dict({"method": {"name": "contrastive", "term": {}}})


def test_set_overrides_nested_method_keys(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("method: report-contrastive\n")  # the plain name in the file
    cfg = load_cfg(p, ["method.terms.prompt=0.5", "method.pooling=attention", "method.modality_weighting.power=2"])
    assert cfg.method_cfg.terms == {"exam_report": 1.0, "sentence_patch": 1.0, "multiview": 0.5, "prompt": 0.5}
    assert cfg.method_cfg.pooling == "attention" and cfg.method_cfg.modality_weighting.power == 2.0
    p.write_text("method:\n  name: report-contrastive\n  terms: {prompt: 0.5, sentence_patch: 0.0}\n"
                 "  pooling: attention\n")
    cfg = load_cfg(p, ["method.terms.prompt=0.7"])  # one term changed, the file's others kept
    assert cfg.method_cfg.terms == {"exam_report": 1.0, "sentence_patch": 0.0, "multiview": 0.5, "prompt": 0.7}
    other = load_cfg(p, ["method=contrastive"])  # another method: the file's terms are dropped, settings kept
    assert other.method == "contrastive" and other.method_cfg.terms == {"contrastive": 1.0}
    assert other.method_cfg.pooling == "attention"


def test_saved_config_uses_the_method_section_and_round_trips(tmp_path):
    import yaml

    cfg = cfg_from_dict({"method": FULL, "data": {"report_column": "notes"}})
    path = save_cfg(cfg, tmp_path / "config.yaml")
    saved = yaml.safe_load(path.read_text())
    assert saved["method"] == FULL and "method_cfg" not in saved
    assert not set(saved) & {"prompt_weight", "local_weight", "pooling", "modality_weighting", "adaptive_power"}
    assert list(saved).index("method") == list(saved).index("image_size") + 1  # where `method` always was
    assert load_cfg(path) == cfg
    assert cfg_from_dict(cfg.to_dict()) == cfg


def test_a_registered_methods_declared_terms_are_its_valid_terms(monkeypatch):
    from mammolens.train import methods

    class Toy(methods.TrainMethod):
        terms = {"main": 1.0, "aux": 0.0}

    monkeypatch.setitem(methods._REGISTRY, "toy-terms", Toy)
    cfg = cfg_from_dict({"method": "toy-terms"}, ["method.terms.aux=0.3"])
    assert cfg.method_cfg.terms == {"main": 1.0, "aux": 0.3}
    with pytest.raises(ValueError, match="its terms: main, aux"):
        cfg_from_dict({"method": {"name": "toy-terms", "terms": {"other": 1.0}}})


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_example_configs_use_the_current_keys(path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # no old flat key left in configs/
        cfg = load_cfg(path)
    if cfg.method == "report-contrastive":
        assert cfg.method_cfg.terms["prompt"] == 0.5 and cfg.method_cfg.pooling == "attention"


@pytest.mark.parametrize("method", ["contrastive", "report-contrastive"])
def test_train_load_run_gives_an_old_runs_config_as_a_train_cfg(tmp_path, method):
    from _run_fixtures import old_run

    from mammolens.models.run import LoadedRun
    from mammolens.train import load_run

    with pytest.warns(DeprecationWarning, match=r"run .*pooling -> method\.pooling"):
        run = load_run(old_run(method, tmp_path / "run"))
    model, task, cfg = run  # unpacks as documented
    assert isinstance(run, LoadedRun) and isinstance(cfg, TrainCfg) and cfg.method == method == run.method
    with pytest.warns(DeprecationWarning):
        assert cfg == load_cfg(tmp_path / "run" / "config.yaml")
    if method == "report-contrastive":
        assert cfg.method_cfg.pooling == "attention"
