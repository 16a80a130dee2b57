"""Exam and breast embeddings from a variable number of views.

An exam (or a breast) has 1..V views; missing views are padding, marked by a mask. Every pooler maps
``x [E, V, D]`` + ``mask [E, V]`` (True = a real view) to ``[E, D]`` and ignores padded slots entirely: a
padded view changes nothing, whatever its values. :func:`pad_groups` turns a flat batch of views with a
group index into that padded layout.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["POOLINGS", "masked_mean", "AttentionPool", "make_pool", "pad_groups", "pool_groups", "pool_members"]

POOLINGS = ("mean", "attention")


def _check(x: Tensor, mask: Tensor) -> None:
    if x.ndim != 3 or mask.shape != x.shape[:2]:
        raise ValueError(f"expected views [E, V, D] and a mask [E, V], got {tuple(x.shape)} and {tuple(mask.shape)}")


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over the real views: ``[E, V, D]``, ``[E, V]`` → ``[E, D]`` (zeros for a group without views)."""
    _check(x, mask)
    m = mask.to(x.dtype).unsqueeze(-1)  # [E, V, 1]
    # where() rather than x * m: a NaN/inf in a padded slot must not leak into the sum
    total = torch.where(m > 0, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(1)  # [E, D]
    return total / m.sum(1).clamp(min=1)


class AttentionPool(nn.Module):
    """Attention-weighted mean over the real views (a learned score per view, softmax over the exam's views).

    Starts as the plain mean (zero scoring weights), so switching pooling on changes nothing at first.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Linear(dim, 1)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)

    def weights(self, x: Tensor, mask: Tensor) -> Tensor:
        """Attention over the views, ``[E, V]`` (0 on padding; a row without views is all 0)."""
        _check(x, mask)
        s = self.score(x).squeeze(-1).float()  # [E, V]
        s = s.masked_fill(~mask, float("-inf"))
        w = torch.softmax(s, dim=1)
        return torch.nan_to_num(w, nan=0.0)  # an all-padding row: softmax of -inf is NaN

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        w = self.weights(x, mask).to(x.dtype)  # [E, V]
        x = torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
        return torch.einsum("ev,evd->ed", w, x)


class _MeanPool(nn.Module):
    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return masked_mean(x, mask)


def make_pool(kind: str, dim: int) -> nn.Module:
    """A pooler ``(x [E, V, D], mask [E, V]) -> [E, D]``: ``mean`` or ``attention``.

    Raises:
        ValueError: unknown kind.
    """
    if kind == "mean":
        return _MeanPool()
    if kind == "attention":
        return AttentionPool(dim)
    raise ValueError(f"unknown pooling {kind!r}; choose one of: {', '.join(POOLINGS)}")


def pad_groups(x: Tensor, group: Tensor, n_groups: int) -> tuple[Tensor, Tensor]:
    """Flat views ``[N, D]`` with their group ``[N]`` (0..n_groups-1; -1 = none) → ``([G, V, D], mask [G, V])``.

    Views keep their order within a group; V is the largest group's size (at least 1).
    """
    keep = group >= 0
    x, group = x[keep], group[keep]
    counts = torch.bincount(group, minlength=n_groups) if group.numel() else group.new_zeros(n_groups)
    v = max(int(counts.max()) if counts.numel() else 0, 1)
    order = torch.argsort(group, stable=True)
    start = torch.cumsum(counts, 0) - counts  # [G]
    slot = torch.empty_like(group)
    slot[order] = torch.arange(group.numel(), device=group.device) - start[group[order]]
    out = x.new_zeros(n_groups, v, x.shape[-1])
    mask = torch.zeros(n_groups, v, dtype=torch.bool, device=x.device)
    out[group, slot] = x
    mask[group, slot] = True
    return out, mask


def pool_groups(pool: nn.Module, x: Tensor, group: Tensor, n_groups: int) -> Tensor:
    """Pool flat views ``[N, D]`` by group ``[N]`` into ``[n_groups, D]`` with ``pool``."""
    padded, mask = pad_groups(x, group, n_groups)
    return pool(padded, mask)


def pool_members(x: Tensor, members: Tensor) -> tuple[Tensor, Tensor]:
    """Mean of the items each group holds: ``x [M, D]``, ``members [G, M]`` bool → ``([G, D], has [G])``.

    A group may hold any subset of the items (a breast's text is its own side's sentences plus the
    bilateral and exam-level ones); a group holding none gets zeros and ``has`` False.
    """
    w = members.to(x.dtype)  # [G, M]
    n = w.sum(1, keepdim=True)  # [G, 1]
    return (w @ x) / n.clamp(min=1), n.squeeze(1) > 0
