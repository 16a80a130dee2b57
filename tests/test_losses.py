"""Tests for mammolens.losses against hand-computed values."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mammolens.losses import (
    AdaptiveModalityWeights,
    FocalLoss,
    WeightedContrastiveLoss,
    WeightedCrossEntropyLoss,
    class_weights,
    focal_loss,
    modality_weight_tensor,
    normalise_modality_weights,
    weighted_contrastive_loss,
    weighted_cross_entropy,
)

# B=3 images, K=2 classes, D=2; with s = exp(log 2) = 2 the logits are
#   x0=[1,0] (class 0): [2, 0];  x1=[0,1] (class 1): [0, 2];  x2=[.6,.8] (class 0): [1.2, 1.6]
TEXT = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
IMAGES = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
LABELS = torch.tensor([0, 1, 0])
LOG2 = math.log(2.0)
LSE = lambda *v: math.log(sum(math.exp(x) for x in v))  # noqa: E731
CE = [LSE(2, 0) - 2, LSE(0, 2) - 2, LSE(1.2, 1.6) - 1.2]  # image -> text, per image
T2I = [LSE(2, 0, 1.2) - LSE(2, 1.2), LSE(0, 2, 1.6) - 2]  # text -> image, per class (both x0, x2 positive)


def test_contrastive_unweighted_matches_hand_computation():
    loss, (i2t, t2i) = weighted_contrastive_loss(IMAGES, TEXT, LABELS, torch.tensor(LOG2), return_terms=True)
    assert i2t.item() == pytest.approx(sum(CE) / 3, abs=1e-6)
    assert t2i.item() == pytest.approx(sum(T2I) / 2, abs=1e-6)
    assert loss.item() == pytest.approx(0.5 * (sum(CE) / 3 + sum(T2I) / 2), abs=1e-6)


def test_contrastive_class_weights_as_expected():
    _, (i2t, t2i) = weighted_contrastive_loss(IMAGES, TEXT, LABELS, LOG2, class_weights=torch.tensor([2.0, 1.0]),
                                              return_terms=True)
    assert i2t.item() == pytest.approx((2 * CE[0] + CE[1] + 2 * CE[2]) / 5, abs=1e-6)
    assert t2i.item() == pytest.approx((2 * T2I[0] + T2I[1]) / 3, abs=1e-6)


def test_contrastive_modality_weights_by_name():
    loss_fn = WeightedContrastiveLoss(modality_weights={"DBT": 3.0})
    modality = torch.tensor([0, 0, 2])  # DM, DM, DBT
    loss = loss_fn(IMAGES, TEXT, LABELS, torch.tensor(LOG2), modality=modality)
    i2t = (CE[0] + CE[1] + 3 * CE[2]) / 3  # divided by the class weights only (issue 14)
    assert loss.item() == pytest.approx(0.5 * (i2t + sum(T2I) / 2), abs=1e-6)


def test_contrastive_none_weights_equal_plain_cross_entropy():
    cw = class_weights(LABELS, 2, method="none")
    _, (i2t, _) = weighted_contrastive_loss(IMAGES, TEXT, LABELS, LOG2, class_weights=cw, return_terms=True)
    logits = 2.0 * IMAGES @ TEXT.t()
    assert i2t.item() == pytest.approx(F.cross_entropy(logits, LABELS).item(), abs=1e-6)


def test_contrastive_same_class_image_is_not_a_negative():
    images, labels = IMAGES[:2], LABELS[:2]
    twice, labels2 = torch.cat([images, images[:1]]), torch.cat([labels, labels[:1]])  # x0 duplicated
    _, (_, t2i_1) = weighted_contrastive_loss(images, TEXT, labels, LOG2, return_terms=True)
    _, (_, t2i_2) = weighted_contrastive_loss(twice, TEXT, labels2, LOG2, return_terms=True)
    # ours, class 0: log(1 + e^0 / (2 e^2)) < log(1 + e^0 / e^2); class 1 gains one negative at logit 0
    expected = 0.5 * (LSE(2, 0, 2) - LSE(2, 2) + LSE(0, 2, 0) - 2)
    assert t2i_2.item() == pytest.approx(expected, abs=1e-6)
    assert (LSE(2, 0, 2) - LSE(2, 2)) < (LSE(2, 0) - 2)  # the duplicate lowered class 0's term
    # a standard per-pair CLIP loss would make the duplicate a negative of x0: -log(e^2 / (2 e^2 + 1)) grows
    assert (LSE(2, 2, 0) - 2) > (LSE(2, 0) - 2)


def test_contrastive_ignores_unlabelled_images():
    images = torch.cat([IMAGES, torch.tensor([[0.0, 1.0]])])
    labels = torch.cat([LABELS, torch.tensor([-1])])
    a = weighted_contrastive_loss(IMAGES, TEXT, LABELS, LOG2)
    b = weighted_contrastive_loss(images, TEXT, labels, LOG2)
    assert b.item() == pytest.approx(a.item(), abs=1e-7)


def test_contrastive_all_unlabelled_is_zero_with_graph():
    img = IMAGES.clone().requires_grad_(True)
    loss = weighted_contrastive_loss(img, TEXT, torch.full((3,), -1), LOG2)
    loss.backward()
    assert loss.item() == 0.0 and img.grad is not None


def test_contrastive_logit_scale_has_gradient_above_100():
    # a clamp in the forward pass gave 0 here, so the temperature could never come back (issue 14 §5);
    # the loop clamps the parameter after the optimizer step instead
    scale = torch.tensor(math.log(200.0), requires_grad=True)
    weighted_contrastive_loss(IMAGES, TEXT, LABELS, scale).backward()
    assert scale.grad is not None and abs(scale.grad.item()) > 1e-3


def test_modality_weights_do_not_cancel_in_a_one_modality_batch():
    # all DM: on main (divided by the summed modality weights) weight 5 and weight 1 gave the same loss
    dm = torch.zeros(3, dtype=torch.long)
    one = weighted_contrastive_loss(IMAGES, TEXT, LABELS, LOG2, modality=dm, modality_weights={"DM": 1.0},
                                    return_terms=True)[1][0]
    five = weighted_contrastive_loss(IMAGES, TEXT, LABELS, LOG2, modality=dm, modality_weights={"DM": 5.0},
                                     return_terms=True)[1][0]
    assert five.item() == pytest.approx(5 * one.item(), rel=1e-6)
    logits = torch.randn(3, 2, generator=torch.Generator().manual_seed(1))
    ce1 = weighted_cross_entropy(logits, LABELS, modality=dm, modality_weights={"DM": 1.0})
    ce5 = weighted_cross_entropy(logits, LABELS, modality=dm, modality_weights={"DM": 5.0})
    assert ce5.item() == pytest.approx(5 * ce1.item(), rel=1e-6)


def test_normalise_modality_weights_to_expectation_one():
    train_mod = [0] * 9 + [2]  # 90 % DM, 10 % DBT
    w = normalise_modality_weights(modality_weight_tensor({"DBT": 5.0}), train_mod)
    expected = 0.9 * 1 + 0.1 * 5  # 1.4
    assert w.tolist() == pytest.approx([1 / expected, 1 / expected, 5 / expected], rel=1e-6)
    assert normalise_modality_weights(torch.ones(3), train_mod).tolist() == pytest.approx([1, 1, 1])
    with pytest.raises(ValueError, match="positive weight"):
        normalise_modality_weights(torch.tensor([0.0, 1.0, 1.0]), [0, 0])


def test_adaptive_modality_weights_follow_running_loss():
    base = torch.ones(3)
    ad = AdaptiveModalityWeights(base, [0] * 8 + [2] * 2, momentum=0.5, power=1.0)
    assert ad.weights.tolist() == pytest.approx([1, 1, 1])
    labels = torch.tensor([0, 1, 0, 1])
    mod = torch.tensor([0, 0, 2, 2])
    w = ad.update(torch.tensor([1.0, 1.0, 3.0, 3.0]), labels, mod)  # first sight: running = (1, nan, 3)
    # ratio to the expectation lbar = .8 * 1 + .2 * 3 = 1.4; then renormalised to expectation 1
    raw = torch.tensor([1 / 1.4, 1.0, 3 / 1.4])
    assert w.tolist() == pytest.approx((raw / (0.8 * raw[0] + 0.2 * raw[2])).tolist(), rel=1e-5)
    assert (0.8 * w[0] + 0.2 * w[2]).item() == pytest.approx(1.0, rel=1e-6)
    assert w[2] > w[0]  # the harder modality weighs more
    ad.update(torch.tensor([1.0, 1.0, 1.0, 1.0]), labels, mod)  # DBT running loss 0.5*3 + 0.5*1 = 2
    assert ad.running.tolist()[0] == pytest.approx(1.0) and ad.running.tolist()[2] == pytest.approx(2.0)
    inv = AdaptiveModalityWeights(base, [0] * 8 + [2] * 2, power=-1.0).update(
        torch.tensor([1.0, 1.0, 3.0, 3.0]), labels, mod)
    assert inv[2] < inv[0]  # inverse-loss weighting damps the modality with the larger loss
    unl = AdaptiveModalityWeights(base, [0, 2])
    unl.update(torch.tensor([1.0, 9.0]), torch.tensor([0, -1]), torch.tensor([0, 2]))
    assert math.isnan(unl.running[2].item())  # unlabelled rows do not count


def test_adaptive_modality_weights_bounded():
    ad = AdaptiveModalityWeights(torch.ones(3), [0, 2], momentum=0.0, min_weight=0.5, max_weight=1.5)
    w = ad.update(torch.tensor([0.01, 100.0]), torch.tensor([0, 0]), torch.tensor([0, 2]))
    assert w[2] / w[0] == pytest.approx(3.0, rel=1e-5)  # 1.5 / 0.5: raw ratios 2.0 and 0.0002, clipped


def test_contrastive_gradients_finite_with_absent_class():
    img = F.normalize(torch.randn(4, 8), dim=-1).requires_grad_(True)
    txt = F.normalize(torch.randn(3, 8), dim=-1).requires_grad_(True)
    scale = torch.tensor(LOG2, requires_grad=True)
    loss = weighted_contrastive_loss(img, txt, torch.tensor([0, 0, 1, 1]), scale)  # class 2 absent
    loss.backward()
    assert torch.isfinite(img.grad).all() and torch.isfinite(txt.grad).all() and torch.isfinite(scale.grad)
    assert txt.grad[2].abs().sum() > 0  # the absent class still acts as a negative in image->text


def test_contrastive_bad_shapes_raise():
    with pytest.raises(ValueError, match="labels has 2 entries"):
        weighted_contrastive_loss(IMAGES, TEXT, torch.tensor([0, 1]), LOG2)
    with pytest.raises(ValueError, match="out of range"):
        weighted_contrastive_loss(IMAGES, TEXT, torch.tensor([0, 1, 2]), LOG2)


def test_class_weights_inverse_values():
    w = class_weights(np.array([0, 0, 0, 1]), 2, "inverse")
    np.testing.assert_allclose(w.numpy(), [0.5, 1.5], rtol=1e-6)
    w = class_weights([0, 0, 1, -1], 3, "inverse")  # class 2 absent, -1 ignored
    np.testing.assert_allclose(w.numpy(), [2 / 3, 4 / 3, 0.0], rtol=1e-6)


def test_class_weights_effective_values():
    beta = 0.9
    w = class_weights(torch.tensor([0, 0, 0, 1]), 2, "effective", beta=beta)
    raw = np.array([(1 - beta) / (1 - beta**3), (1 - beta) / (1 - beta**1)])
    np.testing.assert_allclose(w.numpy(), raw / raw.mean(), rtol=1e-6)
    assert w.mean().item() == pytest.approx(1.0)


def test_class_weights_none_and_errors():
    assert class_weights([0, 1], 3, "none").tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="not one of"):
        class_weights([0], 2, "sqrt")
    with pytest.raises(ValueError, match="no labelled"):
        class_weights([-1, -1], 2)


def test_modality_weight_tensor_forms():
    assert modality_weight_tensor({"DBT": 2.0, "s2D": 0.5}).tolist() == [1.0, 0.5, 2.0]
    assert modality_weight_tensor([1, 2, 3]).tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="unknown modality"):
        modality_weight_tensor({"CT": 1.0})


def test_weighted_cross_entropy_matches_torch():
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    w = torch.tensor([0.5, 1.0, 2.0])
    assert weighted_cross_entropy(logits, y).item() == pytest.approx(F.cross_entropy(logits, y).item(), abs=1e-6)
    assert weighted_cross_entropy(logits, y, w).item() == pytest.approx(
        F.cross_entropy(logits, y, weight=w).item(), abs=1e-6)
    none = class_weights(y, 3, "none")
    assert WeightedCrossEntropyLoss(none)(logits, y).item() == pytest.approx(F.cross_entropy(logits, y).item(),
                                                                              abs=1e-6)
    y_unl = y.clone()
    y_unl[0] = -1
    assert weighted_cross_entropy(logits, y_unl).item() == pytest.approx(
        F.cross_entropy(logits, y_unl, ignore_index=-1).item(), abs=1e-6)


def test_focal_loss_gamma_zero_is_ce_and_downweights_easy():
    logits = torch.tensor([[4.0, 0.0], [0.2, 0.0]])
    y = torch.tensor([0, 0])
    assert focal_loss(logits, y, gamma=0.0).item() == pytest.approx(F.cross_entropy(logits, y).item(), abs=1e-6)
    p = torch.softmax(logits, 1)[:, 0]
    expected = (-(1 - p) ** 2 * p.log()).mean()
    assert FocalLoss(gamma=2.0)(logits, y).item() == pytest.approx(expected.item(), abs=1e-6)


# --------------------------------------------------------------------------------- the family's contract
# Every loss of mammolens.losses, called the same way: (rows [B, D] or [B, K], labels, modality, weights).
# Like timm's test over its model registry: a new loss joins LOSS_FAMILY or test_every_loss_is_under_contract fails.
K_FAM = 3


def _contrastive(rows, labels, modality, cw, mw):
    txt = F.normalize(torch.arange(K_FAM * rows.shape[1], dtype=torch.float32).reshape(K_FAM, -1).cos(), dim=-1)
    return weighted_contrastive_loss(F.normalize(rows, dim=-1), txt, labels, torch.tensor(LOG2), modality=modality,
                                     class_weights=cw, modality_weights=mw)


def _contrastive_module(rows, labels, modality, cw, mw):
    txt = F.normalize(torch.arange(K_FAM * rows.shape[1], dtype=torch.float32).reshape(K_FAM, -1).cos(), dim=-1)
    fn = WeightedContrastiveLoss(class_weights=cw, modality_weights=mw)
    return fn(F.normalize(rows, dim=-1), txt, labels, torch.tensor(LOG2), modality=modality)


LOSS_FAMILY = {
    "weighted_contrastive_loss": (_contrastive, 8),
    "WeightedContrastiveLoss": (_contrastive_module, 8),
    "weighted_cross_entropy": (lambda r, y, m, cw, mw: weighted_cross_entropy(r, y, cw, m, mw), K_FAM),
    "WeightedCrossEntropyLoss": (lambda r, y, m, cw, mw: WeightedCrossEntropyLoss(cw, mw)(r, y, m), K_FAM),
    "focal_loss": (lambda r, y, m, cw, mw: focal_loss(r, y, 2.0, cw, m, mw), K_FAM),
    "FocalLoss": (lambda r, y, m, cw, mw: FocalLoss(2.0, cw, mw)(r, y, m), K_FAM),
}
LABELS_FAM = torch.tensor([0, 2, -1, 1, 2, -1, 0])
MODALITY_FAM = torch.tensor([0, 1, 2, 2, 0, 1, 2])  # DM, s2D, DBT, ...
CW_FAM = torch.tensor([0.5, 1.0, 1.5])


def _rows(width, seed=0):
    return torch.randn(len(LABELS_FAM), width, generator=torch.Generator().manual_seed(seed)).requires_grad_(True)


def test_every_loss_is_under_contract():
    import mammolens.losses as losses_mod

    public = {n for n in losses_mod.__all__ if n.lower().endswith("loss") or n == "weighted_cross_entropy"}
    # the report losses score image-text pairs by exam, without labels or row weights: tests/test_losses_report.py
    assert public - {"exam_report_loss", "sentence_patch_loss", "multiview_loss"} == set(LOSS_FAMILY)


@pytest.mark.parametrize("name", sorted(LOSS_FAMILY))
def test_loss_contract_unlabelled_rows_ignored(name):
    fn, width = LOSS_FAMILY[name]
    a = fn(_rows(width), LABELS_FAM, MODALITY_FAM, CW_FAM, {"DBT": 2.0})
    rows = _rows(width).detach().clone()
    rows[LABELS_FAM < 0] = 50.0 * torch.randn(2, width, generator=torch.Generator().manual_seed(1))
    modality = MODALITY_FAM.clone()
    modality[LABELS_FAM < 0] = 0
    b = fn(rows, LABELS_FAM, modality, CW_FAM, {"DBT": 2.0})
    assert torch.isfinite(a) and b.item() == pytest.approx(a.item(), abs=1e-6)
    dropped = fn(_rows(width).detach()[LABELS_FAM >= 0], LABELS_FAM[LABELS_FAM >= 0], MODALITY_FAM[LABELS_FAM >= 0],
                 CW_FAM, {"DBT": 2.0})
    assert dropped.item() == pytest.approx(a.item(), abs=1e-6)


@pytest.mark.parametrize("name", sorted(LOSS_FAMILY))
def test_loss_contract_all_unlabelled_is_zero_with_graph(name):
    fn, width = LOSS_FAMILY[name]
    rows = _rows(width)
    loss = fn(rows, torch.full_like(LABELS_FAM, -1), MODALITY_FAM, CW_FAM, {"DBT": 2.0})
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert rows.grad is not None and torch.equal(rows.grad, torch.zeros_like(rows))


@pytest.mark.parametrize("name", sorted(LOSS_FAMILY))
def test_loss_contract_dict_and_tensor_weights_agree(name):
    fn, width = LOSS_FAMILY[name]
    by_name = fn(_rows(width), LABELS_FAM, MODALITY_FAM, CW_FAM, {"DBT": 2.0, "s2D": 0.5})
    by_index = fn(_rows(width), LABELS_FAM, MODALITY_FAM, CW_FAM, {2: 2.0, 1: 0.5})
    by_tensor = fn(_rows(width), LABELS_FAM, MODALITY_FAM, CW_FAM, torch.tensor([1.0, 0.5, 2.0]))
    unweighted = fn(_rows(width), LABELS_FAM, MODALITY_FAM, CW_FAM, None)
    assert by_name.item() == pytest.approx(by_tensor.item(), abs=1e-6)
    assert by_index.item() == pytest.approx(by_tensor.item(), abs=1e-6)
    assert abs(by_name.item() - unweighted.item()) > 1e-4  # the weights do act
    ones = fn(_rows(width), LABELS_FAM, MODALITY_FAM, CW_FAM, {})
    assert ones.item() == pytest.approx(unweighted.item(), abs=1e-6)


@pytest.mark.parametrize("name", sorted(LOSS_FAMILY))
def test_loss_contract_finite_gradients(name):
    fn, width = LOSS_FAMILY[name]
    rows = (_rows(width).detach() * 100.0).requires_grad_(True)  # saturated softmax
    labels = torch.tensor([0, 0, -1, 0, 1, -1, 1])  # class 2 absent from the batch
    loss = fn(rows, labels, MODALITY_FAM, CW_FAM, {"DBT": 2.0})
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(rows.grad).all()
    assert rows.grad[labels >= 0].abs().sum() > 0


def test_sample_weights_values():
    from mammolens.losses import sample_weights

    w = sample_weights(LABELS_FAM, K_FAM, CW_FAM, MODALITY_FAM, {"DBT": 2.0})
    assert w.tolist() == pytest.approx([0.5, 1.5, 0.0, 2.0, 1.5, 0.0, 1.0])
    assert sample_weights(LABELS_FAM, K_FAM).tolist() == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="no modality indices"):
        sample_weights(LABELS_FAM, K_FAM, modality_weights={"DBT": 2.0})
    with pytest.raises(ValueError, match="one per class"):
        sample_weights(LABELS_FAM, K_FAM, class_weights=torch.ones(2))
