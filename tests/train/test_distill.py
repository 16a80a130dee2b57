"""``method: distill`` (train/methods/distill.py): the distillation terms by hand, a multi-task student distilled
from a pretrained teacher run (heads per task, label fraction, teacher features cached once), resume bit-identical,
and the student loads as an ordinary run."""

import math

import numpy as np
import pytest
import torch

from mammolens.train import train
from mammolens.train.loop import load_checkpoint
from mammolens.train.methods.distill import feature_cosine, feature_l2, resample_tokens, similarity_kl

from _train_helpers import _cfg, cache_dir  # noqa: F401  (fixture)

pytestmark = pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")


def test_similarity_kl_by_hand():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    t = torch.stack([e1, e2, e1])
    s = torch.stack([e1, e2, e2])
    a, b = 1 / (1 + math.e), math.e / (1 + math.e)  # softmax([0, 1])

    def kl(p, q):
        return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))

    # rows over the other two images (temperature 1): teacher / student distributions
    want = (kl([a, b], [0.5, 0.5]) + kl([0.5, 0.5], [a, b]) + kl([b, a], [a, b])) / 3
    assert similarity_kl(s, t, temperature=1.0).item() == pytest.approx(want, abs=1e-6)
    assert similarity_kl(t, t).item() == pytest.approx(0.0, abs=1e-7)
    # the dims may differ (a smaller student): only the similarity matrices are compared
    assert similarity_kl(torch.randn(5, 3), torch.randn(5, 8)).item() >= 0


def test_feature_terms_by_hand():
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    cos = (1 - 1 / math.sqrt(2) + 0.0) / 2
    assert feature_cosine(s, t).item() == pytest.approx(cos, abs=1e-6)
    assert feature_l2(s, t).item() == pytest.approx(2 * cos, abs=1e-6)  # |u - v|^2 = 2 - 2 cos for unit vectors


def test_resample_tokens_keeps_a_constant_grid_and_refuses_non_square():
    tok = torch.ones(2, 16, 3) * torch.tensor([1.0, 2.0, 3.0])
    out = resample_tokens(tok, 4)
    assert out.shape == (2, 4, 3) and torch.allclose(out, torch.ones(2, 4, 3) * torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="square"):
        resample_tokens(torch.ones(1, 12, 3), 4)


@pytest.fixture(scope="module")
def teacher(cache_dir, tmp_path_factory):  # noqa: F811
    small = {"out_dim": 32, "patch_out_dim": 32, "hidden_dim": 32, "bottleneck_dim": 16, "local_crops": 2,
             "probe_max_images": 32}
    cfg = _cfg(cache_dir, tmp_path_factory.mktemp("teacher") / "run", method={"name": "pretrain", "pretrain": small},
               epochs=1, max_steps_per_epoch=1, ood=False, probe_steps=2)
    return train(cfg, progress=False)


def _student(cache_dir, out, teacher, **kw):  # noqa: F811
    section = {"name": "distill", "terms": {"supervised": 1.0, "cosine": 1.0, "l2": 0.5, "patch": 1.0, "similarity": 1.0},
               "distill": {"teacher": f"run:{teacher}", "tasks": ["dense"], "label_fraction": 0.5}}
    base = dict(method=section, epochs=2, max_steps_per_epoch=1, ood=False, overwrite=True)
    base.update(kw)
    return _cfg(cache_dir, out, **base)


def test_student_of_a_teacher_run_is_an_ordinary_multi_task_run(cache_dir, teacher, tmp_path):  # noqa: F811
    from test_method_contract import _assert_same, _lines

    from mammolens.inference import Predictor
    from mammolens.run import load_run

    full = train(_student(cache_dir, tmp_path / "full", teacher), progress=False)
    part = train(_student(cache_dir, tmp_path / "part", teacher), stop_after=1, progress=False)
    part = train(_student(cache_dir, tmp_path / "part", teacher, resume=True), progress=False)
    a, b = load_checkpoint(full, "last"), load_checkpoint(part, "last")
    for key in ("state_dict", "heads", "method_state", "optimizer", "scheduler", "step"):
        _assert_same(a[key], b[key], key)
    lines = _lines(full)

    def same(rows):  # the resumed call found the teacher's features already cached: by design
        return [{k: v for k, v in r.items() if k != "teacher_features_reused"} for r in rows]

    assert same(lines) == same(_lines(part))
    for key in ("train_supervised", "train_ce_density", "train_ce_dense", "train_cosine", "train_l2", "train_patch",
                "train_similarity"):
        assert math.isfinite(lines[0][key]), key
    # the teacher's features were computed once into its feature cache, then reused
    assert lines[0]["teacher_features_reused"] is False
    assert any((teacher / "features").iterdir())
    again = train(_student(cache_dir, tmp_path / "again", teacher, epochs=1), progress=False)
    assert _lines(again)[0]["teacher_features_reused"] is True
    # half of the training patients keep their labels
    n_patients = lines[0]["labelled_patients"]
    assert 1 <= n_patients < 16 * 0.75
    # one backbone, one head per task; predict/evaluate use the primary head
    run = load_run(full)
    assert list(run.tasks) == ["density", "dense"] and run.model.primary == "density" and run.method == "distill"
    assert {n: h.kind for n, h in run.model.heads.items()} == {"density": "linear", "dense": "linear"}
    out = run.model.forward_heads(torch.rand(2, 1, 64, 64))
    assert out["density"].shape == (2, 4) and out["dense"].shape == (2, 2)
    probs = Predictor.from_run(full, device="cpu", workers=0).predict_tensor(torch.rand(2, 1, 64, 64))
    assert probs.shape == (2, 4) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_distillation_pulls_the_student_towards_the_teacher(cache_dir, teacher, tmp_path):  # noqa: F811
    """Positive control: with only the cosine term, the student's projected embeddings move to the teacher's
    (the term at least halves over a few epochs)."""
    cfg = _student(cache_dir, tmp_path / "cos", teacher, epochs=8, max_steps_per_epoch=0, lr=3e-3,
                   method={"name": "distill", "terms": {"supervised": 0.0, "cosine": 1.0, "similarity": 0.0},
                           "distill": {"teacher": f"run:{teacher}"}})
    from test_method_contract import _lines

    lines = _lines(train(cfg, progress=False))
    assert lines[-1]["train_cosine"] < 0.5 * lines[0]["train_cosine"]


def test_distill_needs_a_teacher_for_its_distillation_terms(cache_dir, tmp_path):  # noqa: F811
    cfg = _cfg(cache_dir, tmp_path / "none", method={"name": "distill"}, epochs=1, ood=False)
    with pytest.raises(ValueError, match="method.distill.teacher is empty"):
        train(cfg, progress=False)
    with pytest.raises(ValueError, match="label_fraction"):
        _cfg(cache_dir, tmp_path / "x", method={"name": "distill", "distill": {"label_fraction": 2}})
