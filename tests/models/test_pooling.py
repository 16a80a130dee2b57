"""Exam/breast pooling over a variable number of views (models/pooling.py) and patch tokens (factory)."""

import pytest
import torch

from mammolens.models.pooling import AttentionPool, make_pool, masked_mean, pad_groups, pool_groups, pool_members


def test_masked_mean_averages_only_real_views():
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [float("nan"), 1e9]],
                      [[5.0, 6.0], [0.0, 0.0], [0.0, 0.0]]])  # [2, 3, 2]
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert torch.equal(masked_mean(x, mask), torch.tensor([[2.0, 3.0], [5.0, 6.0]]))


@pytest.mark.parametrize("kind", ["mean", "attention"])
def test_pool_padded_view_changes_nothing(kind):
    torch.manual_seed(0)
    pool = make_pool(kind, 8)
    if kind == "attention":
        torch.nn.init.normal_(pool.score.weight)  # not the mean any more
    x = torch.randn(3, 4, 8)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    ref = pool(x, mask)
    y = x.clone()
    y[~mask] = torch.randn(int((~mask).sum()), 8) * 1e6  # anything in the padding
    assert torch.allclose(pool(y, mask), ref)
    # the same exams padded to 6 slots pool identically
    wide, wmask = torch.zeros(3, 6, 8), torch.zeros(3, 6, dtype=torch.bool)
    wide[:, :4], wmask[:, :4] = x, mask
    assert torch.allclose(pool(wide, wmask), ref, atol=1e-6)
    assert torch.allclose(ref[2], x[2, 0], atol=1e-6)  # one view: the exam embedding is that view


def test_attention_pool_weights_on_real_views_and_gradient():
    torch.manual_seed(0)
    pool = AttentionPool(4)
    torch.nn.init.normal_(pool.score.weight)
    x = torch.randn(2, 3, 4, requires_grad=True)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    w = pool.weights(x, mask).detach()
    assert torch.allclose(w.sum(1), torch.ones(2)) and float(w[1, 1:].abs().sum()) == 0.0
    s = (x[0] @ pool.score.weight[0]).softmax(0)  # by hand
    assert torch.allclose(pool(x, mask)[0], (s[:, None] * x[0]).sum(0), atol=1e-6)
    pool(x, mask).sum().backward()
    assert torch.isfinite(pool.score.weight.grad).all() and pool.score.weight.grad.abs().sum() > 0


def test_pad_groups_and_pool_groups_from_flat_views():
    x = torch.arange(10.0).view(5, 2)  # views 0..4
    group = torch.tensor([1, 0, 1, -1, 1])
    padded, mask = pad_groups(x, group, 3)
    assert padded.shape == (3, 3, 2)
    assert mask.tolist() == [[True, False, False], [True, True, True], [False, False, False]]
    assert torch.equal(padded[1], x[[0, 2, 4]]) and torch.equal(padded[0, 0], x[1])
    pooled = pool_groups(make_pool("mean", 2), x, group, 3)
    assert torch.allclose(pooled, torch.stack([x[1], x[[0, 2, 4]].mean(0), torch.zeros(2)]))


def test_pool_members_means_any_subset():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    members = torch.tensor([[True, True, False], [False, False, False], [True, False, True]])
    out, has = pool_members(x, members)
    assert has.tolist() == [True, False, True]
    assert torch.allclose(out, torch.tensor([[0.5, 0.5], [0.0, 0.0], [1.5, 1.0]]))


def test_make_pool_unknown_kind_lists_choices():
    with pytest.raises(ValueError, match="mean, attention"):
        make_pool("max", 4)
