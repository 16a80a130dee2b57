"""The task suite: ranks and paired tests on results with known answers, and a seconds-sized end-to-end run
on a toy synthetic cohort (resumable, JSON/CSV/HTML written, known-answer tasks)."""

import json

import numpy as np
import pytest

from mammolens.suite.report import build_report, paired_difference, write_report


def _entry(values, groups, primary="dice"):
    v = np.asarray(values, float)
    return {"primary": primary, "higher_is_better": True,
            "metrics": {primary: {"estimate": float(v.mean()), "lo": float(v.min()), "hi": float(v.max()), "n": len(v)}},
            "paired": {"keys": list(range(len(v))), "groups": list(groups), "values": v.tolist()}}


def test_ranks_first_in_n_of_m_and_ties_from_paired_tests():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(20), 2)
    good = 0.8 + 0.05 * rng.standard_normal(40)
    bad = 0.2 + 0.05 * rng.standard_normal(40)
    noise_a, noise_b = 0.5 + 0.1 * rng.standard_normal(40), 0.5 + 0.1 * rng.standard_normal(40)
    results = {
        "trained": {"seg": {"entries": {"seg": _entry(good, groups)}}, "flat": {"entries": {"flat": _entry(noise_a, groups)}}},
        "random": {"seg": {"entries": {"seg": _entry(bad, groups)}}, "flat": {"entries": {"flat": _entry(noise_b, groups)}}},
    }
    rep = build_report(results, ["trained", "random"], n_boot=200)
    assert rep["ranks"]["seg"]["best"] == ["trained"] and rep["ranks"]["seg"]["significantly_first"] == ["trained"]
    assert rep["ranks"]["seg"]["rank"] == {"trained": 1.0, "random": 2.0}
    assert rep["paired"]["seg"]["trained vs random"]["p"] < 0.05
    assert rep["paired"]["seg"]["trained vs random"]["diff"] == pytest.approx(good.mean() - bad.mean())
    # no signal: the two are tied with the best, and neither is significantly first
    assert sorted(rep["ranks"]["flat"]["tied_with_best"]) == ["random", "trained"]
    assert rep["ranks"]["flat"]["significantly_first"] == []
    s = {x["backbone"]: x for x in rep["summary"]}
    assert s["trained"]["significantly_first"] == 1 and s["random"]["significantly_first"] == 0
    assert s["trained"]["of"] == 2 and "of 2 tasks" in s["trained"]["text"]


def test_equal_estimates_share_the_average_rank(tmp_path):
    groups = np.arange(10)
    same = np.linspace(0, 1, 10)
    results = {b: {"t": {"entries": {"t": _entry(same, groups)}}} for b in ("a", "b", "c")}
    rep = build_report(results, ["a", "b", "c"], n_boot=50)
    assert rep["ranks"]["t"]["rank"] == {"a": 2.0, "b": 2.0, "c": 2.0}
    paths = write_report(rep, tmp_path)
    assert "backbones × tasks" in paths["html"].read_text() and paths["csv"].read_text().startswith("entry,")


def test_paired_difference_aligns_by_keys_and_pairs_auc():
    y = np.array([0, 1] * 10)
    perfect = np.c_[1 - y, y].astype(float)
    coin = np.full((20, 2), 0.5)
    pa = {"keys": list(range(20)), "groups": list(range(20)), "y": y.tolist(), "score": perfect.tolist()}
    pb = {"keys": list(range(19, -1, -1)), "groups": list(range(19, -1, -1)), "y": y[::-1].tolist(),
          "score": coin[::-1].tolist()}
    d = paired_difference(pa, pb, n_boot=100)
    assert d["diff"] == pytest.approx(0.5)


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory):
    from mammolens.data.cache import PreprocessCfg, build_cache
    from mammolens.data.synthetic import make_cohort

    root = tmp_path_factory.mktemp("suite_toy")
    make_cohort(root, n_patients=8, seed=1, image_size=(96, 80), modalities=("DM",), lesion_prob=0.6,
                density_probs=[0.25] * 4)
    build_cache(root / "manifest.parquet", root / "cache", PreprocessCfg(size=64), workers=0, progress=False)
    return root / "cache"


def test_suite_end_to_end_on_a_toy_cohort_is_resumable(toy_cache, tmp_path):
    from mammolens.suite import run_suite

    out = tmp_path / "suite"
    rep = run_suite(["random:tiny-clip"], ["density", "abnormality", "retrieval", "lesion-seg", "lesion-det", "vqa"],
                    toy_cache, out, folds=2, n_boot=20, steps=5)
    keys = set(rep["ranks"])
    assert {"density/linear", "density/knn", "abnormality/linear", "retrieval", "lesion-seg", "lesion-det",
            "vqa/trained", "vqa/zero-shot"} <= keys
    for f in ("suite.json", "suite.csv", "suite.html"):
        assert (out / f).is_file()
    seg = next(t for t in rep["table"] if t["entry"] == "lesion-seg" and t["metric"] == "dice")
    assert 0.0 <= seg["estimate"] <= 1.0
    assert any("exact" in n for n in rep["notes"]["lesion-seg"])
    first = {p.name: p.stat().st_mtime_ns for p in (out / "results").iterdir()}
    rep2 = run_suite(["random:tiny-clip"], ["density", "abnormality", "retrieval", "lesion-seg", "lesion-det", "vqa"],
                     toy_cache, out, folds=2, n_boot=20, steps=5)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "results").iterdir()} == first  # nothing recomputed
    assert json.loads((out / "suite.json").read_text())["ranks"].keys() == rep2["ranks"].keys()


def test_suite_rejects_unknown_tasks(tmp_path):
    from mammolens.suite import run_suite

    with pytest.raises(ValueError, match="choose from: density"):
        run_suite(["random:tiny-clip"], ["segmentation"], tmp_path, tmp_path / "o")


def test_suite_cli_writes_the_table(toy_cache, tmp_path):
    from typer.testing import CliRunner

    from mammolens.cli import app

    res = CliRunner().invoke(app, ["suite", "--backbones", "random:tiny-clip", "--tasks", "density,retrieval",
                                   "--data", str(toy_cache), "--out", str(tmp_path / "s"), "--folds", "2", "--n-boot",
                                   "10"])
    assert res.exit_code == 0, res.output
    assert "density/linear" in res.output and "first in" in res.output and (tmp_path / "s" / "suite.csv").is_file()
    bad = CliRunner().invoke(app, ["suite", "--backbones", "random:tiny-clip", "--tasks", "nope", "--data",
                                   str(toy_cache), "--out", str(tmp_path / "t")])
    assert bad.exit_code == 2 and "unknown suite task" in bad.output
