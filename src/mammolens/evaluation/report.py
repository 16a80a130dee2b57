"""Evaluate a predictions frame and write a self-contained HTML report.

``evaluate_predictions`` is the library function behind ``mammolens evaluate``: metrics per image and
per exam (the denser-breast rule of :mod:`mammolens.pipeline.aggregate`), patient-level bootstrap
CIs, the reliability-diagram bins with their counts, the subgroup table and, when a second run's
predictions are given, DeLong and McNemar comparisons on the images both runs predicted (matched on
``image_path``). Rows marked ``simulated`` (the synthetic cohort of :mod:`mammolens.data.synthetic`)
make the result say ``simulated: true`` and the report open with a banner saying so.

``write_report`` writes ``report.html`` with every figure embedded as a base64 PNG (matplotlib Agg,
no pyplot state) and no external CSS, JavaScript or fonts, so the file can be mailed or archived as
is. The report shows only aggregates: no patient or image identifiers are written.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd

from mammolens.constants import SUBGROUP_COLUMNS
from mammolens.pipeline.aggregate import aggregate_exam
from mammolens.evaluation.metrics import (
    compute_metrics,
    confusion_matrix,
    dense_indices,
    macro_auc,
    reliability_curve,
    roc_curve,
)
from mammolens.evaluation.stats import bootstrap_ci, delong_test, mcnemar_test, metrics_with_ci
from mammolens.evaluation.subgroups import MIN_PATIENTS, subgroup_metrics

__all__ = ["SIMULATED_BANNER", "evaluate_predictions", "is_simulated", "one_class_warning", "to_jsonable", "write_report"]

SIMULATED_BANNER = "Simulated data: these numbers show the pipeline works, not clinical performance"
RELIABILITY_BINS = 15


def is_simulated(predictions: pd.DataFrame) -> bool:
    """True when any row is marked simulated (column ``simulated``: bool, or "true"/"1" from a CSV)."""
    if "simulated" not in predictions.columns:
        return False
    return bool(predictions["simulated"].astype(str).str.strip().str.lower().isin(("true", "1", "yes")).any())


# ------------------------------------------------------------------------------------------ evaluate
def one_class_warning(p: np.ndarray, class_names: Sequence[str], y: np.ndarray | None = None) -> dict | None:
    """The ``one-class`` warning when every image (2 or more) gets the same predicted class (arg-max of ``p``):
    kappa is 0 and the other classes' recall 0 whatever the AUCs say; None otherwise."""
    if len(p) < 2:
        return None
    pred = np.asarray(p).argmax(1)
    if len(np.unique(pred)) > 1:
        return None
    c = str(class_names[int(pred[0])])
    seen = f" although the labels hold {len(np.unique(y))} classes" if y is not None and len(np.unique(y)) > 1 else ""
    return {"id": "one-class", "level": "warning", "class": c,
            "text": f"The model predicts one class ({c}) for all {len(p)} images{seen}: kappa is 0 and the other "
                    "classes' recall 0; it has not learned to tell the classes apart"}


def _split(predictions: pd.DataFrame, class_names: Sequence[str]) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    cols = [f"prob_{c}" for c in class_names]
    missing = [c for c in (*cols, "label") if c not in predictions.columns]
    if missing:
        raise ValueError(
            f"predictions lack column(s) {missing}; expected 'label' (int, -1 unlabelled) and prob_<class> "
            f"for classes {list(class_names)} (see CONTRIBUTING.md, predictions DataFrame)"
        )
    labelled = predictions[predictions["label"].astype(int) >= 0]
    if labelled.empty:
        raise ValueError("no labelled rows (label >= 0) in the predictions: nothing to evaluate")
    y = labelled["label"].astype(int).to_numpy()
    p = labelled[cols].to_numpy(dtype=np.float64)
    return labelled, y, p


