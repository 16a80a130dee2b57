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
    assert res.exit_code == 0, res.output
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
