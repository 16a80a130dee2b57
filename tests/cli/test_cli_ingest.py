import pandas as pd
import pytest
from typer.testing import CliRunner

from mammolens.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    synthetic = pytest.importorskip("mammolens.data.synthetic")
    root = tmp_path_factory.mktemp("cohort")
    manifest = synthetic.make_cohort(root, n_patients=2, seed=0, image_size=(96, 80), dbt_frames=3)
    dicom = root / "dicom"
    first = root / manifest["image_path"].iloc[0]
    (dicom / "broken.dcm").write_bytes(first.read_bytes()[:2000])  # truncated DICOM
    (dicom / "notes.txt").write_text("not an image")
    return dicom, manifest


def test_ingest_cli_counts_and_errors(archive, tmp_path):
    dicom, truth = archive
    out = tmp_path / "data"
    res = runner.invoke(app, ["ingest", str(dicom), "--out", str(out), "--workers", "2", "--no-progress"])
    assert res.exit_code == 1, res.output  # some files failed
    assert "FAILED " in res.output and "broken.dcm" in res.output and "notes.txt" in res.output
    assert f"ingested {len(truth)} image(s); 2 file(s) skipped" in res.output
    assert str(out / "manifest.parquet") in res.output and str(out / "errors.csv") in res.output
    assert "SYN000" not in res.output  # no patient ids printed
    m = pd.read_parquet(out / "manifest.parquet")
    errors = pd.read_csv(out / "errors.csv")
    assert sorted(p.rsplit("/", 1)[-1] for p in errors["path"]) == ["broken.dcm", "notes.txt"]
    assert len(m) == len(truth)
    got = m.assign(key=m["image_path"].str.split("dicom/").str[-1]).set_index("key").sort_index()
    exp = truth.assign(key=truth["image_path"].str.split("dicom/").str[-1]).set_index("key").sort_index()
    for col in ("laterality", "view", "modality", "patient_id"):
        assert got[col].tolist() == exp[col].tolist(), col
    assert (got.loc[exp["modality"] == "DBT", "frame"].isna()).all()


def test_ingest_cli_missing_folder_exits_2(tmp_path):
    res = runner.invoke(app, ["ingest", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--no-progress"])
    assert res.exit_code == 2 and "not found" in res.output


def test_ingest_cli_exit_0_when_every_file_is_read(archive, tmp_path):
    dicom, truth = archive
    res = runner.invoke(app, ["ingest", str(dicom), "--out", str(tmp_path / "o"), "--pattern", "*.dcm",
                              "--workers", "0", "--no-progress"])  # broken.dcm is read: exit 1 by design
    assert res.exit_code == 1 and "broken.dcm" in res.output and "notes.txt" not in res.output
    good = tmp_path / "good"
    good.mkdir()
    src = dicom.parent / truth["image_path"].iloc[0]
    (good / "a.dcm").write_bytes(src.read_bytes())
    res = runner.invoke(app, ["ingest", str(good), "--out", str(tmp_path / "g"), "--workers", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "FAILED" not in res.output


def test_ingest_cli_nothing_read_exits_3_and_says_why(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(app, ["ingest", str(empty), "--out", str(tmp_path / "o"), "--no-progress"])
    assert res.exit_code == 3
    assert "nothing was read" in res.output and "matched --pattern *" in res.output
    for i in range(14):
        (empty / f"n{i:02d}.txt").write_text("not an image")
    res = runner.invoke(app, ["ingest", str(empty), "--out", str(tmp_path / "o"), "--workers", "0", "--no-progress"])
    assert res.exit_code == 3
    assert "none of the 14 file(s)" in res.output and "readable mammography DICOM" in res.output
    assert res.output.count("FAILED ") == 10 and "... and 4 more, see " in res.output  # short terminal list


def test_exit_code_2_is_for_usage_errors_only():
    import typer

    from mammolens.cli._app import user_errors
    from mammolens.io import ImageReadError
    from mammolens.parallel import NothingReadError

    def code(exc):
        @user_errors
        def command():
            raise exc

        try:
            command()
        except typer.Exit as e:
            return e.exit_code

    assert code(FileNotFoundError("gone")) == 2 and code(ValueError("--size must be > 0")) == 2
    assert code(ImageReadError("a.dcm", "truncated")) == 3 and code(NothingReadError("no file")) == 3
    assert code(UnicodeEncodeError("utf-8", "caf\udce9", 3, 4, "surrogates not allowed")) == 1
