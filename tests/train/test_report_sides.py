"""Report learning reads the report (issue 22): every report row of an exam reaches its breast's text, the
positives follow the sentence's side, and the multiview term pairs the views of one breast."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mammolens import losses
from mammolens.data.cache import open_cache
from mammolens.data.dataset import SENTENCE_SIDES, ExamDataset, MammoDataset, exam_sentences
from mammolens.models import create_model
from mammolens.tasks import get_task
from mammolens.train.methods import get_method
from mammolens.train.methods.base import MethodContext

from _train_helpers import _cfg, cache_dir  # noqa: F401  (fixture)

LEFT_FILM = "Background tissue is fatty. No abnormality is identified in the left breast."
RIGHT_FILM = "Background tissue is fatty. A spiculated mass is seen in the right breast."


def test_exam_sentences_take_every_report_row_and_its_breast():
    """mini-MIAS: one report per film; the right film's lesion sentence is about the right breast, and the
    side-less sentence of each film's report is about that film's breast."""
    got = exam_sentences([LEFT_FILM, RIGHT_FILM], [0, 1])
    assert ("A spiculated mass is seen in the right breast.", "R") in got
    assert ("Background tissue is fatty.", "L") in got and ("Background tissue is fatty.", "R") in got
    # one text on both breasts (a shared exam report): side-less sentences stay exam-level, no duplicates
    shared = exam_sentences([RIGHT_FILM] * 4, [0, 0, 1, 1])
    assert shared == [("Background tissue is fatty.", ""), ("A spiculated mass is seen in the right breast.", "R")]
    assert exam_sentences([float("nan"), ""], [0, 1]) == []


def _per_film_reports(cache_dir):  # noqa: F811
    """The first two exams of the cohort with one report per breast (left normal, right a mass)."""
    cache = copy.copy(open_cache(cache_dir))
    idx = cache.index.copy()
    idx["report"] = np.where(idx["laterality"].astype(str) == "R", RIGHT_FILM, LEFT_FILM)
    cache.index = idx
    rows = np.flatnonzero(idx["study_id"].isin(idx["study_id"].drop_duplicates().iloc[:2]).to_numpy())
    return MammoDataset(cache, get_task("density"), rows=rows)


def test_right_breast_lesion_sentence_reaches_the_right_breast_text(cache_dir):  # noqa: F811
    exams = ExamDataset(_per_film_reports(cache_dir))
    item = exams[0]
    sides = [SENTENCE_SIDES[i] for i in item["sentence_side"].tolist()]
    pairs = dict(zip(item["sentences"], sides))
    assert pairs["A spiculated mass is seen in the right breast."] == "R"  # was dropped: only texts[0] was kept
    assert pairs["No abnormality is identified in the left breast."] == "L"
    assert sorted(sides) == ["L", "L", "R", "R"]


def _method(cache_dir, tmp_path, images, terms):  # noqa: F811
    cfg = _cfg(cache_dir, tmp_path / "run", method={"name": "report-contrastive", "terms": terms})
    clip = create_model("tiny-clip", image_size=64)
    ctx = MethodContext(cfg=cfg, task=get_task("density"), clip=clip, device=torch.device("cpu"),
                        class_weights=torch.ones(4), modality_weights=torch.ones(3), train_ds=images)
    method = get_method("report-contrastive")(ctx)
    exams = method.train_dataset()
    return method, method.build(), ExamDataset.collate([exams[i] for i in range(len(exams))])


def test_swapping_sentence_sides_changes_both_report_losses(cache_dir, tmp_path):  # noqa: F811
    """Before issue 22 every pair of one exam was a positive: swapping every sentence's side L <-> R left
    the coarse and the fine loss bit-identical."""
    torch.manual_seed(0)
    method, step, batch = _method(cache_dir, tmp_path, _per_film_reports(cache_dir),
                                  {"exam_report": 1.0, "sentence_patch": 1.0, "multiview": 0.0})
    side = batch["sentence_side"]
    assert set(side.tolist()) == {0, 1}
    swapped = dict(batch, sentence_side=torch.where(side < 2, 1 - side, side))
    with torch.no_grad():
        a, b = method.training_forward(step, batch), method.training_forward(step, swapped)
    for term in ("exam_report", "sentence_patch"):
        assert abs(float(a[term]) - float(b[term])) > 1e-4, term


def test_multiview_term_is_weighted_in_the_config(cache_dir, tmp_path):  # noqa: F811
    torch.manual_seed(0)
    images = _per_film_reports(cache_dir)
    method, step, batch = _method(cache_dir, tmp_path, images, {"exam_report": 0.0, "sentence_patch": 0.0,
                                                                 "multiview": 2.0})
    with torch.no_grad():
        out = method.training_forward(step, batch)
    assert set(out) == {"loss", "multiview"} and float(out["loss"]) == pytest.approx(2 * float(out["multiview"]))
    assert get_method("report-contrastive").terms["multiview"] > 0  # on by default


def test_side_positives_by_hand():
    # texts: exam 0 left, right, both, none; exam 1 left. images: exam 0 L, R, whole exam, unknown; exam 1 L
    t_exam, t_side = torch.tensor([0, 0, 0, 0, 1]), torch.tensor([0, 1, 2, 3, 0])
    i_exam, i_side = torch.tensor([0, 0, 0, 0, 1]), torch.tensor([0, 1, 2, -1, 0])
    pos, ign = losses.side_positives(t_exam, t_side, i_exam, i_side)
    assert pos.int().tolist() == [[1, 0, 1, 1, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]]
    assert ign.int().tolist() == [[0] * 5, [0] * 5, [0] * 5, [1, 1, 0, 0, 0], [0] * 5]


def test_ignored_pairs_leave_both_sums():
    logits = torch.tensor([[2.0, 1.0, 7.0]])
    pos = torch.tensor([[True, False, False]])
    got = float(losses.multi_positive_nce(logits, pos, ignore=torch.tensor([[False, False, True]])))
    row = -math.log(math.exp(2) / (math.exp(2) + math.exp(1)))
    assert got == pytest.approx(0.5 * (row + 0.0), rel=1e-6)  # column 0: its only entry is the positive


def test_multiview_loss_pairs_the_views_of_one_breast_by_hand():
    rng = np.random.default_rng(0)
    v = F.normalize(torch.tensor(rng.normal(size=(5, 4)), dtype=torch.float32), dim=-1)
    exam, side = torch.tensor([0, 0, 0, 0, 1]), torch.tensor([0, 0, 1, 1, 0])
    got = float(losses.multiview_loss(v, exam, side, torch.tensor(math.log(5.0))))
    lg = 5.0 * v.double().numpy() @ v.double().numpy().T
    terms = []
    for i, j in ((0, 1), (1, 0), (2, 3), (3, 2)):  # each view's one positive; itself left out
        others = [k for k in range(5) if k != i]
        terms.append(-lg[i, j] + math.log(sum(math.exp(lg[i, k]) for k in others)))
    expected = float(np.mean(terms))  # symmetric matrix: rows and columns agree
    assert got == pytest.approx(expected, rel=1e-5)


def test_summary_best_epoch_without_validation_is_the_last_epoch(cache_dir, tmp_path):  # noqa: F811
    """Issue 22: ``summary.json`` said ``best_epoch 0`` when ``val_frac`` was 0 (best.pt is then the last)."""
    import json

    from mammolens.train import train

    run = train(_cfg(cache_dir, tmp_path / "run", data=dict(cache=str(cache_dir), val_frac=0.0), epochs=2,
                     max_steps_per_epoch=1, ood=False), progress=False)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["n_val"] == 0 and summary["best_epoch"] == 2


def test_report_method_clamps_the_temperature_after_a_step(cache_dir, tmp_path):  # noqa: F811
    """The loss docstring promised a clamp at 100: it is the parameter, clamped after each step."""
    method, step, _ = _method(cache_dir, tmp_path, _per_film_reports(cache_dir), {})
    with torch.no_grad():
        method.ctx.clip.logit_scale.fill_(9.0)
    method.after_step()
    assert float(method.ctx.clip.logit_scale.exp()) == pytest.approx(100.0, rel=1e-5)
