"""`cv` says which fold it is on and writes a report for the pooled out-of-fold predictions (issue 21)."""

import json

from mammolens.train import cross_validate

from _train_helpers import _cfg, _cohort_cache, cache_dir  # noqa: F401  (fixture)


def test_cv_prints_fold_headers_and_writes_a_pooled_report(cache_dir, tmp_path, capsys):
    cross_validate(_cfg(cache_dir, tmp_path / "cv", epochs=1), k=2, n_boot=20)
    err = capsys.readouterr().err
    assert "fold 1/2: train " in err and "fold 2/2: train " in err
    assert err.index("fold 1/2") < err.index("epoch 1/1") < err.index("fold 2/2")  # a header before each fold's lines
    report = (tmp_path / "cv" / "report.html").read_text()
    assert "2-fold cross-validation" in report and "95%" in report and "out-of-fold" in report
    assert "Simulated data" in report  # the synthetic cohort keeps its banner
    saved = json.loads((tmp_path / "cv" / "oof_metrics.json").read_text())
    assert saved["n_images"] == 64 and saved["n_boot"] == 20 and "accuracy" in saved["ci"]


def test_cv_cli_names_the_report(cache_dir, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from mammolens.cli import app

    cfg = _cfg(cache_dir, tmp_path / "cv", epochs=1)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    r = CliRunner().invoke(app, ["cv", "--config", str(path), "--folds", "2", "--n-boot", "10"])
    assert r.exit_code == 0, r.output
    assert "fold 2/2" in r.stderr and f"report (pooled out-of-fold, 95% CIs): {tmp_path / 'cv' / 'report.html'}" in r.stdout
