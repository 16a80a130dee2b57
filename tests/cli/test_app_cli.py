"""CLI tests: `mammolens predict / evaluate / explain / demo` through typer's CliRunner."""

import json
from pathlib import Path

import pandas as pd
from PIL import Image
from typer.testing import CliRunner

from _app_fixtures import app_env, zeroshot_run  # noqa: F401 — session fixtures
from mammolens.cli import app

runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


# -------------------------------------------------------------------------------------------- predict
def test_predict_cli_all_ok_exit_0(app_env, tmp_path):  # noqa: F811
    import pydicom

    out = tmp_path / "out"
    r = _invoke("predict", app_env.run, app_env.study_dirs()[0], app_env.study_dirs()[1], "--out", out,
                "--workers", 0, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "8 images, 4 breasts, 2 exams predicted; 2 DICOM SR written" in r.output
    for name in ("images.csv", "breasts.csv", "exams.csv", "results.json", "errors.csv"):
        assert (out / name).is_file()
        assert "SYN" not in (out / name).read_text()
    assert len(list((out / "overlays").glob("*.png"))) == 8
    assert pd.read_csv(out / "errors.csv").empty
    src = pydicom.dcmread(app_env.study_files(0)[0], stop_before_pixels=True)
    srs = sorted((out / "dicom").glob("*/density_sr.dcm"))
    assert len(srs) == 2
    uids = {pydicom.dcmread(p).StudyInstanceUID for p in srs}
    assert src.StudyInstanceUID in uids and all(pydicom.dcmread(p).Modality == "SR" for p in srs)
    assert len(list((out / "dicom").glob("*/overlay_*.dcm"))) == 8


def test_predict_cli_corrupt_file_exit_1(app_env, tmp_path):  # noqa: F811
    bad = tmp_path / "x.dcm"
    bad.write_bytes(b"garbage" * 30)
    out = tmp_path / "out"
    r = _invoke("predict", app_env.run, app_env.study_dirs()[0], bad, "--out", out, "--workers", 0,
                "--device", "cpu", "--no-overlays", "--no-dicom")
    assert r.exit_code == 1
    assert "FAILED" in r.output and "x.dcm" in r.output
    assert len(pd.read_csv(out / "images.csv")) == 4
    errors = pd.read_csv(out / "errors.csv")
    assert len(errors) == 1 and errors["file"].iloc[0].endswith("x.dcm")
    assert "not a DICOM file" in errors["reason"].iloc[0] and str(tmp_path) not in errors["reason"].iloc[0]
    assert not (out / "overlays").exists() and not (out / "dicom").exists()


def test_predict_cli_sidecar_groups_pngs_and_dx_is_not_predicted(app_env, tmp_path, caplog):  # noqa: F811
    from mammolens.data.synthetic import write_non_mammogram

    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(3):
        (folder / f"scan{i}.png").write_bytes(app_env.mammogram_png(i))
    write_non_mammogram(folder / "abdomen.dcm", "dx-abdomen")
    (tmp_path / "side.csv").write_text("path,patient,study,laterality,view\n"
                                       "pngs/scan0.png,P1,S1,L,CC\npngs/scan1.png,P1,S1,R,CC\n")
    out = tmp_path / "out"
    r = _invoke("predict", app_env.run, folder, "--out", out, "--workers", 0, "--device", "cpu",
                "--no-overlays", "--no-dicom", "--sidecar", tmp_path / "side.csv")
    assert "3 images, 3 breasts, 2 exams predicted" in r.output, r.output
    warned = [m for m in caplog.messages if "without study information" in m]  # the terminal's WARNING line
    assert len(warned) == 1 and warned[0].startswith("1 image file(s)")  # scan2.png: its own exam
    errors = pd.read_csv(out / "errors.csv")
    assert list(errors["file"]) == ["abdomen.dcm"]
    assert list(errors["reason"]) == ["not a mammogram: DX image of ABDOMEN"]
    assert json.loads((out / "results.json").read_text())["warnings"][0].startswith("1 image file(s)")


def _pacs_archive(app_env, root: Path) -> tuple[Path, list[str]]:  # noqa: F811
    """A PACS-like export: ``PatientID/StudyInstanceUID/SOPInstanceUID.dcm``; study 0 readable plus a
    garbage file in its folder, study 1 a single file with a readable header and truncated pixel data."""
    import pydicom

    ids = []
    for src in app_env.study_files(0):
        ds = pydicom.dcmread(src)
        folder = root / ds.PatientID / ds.StudyInstanceUID
        folder.mkdir(parents=True, exist_ok=True)
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm")
        ids += [ds.PatientID, ds.StudyInstanceUID, ds.SOPInstanceUID]
    (folder / "broken.dcm").write_bytes(b"garbage" * 30)
    ds = pydicom.dcmread(app_env.study_files(1)[0])
    ds.PixelData = ds.PixelData[:100]
    folder = root / ds.PatientID / ds.StudyInstanceUID
    folder.mkdir(parents=True)
    ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm")
    return root, [*ids, ds.PatientID, ds.StudyInstanceUID, ds.SOPInstanceUID]


def test_predict_cli_pacs_archive_leaks_no_ids(app_env, tmp_path):  # noqa: F811
    archive, ids = _pacs_archive(app_env, tmp_path / "export")
    out = tmp_path / "out"
    r = _invoke("predict", app_env.run, archive, "--out", out, "--workers", 0, "--device", "cpu", "--no-dicom")
    assert r.exit_code == 1, r.output
    assert r.output.count("FAILED") == 2 and "4 images" in r.output
    errors = pd.read_csv(out / "errors.csv")
    assert len(errors) == 2 and errors["file"].str.startswith("patient-").all()
    assert not any(i in r.output for i in ids) and str(archive) not in r.output
    for name in ("images.csv", "exams.csv", "errors.csv", "results.json"):
        text = (out / name).read_text()
        assert not any(i in text for i in ids) and "SYN" not in text and str(archive) not in text, name
    assert not any(any(i in p.name for i in ids) for p in (out / "overlays").iterdir())
    # --include-ids: the user asked for them
    r = _invoke("predict", app_env.run, archive, "--out", tmp_path / "ids", "--workers", 0, "--device", "cpu",
                "--no-dicom", "--no-overlays", "--include-ids")
    assert ids[0] in (tmp_path / "ids" / "errors.csv").read_text() and ids[-3] in r.output


def test_predict_cli_nothing_read_exits_3(app_env, tmp_path):  # noqa: F811
    bad = tmp_path / "in"
    bad.mkdir()
    for i in range(12):
        (bad / f"x{i:02d}.dcm").write_bytes(b"garbage" * 30)
    r = _invoke("predict", app_env.run, bad, "--out", tmp_path / "out", "--workers", 0, "--device", "cpu")
    assert r.exit_code == 3, r.output
    assert "nothing was read: none of the 12 file(s) could be read" in " ".join(r.output.split())
    assert r.output.count("FAILED ") == 10 and "... and 2 more, see " in r.output
    assert len(pd.read_csv(tmp_path / "out" / "errors.csv")) == 12
    empty = tmp_path / "empty"
    empty.mkdir()
    r = _invoke("predict", app_env.run, empty, "--out", tmp_path / "o2", "--workers", 0, "--device", "cpu")
    assert r.exit_code == 3 and "no image file found in" in r.output


def test_explain_cli_nothing_read_exits_3(app_env, tmp_path):  # noqa: F811
    bad = tmp_path / "x.dcm"
    bad.write_bytes(b"garbage" * 30)
    r = _invoke("explain", app_env.run, bad, "--out", tmp_path / "e", "--device", "cpu")
    assert r.exit_code == 3 and "FAILED x.dcm" in r.output


def test_evaluate_every_image_unreadable_exits_3(app_env, tmp_path, monkeypatch, capsys):  # noqa: F811
    import sys

    import pytest

    from mammolens.cli import main

    m = pd.read_parquet(app_env.manifest).iloc[:3].assign(image_path=[str(tmp_path / f"gone{i}.dcm") for i in range(3)])
    m.to_parquet(tmp_path / "m.parquet")
    monkeypatch.setattr(sys, "argv", ["mammolens", "evaluate", str(app_env.run), "--data", str(tmp_path / "m.parquet"),
                                      "--out", str(tmp_path / "ev"), "--workers", "0", "--device", "cpu"])
    with pytest.raises(SystemExit) as ex:
        main()
    assert ex.value.code == 3
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if ln.startswith("error: "))
    assert line.startswith("error: none of the images of m.parquet could be read") and "Traceback" not in err
    assert str(tmp_path / "ev" / "errors.csv") in line and (tmp_path / "ev" / "errors.csv").is_file()  # kept
    assert ".cache-" not in err  # never the temporary cache, which is deleted