def _exam_level(labelled: pd.DataFrame, class_names: list[str], groups_col: str | None, n_boot: int,
                alpha: float, seed: int, dense_classes) -> dict | None:
    """Metrics and CIs per exam (None without ``study_id``/``laterality`` columns).

    Exams follow :func:`~mammolens.pipeline.aggregate.aggregate_exam` (mean over a breast's views, the
    denser breast per study); metrics use the exam probabilities, i.e. those of the denser breast.
    """
    if not {"study_id", "laterality"} <= set(labelled.columns):
        return None
    exams = aggregate_exam(labelled, class_names)
    y = exams["label"].astype(int).to_numpy()
    p = exams[[f"prob_{c}" for c in class_names]].to_numpy(dtype=np.float64)
    groups = exams[groups_col].astype(str).to_numpy() if groups_col and groups_col in exams.columns else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        metrics = compute_metrics(y, p, class_names, dense_classes)
    return {
        "n_exams": int(len(exams)),
        "rule": "exam = study; breast = mean of its views; exam = the denser breast",
        "metrics": metrics,
        "ci": metrics_with_ci(y, p, class_names, groups, n_boot, alpha, seed, dense_classes),
    }


def _reliability(y: np.ndarray, p: np.ndarray, n_bins: int = RELIABILITY_BINS) -> list[dict]:
    """Reliability-diagram bins: edges, image count, mean confidence and accuracy (None when empty)."""
    rc = reliability_curve(y, p, n_bins)
    return [
        {"lo": float(rc["edges"][i]), "hi": float(rc["edges"][i + 1]), "count": int(rc["count"][i]),
         "confidence": float(rc["confidence"][i]) if rc["count"][i] else None,
         "accuracy": float(rc["accuracy"][i]) if rc["count"][i] else None}
        for i in range(n_bins)
    ]


def _compare(
    a: pd.DataFrame,
    b: pd.DataFrame,
    class_names: Sequence[str],
    dense_classes: Sequence[str] | None,
    groups_col: str | None,
    n_boot: int,
    seed: int,
    alpha: float,
) -> dict:
    cols = [f"prob_{c}" for c in class_names]
    if "image_path" not in a.columns or "image_path" not in b.columns:
        raise ValueError("comparing two runs needs an 'image_path' column in both prediction frames")
    missing = [c for c in cols if c not in b.columns]
    if missing:
        raise ValueError(f"comparison predictions lack column(s) {missing}")
    keep = ["image_path", "label", *cols] + ([groups_col] if groups_col and groups_col in a.columns else [])
    m = a[keep].merge(b[["image_path", *cols]], on="image_path", suffixes=("", "__b"), validate="one_to_one")
    if len(m) == 0:
        raise ValueError("no image_path in common between the two prediction frames")
    y = m["label"].astype(int).to_numpy()
    pa = m[cols].to_numpy(dtype=np.float64)
    pb = m[[f"{c}__b" for c in cols]].to_numpy(dtype=np.float64)
    rows = []
    targets = [(c, [i]) for i, c in enumerate(class_names)]
    dense = dense_indices(class_names, dense_classes)
    if dense is not None:
        targets.append(("dense (" + "+".join(class_names[i] for i in dense) + ")", dense))
    # patient ids make DeLong and McNemar clustered when a patient has several images
    g = m[groups_col].astype(str).to_numpy() if groups_col and groups_col in m.columns else None
    for name, idx in targets:
        truth = np.isin(y, idx)
        if truth.sum() < 2 or (~truth).sum() < 2:
            warnings.warn(f"DeLong for {name}: fewer than 2 positives or negatives; skipped", RuntimeWarning, stacklevel=3)
            continue
        rows.append({"target": name, **delong_test(truth, pa[:, idx].sum(1), pb[:, idx].sum(1), alpha, groups=g)})
    both = np.concatenate([pa, pb], axis=1)  # [N, 2K]
    k = len(class_names)

    def diff(yy, ss):
        return macro_auc(yy, ss[:, :k], warn=False) - macro_auc(yy, ss[:, k:], warn=False)

    boot = bootstrap_ci(diff, y, both, g, n_boot=n_boot, alpha=alpha, seed=seed)
    return {
        "n_matched": int(len(m)),
        "delong": rows,
        "auc_macro_diff": {k_: boot[k_] for k_ in ("estimate", "lo", "hi", "n_valid")},
        "accuracy_a": float(np.mean(pa.argmax(1) == y)),
        "accuracy_b": float(np.mean(pb.argmax(1) == y)),
        "mcnemar": mcnemar_test(pa.argmax(1) == y, pb.argmax(1) == y, groups=g),
    }


