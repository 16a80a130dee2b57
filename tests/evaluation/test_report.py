"""evaluate_predictions + write_report: values, sections, embedded images, no links, no patient ids."""

import io
import json
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from mammolens.evaluation.report import evaluate_predictions, to_jsonable, write_report

CLASSES = ["A", "B", "C", "D"]
PROBS = [f"prob_{c}" for c in CLASSES]


def _preds(n=240, seed=0, signal=1.5):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    logits = rng.normal(size=(n, 4))
    logits[np.arange(n), y] += signal
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    df = pd.DataFrame(p, columns=PROBS)
    df.insert(0, "image_path", [f"/data/img_{i:05d}.dcm" for i in range(n)])
    df.insert(1, "patient_id", [f"PATIENT-SECRET-{i // 4:04d}" for i in range(n)])
    df["study_id"] = [f"STUDY-SECRET-{i // 4:04d}" for i in range(n)]
    df["laterality"] = np.where(np.arange(n) % 2 == 0, "L", "R")
    df["view"] = np.where(np.arange(n) % 4 < 2, "CC", "MLO")
    df["modality"] = rng.choice(["DM", "DBT"], n)
    df["manufacturer"] = "GE"
    df["age"] = rng.integers(35, 85, n)
    df["label"] = y
    df["pred"] = np.array(CLASSES)[p.argmax(1)]
    df.loc[:3, "label"] = -1  # unlabelled rows are counted, not evaluated
    return df


def _png_bytes():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1))
    fig.add_subplot().imshow(np.eye(4))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


@pytest.fixture(scope="module")
def evaluated():
    a = _preds()
    b = _preds(signal=0.5)  # same images and labels, weaker model
    res = evaluate_predictions(a, CLASSES, n_boot=100, seed=0, compare_predictions=b)
    return a, b, res


def test_evaluate_predictions_values(evaluated):
    a, _, res = evaluated
    lab = a[a.label >= 0]
    assert res["n_images"] == len(a) - 4 and res["n_unlabelled"] == 4
    assert res["n_patients"] == lab.patient_id.nunique()
    assert res["resampling"] == "patient"
    assert res["metrics"]["auc_per_class"]["B"] == pytest.approx(roc_auc_score(lab.label == 1, lab.prob_B))
    ci = res["ci"]["auc_macro"]
    assert ci["lo"] <= ci["estimate"] <= ci["hi"]
    assert {"modality", "view", "laterality", "age_band", "manufacturer"} <= set(res["subgroups"]["subgroup"])
    cmp = res["compare"]
    assert cmp["n_matched"] == len(lab)
    assert [r["target"] for r in cmp["delong"]] == ["A", "B", "C", "D", "dense (C+D)"]
    dense = cmp["delong"][-1]
    assert dense["auc_a"] > dense["auc_b"] and dense["p"] < 0.05  # strong vs weak model
    assert cmp["auc_macro_diff"]["lo"] > 0
    assert cmp["mcnemar"]["b"] > cmp["mcnemar"]["c"]
    json.dumps(to_jsonable(res), allow_nan=False)  # strict JSON after conversion


def test_evaluate_predictions_errors():
    with pytest.raises(ValueError, match="prob_D"):
        evaluate_predictions(_preds().drop(columns="prob_D"), CLASSES, n_boot=10)
    df = _preds()
    df["label"] = -1
    with pytest.raises(ValueError, match="no labelled rows"):
        evaluate_predictions(df, CLASSES, n_boot=10)


