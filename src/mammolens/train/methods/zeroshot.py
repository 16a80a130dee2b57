"""``zeroshot``: no training; the run packages the model with the task's class prompts."""

from __future__ import annotations

from mammolens.train.methods import register_method
from mammolens.train.methods.base import TrainMethod


@register_method("zeroshot")
class ZeroShotMethod(TrainMethod):
    one_shot = True
    needs_training_rows = False

    def fit(self) -> dict[str, float]:
        return {}
