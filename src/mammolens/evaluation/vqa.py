"""Closed-question VQA: questions with fixed answer choices generated from a manifest's facts, and scores.

Closed-question (every question has a short list of choices and one right answer), not open-ended VQA. The
templates (``TEMPLATES``; docs/dense_heads.md lists them):

- ``mass-side`` (yes/no, one per image with a known abnormality): "Is there a mass in the {left|right}
  breast?" about the image's own breast; yes when its ``abnormality`` names a mass (``mass``, ``CIRC``,
  ``SPIC``, ``MISC``).
- ``composition`` (4 choices, images with a density A–D): "What is the breast composition?" → "almost
  entirely fatty" / "scattered areas of fibroglandular density" / "heterogeneously dense" / "extremely dense".
- ``calcification-site`` (2 choices, images whose ``abnormality`` names a calcification and whose lesion
  row is known): "Where is the calcification?" → "in the upper half of the image" / "in the lower half".

``make_questions(df) -> DataFrame`` (``row`` position, ``qtype``, ``question``, ``choices`` tuple,
``answer`` index), ``prompts(q)`` the question+answer texts a text tower scores, ``accuracy_by_type(q,
pred, groups)`` the accuracy per question type with a patient-bootstrap CI.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mammolens.evaluation.localization import mean_with_ci

__all__ = ["COMPOSITION", "TEMPLATES", "accuracy_by_type", "make_questions", "prompts"]

COMPOSITION = ("almost entirely fatty", "scattered areas of fibroglandular density", "heterogeneously dense",
               "extremely dense")
TEMPLATES = {
    "mass-side": ("Is there a mass in the {side} breast?", ("no", "yes")),
    "composition": ("What is the breast composition?", COMPOSITION),
    "calcification-site": ("Where is the calcification?", ("in the upper half of the image", "in the lower half of the image")),
}
_MASS = ("mass", "circ", "spic", "misc")
_SIDE = {"L": "left", "R": "right"}


def _abnormality(row) -> str | None:
    for col in ("abnormality", "pathology"):
        v = row.get(col)
        if isinstance(v, str) and v.strip():
            return v.strip().lower()
    return None


def make_questions(df: pd.DataFrame, image_height: float | None = None) -> pd.DataFrame:
    """Closed questions of every row of a manifest (or a cache index), from its facts (module docstring).

    Args:
        df: manifest rows (``laterality``, ``density``, ``abnormality``/``pathology``, ``lesion_y``).
        image_height: the stored images' height for ``calcification-site``; default each row's ``orig_h``
            (cache index) and otherwise no such questions.
    """
    out = []
    for pos, row in enumerate(df.to_dict("records")):
        ab = _abnormality(row)
        side = _SIDE.get(str(row.get("laterality", "")).upper())
        if ab is not None and side:
            q, choices = TEMPLATES["mass-side"]
            normal = ab in ("normal", "norm")
            out.append((pos, "mass-side", q.format(side=side), choices, int(not normal and any(m in ab for m in _MASS))))
        dens = str(row.get("density", "") or "")
        if dens in ("A", "B", "C", "D"):
            q, choices = TEMPLATES["composition"]
            out.append((pos, "composition", q, choices, "ABCD".index(dens)))
        h = image_height if image_height is not None else row.get("orig_h")
        y = row.get("lesion_y")
        if ab is not None and ("calc" in ab) and h and y is not None and np.isfinite(float(y)):
            q, choices = TEMPLATES["calcification-site"]
            out.append((pos, "calcification-site", q, choices, int(float(y) >= float(h) / 2)))
    return pd.DataFrame(out, columns=["row", "qtype", "question", "choices", "answer"])


def prompts(questions: pd.DataFrame) -> list[list[str]]:
    """Per question, one "question answer" text per choice (what the text tower embeds)."""
    return [[f"{q} {c}" for c in choices] for q, choices in zip(questions["question"], questions["choices"])]


def accuracy_by_type(questions: pd.DataFrame, pred, groups=None, n_boot: int = 1000, seed: int = 0) -> dict:
    """``{qtype: {"estimate", "lo", "hi", "n", "chance"}}`` plus ``all``: accuracy of ``pred`` (choice index per
    question) with a patient-bootstrap CI; ``chance`` is 1 / number of choices (the majority answer's rate
    is ``majority``)."""
    pred = np.asarray(pred)
    correct = (pred == questions["answer"].to_numpy()).astype(float)
    g = None if groups is None else np.asarray(groups)
    res = {}
    for qt in list(dict.fromkeys(questions["qtype"])) + ["all"]:
        sel = np.ones(len(questions), bool) if qt == "all" else (questions["qtype"] == qt).to_numpy()
        r = mean_with_ci(correct[sel], None if g is None else g[sel], n_boot, seed)
        if qt != "all":
            r["chance"] = 1.0 / len(questions.loc[sel, "choices"].iloc[0])
            r["majority"] = float(questions.loc[sel, "answer"].value_counts(normalize=True).iloc[0])
        res[qt] = r
    return res
