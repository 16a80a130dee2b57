"""evaluate's image -> report retrieval encodes a report as training does (issue 22, items 1 and 7): the
sentences of every report row of the exam, each encoded on its own, averaged; one gallery item per exam."""

import numpy as np
import pandas as pd
import torch

from mammolens.data.cache import open_cache
from mammolens.reports import split_sentences

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from _train_helpers import cache_dir  # noqa: E402,F401  (fixture)


class _Model:
    def __init__(self):
        self.calls: list[list[str]] = []

    def encode_text(self, texts):
        self.calls.append(list(texts))
        g = torch.Generator().manual_seed(len(texts))
        return torch.nn.functional.normalize(torch.randn(len(texts), 8, generator=g), dim=-1)


class _Run:
    def __init__(self):
        self.model = _Model()


def test_report_gallery_is_per_exam_mean_of_sentences(cache_dir):  # noqa: F811
    from mammolens.workflows import _retrieval

    idx = open_cache(cache_dir).index
    preds = pd.DataFrame({"cache_row": np.arange(len(idx)), "study_id": idx["study_id"].to_numpy(),
                          "laterality": idx["laterality"].to_numpy(), "label": -np.ones(len(idx), int)})
    run = _Run()
    img = np.random.default_rng(0).normal(size=(len(idx), 8)).astype(np.float32)
    out = _retrieval(run, cache_dir, preds, 8, "cpu", img=img)
    n_exams = idx["study_id"].nunique()
    assert len(run.model.calls) == n_exams  # one encoding per exam
    sentences = {s.text for t in idx["report"].dropna().unique() for s in split_sentences(str(t))}
    assert all(set(call) <= sentences for call in run.model.calls)  # sentences, never a whole report string
    assert out["image_to_report"]["n_queries"] > 0
