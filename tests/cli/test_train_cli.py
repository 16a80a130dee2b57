"""`mammolens train` / `cv` and `python -m mammolens.train`: one parser for both entry points."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import mammolens.train
from mammolens.cli import app
from mammolens.train.__main__ import main

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def calls(monkeypatch, tmp_path):
    """``train`` and ``cross_validate`` replaced by recorders (nothing is trained)."""
    seen = {}

    def fake_train(cfg):
        seen["train"] = cfg
        run = tmp_path / "run"
        run.mkdir(exist_ok=True)
        (run / "summary.json").write_text('{"best_metric": 0.5, "best_epoch": 1, "method": "zeroshot"}')
        return run

    def fake_cv(cfg, k, **kw):
        seen["cv"] = (cfg, k)
        ms = {"mean": 0.5, "sd": 0.1}
        return {"n_patients": 4, "n_images": 8, "mean_sd": {"macro_auc": ms}, "pooled": {"macro_auc": 0.5}}

    monkeypatch.setattr(mammolens.train, "train", fake_train, raising=False)
    monkeypatch.setattr(mammolens.train, "cross_validate", fake_cv, raising=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: tiny-clip\nmethod: zeroshot\n")
    seen["config"] = cfg
    return seen


def test_python_m_train_help_works():
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    res = subprocess.run([sys.executable, "-m", "mammolens.train", "--help"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "python -m mammolens.train" in res.stdout and "--folds" in res.stdout and "--set" in res.stdout


def test_both_entry_points_take_the_same_options():
    group = typer.main.get_command(app)
    options = {name: sorted(o for p in cmd.params if p.param_type_name == "option" for o in p.opts)
               for name, cmd in group.commands.items() if name in ("train", "cv")}
    assert options["train"] == ["--config", "--folds", "--n-boot", "--set", "-c", "-k", "-s"]
    assert set(options["cv"]) <= set(options["train"])  # `train --folds K` is `cv --folds K`


@pytest.mark.parametrize("entry", ["mammolens", "python -m"])
def test_train_entry_points_run_one_run_or_cv(calls, capsys, entry):
    args = ["--config", str(calls["config"]), "--set", "epochs=3", "--set", "method.terms={}"]
    if entry == "mammolens":
        res = CliRunner().invoke(app, ["train", *args])
        code, out = res.exit_code, res.output
    else:
        code, out = main(args), capsys.readouterr().out
    assert code == 0, out
    assert calls["train"].epochs == 3 and calls["train"].method == "zeroshot"
    assert "run: " in out and "0.5000" in out
    if entry == "mammolens":
        res = CliRunner().invoke(app, ["train", *args, "--folds", "3"])
        code, out = res.exit_code, res.output
    else:
        code, out = main([*args, "--folds", "3"]), capsys.readouterr().out
    assert code == 0, out
    cfg, k = calls["cv"]
    assert k == 3 and cfg.epochs == 3 and "3-fold CV" in out


def test_train_entry_point_errors_and_ranks(calls, capsys, monkeypatch):
    assert main(["--config", str(calls["config"].parent / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    assert main(["--config", str(calls["config"]), "--set", "method.terms.prompt=1"]) == 2
    assert "its terms: none" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "1")  # a torchrun worker other than the first trains but does not print
    assert main(["--config", str(calls["config"])]) == 0
    assert capsys.readouterr().out == ""
