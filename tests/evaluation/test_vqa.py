"""Closed-question VQA: questions from manifest facts, accuracy per type with CIs."""

import numpy as np
import pandas as pd

from mammolens.evaluation.vqa import accuracy_by_type, make_questions, prompts


def _df():
    return pd.DataFrame({"laterality": ["L", "R", "L", "R"], "density": ["A", "D", "", "B"],
                         "abnormality": ["mass", "normal", "mass+calcification", "CALC"],
                         "lesion_y": [10.0, np.nan, 80.0, 20.0], "orig_h": [100, 100, 100, 100],
                         "patient_id": ["p1", "p1", "p2", "p3"]})


def test_make_questions_from_facts():
    q = make_questions(_df())
    side = q[q.qtype == "mass-side"]
    assert side["question"].tolist() == ["Is there a mass in the left breast?", "Is there a mass in the right breast?",
                                         "Is there a mass in the left breast?", "Is there a mass in the right breast?"]
    assert side["answer"].tolist() == [1, 0, 1, 0]  # CALC alone is not a mass
    comp = q[q.qtype == "composition"]
    assert comp["row"].tolist() == [0, 1, 3] and comp["answer"].tolist() == [0, 3, 1]
    calc = q[q.qtype == "calcification-site"]
    assert calc["row"].tolist() == [2, 3] and calc["answer"].tolist() == [1, 0]  # lower half, upper half
    assert prompts(calc)[0] == ["Where is the calcification? in the upper half of the image",
                                "Where is the calcification? in the lower half of the image"]


def test_accuracy_by_type_known_answers():
    q = make_questions(_df())
    acc = accuracy_by_type(q, q["answer"].to_numpy(), groups=None, n_boot=20)
    assert all(acc[t]["estimate"] == 1.0 for t in acc)
    wrong = accuracy_by_type(q, 1 - (q["answer"].to_numpy() > 0), n_boot=20)
    assert wrong["mass-side"]["estimate"] == 0.0 and wrong["mass-side"]["chance"] == 0.5
    assert wrong["composition"]["chance"] == 0.25
