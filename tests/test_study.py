"""`mammolens study`: single- vs multi-modality runs per fold and seed, one table with CIs and paired tests."""

import json

import numpy as np
import pandas as pd
import pytest

from mammolens.study import StudyCfg, paired_bootstrap, run_study


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from mammolens.data.cache import PreprocessCfg, build_cache
    from mammolens.data.synthetic import make_cohort

    root = tmp_path_factory.mktemp("study")
    make_cohort(root / "cohort", n_patients=12, seed=0, image_size=(64, 64), dbt_frames=2, density_probs=[0.25] * 4)
    build_cache(root / "cohort" / "manifest.parquet", root / "cache", PreprocessCfg(size=32), workers=0, progress=False)
    make_cohort(root / "ext", n_patients=4, seed=1, image_size=(64, 64), dbt_frames=2, density_probs=[0.25] * 4)
    return root


def test_paired_bootstrap_values():
    y = np.array([0, 1, 0, 1, 0, 1])
    good = np.eye(2)[y]  # always right
    bad = np.eye(2)[1 - y]  # always wrong
    acc = lambda yy, pp: float(np.mean(pp.argmax(1) == yy))  # noqa: E731
    d = paired_bootstrap(acc, y, good, bad, groups=np.arange(6), n_boot=50)
    assert d["diff"] == 1.0 and d["lo"] == 1.0 and d["hi"] == 1.0 and d["p"] == pytest.approx(2 / 51)
    same = paired_bootstrap(acc, y, good, good, groups=np.arange(6), n_boot=50)
    assert same["diff"] == 0.0 and same["p"] == 1.0


def test_study_cfg_errors():
    with pytest.raises(ValueError, match="not valid"):
        StudyCfg(manifest="m.parquet", modalities=["MRI"])
    with pytest.raises(ValueError, match="needs data"):
        StudyCfg()


def test_run_study_writes_one_table(cohort, tmp_path):
    train = dict(model="tiny-clip", image_size=32, epochs=1, max_steps_per_epoch=1, batch_size=8, lr=1e-3,
                 precision="fp32", augment=False, workers=0, device="cpu", warmup_steps=1)
    res = run_study(StudyCfg(cache=str(cohort / "cache"), out_dir=str(tmp_path / "s"), train=train, folds=2,
                             seeds=[0], external=[str(cohort / "ext" / "manifest.parquet")], n_boot=20))
    assert res["n_runs"] == 2 * 4  # 2 folds x (DM, s2D, DBT, multi)
    df = pd.read_csv(tmp_path / "s" / "study.csv")
    assert sorted(set(df["train"])) == ["DBT", "DM", "multi", "s2D"]
    assert sorted(set(df["test"])) == ["DBT", "DM", "all", "ext/manifest.parquet", "s2D"]
    assert len(df) == 4 * 5
    assert df["accuracy"].between(0, 1).all()
    ok = df.dropna(subset=["macro_auc_lo"])
    assert ((ok["macro_auc_lo"] <= ok["macro_auc"] + 1e-9) & (ok["macro_auc"] <= ok["macro_auc_hi"] + 1e-9)).all()
    single = df[df["train"] != "multi"]
    assert single["accuracy_p"].between(0, 1).all() and df[df["train"] == "multi"]["accuracy_p"].isna().all()
    # every cohort image is tested once per seed; each single-modality run saw only its modality
    assert int(df[(df["train"] == "DM") & (df["test"] == "all")]["n_predictions"].iloc[0]) == len(
        pd.read_parquet(cohort / "cohort" / "manifest.parquet"))
    summary = json.loads((tmp_path / "s" / "runs" / "seed0" / "fold0" / "DBT" / "summary.json").read_text())
    from mammolens.data.cache import open_cache

    n_dbt = int((open_cache(cohort / "cache").index["modality"] == "DBT").sum())
    assert 0 < summary["n_train"] + summary["n_val"] < n_dbt  # DBT rows of the training folds only
    text = (tmp_path / "s" / "study.html").read_text() + (tmp_path / "s" / "study.json").read_text()
    assert str(tmp_path) not in text and "SYN0" not in text  # no absolute paths, no patient ids
    page = (tmp_path / "s" / "study.html").read_text()
    from mammolens.evaluation.report import REPORT_CSS, SIMULATED_BANNER

    assert REPORT_CSS in page and SIMULATED_BANNER in page  # report.html's style and banner
    assert "<b>ext/manifest.parquet</b>" in page and "paired patient bootstrap" in page  # real names, the test named
    assert not (tmp_path / "s" / "runs" / "seed0" / "fold0" / "DM" / "checkpoints").exists()


def test_study_cli_missing_manifest_is_one_error_line(tmp_path):
    from typer.testing import CliRunner

    from mammolens.cli import app

    r = CliRunner().invoke(app, ["study", "--manifest", str(tmp_path / "nope.parquet"), "--out", str(tmp_path / "s")])
    assert r.exit_code == 2 and "nope.parquet" in r.output and "Traceback" not in r.output


def _manifest_without(cohort, tmp_path, drop: list[str]):
    df = pd.read_parquet(cohort / "cohort" / "manifest.parquet")
    kept = df[~df["modality"].isin(drop)].assign(image_path=lambda d: [str(cohort / "cohort" / p) for p in d["image_path"]])
    man = tmp_path / f"without_{'_'.join(drop)}.parquet"
    kept.to_parquet(man)
    return str(man)


def test_study_refuses_what_the_data_cannot_fill_before_training(cohort, tmp_path, monkeypatch):
    import mammolens.train.loop as loop

    monkeypatch.setattr(loop, "train", lambda *a, **k: pytest.fail("trained before refusing"))
    train = dict(model="tiny-clip", image_size=32, epochs=1, batch_size=8, workers=0, device="cpu",
                 data={"preprocess": {"size": 32}})
    dm_only = _manifest_without(cohort, tmp_path, ["s2D", "DBT"])
    with pytest.raises(ValueError, match=r"1 modality \(DM: [0-9]+, s2D: 0, DBT: 0\)"):
        run_study(StudyCfg(manifest=dm_only, out_dir=str(tmp_path / "s1"), train=train, folds=2, seeds=[0], n_boot=5))
    no_dbt = _manifest_without(cohort, tmp_path, ["DBT"])
    with pytest.raises(ValueError, match="no usable labelled DBT images .* --modality DM --modality s2D"):
        run_study(StudyCfg(manifest=no_dbt, out_dir=str(tmp_path / "s2"), train=train, folds=2, seeds=[0], n_boot=5))
