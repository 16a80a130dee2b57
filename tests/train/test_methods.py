"""Training methods plug into the one loop: a method registered here (not in mammolens) trains through
``train()``, is checkpointed, validated and reloaded like a built-in one."""

import json
import math

import pytest
import torch
from torch import nn

from mammolens import losses
from mammolens.train import load_run, train
from mammolens.train import methods
from mammolens.train.loop import load_checkpoint

from _train_helpers import _cfg, _cohort_cache, cache_dir  # noqa: F401  (fixture)


class PromptTemperature(methods.TrainMethod):
    """A toy method: only the temperature is trained, by weighted CE on the zero-shot logits."""

    def build(self) -> nn.Module:
        from mammolens.train.methods.contrastive import ContrastiveStep

        self.ctx.clip.requires_grad_(False)
        self.ctx.clip.logit_scale.requires_grad_(True)
        self.calls = 0
        return ContrastiveStep(self.ctx.clip, self.ctx.task)

    def training_forward(self, model, batch):
        img, txt, scale = model(batch["image"])  # [B, D], [K, D], scalar
        logits = scale.exp() * img.float() @ txt.float().t()  # [B, K]
        loss = losses.weighted_cross_entropy(logits, batch["label"], self.ctx.class_weights, batch["modality"],
                                             self.ctx.modality_weights)
        self.calls += 1
        return {"loss": loss, "temperature": scale.detach().exp()}

    def log(self):
        return {"forward_calls": float(self.calls)}


@pytest.fixture
def prompt_temperature():
    methods.register_method("test-prompt-temperature")(PromptTemperature)
    yield "test-prompt-temperature"
    methods._REGISTRY.pop("test-prompt-temperature")


def test_registered_method_trains_through_the_loop(cache_dir, tmp_path, prompt_temperature):
    assert prompt_temperature in methods.list_methods()
    run = train(_cfg(cache_dir, tmp_path / "run", method=prompt_temperature, epochs=2, lr=0.05, max_steps_per_epoch=2,
                     ood=False), progress=False)
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [ln["epoch"] for ln in lines] == [1, 2]
    assert [ln["forward_calls"] for ln in lines] == [2.0, 4.0]  # log() is asked once per epoch
    assert all(ln["train_temperature"] > 0 and "val_macro_auc" in ln for ln in lines)  # extra scalars averaged
    start = load_checkpoint(run, "last")
    from mammolens.models import create_model

    torch.manual_seed(0)  # the run's seed: the same initial weights
    init = create_model("tiny-clip", pretrained=None, image_size=64).state_dict()
    changed = {k for k, v in start["state_dict"].items() if not torch.equal(v, init[k])}
    assert changed == {k for k in init if k.endswith("logit_scale")}  # only what build() left trainable moved
    model, task, cfg = load_run(run)
    assert model.method == prompt_temperature and cfg.method == prompt_temperature
    assert model.predict(torch.rand(2, 1, 64, 64)).shape == (2, 4)


def test_unknown_method_lists_the_choices(cache_dir, tmp_path):
    with pytest.raises(ValueError, match="contrastive, distill, finetune-ce, linear-probe, pretrain, report-contrastive, zero"):
        _cfg(cache_dir, tmp_path / "run", method="simclr")
    with pytest.raises(ValueError, match="choose one of: contrastive, distill, finetune-ce"):
        methods.get_method("simclr")


def test_builtin_methods_are_registered():
    assert methods.list_methods() == ["contrastive", "distill", "finetune-ce", "linear-probe", "pretrain",
                                      "report-contrastive", "zeroshot"]
    assert {n: methods.get_method(n).one_shot for n in methods.list_methods()} == {
        "contrastive": False, "distill": False, "finetune-ce": False, "linear-probe": True, "pretrain": False,
        "report-contrastive": False, "zeroshot": True}
    assert all(methods.get_method(n).name == n for n in methods.list_methods())


def test_clamp_logit_scale_after_step():
    from mammolens.models import create_model
    from mammolens.train.methods.base import clamp_logit_scale

    clip = create_model("tiny-clip", pretrained=None, image_size=64)
    with torch.no_grad():
        clip.logit_scale.fill_(math.log(500.0))
    clamp_logit_scale(clip)
    assert clip.logit_scale.item() == pytest.approx(math.log(100.0))


def test_adaptive_modality_weights_logged_per_epoch(cache_dir, tmp_path):
    run = train(_cfg(cache_dir, tmp_path / "run", epochs=2, max_steps_per_epoch=2, ood=False,
                     method={"name": "contrastive", "modality_weighting": {"mode": "adaptive", "momentum": 0.5}}),
                progress=False)
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    weights = [ln["modality_weights"] for ln in lines]
    assert [sorted(w) for w in weights] == [["DBT", "DM", "s2D"]] * 2
    assert any(abs(v - 1.0) > 1e-3 for w in weights for v in w.values())  # they moved
    assert all(0 < ln["logit_scale"] <= 100.0 for ln in lines)
    fixed = train(_cfg(cache_dir, tmp_path / "fixed", epochs=1, max_steps_per_epoch=1, ood=False), progress=False)
    line = json.loads((fixed / "metrics.jsonl").read_text().splitlines()[0])
    assert line["modality_weights"] == {"DM": 1.0, "s2D": 1.0, "DBT": 1.0}
