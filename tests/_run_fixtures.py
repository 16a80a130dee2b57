"""Run folders in the format of earlier mammolens versions (``tests/fixtures/runs_v0``), for loading tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "runs_v0"
OLD_METHODS = ("contrastive", "finetune-ce", "report-contrastive")


def _fill(obj, gen: torch.Generator):
    if isinstance(obj, dict) and "__placeholder__" in obj:
        t = torch.randn(obj["__placeholder__"], generator=gen) * 0.02
        return t.to(getattr(torch, obj["dtype"]))
    if isinstance(obj, dict):
        return {k: _fill(v, gen) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_fill(v, gen) for v in obj)
    return obj


def old_run(method: str, dst: Path) -> Path:
    """Copy the ``method`` fixture run to ``dst`` with full checkpoints (seeded weights); returns ``dst``."""
    src = FIXTURES / method
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.skeleton.pt"))
    skeleton = torch.load(src / "checkpoints" / "last.skeleton.pt", weights_only=False)
    ckpt = _fill(skeleton, torch.Generator().manual_seed(0))
    for name in ("last.pt", "best.pt"):
        torch.save(ckpt, dst / "checkpoints" / name)
    return dst
