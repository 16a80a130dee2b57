"""Report losses (losses.py): multi-positive exam ↔ report InfoNCE and the sentence ↔ patch local loss."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mammolens import losses
from mammolens.models import create_model


def _hand_multi_positive(logits: np.ndarray, pos: np.ndarray) -> float:
    """-log(sum of positives' softmax mass), rows and columns with a positive, averaged, then halved."""
    def side(lg, p):
        terms = []
        for i in range(lg.shape[0]):
            if not p[i].any():
                continue
            z = sum(math.exp(v) for v in lg[i])
            terms.append(-math.log(sum(math.exp(v) for v, q in zip(lg[i], p[i]) if q) / z))
        return sum(terms) / len(terms)

    return 0.5 * (side(logits, pos) + side(logits.T, pos.T))


def test_exam_report_loss_equals_hand_computation_on_three_exams():
    # images: exam 0 (exam + one breast), exam 1 (exam), exam 2 (exam + two breasts)
    # texts: report of exams 0, 1, 2 and a breast text of exam 2
    rng = np.random.default_rng(0)
    img = F.normalize(torch.tensor(rng.normal(size=(6, 5)), dtype=torch.float32), dim=-1)
    txt = F.normalize(torch.tensor(rng.normal(size=(4, 5)), dtype=torch.float32), dim=-1)
    img_exam, txt_exam = torch.tensor([0, 0, 1, 2, 2, 2]), torch.tensor([0, 1, 2, 2])
    scale = math.log(10.0)
    got = losses.exam_report_loss(img, txt, img_exam, txt_exam, torch.tensor(scale))
    logits = 10.0 * img.numpy().astype(np.float64) @ txt.numpy().astype(np.float64).T
    pos = img_exam.numpy()[:, None] == txt_exam.numpy()[None, :]
    assert float(got) == pytest.approx(_hand_multi_positive(logits, pos), rel=1e-5)


def test_multi_positive_same_exam_pairs_are_never_negatives():
    # two texts of one exam, both identical to the image: a one-positive InfoNCE would push one away
    logits = torch.tensor([[5.0, 5.0, 0.0]])
    pos = torch.tensor([[True, True, False]])
    row = float(losses.multi_positive_nce(logits, pos))
    # rows: -log(2e^5 / (2e^5 + 1)); columns 0 and 1: -log(1) = 0, column 2 has no positive
    assert row == pytest.approx(0.5 * -math.log(2 * math.exp(5) / (2 * math.exp(5) + 1)), rel=1e-4)


def test_multi_positive_without_pairs_is_zero_with_graph():
    logits = torch.randn(2, 3, requires_grad=True)
    out = losses.multi_positive_nce(logits, torch.zeros(2, 3, dtype=torch.bool))
    out.backward()
    assert float(out) == 0.0 and logits.grad is not None


def test_sentence_patch_attention_by_hand():
    sent = torch.tensor([[1.0, 0.0]])
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # one image, two patches
    att, sim = losses.sentence_patch_attention(sent, tokens, temperature=2.0)
    a = math.exp(2.0) / (math.exp(2.0) + 1.0)
    assert torch.allclose(att, torch.tensor([[[a, 1 - a]]]))
    assert float(sim) == pytest.approx(a / math.sqrt(a * a + (1 - a) ** 2), rel=1e-6)


def _towers_grad(model):
    vis = [p.grad for n, p in model.named_parameters() if n.startswith("clip.visual.")]
    txt = [p.grad for n, p in model.named_parameters() if n.startswith(("clip.transformer.", "clip.token_embedding"))]
    return vis, txt


@pytest.mark.parametrize("which", ["coarse", "fine"])
def test_report_losses_gradients_reach_both_towers(which):
    torch.manual_seed(0)
    model = create_model("tiny-clip", image_size=32)
    x = torch.rand(4, 1, 32, 32)
    view_exam = torch.tensor([0, 0, 1, 2])
    sentences = ["scattered fibroglandular tissue.", "mass in the left breast.", "extremely dense breasts.",
                 "no suspicious findings.", "heterogeneously dense."]
    sentence_exam = torch.tensor([0, 0, 1, 2, 2])
    pooled, tokens = model.encode_image_tokens(x)  # [4, D], [4, 4, D]
    sent = model.encode_text(sentences)  # [5, D]
    if which == "coarse":
        loss = losses.exam_report_loss(pooled, sent, view_exam, sentence_exam, model.logit_scale)
    else:
        loss = losses.sentence_patch_loss(sent, tokens, sentence_exam, view_exam, model.logit_scale)
    loss.backward()
    vis, txt = _towers_grad(model)
    assert vis and txt
    for grads in (vis, txt):
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0
    assert model.logit_scale.grad is not None and float(model.logit_scale.grad) != 0.0