def test_write_report_self_contained(tmp_path, evaluated):
    a, _, res = evaluated
    png = _png_bytes()
    (tmp_path / "cam.png").write_bytes(png)
    gallery = [("A", png, "fatty example"), ("D", tmp_path / "cam.png", "dense example")]
    path = write_report(
        tmp_path / "eval", a, CLASSES, res, gallery=gallery, title="Density report",
        provenance={"run": "runs/density", "data manifest": "external.parquet", "config": {"lr": 1e-4}},
    )
    assert path == tmp_path / "eval" / "report.html" and path.exists()
    text = path.read_text()
    for sid in ("summary", "roc", "confusion", "calibration", "subgroups", "comparison", "gallery", "provenance"):
        assert f"id='{sid}'" in text, sid
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) == 3 + 2  # ROC, confusion, reliability + 2 gallery images
    import base64

    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert not re.search(r"(src|href)\s*=\s*['\"]?\s*(https?:|//)", text, re.I)
    assert "<script" not in text and "<link" not in text and "@import" not in text and "url(" not in text
    assert "http" not in text.lower()
    for secret in set(a.patient_id) | set(a.study_id) | set(a.image_path):
        assert secret not in text
    assert "Density report" in text and "DeLong" in text and "mammolens version" in text
    assert "runs/density" in text and "&quot;lr&quot;" in text
    assert "Macro AUC" in text and "95% CI" in text


def test_write_report_plain_metrics_and_missing_gallery_file(tmp_path):
    from mammolens.evaluation.metrics import compute_metrics

    a = _preds(80)
    lab = a[a.label >= 0]
    m = compute_metrics(lab.label.to_numpy(), lab[PROBS].to_numpy(), CLASSES)
    path = write_report(tmp_path, a, CLASSES, m)
    text = path.read_text()
    assert "id='subgroups'" not in text and "id='comparison'" not in text and "id='roc'" in text
    with pytest.raises(FileNotFoundError, match="missing.png"):
        write_report(tmp_path, a, CLASSES, m, gallery=[("A", tmp_path / "missing.png", "x")])


def test_png_reencoding_avoids_accidental_http(monkeypatch):
    from mammolens.evaluation import report

    png = _png_bytes()
    b64 = report._png_bytes_b64(png)
    assert base64_decode(b64) == png  # nothing to change in the common case
    fake = re.compile(re.escape(b64[100:104]))  # pretend these 4 characters were "http"
    monkeypatch.setattr(report, "_EXTERNAL", fake)
    changed = report._png_bytes_b64(png)
    assert not fake.search(changed)
    from matplotlib.image import imread

    np.testing.assert_array_equal(imread(io.BytesIO(base64_decode(changed))), imread(io.BytesIO(png)))


def base64_decode(s):
    import base64

    return base64.b64decode(s)


def test_report_simulated_banner_only_for_simulated_rows(tmp_path):
    from mammolens.evaluation.report import SIMULATED_BANNER

    real = _preds(80)
    sim = real.assign(simulated=True)
    texts = {}
    for name, df in (("real", real), ("sim", sim)):
        res = evaluate_predictions(df, CLASSES, n_boot=10)
        assert res["simulated"] is (name == "sim")
        texts[name] = write_report(tmp_path / name, df, CLASSES, res).read_text()
        assert json.loads(json.dumps(to_jsonable(res)))["simulated"] is (name == "sim")
    assert SIMULATED_BANNER in texts["sim"] and "not clinical performance" in texts["sim"]
    assert "Simulated data" not in texts["real"]
    # the banner comes before any number
    assert texts["sim"].index(SIMULATED_BANNER) < texts["sim"].index("id='summary'")


def test_evaluate_predictions_exam_level_metrics(evaluated):
    from mammolens.evaluation.aggregate import aggregate_exam

    a, _, res = evaluated
    exams = aggregate_exam(a[a.label >= 0], CLASSES)
    ex = res["exam"]
    assert ex["n_exams"] == len(exams) == a[a.label >= 0].study_id.nunique()
    y, p = exams["label"].to_numpy(), exams[PROBS].to_numpy()
    assert ex["metrics"]["n"] == len(exams)
    assert ex["metrics"]["accuracy"] == pytest.approx(np.mean(p.argmax(1) == y))
    assert ex["metrics"]["auc_per_class"]["C"] == pytest.approx(roc_auc_score(y == 2, p[:, 2]))
    c = ex["ci"]["accuracy"]
    assert c["lo"] <= c["estimate"] <= c["hi"] and c["n_valid"] == 100


