import json

import numpy as np
import pytest
import torch
from torch import nn

from mammolens.train import load_run, train
from mammolens.train.baselines import RunModel, fit_linear_probe, zeroshot_head

from _train_helpers import _cfg, _cohort_cache, cache_dir  # noqa: F401  (fixture)


@pytest.mark.parametrize("method", ["zeroshot", "linear-probe", "finetune-ce"])
def test_baseline_runs_and_predicts_probabilities(cache_dir, tmp_path, method):
    run = train(_cfg(cache_dir, tmp_path / method, method=method, epochs=2, probe_steps=50, lr=1e-2))
    assert (run / "checkpoints" / "best.pt").is_file() and (run / "config.yaml").is_file()
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert "val_macro_auc" in lines[-1]
    model, task, _ = load_run(run)
    assert isinstance(model, RunModel) and model.method == method
    x = torch.rand(3, 1, 64, 64)
    probs = model.predict(x)
    assert probs.shape == (3, len(task.class_names))
    torch.testing.assert_close(probs.sum(1), torch.ones(3))
    if method == "linear-probe":
        assert lines[0]["train_loss"] < lines[0]["train_loss_first"]


def test_zeroshot_head_equals_prompt_logits():
    torch.manual_seed(0)
    text = nn.functional.normalize(torch.randn(4, 8), dim=-1)
    img = nn.functional.normalize(torch.randn(5, 8), dim=-1)
    scale = torch.tensor(np.log(10.0))
    head = zeroshot_head(text, scale)
    torch.testing.assert_close(head(img), 10.0 * img @ text.t())


def test_fit_linear_probe_separates_classes():
    torch.manual_seed(0)
    y = torch.arange(60) % 3
    x = torch.nn.functional.one_hot(y, 3).float() + 0.1 * torch.randn(60, 3)
    head = nn.Linear(3, 3)
    losses = fit_linear_probe(x, y, head, class_weights=torch.tensor([1.0, 2.0, 0.5]), steps=200, lr=0.1)
    assert losses[-1] < 0.25 * losses[0]
    assert (head(x).argmax(1) == y).float().mean() == 1.0


def test_runmodel_requires_head_or_text():
    with pytest.raises(ValueError, match="text embeddings"):
        RunModel(nn.Identity(), None, None)