def evaluate_predictions(
    predictions: pd.DataFrame,
    class_names: Sequence[str],
    groups_col: str | None = "patient_id",
    n_boot: int = 1000,
    seed: int = 0,
    compare_predictions: pd.DataFrame | None = None,
    alpha: float = 0.05,
    dense_classes: Sequence[str] | None = ("C", "D"),
    subgroup_by: Sequence[str] = SUBGROUP_COLUMNS,
    subgroup_n_boot: int | None = None,
    subgroup_min_patients: int = MIN_PATIENTS,
) -> dict:
    """Metrics per image and per exam + bootstrap CIs + subgroups (+ DeLong/McNemar against a second run).

    Args:
        predictions: the predictions contract (``label``, ``prob_<class>``, manifest columns); rows
            with ``label == -1`` are counted but not evaluated.
        groups_col: patient column for the bootstrap (absent → images are resampled, noted in
            ``resampling``).
        compare_predictions: a second run's predictions; matched on ``image_path``; run "a" is
            ``predictions``, run "b" the comparison.
        subgroup_n_boot: bootstrap replicates per subgroup (default ``min(n_boot, 200)``).
        subgroup_min_patients: subgroups with fewer patients get no statistic (see
            :mod:`~mammolens.evaluation.subgroups`).
        dense_classes: the classes of the dense-vs-non-dense metrics: pass the run's
            ``Task.dense_classes`` (``workflows.evaluate_run`` does; ``()``/None: none); the default is the
            ``density`` task's.

    Returns:
        dict with ``warnings`` (``[{"id", "level", "text", ...}]``: ``one-class`` when every image gets the
        same class; ``workflows.evaluate_run`` adds ``train-overlap``, ``random-weights``, ``ood``; each is a
        banner in ``report.html``), ``simulated`` (any row marked simulated), ``n_images, n_patients, n_unlabelled,
        class_names, seed, n_boot, alpha, resampling, metrics`` (:func:`compute_metrics`), ``ci``
        (:func:`metrics_with_ci`), ``exam`` (``n_exams, rule, metrics, ci`` per exam, or None),
        ``reliability`` (bins with counts), ``subgroups`` (DataFrame) and ``compare`` (dict or None).
        :func:`to_jsonable` makes it JSON-ready.
    """
    class_names = list(class_names)
    labelled, y, p = _split(predictions, class_names)
    gcol = groups_col if groups_col and groups_col in labelled.columns else None
    groups = labelled[gcol].astype(str).to_numpy() if gcol else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        metrics = compute_metrics(y, p, class_names, dense_classes)
    undefined = [c for c, v in metrics["auc_per_class"].items() if not np.isfinite(v)]
    if undefined:
        warnings.warn(f"AUC undefined for class(es) {undefined}: absent from the labels (or the only one)", RuntimeWarning,
                      stacklevel=2)
    ci = metrics_with_ci(y, p, class_names, groups, n_boot, alpha, seed, dense_classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        subgroups = subgroup_metrics(
            labelled,
            [f"prob_{c}" for c in class_names],
            "label",
            class_names,
            by=subgroup_by,
            groups=gcol,
            n_boot=subgroup_n_boot if subgroup_n_boot is not None else min(n_boot, 200),
            alpha=alpha,
            seed=seed,
            include_overall=False,
            min_patients=subgroup_min_patients,
        )
    compare = None
    if compare_predictions is not None:
        compare = _compare(labelled, compare_predictions, class_names, dense_classes, gcol, n_boot, seed, alpha)
    flagged = [w for w in (one_class_warning(p, class_names, y),) if w is not None]
    return {
        "warnings": flagged,
        "simulated": is_simulated(predictions),
        "n_images": int(len(labelled)),
        "n_patients": int(labelled[gcol].nunique()) if gcol else None,
        "n_unlabelled": int(len(predictions) - len(labelled)),
        "class_names": class_names,
        "seed": seed,
        "n_boot": n_boot,
        "alpha": alpha,
        "resampling": "patient" if gcol else "image",
        "metrics": metrics,
        "ci": ci,
        "exam": _exam_level(labelled, class_names, gcol, n_boot, alpha, seed, dense_classes),
        "reliability": _reliability(y, p),
        "subgroups": subgroups,
        "compare": compare,
    }


def to_jsonable(obj):
    """Recursively turn numpy scalars/arrays and DataFrames into JSON types; NaN/inf become None."""
    if isinstance(obj, pd.DataFrame):
        return [to_jsonable(r) for r in obj.to_dict(orient="records")]
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


# -------------------------------------------------------------------------------------------- figures
_EXTERNAL = re.compile(r"https?", re.IGNORECASE)


def _png_b64(fig) -> str:
    """PNG as base64; the PNG text chunk is varied until no 'http' lurks in the encoding by chance."""
    for i in range(8):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None, "Title": f"mammolens-{i}"})
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        if not _EXTERNAL.search(data):
            return data
    return data


