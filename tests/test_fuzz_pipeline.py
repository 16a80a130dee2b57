"""Hostile files through the whole path (issue 10): a fuzz corpus of a few hundred mutants goes through
``ingest``, ``build_cache`` (preprocess) and ``Predictor.predict`` with worker processes. Every good file
is done, every bad one is listed with a reason, nothing hangs, and worker memory stays bounded."""

import time
from pathlib import Path

import numpy as np
import pytest

from _app_fixtures import app_env  # noqa: F401
from mammolens.data.cache import PreprocessCfg, build_cache, open_cache
from mammolens.data.fuzz import make_fuzz_corpus
from mammolens.data.ingest import ingest
from mammolens.inference import Predictor, find_images

N_MUTANTS = 300
WORKER_RSS_LIMIT_MB = 1500  # the reader refuses a 65535x65535 file before it allocates (it grew to 4 GiB)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzzpipe")
    df = make_fuzz_corpus(root / "corpus", n=N_MUTANTS, seed=0)
    return root, df


def _rel(path, top: Path) -> str:
    return Path(path).resolve().relative_to(top.resolve()).as_posix()


@pytest.mark.timeout(600)
def test_fuzz_corpus_through_ingest_preprocess_and_predict(corpus, app_env, monkeypatch):  # noqa: F811
    root, df = corpus
    monkeypatch.setenv("MAMMOLENS_FILE_TIMEOUT", "60")
    files = {str(Path(p).resolve()) for p in df["path"]}
    good = df[df["expect"] == "ok"]
    bad = df[df["expect"] == "error"]
    assert len(df) >= N_MUTANTS and len(bad) >= 50
    t0 = time.perf_counter()

    # ingest: every DICOM-looking file is in the manifest or errors.csv, never both, never neither
    manifest, errors = ingest(root / "corpus", root / "ingest", workers=2, progress=False, include_ids=True)
    base = root / "ingest"
    in_manifest = {str((base / p).resolve()) for p in manifest["image_path"]}
    in_errors = {str((root / "corpus" / p).resolve()) for p in errors["path"]}  # relative to the archive
    assert not in_manifest & in_errors
    assert files <= in_manifest | in_errors
    good_dicoms = {str(Path(p).resolve()) for p in good.loc[good["format"] == "dicom", "path"]}
    # mutants keep their source's SOPInstanceUID and the native and compressed sources share theirs: one
    # copy of each image counts (the first in path order), the others are listed as duplicates of it
    dup = errors[errors["reason"].str.startswith("duplicate SOPInstanceUID")]
    duplicates = {str((root / "corpus" / p).resolve()) for p in dup["path"]}
    twins = {str((root / "corpus" / r.split("the same image as ")[1].split("; not counted")[0]).resolve())
             for r in dup["reason"]}
    assert twins <= in_manifest
    assert good_dicoms <= in_manifest | duplicates, "a good DICOM was refused by ingest"
    good_dicoms &= in_manifest
    assert (errors["reason"].str.len() > 0).all()

    # preprocess: each manifest row done or failed with a reason; good DICOMs done, refused ones failed
    cache = open_cache(build_cache(base / "manifest.parquet", root / "cache", PreprocessCfg(size=64), workers=2,
                                   progress=False), allow_incomplete=True)
    idx = cache.index.assign(abs=[str((base / p).resolve()) for p in cache.index["image_path"]])
    assert set(idx["status"]) <= {"done", "failed"}
    assert (idx.loc[idx["status"] == "failed", "error"].str.len() > 0).all()
    status = dict(zip(idx["abs"], idx["status"]))
    reason = dict(zip(idx["abs"], idx["error"]))
    # a good DICOM is cached, or refused by the quality gate that prediction applies too (never a read error)
    assert [p for p in good_dicoms if status[p] != "done" and not reason[p].startswith("ValueError: not assessable")] == []
    must_fail = {str(Path(p).resolve()) for p in bad["path"]} & set(status)
    assert [p for p in must_fail if status[p] != "failed"] == []
    done = cache.images[np.flatnonzero(idx["status"] == "done")]
    assert done.any(axis=(1, 2)).all()  # every row reported done was written

    # predict: every file found is an image row (with a density or "not assessable") or an error row
    predictor = Predictor.from_run(app_env.run, device="cpu", workers=2, batch_size=16)
    top = root / "corpus"
    res = predictor.predict(top, root=top, include_ids=True)  # paths in clear: this test matches files
    found = {_rel(p, top) for p in find_images(top)}
    listed = list(res.images["file"]) + list(res.errors["file"])
    assert sorted(listed) == sorted(found), "a file was lost or listed twice"
    imgs = res.images.set_index("file")
    # a good file is predicted, or (mutants keep their source's SOPInstanceUID) listed once as the duplicate of
    # a file with the same SOPInstanceUID that was read first: one image counts once, as in ingest
    err = dict(zip(res.errors["file"], res.errors["reason"]))
    dup = {f for f, r in err.items() if r.startswith("duplicate SOPInstanceUID: the same image as ")}
    good_rel = {_rel(p, top) for p in good["path"]}
    assert good_rel <= set(imgs.index) | dup, "a good file was not predicted"
    assert all(err[f].split("the same image as ")[1].split(";")[0] in set(imgs.index) | set(err) for f in dup)
    assert sorted({_rel(p, top) for p in bad["path"]} & set(imgs.index)) == [], "a file that must be refused got a row"
    probs = imgs[[f"prob_{c}" for c in predictor.class_names]]
    assessable = imgs["assessable"].astype(bool)
    assert np.isfinite(probs[assessable].to_numpy()).all()  # no NaN density reaches a table
    assert probs[~assessable].isna().all().all()
    assert (res.errors["reason"].str.len() > 0).all()

    # the default, pseudonymised path reads the failed files' headers for identifiers: never in this process
    scrubbed = predictor.predict(top)
    assert (len(scrubbed.images), len(scrubbed.errors)) == (len(res.images), len(res.errors))

    elapsed = time.perf_counter() - t0
    assert elapsed < 400, f"the three jobs took {elapsed:.0f} s"


_MEMORY_SCRIPT = """
import json, resource, sys
from mammolens.data.cache import PreprocessCfg, build_cache
from mammolens.data.ingest import ingest
from mammolens.inference import Predictor
root, run = sys.argv[1], sys.argv[2]
ingest(root + "/corpus", root + "/mem_ingest", workers=2, progress=False)
build_cache(root + "/mem_ingest/manifest.parquet", root + "/mem_cache", PreprocessCfg(size=64), workers=2, progress=False)
Predictor.from_run(run, device="cpu", workers=2).predict(root + "/corpus")
print(json.dumps({"children_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


@pytest.mark.timeout(600)
def test_fuzz_corpus_worker_memory_is_bounded(corpus, app_env):  # noqa: F811
    """The three jobs' worker processes stay under the limit on the hostile corpus (a fresh interpreter, so
    that no other test's child processes count)."""
    import json
    import subprocess
    import sys

    root, _ = corpus
    proc = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(root), str(app_env.run)], capture_output=True,
                          text=True, timeout=540)
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak = json.loads(proc.stdout.strip().splitlines()[-1])["children_peak_mb"]
    assert 0 < peak < WORKER_RSS_LIMIT_MB

