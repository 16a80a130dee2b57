"""Issue 20, input side: one odd file (name, header field, duplicate, identity in its path) never stops
``ingest``/``preprocess``, and nothing with identity reaches errors.csv or the terminal."""

import os
import shutil
import sys
from pathlib import Path

import pandas as pd
import pydicom
import pytest
from typer.testing import CliRunner

from mammolens.cli import app
from mammolens.data.cache import build_cache, open_cache
from mammolens.data.ingest import ingest
from mammolens.transforms.quality import QualityCfg

sys.path.insert(0, str(Path(__file__).parent))
from test_ingest import write_mg_dicom

runner = CliRunner()


def _raw(folder: Path, name: bytes) -> str:
    return os.fsdecode(os.fsencode(str(folder)) + b"/" + name)


def test_non_utf8_file_name_survives_ingest_and_preprocess(tmp_path):
    root = tmp_path / "archive"
    write_mg_dicom(root / "ok.dcm", "P1", "1.1", "L", "CC", seed=1)
    os.rename(write_mg_dicom(root / "x.dcm", "P1", "1.1", "R", "CC", seed=2), _raw(root, b"caf\xe9.dcm"))
    (root / "junk.dcm").write_text("x")
    os.rename(root / "junk.dcm", _raw(root, b"junk\xff.dcm"))
    out = tmp_path / "data"
    manifest, _ = ingest(root, out, workers=0, progress=False)
    assert len(manifest) == 2
    shown = sorted(Path(p).name for p in manifest["image_path"])
    assert shown == ["caf\\xe9.dcm", "ok.dcm"]  # escaped for display, UTF-8 everywhere
    written = pd.read_csv(out / "errors.csv")
    assert list(written["path"]) == ["junk\\xff.dcm"] and written["kind"].tolist() == ["error"]
    cache = open_cache(build_cache(out / "manifest.parquet", tmp_path / "cache", {"size": 32}, workers=0,
                                   progress=False, quality=QualityCfg(enabled=False)))  # toy noise images
    assert cache.meta["counts"] == {"done": 2, "failed": 0, "pending": 0}


def test_bad_header_field_is_a_warning_row_not_an_abort(tmp_path):
    root = tmp_path / "archive"
    for i, age in enumerate(("130Y", "999Y", "garbage", "054Y")):
        p = write_mg_dicom(root / f"a{i}.dcm", f"P{i}", f"1.{i}", "L", "CC", seed=i)
        ds = pydicom.dcmread(p)
        ds.PatientAge = age
        ds.save_as(p)
    manifest, errors = ingest(root, tmp_path / "data", workers=0, progress=False)
    assert len(manifest) == 4
    by_name = dict(zip([Path(p).name for p in manifest["image_path"]], manifest["age"]))
    assert by_name["a3.dcm"] == 54 and all(pd.isna(by_name[f"a{i}.dcm"]) for i in range(3))
    warned = errors[errors["kind"] == "warning"]
    assert sorted(warned["path"]) == ["a0.dcm", "a1.dcm", "a2.dcm"]
    assert all("PatientAge" in r for r in warned["reason"])
    assert (errors["kind"] == "error").sum() == 0
    res = runner.invoke(app, ["ingest", str(root), "--out", str(tmp_path / "cli"), "--workers", "0", "--no-progress"])
    assert res.exit_code == 0, res.output  # warnings are not failures
    assert "3 warning(s)" in res.output


def test_the_same_sop_instance_counts_once(tmp_path):
    root = tmp_path / "archive"
    first = write_mg_dicom(root / "a" / "one.dcm", "P1", "1.1", "L", "CC", seed=1)
    (root / "b").mkdir()
    shutil.copy(first, root / "b" / "copy.dcm")
    shutil.copy(first, root / "b" / "copy2.dcm")
    write_mg_dicom(root / "a" / "two.dcm", "P1", "1.1", "R", "CC", seed=2)
    manifest, errors = ingest(root, tmp_path / "data", workers=0, progress=False)
    assert sorted(Path(p).name for p in manifest["image_path"]) == ["one.dcm", "two.dcm"]
    assert manifest["sop_instance_uid"].is_unique
    dup = errors[errors["reason"].str.startswith("duplicate SOPInstanceUID")]
    assert sorted(dup["path"]) == ["b/copy.dcm", "b/copy2.dcm"] and all("a/one.dcm" in r for r in dup["reason"])