def _png_bytes_b64(data: bytes) -> str:
    """Base64 of a given PNG; a tEXt chunk is inserted after IHDR if 'http' appears in it by chance."""
    import struct
    import zlib

    out = base64.b64encode(data).decode("ascii")
    for i in range(8):
        if not _EXTERNAL.search(out):
            return out
        body = b"tEXt" + f"mammolens\x00{i}".encode("latin-1")
        chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
        out = base64.b64encode(data[:33] + chunk + data[33:]).decode("ascii")  # 8 signature + 25 IHDR
    return out


def _img(b64: str, alt: str) -> str:
    return f'<img src="data:image/png;base64,{b64}" alt="{html.escape(alt)}">'


def _figure(w: float, h: float, ncols: int = 1):
    from matplotlib.figure import Figure  # Agg through savefig, no global pyplot state

    fig = Figure(figsize=(w, h))
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _roc_figure(y: np.ndarray, p: np.ndarray, class_names: Sequence[str], dense: list[int] | None) -> str:
    fig, (ax,) = _figure(5.2, 4.6)
    curves = [(c, y == i, p[:, i]) for i, c in enumerate(class_names)]
    if dense is not None:
        curves.append(("dense (" + "+".join(class_names[i] for i in dense) + ")", np.isin(y, dense), p[:, dense].sum(1)))
    from mammolens.evaluation.metrics import binary_auc

    for name, truth, score in curves:
        if truth.all() or not truth.any():
            continue
        fpr, tpr, _ = roc_curve(truth, score)
        ax.plot(fpr, tpr, lw=1.6, ls="--" if name.startswith("dense") else "-",
                label=f"{name} (AUC {binary_auc(truth, score):.3f})")
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01), title="ROC, one vs rest")
    ax.legend(loc="lower right", fontsize=8)
    return _png_b64(fig)


def _confusion_figure(y: np.ndarray, p: np.ndarray, class_names: Sequence[str]) -> str:
    cm = confusion_matrix(y, p.argmax(1), len(class_names))
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = cm / cm.sum(1, keepdims=True)
    fig, axes = _figure(9.5, 4.2, ncols=2)
    for ax, mat, title, fmt in ((axes[0], cm, "counts", "{:d}"), (axes[1], norm, "row-normalised", "{:.2f}")):
        ax.imshow(np.nan_to_num(mat.astype(float) / max(np.nanmax(mat), 1e-12)), cmap="Blues", vmin=0, vmax=1)
        for i in range(mat.shape[0]):
            for j in range(mat.shape[1]):
                v = mat[i, j]
                txt = "-" if isinstance(v, float) and not np.isfinite(v) else fmt.format(v)
                ax.text(j, i, txt, ha="center", va="center", fontsize=9)
        ax.set_xticks(range(len(class_names)), class_names)
        ax.set_yticks(range(len(class_names)), class_names)
        ax.set(xlabel="predicted", ylabel="true", title=f"confusion matrix ({title})")
    return _png_b64(fig)