def test_report_shows_exam_metrics_and_dash_for_too_small_subgroups(tmp_path):
    a = _preds(240)
    a["site"] = "main"
    a.loc[a.index[4:24], "site"] = "tiny"  # 5 patients
    a.loc[a.index[24:64], "site"] = "one-class"  # 10 patients, one class
    a.loc[a.index[24:64], "label"] = 3
    res = evaluate_predictions(a, CLASSES, n_boot=20)
    text = write_report(tmp_path, a, CLASSES, res).read_text()
    assert "per exam (95% CI)" in text and f"{res['exam']['n_exams']} exams" in text
    rows = {r["value"]: r for r in to_jsonable(res["subgroups"]) if r["subgroup"] == "site"}
    assert rows["tiny"]["accuracy"] is None and rows["tiny"]["kappa_hi"] is None  # null in JSON
    assert rows["one-class"]["kappa"] is None and rows["one-class"]["accuracy"] is not None
    sub = text[text.index("id='subgroups'"):text.index("</section>", text.index("id='subgroups'"))]
    assert "0.000 (0.000–0.000)" not in sub
    tiny = re.search(r"<tr><td>site</td><td>tiny</td>(.*?)</tr>", sub).group(1)
    assert re.findall(r"<td>(.*?)</td>", tiny)[2:5] == ["–", "–", "–"]
    one = re.search(r"<tr><td>site</td><td>one-class</td>(.*?)</tr>", sub).group(1)
    assert re.findall(r"<td>(.*?)</td>", one)[3:5] == ["–", "–"]


def test_reliability_bins_carry_counts(evaluated):
    a, _, res = evaluated
    lab = a[a.label >= 0]
    bins = res["reliability"]
    assert len(bins) == 15 and sum(b["count"] for b in bins) == len(lab)
    conf = lab[PROBS].to_numpy().max(1)
    b = next(b for b in bins if b["count"] > 0)
    assert b["count"] == int(((conf > b["lo"]) & (conf <= b["hi"])).sum())
    assert all(b["accuracy"] is None for b in bins if b["count"] == 0)  # empty bins are not zeros
    assert json.loads(json.dumps(to_jsonable(res)))["reliability"][0]["lo"] == 0.0


def test_compare_uses_patient_clustered_tests_and_says_so(evaluated, tmp_path):
    from mammolens.evaluation.stats import delong_test, mcnemar_test

    a, _, res = evaluated
    cmp = res["compare"]
    assert all(r["method"] == "clustered DeLong (Obuchowski 1997)" for r in cmp["delong"])
    assert cmp["mcnemar"]["method"] == "clustered McNemar (Durkalski 2003)"
    lab = a[a.label >= 0]
    b = _preds(signal=0.5)
    b = b[b.label >= 0]
    truth = lab.label.to_numpy() == 0
    ref = delong_test(truth, lab.prob_A, b.prob_A, groups=lab.patient_id.astype(str).to_numpy())
    assert cmp["delong"][0]["p"] == pytest.approx(ref["p"])
    ya = lab[[f"prob_{c}" for c in CLASSES]].to_numpy().argmax(1) == lab.label.to_numpy()
    yb = b[[f"prob_{c}" for c in CLASSES]].to_numpy().argmax(1) == b.label.to_numpy()
    assert cmp["mcnemar"]["p"] == pytest.approx(mcnemar_test(ya, yb, groups=lab.patient_id.astype(str))["p"])
    page = write_report(tmp_path, a, CLASSES, res).read_text()
    assert "clustered DeLong (Obuchowski 1997)" in page and "clustered McNemar (Durkalski 2003)" in page