def test_predict_cli_missing_run_fails(tmp_path):
    r = _invoke("predict", tmp_path / "norun", tmp_path, "--out", tmp_path / "o", "--workers", 0)
    assert r.exit_code == 2
    assert r.stderr.startswith("error: ") and "run folder not found" in r.stderr


# ------------------------------------------------------------------------------------------- evaluate
def test_evaluate_cli_with_compare(app_env, zeroshot_run, tmp_path):  # noqa: F811
    out = tmp_path / "ev"
    r = _invoke("evaluate", app_env.run, "--data", app_env.manifest, "--n-boot", 50, "--compare", zeroshot_run,
                "--out", out, "--gallery", 1, "--workers", 0, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "accuracy" in r.output and "report:" in r.output
    m = json.loads((out / "metrics.json").read_text())
    assert {"accuracy", "auc_macro"} <= set(m["metrics"]) and "auc_macro" in m["ci"]
    assert all(0 <= d["p"] <= 1 for d in m["compare"]["delong"])
    preds = pd.read_parquet(out / "predictions.parquet")
    assert not set(preds["patient_id"]) & set(app_env.df["patient_id"])
    html = (out / "report.html").read_text()
    assert "ROC" in html and "class " in html and len(list((out / "gradcam").glob("*.png"))) >= 1


def test_evaluate_cli_default_out_is_run_eval(app_env, tmp_path):  # noqa: F811
    import shutil

    run = tmp_path / "run"
    shutil.copytree(app_env.run, run)
    r = _invoke("evaluate", run, "--data", app_env.cache, "--n-boot", 10, "--gallery", 0, "--workers", 0,
                "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert (run / "eval" / "report.html").is_file() and (run / "eval" / "metrics.json").is_file()


# -------------------------------------------------------------------------------------------- explain
def test_explain_cli_png_per_image_and_class(app_env, tmp_path):  # noqa: F811
    files = app_env.study_files(0)[:2]
    r = _invoke("explain", app_env.run, *files, "--out", tmp_path / "e", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert r.output.count("predicted") == 2
    pngs = sorted((tmp_path / "e").glob("*.png"))
    # the heat map is drawn on the original image (128x104 here, not the 64 px model tile) beside its colour bar
    assert len(pngs) == 2 and all(Image.open(p).size[1] == 128 and Image.open(p).size[0] > 104 for p in pngs)
    r = _invoke("explain", app_env.run, files[0], "--out", tmp_path / "d", "--class", "D", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "d").glob("*.png"))) == 1


def test_explain_cli_unknown_class_is_clear_error(app_env, tmp_path):  # noqa: F811
    r = _invoke("explain", app_env.run, app_env.study_files(0)[0], "--out", tmp_path / "z", "--class", "Z")
    assert r.exit_code == 2
    assert r.stderr.startswith("error: ") and "'Z'" in r.stderr and "['A', 'B', 'C', 'D']" in r.stderr
    assert not (tmp_path / "z").exists()


def test_explain_cli_text_maps_per_sentence_and_report(app_env, tmp_path):  # noqa: F811
    import pydicom

    files = app_env.study_files(0)[:2]
    rep = tmp_path / "report.txt"
    rep.write_text("Spiculated mass in the upper outer quadrant. No calcifications;\n")
    r = _invoke("explain", app_env.run, *files, "--text", "spiculated mass", "--report", rep, "--map", "text",
                "--dicom", "--out", tmp_path / "t", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert r.output.count("(text) ->") == 6  # 2 images x 3 sentences
    pngs = sorted((tmp_path / "t").glob("*.png"))
    from mammolens.inference import overlay_name

    # named after the source image, as GradCAM overlays are (issue 21)
    first = [overlay_name(files[0].name, f"_text_{t}.png") for t in range(3)]
    assert set(first) <= {p.name for p in pngs} and first[0].startswith(files[0].stem)
    pngs = [tmp_path / "t" / n for n in first]
    src = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert Image.open(pngs[0]).size[1] == src.Rows  # drawn on the original geometry
    scs = sorted((tmp_path / "t").glob("*.dcm"))
    assert len(scs) == 6 and pydicom.dcmread(scs[0]).StudyInstanceUID == src.StudyInstanceUID
    r = _invoke("explain", app_env.run, files[0], "--text", "mass", "--map", "factor", "--out", tmp_path / "f",
                "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert [p.name for p in (tmp_path / "f").glob("*.png")] == [overlay_name(files[0].name, "_factor_0.png")]
    r = _invoke("explain", app_env.run, files[0], "--map", "text", "--out", tmp_path / "n")
    assert r.exit_code == 2 and "--text" in r.stderr


# ----------------------------------------------------------------------------------------------- demo
def test_demo_cli_end_to_end(tmp_path):
    out = tmp_path / "demo"
    r = _invoke("demo", "--out", out, "--patients", 8, "--external", 4, "--epochs", 1, "--n-boot", 20,
                "--workers", 0)
    assert r.exit_code == 0, r.output
    assert r.output.count("report:") == 1
    # rich may wrap a long path over lines
    printed = r.output.split("report:", 1)[1].replace("\n", "").strip()
    report = Path(printed[: printed.index("report.html") + len("report.html")])
    assert report == out / "run" / "eval-external" / "report.html"
    assert report.is_file() and report.name == "report.html" and "ROC" in report.read_text()
    assert (out / "run" / "checkpoints").is_dir()
    assert len(pd.read_csv(out / "predict" / "exams.csv")) == 1
    assert "example exam prediction" in r.output