def _reliability_figure(bins: list[dict]) -> str:
    """Bars only for bins holding images (an empty bin is not an accuracy of 0), each labelled n=count."""
    full = [b for b in bins if b["count"] > 0]
    fig, (ax,) = _figure(5.2, 4.6)
    centers = [(b["lo"] + b["hi"]) / 2 for b in full]
    acc = [b["accuracy"] for b in full]
    width = bins[0]["hi"] - bins[0]["lo"] if bins else 1.0
    ax.bar(centers, acc, width=width, edgecolor="k", alpha=0.7, label="accuracy")
    ax.plot([b["confidence"] for b in full], acc, "o", color="C3", ms=4, label="bin mean confidence")
    for x, a, b in zip(centers, acc, full):
        ax.text(x, a + 0.03, f"n={b['count']}", ha="center", va="bottom", fontsize=6, rotation=90)
    ax.plot([0, 1], [0, 1], color="0.5", ls="--", lw=0.8, label="perfect calibration")
    ax.set(xlabel="confidence (max probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.15),
           title="reliability diagram (n = images per bin)")
    ax.legend(loc="upper left", fontsize=8)
    return _png_b64(fig)


# ---------------------------------------------------------------------------------------------- HTML
_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;line-height:1.4;padding:0 1em}
h1{font-size:1.6em;border-bottom:2px solid #2a6;padding-bottom:.2em}h2{font-size:1.25em;margin-top:1.8em;color:#264}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#eef5f0}td:first-child,th:first-child{text-align:left}.note{color:#666;font-size:.85em}
.gallery{display:flex;flex-wrap:wrap;gap:1em}.gallery figure{margin:0;max-width:260px}.gallery img{max-width:256px}
figcaption{font-size:.8em;color:#444}pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.8em}
.banner{background:#fff3cd;border:2px solid #c90;color:#5a3e00;padding:.7em 1em;font-weight:600;margin:1em 0}
.banner.note{background:#eef4fb;border-color:#6a8fb8;color:#1d3a5c}
"""
REPORT_CSS = _CSS  # the report's style, shared by the other pages (study.html)

_SUMMARY_ORDER = (
    ("accuracy", "Accuracy"),
    ("balanced_accuracy", "Balanced accuracy"),
    ("auc_macro", "Macro AUC (one vs rest)"),
    ("kappa", "Cohen's kappa (unweighted)"),
    ("kappa_linear", "Cohen's kappa (linear)"),
    ("kappa_quadratic", "Cohen's kappa (quadratic)"),
    ("f1_macro", "Macro F1"),
    ("ece", "ECE (top-label, 15 bins)"),
    ("ece_classwise", "ECE (class-wise)"),
    ("brier", "Brier score"),
    ("dense/auc", "Dense vs non-dense AUC"),
    ("dense/sensitivity", "Dense: sensitivity"),
    ("dense/specificity", "Dense: specificity"),
    ("dense/ppv", "Dense: PPV"),
    ("dense/npv", "Dense: NPV"),
    ("dense/accuracy", "Dense: accuracy"),
)


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, (float, np.floating)) and not np.isfinite(v)):
        return "–"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.{digits}f}"
    return html.escape(str(v))


def _ci_cell(est, lo, hi) -> str:
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return _fmt(est)
    return f"{_fmt(est)} ({_fmt(lo)}–{_fmt(hi)})"


def _table(header: Sequence[str], rows: list[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _estimate_cells(key: str, scal: dict, ci: dict | None) -> list[str]:
    c = (ci or {}).get(key)
    if c:
        return [_ci_cell(c["estimate"], c["lo"], c["hi"]), _fmt(c["n_valid"])]
    return [_fmt(scal.get(key)), "–"]


def _summary_section(metrics: dict, ci: dict | None, class_names: Sequence[str], alpha: float,
                     exam: dict | None = None) -> str:
    scal = metrics.get("scalars", {})
    keys = [k for k, _ in _SUMMARY_ORDER if k in scal] + [f"auc/{c}" for c in class_names if f"auc/{c}" in scal]
    names = dict(_SUMMARY_ORDER) | {f"auc/{c}": f"AUC, class {c} vs rest" for c in class_names}
    pct = int(round(100 * (1 - alpha)))
    header = ["metric", f"per image ({pct}% CI)", "valid bootstrap replicates"]
    if exam:
        header += [f"per exam ({pct}% CI)", "valid bootstrap replicates (exam)"]
    rows = []
    for k in keys:
        row = [html.escape(names[k]), *_estimate_cells(k, scal, ci)]
        if exam:
            row += _estimate_cells(k, exam["metrics"].get("scalars", {}), exam.get("ci"))
        rows.append(row)
    out = _table(header, rows)
    if exam:
        out += (f"<p class='note'>{_fmt(metrics.get('n'))} images, {_fmt(exam['n_exams'])} exams. "
                "Exam = one study; a breast's probabilities are the mean over its views and the exam takes "
                "the denser breast, the rule of <code>mammolens predict</code>.</p>")
    per = metrics.get("per_class", {})
    if per:
        prow = [[html.escape(c), _fmt(v["precision"]), _fmt(v["recall"]), _fmt(v["f1"]), _fmt(v["support"])]
                for c, v in per.items()]
        out += "<h3>Per class</h3>" + _table(["class", "precision", "recall", "F1", "support"], prow)
    return out


def _subgroup_section(sub: pd.DataFrame, alpha: float) -> str:
    """One row per subgroup; a statistic the subgroup is too small for shows "–" (see ``note``)."""
    pct = int(round(100 * (1 - alpha)))
    rows = []
    for r in sub.itertuples(index=False):
        d = r._asdict()
        rows.append(
            [
                html.escape(str(d["subgroup"])),
                html.escape(str(d["value"])),
                _fmt(int(d["n_images"])),
                _fmt(int(d["n_patients"])) if pd.notna(d["n_patients"]) else "–",
                _ci_cell(d["accuracy"], d["accuracy_lo"], d["accuracy_hi"]),
                _ci_cell(d["auc_macro"], d["auc_macro_lo"], d["auc_macro_hi"]),
                _ci_cell(d["kappa"], d["kappa_lo"], d["kappa_hi"]),
                html.escape(str(d.get("note") or "")),
            ]
        )
    kw = sub.attrs.get("kappa_weights", "quadratic")
    table = _table(
        ["subgroup", "value", "images", "patients", f"accuracy ({pct}% CI)", f"macro AUC ({pct}% CI)",
         f"kappa, {kw} ({pct}% CI)", "note"],
        rows,
    )
    n_min = sub.attrs.get("min_patients", MIN_PATIENTS)
    return table + (f"<p class='note'>–: too small for the statistic (fewer than {n_min} patients: none; one "
                    "class present: no AUC or kappa).</p>")


def _retrieval_section(ret: dict) -> str:
    """One row per direction (image→text, image→image...): Recall@k, median rank, mAP."""
    ks = sorted({c for m in ret.values() for c in m if c.startswith("recall@")}, key=lambda c: int(c[7:]))
    rows = [[html.escape(direction.replace("_", " ")), *(_fmt(m.get(c)) for c in ks), _fmt(m.get("median_rank")),
             _fmt(m.get("mAP")), _fmt(m.get("n_queries"))] for direction, m in ret.items()]
    return ("<p>Queries ranked by cosine similarity of the run's embeddings; relevant = same finding label "
            "(class prompts as texts) or, for reports, same exam.</p>"
            + _table(["direction", *(f"Recall@{c[7:]}" for c in ks), "median rank", "mAP", "queries"], rows))


def _compare_section(cmp: dict, alpha: float) -> str:
    pct = int(round(100 * (1 - alpha)))
    rows = [
        [
            html.escape(str(r["target"])),
            _fmt(r["auc_a"]),
            _fmt(r["auc_b"]),
            _ci_cell(r["diff"], r["lo"], r["hi"]),
            _fmt(r["z"], 2),
            _fmt(r["p"], 4),
        ]
        for r in cmp.get("delong", [])
    ]
    out = f"<p>{_fmt(cmp.get('n_matched'))} images matched on image path. Run A = this run, run B = comparison.</p>"
    methods = sorted({str(r.get("method", "DeLong")) for r in cmp.get("delong", [])})
    out += _table(["AUC target (vs rest)", "AUC A", "AUC B", f"difference A − B ({pct}% CI)", "z",
                   f"p ({html.escape(', '.join(methods) or 'DeLong')})"], rows)
    d = cmp.get("auc_macro_diff")
    if d:
        out += f"<p>Macro AUC difference A − B, patient bootstrap: {_ci_cell(d['estimate'], d['lo'], d['hi'])}.</p>"
    mc = cmp.get("mcnemar")
    if mc:
        out += (
            f"<p>Accuracy A {_fmt(cmp.get('accuracy_a'))}, B {_fmt(cmp.get('accuracy_b'))}; "
            f"McNemar ({html.escape(mc['method'])}): "
            f"A right/B wrong {mc['b']}, A wrong/B right {mc['c']}, p = {_fmt(mc['p'], 4)}.</p>"
        )
    return out


def _gallery_section(gallery: Sequence[tuple]) -> str:
    by_class: dict[str, list[str]] = {}
    for item in gallery:
        if len(item) != 3:
            raise ValueError("gallery items must be (class_name, png_path_or_bytes, caption)")
        cls, img, caption = item
        if isinstance(img, (bytes, bytearray)):
            data = bytes(img)
        else:
            path = Path(img)
            if not path.is_file():
                raise FileNotFoundError(f"gallery image not found: {path}")
            data = path.read_bytes()
        if not data.startswith(b"\x89PNG"):
            raise ValueError(f"gallery image for class {cls!r} is not a PNG")
        b64 = _png_bytes_b64(data)
        by_class.setdefault(str(cls), []).append(
            f"<figure>{_img(b64, str(caption))}<figcaption>{html.escape(str(caption))}</figcaption></figure>"
        )
    return "".join(f"<h3>Class {html.escape(c)}</h3><div class='gallery'>{''.join(f)}</div>" for c, f in by_class.items())


def _localization_section(loc: dict, alpha: float) -> str:
    """Per map kind and per class: Dice, IoU, pointing game, hit (mean [CI]); paired tests; best/worst cases."""
    metrics = ("dice", "iou", "pointing_game", "hit")
    head = ["map", "class", "n", *metrics]
    rows = [[k, "all", str(v["dice"]["n"]), *(_ci_cell(v[m]["estimate"], v[m]["lo"], v[m]["hi"]) for m in metrics)]
            for k, v in loc.get("summary", {}).items()]
    rows += [[r["kind"], html.escape(str(r["class"])), str(r["n"]),
              *(_ci_cell(r[m]["estimate"], r[m]["lo"], r[m]["hi"]) for m in metrics)] for r in loc.get("by_class", [])]
    out = _table(head, rows)
    paired = loc.get("paired", {})
    if paired:
        out += _table(["comparison", "metric", "mean diff", "paired t p", "Wilcoxon p"],
                      [[html.escape(c), m, _fmt(t["mean_diff"]), _fmt(t["t_p"]), _fmt(t["wilcoxon_p"])]
                       for c, d in paired.items() for m, t in d.items()])
    out += (f"<p class='note'>Maps of {html.escape('; '.join(map(str, loc.get('texts', []))))}, thresholded by "
            f"{html.escape(str(loc.get('threshold', '')))} inside the breast; {int((1 - alpha) * 100)}% patient-bootstrap "
            "intervals. Circles and boxes are coarse outlines: Dice and IoU against them are lower bounds.</p>")
    if loc.get("gallery"):
        out += _gallery_section(loc["gallery"])
    return out


def _provenance_section(result: dict, provenance: dict | None) -> str:
    from mammolens._version import __version__

    info = {
        "mammolens version": __version__,
        "generated (UTC)": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "images evaluated": result.get("n_images", result.get("metrics", {}).get("n")),
        "patients": result.get("n_patients"),
        "unlabelled images (excluded)": result.get("n_unlabelled"),
        "bootstrap replicates": result.get("n_boot"),
        "bootstrap resampling unit": result.get("resampling"),
        "seed": result.get("seed"),
    }
    extra = {}
    for k, v in (provenance or {}).items():
        if isinstance(v, (dict, list)):
            extra[k] = v
        else:
            info[k] = v
    rows = [[html.escape(str(k)), html.escape(str(v)) if v is not None else "–"] for k, v in info.items()]
    out = _table(["item", "value"], rows)
    for k, v in extra.items():
        out += f"<h3>{html.escape(str(k))}</h3><pre>{html.escape(json.dumps(to_jsonable(v), indent=2, default=str))}</pre>"
    return out


def write_report(
    out_dir: str | PathLike,
    predictions: pd.DataFrame,
    class_names: Sequence[str],
    metrics: dict,
    subgroups: pd.DataFrame | None = None,
    gallery: Sequence[tuple] | None = None,
    compare: dict | None = None,
    title: str = "mammolens evaluation report",
    provenance: dict | None = None,
    filename: str = "report.html",
    localization: dict | None = None,
) -> Path:
    """Write a self-contained ``report.html`` (figures as embedded PNG, no external resources).

    Args:
        predictions: the evaluated predictions (``label``, ``prob_<class>``); used for the figures.
        metrics: the dict from :func:`evaluate_predictions` (CIs, subgroups and comparison are taken
            from it when not given) or a plain :func:`~mammolens.evaluation.metrics.compute_metrics` dict.
        subgroups: table from :func:`~mammolens.evaluation.subgroups.subgroup_metrics`.
        gallery: ``(class_name, png_path_or_bytes, caption)`` items, e.g. GradCAM overlays; captions are
            written as given, so do not put patient identifiers in them.
        compare: the ``compare`` dict of :func:`evaluate_predictions`.
        provenance: run directory, config, data manifest, ... (scalars as rows, dicts/lists as JSON).
        localization: ``workflows.localization_eval``'s dict (per-kind and per-class tables with CIs, paired
            tests, best/worst gallery); its section is written only when given.

    Returns:
        Path of the written file.
    """
    class_names = list(class_names)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = metrics if "metrics" in metrics else {"metrics": metrics}
    m = result["metrics"]
    ci = result.get("ci")
    alpha = float(result.get("alpha", 0.05))
    subgroups = subgroups if subgroups is not None else result.get("subgroups")
    compare = compare if compare is not None else result.get("compare")
    _, y, p = _split(predictions, class_names)
    dense = dense_indices(class_names, m.get("dense", {}).get("classes"))
    simulated = bool(result.get("simulated")) or is_simulated(predictions)
    reliability = result.get("reliability") or _reliability(y, p)

    sections = []
    sections.append(("summary", "Summary", _summary_section(m, ci, class_names, alpha, result.get("exam"))
                     + "<p class='note'>Intervals: percentile bootstrap, resampling "
                     + html.escape(str(result.get("resampling", "—"))) + "s with replacement.</p>"))
    sections.append(("roc", "ROC curves", _img(_roc_figure(y, p, class_names, dense), "ROC curves")))
    sections.append(("confusion", "Confusion matrix", _img(_confusion_figure(y, p, class_names), "confusion matrix")))
    sections.append(("calibration", "Calibration (reliability diagram)",
                     _img(_reliability_figure(reliability), "reliability diagram")))
    if subgroups is not None and len(subgroups):
        sections.append(("subgroups", "Subgroups", _subgroup_section(subgroups, alpha)))
    if compare:
        sections.append(("comparison", "Comparison with another run (DeLong, McNemar)", _compare_section(compare, alpha)))
    if result.get("retrieval"):
        sections.append(("retrieval", "Retrieval", _retrieval_section(result["retrieval"])))
    if gallery:
        sections.append(("gallery", "GradCAM gallery", _gallery_section(gallery)))
    if localization:
        sections.append(("localization", "Localization (zero-shot, lesion outlines)", _localization_section(localization, alpha)))
    sections.append(("provenance", "Provenance", _provenance_section(result, provenance)))

    banner = f"<div class='banner' id='simulated' role='alert'>{html.escape(SIMULATED_BANNER)}</div>" if simulated else ""
    flagged = list(result.get("warnings") or [])
    if not any(w.get("id") == "one-class" for w in flagged):  # a plain compute_metrics dict: checked here
        flagged += [w for w in (one_class_warning(p, class_names, y),) if w is not None]
    banner += "".join(f"<div class='banner {html.escape(str(w.get('level', 'warning')))}' id='{html.escape(str(w.get('id')))}' "
                      f"role='alert'>{html.escape(str(w.get('text', '')))}</div>" for w in flagged)
    nav = " · ".join(f"<a href='#{sid}'>{html.escape(t)}</a>" for sid, t, _ in sections)
    body = "".join(f"<section id='{sid}'><h2>{html.escape(t)}</h2>{content}</section>" for sid, t, content in sections)
    doc = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{banner}<nav>{nav}</nav>{body}</body></html>"
    )
    path = out_dir / filename
    path.write_text(doc, encoding="utf-8")
    return path
