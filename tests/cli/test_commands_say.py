"""The commands do what they say (issue 21): help texts, --version, progress, input checks before work,
search hits a user can act on, explain's file names, default map, sidecar and ground-truth outlines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from _app_fixtures import app_env  # noqa: F401 — session fixture
from mammolens.cli import app

runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _error_lines(r) -> list[str]:
    return [ln for ln in r.stderr.splitlines() if ln.strip()]


# ------------------------------------------------------------------------------------------- help
def test_version():
    from mammolens._version import __version__

    r = _invoke("--version")
    assert r.exit_code == 0 and r.output.strip() == f"mammolens {__version__}"


def test_help_texts_keep_what_they_say():
    r = _invoke("index", "--help")
    assert r.exit_code == 0 and "[search]" in r.output  # not eaten by rich markup
    assert "report-contrastive" in _invoke("train", "--help").output
    top = " ".join(_invoke("--help").output.split())
    assert "report-contrastive" in top and "--version" in top
    assert "--no-progress" in _invoke("evaluate", "--help").output
    assert "--sidecar" in _invoke("explain", "--help").output and "--manifest" in _invoke("explain", "--help").output


def test_progress_bars_only_on_a_terminal(monkeypatch):
    import sys

    from mammolens.cli._app import show_progress

    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert show_progress(True) is False
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert show_progress(True) is True and show_progress(False) is False


def test_evaluate_no_progress_reaches_the_workflow(app_env, monkeypatch, tmp_path):  # noqa: F811
    import mammolens.workflows as wf

    seen = {}

    def fake(run, data, **kw):
        seen.update(kw)
        return {"n_images": 1, "metrics": {}, "report": str(tmp_path / "r.html")}

    monkeypatch.setattr(wf, "evaluate_run", fake)
    r = _invoke("evaluate", app_env.run, "--data", app_env.manifest, "--no-progress")
    assert r.exit_code == 0, r.output
    assert seen["progress"] is False


# ------------------------------------------------------------------------------------ inputs first
def test_evaluate_manifest_without_label_column_is_one_error_before_preprocessing(app_env, tmp_path):  # noqa: F811
    df = app_env.df.drop(columns=["density"]).assign(image_path=[str(app_env.cohort / p) for p in app_env.df["image_path"]])
    df["mias_density"] = "F"
    bad = tmp_path / "no_labels.parquet"
    df.to_parquet(bad)
    out = tmp_path / "ev"
    r = _invoke("evaluate", app_env.run, "--data", bad, "--out", out, "--device", "cpu")
    assert r.exit_code == 2, r.output
    lines = _error_lines(r)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no_labels.parquet" in lines[0]
    assert "'density'" in lines[0] and "task=mias" in lines[0] and "Traceback" not in r.output
    assert not out.exists()  # nothing was preprocessed


def test_evaluate_on_a_cv_folder_says_what_to_do(tmp_path):
    cv = tmp_path / "cv"
    (cv / "fold_0").mkdir(parents=True)
    (cv / "fold_1").mkdir()
    (cv / "cv_metrics.json").write_text(json.dumps({"k": 2}))
    r = _invoke("evaluate", cv, "--data", tmp_path / "m.parquet")
    assert r.exit_code == 2
    lines = _error_lines(r)
    assert len(lines) == 1 and "cross-validation folder" in lines[0] and "report.html" in lines[0]
    assert "fold_0" in lines[0] and "mammolens train" in lines[0]


def test_train_without_labels_names_the_empty_column_and_the_task_that_fits():
    from mammolens.train.config import cfg_from_dict
    from mammolens.train.loop import split_rows

    index = pd.DataFrame({"patient_id": [f"p{i}" for i in range(6)], "status": "done", "modality": "DM",
                          "density": "", "mias_density": list("FGDFGD"), "pathology": "normal"})
    cfg = cfg_from_dict({"task": "density", "model": "tiny-clip"})
    with pytest.raises(ValueError) as e:
        split_rows(index, np.full(6, -1), cfg)
    msg = str(e.value)
    assert "column 'density'" in msg and "empty in all 6 rows" in msg and "--set task=mias" in msg
    with pytest.raises(ValueError, match="not in the data"):
        split_rows(index.drop(columns=["density"]), np.full(6, -1), cfg)


def test_semicolon_csv_and_csv_named_parquet_get_one_clear_error(app_env, tmp_path):  # noqa: F811
    from mammolens.data.manifest import read_manifest

    semi = tmp_path / "semi.csv"
    app_env.df.to_csv(semi, sep=";", index=False)
    with pytest.raises(ValueError, match="semicolon-delimited"):
        read_manifest(semi)
    fake = tmp_path / "fake.parquet"
    app_env.df.to_csv(fake, index=False)
    with pytest.raises(ValueError, match="CSV .text. named .parquet"):
        read_manifest(fake)
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"\0\1\2 not parquet")
    with pytest.raises(ValueError, match="not a Parquet file"):
        read_manifest(junk)
    for path, words in ((semi, "semicolon-delimited"), (fake, "rename it to fake.csv")):
        r = _invoke("preprocess", path, "--out", tmp_path / f"c_{path.stem}")
        assert r.exit_code == 2 and words in r.stderr
        assert len(_error_lines(r)) == 1, r.stderr


# ----------------------------------------------------------------------------------------- search
def test_search_ties_and_digits():
    from mammolens.search import _tie_ranks, format_hits

    hits = pd.DataFrame({"rank": _tie_ranks(np.array([1.0, 1.0, 0.99995, 0.99994])), "score": [1.0, 1.0, 0.99995, 0.99994],
                         "exam": ["study-a", "study-b", "study-c", "study-d"], "laterality": "L", "view": "CC",
                         "modality": "DM", "image": ["a/1.dcm", "b/1.dcm", "c/1.dcm", "d/1.dcm"]})
    lines = format_hits(hits)
    assert [ln.split()[0] for ln in lines] == ["1=", "1=", "3", "4"]
    scores = [ln.split()[1] for ln in lines]
    assert scores[2] != scores[3] and len(set(scores)) == 3  # enough digits to tell different scores apart
    assert lines[0].endswith("a/1.dcm")


def test_search_prints_a_usable_image_path(app_env, tmp_path):  # noqa: F811
    idx = tmp_path / "idx"
    r = _invoke("index", app_env.run, app_env.cache, "--out", idx, "--device", "cpu")
    assert r.exit_code == 0, r.output
    r = _invoke("search", app_env.run, "a mass", "--index", idx, "-k", 3, "--device", "cpu")
    assert r.exit_code == 0, r.output
    pids = set(app_env.df["patient_id"])
    for line in r.output.strip().splitlines():
        path = line.split()[-1]
        assert path.endswith(".dcm") and not Path(path).is_absolute()
        assert not any(pid in path for pid in pids)  # pseudonymised
    ids = tmp_path / "idx_ids"
    r = _invoke("index", app_env.run, app_env.cache, "--out", ids, "--include-ids", "--device", "cpu")
    assert r.exit_code == 0, r.output
    r = _invoke("search", app_env.run, "a mass", "--index", ids, "-k", 3, "--device", "cpu")
    assert r.exit_code == 0, r.output
    root = Path(app_env.cohort)
    for line in r.output.strip().splitlines():
        rel = line.split()[-1]  # relative to the images' common folder (the cohort's)
        assert any((p / rel).is_file() for p in (root, *root.iterdir()) if p.is_dir()), rel


# ---------------------------------------------------------------------------------------- explain
def _green(png: Path) -> int:
    a = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int(((a[..., 0] == 0) & (a[..., 1] == 255) & (a[..., 2] == 0)).sum())


def test_explain_text_without_map_uses_the_text_map_named_after_the_image(app_env, tmp_path):  # noqa: F811
    f = app_env.study_files(0)[0]
    r = _invoke("explain", app_env.run, f, "--text", "a mass", "--out", tmp_path / "t", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "(text) ->" in r.output
    (png,) = (tmp_path / "t").glob("*.png")
    assert png.name.startswith(f.stem) and png.name.endswith("_text_0.png")
    r = _invoke("explain", app_env.run, f, "--map", "factor", "--out", tmp_path / "n")
    assert r.exit_code == 2 and "--text" in r.stderr


def test_explain_draws_the_ground_truth_outline(app_env, tmp_path):  # noqa: F811
    files = app_env.study_files(0)[:2]
    df = app_env.df.assign(image_path=[str(app_env.cohort / p) for p in app_env.df["image_path"]])
    df["lesion_x"], df["lesion_y"], df["lesion_r"] = np.nan, np.nan, np.nan
    row = df.index[df["image_path"] == str(files[0])][0]
    df.loc[row, ["lesion_x", "lesion_y", "lesion_r"]] = [50.0, 60.0, 20.0]
    man = tmp_path / "lesions.parquet"
    df.to_parquet(man)
    r = _invoke("explain", app_env.run, *files, "--manifest", man, "--out", tmp_path / "g", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "ground-truth outline drawn on 1 overlay(s)" in r.output
    from mammolens.inference import overlay_name

    pngs = {p.name: p for p in (tmp_path / "g").glob("*.png")}
    drawn = [n for n in pngs if _green(pngs[n]) > 20]
    assert len(pngs) == 2 and len(drawn) == 1 and drawn[0].startswith(files[0].stem)
    assert overlay_name(files[0].name) in pngs  # the same name as without --manifest
    r = _invoke("explain", app_env.run, files[0], "--text", "a mass", "--manifest", man, "--out", tmp_path / "s",
                "--device", "cpu")
    assert r.exit_code == 0, r.output
    (png,) = (tmp_path / "s").glob("*.png")
    assert _green(png) > 20
    man2 = tmp_path / "plain.parquet"
    app_env.df.drop(columns=["lesion_x", "lesion_y", "lesion_r"], errors="ignore").to_parquet(man2)
    r = _invoke("explain", app_env.run, files[0], "--manifest", man2, "--out", tmp_path / "x")
    assert r.exit_code == 2 and "lesion_x" in r.stderr


def test_draw_outlines_scales_and_stays_off_the_colour_bar():
    from mammolens.explain.overlay import draw_outlines

    fig = np.zeros((100, 150, 3), np.uint8)
    out = draw_outlines(fig, [(100.0, 100.0, 40.0), (np.nan, 1.0, 1.0)], scale=0.5, width=100)
    green = (out[..., 1] == 255) & (out[..., 0] == 0)
    ys, xs = np.nonzero(green)
    assert green.any() and xs.max() < 100  # clipped to the image part
    assert abs((ys.min() + ys.max()) / 2 - 50) <= 1 and abs((xs.min() + xs.max()) / 2 - 50) <= 1


def test_explain_takes_a_sidecar(app_env, tmp_path):  # noqa: F811
    f = app_env.study_files(0)[0]
    side = tmp_path / "side.csv"
    pd.DataFrame({"path": [str(f)], "patient": ["p1"], "study": ["s1"], "laterality": ["L"], "view": ["CC"]}).to_csv(
        side, index=False)
    r = _invoke("explain", app_env.run, f, "--sidecar", side, "--out", tmp_path / "e", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "give --sidecar" not in r.output