@pytest.fixture()
def identified(tmp_path):
    """An archive foldered by PatientID and StudyInstanceUID, with one truncated file whose SOPInstanceUID
    is invalid (pydicom warns with it) and one that is not DICOM."""
    root = tmp_path / "archive"
    pid, study = "ZZPAT12345", "1.2.826.0.1.3680043.ZZSTUDY"
    good = write_mg_dicom(root / pid / study / "ok.dcm", pid, study, "L", "CC", seed=1)
    bad = write_mg_dicom(root / pid / study / "bad.dcm", pid, study, "R", "CC", seed=2)
    ds = pydicom.dcmread(bad)
    ds.SOPInstanceUID = "1.2.840.ZZSOPSECRET"
    ds.PatientName = "ZZNAME^ALICE"
    ds.save_as(bad)
    bad.write_bytes(bad.read_bytes()[:-500])
    (root / pid / "notes.txt").write_text("hello")
    return root, good, ("ZZPAT12345", "ZZSTUDY", "ZZSOPSECRET", "ZZNAME", str(tmp_path))


@pytest.mark.parametrize("workers", ["0", "2"])
def test_ingest_failures_carry_no_identity(identified, tmp_path, workers, capfd):
    root, _, planted = identified
    out = tmp_path / "data"
    res = runner.invoke(app, ["ingest", str(root), "--out", str(out), "--workers", workers, "--no-progress"])
    assert res.exit_code == 1, res.output
    assert "FAILED " in res.output
    text = (out / "errors.csv").read_text()
    captured = capfd.readouterr()
    failed_lines = "\n".join(ln for ln in res.output.splitlines() if ln.startswith("FAILED"))
    for secret in planted:
        assert secret not in text, (secret, text)
        assert secret not in failed_lines, (secret, failed_lines)
        assert secret not in captured.err and secret not in captured.out
    errors = pd.read_csv(out / "errors.csv")
    assert len(errors) == 2 and all(p.startswith("patient-") for p in errors["path"])
    res = runner.invoke(app, ["ingest", str(root), "--out", str(tmp_path / "ids"), "--workers", workers,
                              "--no-progress", "--include-ids"])
    assert "ZZPAT12345" in (tmp_path / "ids" / "errors.csv").read_text()


def _phantom(path) -> None:
    """Replace a fixture DICOM's noise by a breast-like 128x96 image (bright half-ellipse with texture), so
    that it passes the quality gate the cache builder applies."""
    import numpy as np

    ds = pydicom.dcmread(path)
    yy, xx = np.mgrid[0:128, 0:96]
    inside = ((yy - 64) / 60.0) ** 2 + (xx / 80.0) ** 2 < 1.0
    tissue = 0.5 + 0.15 * np.sin(yy / 5.0) * np.cos(xx / 7.0)
    ds.Rows, ds.Columns = 128, 96
    ds.PixelData = (np.where(inside, tissue, 0.02) * 4095).astype(np.uint16).tobytes()
    ds.save_as(path)


def test_preprocess_failures_carry_no_identity(identified, tmp_path, capfd):
    root, good, planted = identified
    _phantom(good)  # one good image: the run is "some failed" (exit 1), not "nothing read"
    out = tmp_path / "data"
    ingest(root, out, workers=0, progress=False)
    m = pd.read_parquet(out / "manifest.parquet")
    m = pd.concat([m, m.assign(image_path=m["image_path"].str.replace("ok.dcm", "gone.dcm"))], ignore_index=True)
    m.to_parquet(out / "manifest.parquet", index=False)
    cache = tmp_path / "cache"
    res = runner.invoke(app, ["preprocess", str(out / "manifest.parquet"), "--out", str(cache), "--size", "32",
                              "--workers", "0", "--no-progress"])
    assert res.exit_code == 1, res.output
    captured = capfd.readouterr()
    failed_lines = "\n".join(ln for ln in res.output.splitlines() if ln.startswith("FAILED"))
    assert "FAILED" in failed_lines
    text = (cache / "errors.csv").read_text()
    for secret in planted:
        assert secret not in text and secret not in failed_lines and secret not in captured.err


def test_an_all_bad_archive_is_a_data_problem_not_a_usage_error(tmp_path):
    root = tmp_path / "archive"
    p = write_mg_dicom(root / "a.dcm", "P1", "1.1", "L", "CC", seed=1)
    p.write_bytes(p.read_bytes()[:300])
    os.rename(write_mg_dicom(root / "b.dcm", "P1", "1.1", "L", "CC", seed=1), _raw(root, b"b\xe9.dcm"))
    Path(_raw(root, b"b\xe9.dcm")).write_bytes(b"junk")
    res = runner.invoke(app, ["ingest", str(root), "--out", str(tmp_path / "d"), "--no-progress", "-j", "0"])
    assert res.exit_code == 3, res.output  # nothing read: 3, never 2
    assert len(pd.read_csv(tmp_path / "d" / "errors.csv")) == 2
