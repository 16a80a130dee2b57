import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mammolens.train import load_run, train
from mammolens.train.baselines import RunModel, fit_linear_probe, zeroshot_head
from mammolens.train.config import cfg_from_dict

def _cohort_cache(tmp_path_factory) -> Path:
    """A 16-patient synthetic cohort cached at 64 px, built once per test session."""
    from mammolens.data.cache import PreprocessCfg, build_cache
    from mammolens.data.synthetic import make_cohort

    root = tmp_path_factory.getbasetemp() / "train_cohort"
    cache = root / "cache"
    if not (cache / "cache.json").is_file():
        make_cohort(root, n_patients=16, seed=0, image_size=(96, 80), dbt_frames=4, density_probs=[0.25] * 4)
        build_cache(root / "manifest.parquet", cache, PreprocessCfg(size=64), workers=0, progress=False)
    return cache


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return _cohort_cache(tmp_path_factory)


def _cfg(cache_dir, out, **kw):
    base = dict(data=dict(cache=str(cache_dir), val_frac=0.25), task="density", model="tiny-clip", image_size=64,
                method="contrastive", epochs=2, batch_size=8, lr=1e-3, weight_decay=0.0, warmup_steps=1,
                precision="fp32", augment=False, workers=0, seed=0, out_dir=str(out), device="cpu")
    base.update(kw)
    return cfg_from_dict(base)


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
