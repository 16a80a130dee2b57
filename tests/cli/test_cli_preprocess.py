import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mammolens.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    synthetic = pytest.importorskip("mammolens.data.synthetic")
    root = tmp_path_factory.mktemp("cohort")
    synthetic.make_cohort(root, n_patients=3, seed=1, image_size=(96, 80), dbt_frames=3)
    m = pd.read_parquet(root / "manifest.parquet")
    bad = m.iloc[:1].copy()
    bad["image_path"] = "dicom/missing.dcm"  # a row whose file is gone
    pd.concat([m, bad], ignore_index=True).to_parquet(root / "manifest.parquet", index=False)
    return root / "manifest.parquet", len(m)


def _run(*args):
    return runner.invoke(app, ["preprocess", *map(str, args), "--no-progress"])


def test_preprocess_cli_builds_resumes_and_is_idempotent(cohort, tmp_path):
    manifest, n_ok = cohort
    full, part = tmp_path / "full", tmp_path / "part"
    res = _run(manifest, "--out", full, "--size", 32, "--workers", 2)
    assert res.exit_code == 1, res.output  # one row failed
    assert f"{n_ok} done, 1 failed, 0 pending" in res.output and "errors.csv" in res.output
    assert "FAILED " in res.output and "missing.dcm: FileNotFoundError: image not found" in res.output
    res = _run(manifest, "--out", part, "--size", 32, "--workers", 0, "--limit", 3)  # an interrupted run
    assert "incomplete" in res.output and f"{n_ok + 1 - 3} pending" in res.output
    res = _run(manifest, "--out", part, "--size", 32, "--workers", 2)
    assert f"processed {n_ok + 1 - 3} row(s)" in res.output
    assert (part / "images.u16").read_bytes() == (full / "images.u16").read_bytes()
    res = _run(manifest, "--out", part, "--size", 32)
    assert "processed 0 row(s)" in res.output
    meta = json.loads((full / "cache.json").read_text())
    assert meta["shape"] == [n_ok + 1, 32, 32] and meta["cfg"]["dbt"] == "mip"
    assert set(meta["conversion_summary"]["dbt"]) >= {"mip"}
    images = np.memmap(full / "images.u16", dtype=np.uint16, mode="r").reshape(-1, 32, 32)
    assert (images[:n_ok].reshape(n_ok, -1).max(1) > 0).all()


def test_preprocess_cli_refuses_other_size_without_overwrite(cohort, tmp_path):
    manifest, _ = cohort
    out = tmp_path / "c"
    assert _run(manifest, "--out", out, "--size", 16, "--workers", 0).exit_code == 1  # the missing row
    res = _run(manifest, "--out", out, "--size", 24, "--workers", 0)
    assert res.exit_code == 2 and "different PreprocessCfg" in res.output
    res = _run(manifest, "--out", out, "--size", 24, "--workers", 0, "--overwrite")
    assert res.exit_code == 1 and "x 24 x 24" in res.output


def test_preprocess_cli_bad_shard_exits_2(cohort, tmp_path):
    manifest, _ = cohort
    res = _run(manifest, "--out", tmp_path / "c", "--shard", "3/2")
    assert res.exit_code == 2 and "shard" in res.output


def test_preprocess_cli_exit_codes_0_and_3(cohort, tmp_path):
    manifest, n_ok = cohort
    m = pd.read_parquet(manifest)
    good, bad = tmp_path / "good.parquet", tmp_path / "bad.parquet"
    m.iloc[:2].assign(image_path=[str(manifest.parent / p) for p in m["image_path"].iloc[:2]]).to_parquet(good)
    m.iloc[-1:].to_parquet(bad)  # only the missing file
    assert _run(good, "--out", tmp_path / "g", "--size", 16, "--workers", 0).exit_code == 0
    res = _run(bad, "--out", tmp_path / "b", "--size", 16, "--workers", 0)
    assert res.exit_code == 3 and "nothing was read: none of the 1 image(s) could be read" in res.output
