"""``method: report-contrastive``: exam batches (1–4 views, report sentences), sentence-level report
encoding, and an end-to-end run that evaluate and Predictor read like a contrastive run."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mammolens.data.cache import open_cache
from mammolens.data.dataset import ExamDataset, MammoDataset
from mammolens.models import create_model
from mammolens.tasks import get_task
from mammolens.train import load_run, train
from mammolens.train.methods import get_method
from mammolens.train.methods.base import MethodContext
from mammolens.train.methods.report_contrastive import encode_report

from _train_helpers import _cfg, cache_dir  # noqa: F401  (fixture)


def _exams_with_1_to_4_views(cache_dir):  # noqa: F811
    cache = open_cache(cache_dir)
    idx = cache.index.reset_index(drop=True)
    studies = idx["study_id"].drop_duplicates().tolist()[:4]
    rows = np.concatenate([np.flatnonzero((idx["study_id"] == s).to_numpy())[:k] for k, s in enumerate(studies, 1)])
    return MammoDataset(cache, get_task("density"), rows=rows)


def test_exam_dataset_groups_views_and_sentences(cache_dir):  # noqa: F811
    images = _exams_with_1_to_4_views(cache_dir)
    exams = ExamDataset(images)
    assert len(exams) == 4 and sorted(len(e) for e in exams.exams) == [1, 2, 3, 4]
    item = exams[0]
    assert item["image"].shape[1:] == (1, 64, 64) and item["label"].shape == (item["image"].shape[0],)
    assert item["sentences"] and len(item["sentence_side"]) == len(item["sentences"])
    report = images.frame["report"].iloc[0]
    assert any(s in report for s in item["sentences"])
    batch = ExamDataset.collate([exams[i] for i in range(4)])
    assert batch["image"].shape == (10, 1, 64, 64) and sorted(batch["exam_views"].tolist()) == [1, 2, 3, 4]
    assert torch.equal(torch.bincount(batch["view_exam"]), batch["exam_views"])
    assert len(batch["sentences"]) == len(batch["sentence_exam"]) == len(batch["sentence_side"])
    assert set(batch["laterality"].tolist()) <= {0, 1}
    tokenized = ExamDataset(images, tokenize=create_model("tiny-clip", image_size=64).tokenizer)
    batch = ExamDataset.collate([tokenized[i] for i in range(4)])
    assert batch["sentence_tokens"].shape == (len(batch["sentences"]), 77)  # tokenised in the loader


def test_exam_dataset_without_report_column_says_how_to_fix(cache_dir):  # noqa: F811
    with pytest.raises(ValueError, match="'notes'.*report_column"):
        ExamDataset(MammoDataset(open_cache(cache_dir), "density"), report_column="notes")


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_report_method_step_on_exams_with_1_to_4_views(cache_dir, tmp_path, pooling):  # noqa: F811
    torch.manual_seed(0)
    images = _exams_with_1_to_4_views(cache_dir)
    cfg = _cfg(cache_dir, tmp_path / "run", method={"name": "report-contrastive", "pooling": pooling,
                                                    "terms": {"prompt": 0.5}})
    clip = create_model("tiny-clip", image_size=64)
    k = len(get_task("density").class_names)
    ctx = MethodContext(cfg=cfg, task=get_task("density"), clip=clip, device=torch.device("cpu"),
                        class_weights=torch.ones(k), modality_weights=torch.ones(3), train_ds=images)
    method = get_method("report-contrastive")(ctx)
    exams = method.train_dataset()
    batch = ExamDataset.collate([exams[i] for i in range(len(exams))])
    step = method.build()
    out = method.training_forward(step, batch)
    val = {k: float(v.detach()) for k, v in out.items()}
    assert set(out) == {"loss", "exam_report", "sentence_patch", "multiview", "prompt"}  # logged by term name
    assert all(np.isfinite(v) and v > 0 for v in val.values())
    assert val["loss"] == pytest.approx(val["exam_report"] + val["sentence_patch"] + 0.5 * val["multiview"]
                                        + 0.5 * val["prompt"], rel=1e-5)
    out["loss"].backward()
    assert clip.visual.conv1.weight.grad.abs().sum() > 0 and clip.clip.token_embedding.weight.grad.abs().sum() > 0
    if pooling == "attention":
        assert step.pool.score.weight.grad is not None


def test_report_method_loss_is_the_weighted_sum_of_its_terms(cache_dir, tmp_path):  # noqa: F811
    """Each term's weight scales it (``exam_report`` included); a term of weight 0 is not computed."""
    torch.manual_seed(0)
    images = _exams_with_1_to_4_views(cache_dir)
    cfg = _cfg(cache_dir, tmp_path / "run", method={"name": "report-contrastive",
                                                    "terms": {"exam_report": 2.0, "sentence_patch": 0.0, "multiview": 0.0,
                                                              "prompt": 0.5}})
    clip = create_model("tiny-clip", image_size=64)
    ctx = MethodContext(cfg=cfg, task=get_task("density"), clip=clip, device=torch.device("cpu"),
                        class_weights=torch.ones(4), modality_weights=torch.ones(3), train_ds=images)
    method = get_method("report-contrastive")(ctx)
    exams = method.train_dataset()
    step = method.build()
    assert not step.tokens  # no patch tokens asked for: the sentence_patch term is off
    out = method.training_forward(step, ExamDataset.collate([exams[i] for i in range(len(exams))]))
    assert set(out) == {"loss", "exam_report", "prompt"}
    val = {k: float(v.detach()) for k, v in out.items()}
    assert val["loss"] == pytest.approx(2.0 * val["exam_report"] + 0.5 * val["prompt"], rel=1e-6)


def test_encode_report_keeps_sentences_beyond_the_context_length():
    """A report of > 256 tokens: its last sentence still changes the embedding (per-sentence encoding),
    where encoding the whole text at once truncates it away."""
    torch.manual_seed(0)
    clip = create_model("tiny-clip", image_size=32).eval()
    body = [f"finding number {i} shows scattered fibroglandular tissue in the upper outer quadrant." for i in range(30)]
    a, b = body + ["the left breast is extremely dense."], body + ["no mass in the right breast."]
    assert clip.tokenizer([" ".join(a)]).shape[1] < sum(len(s.split()) for s in a)  # > context: truncated whole
    assert sum(len(s.split()) for s in a) > 256
    with torch.no_grad():
        whole = clip.encode_text([" ".join(a), " ".join(b)])
        ea, eb = encode_report(clip, a), encode_report(clip, b)
    assert torch.allclose(whole[0], whole[1])  # the whole text: the last sentence was cut off
    assert not torch.allclose(ea, eb, atol=1e-4)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(clip.encode_text(a).mean(0), dim=-1)
    assert torch.allclose(ea, expected, atol=1e-6) and float(ea.norm()) == pytest.approx(1.0, abs=1e-5)


def test_report_contrastive_trains_end_to_end_and_reads_like_a_prompt_run(cache_dir, tmp_path):  # noqa: F811
    from mammolens.inference import Predictor
    from mammolens.workflows import evaluate_run

    run = train(_cfg(cache_dir, tmp_path / "run", method={"name": "report-contrastive", "pooling": "attention",
                                                          "terms": {"prompt": 0.5}},
                     epochs=1, batch_size=4, max_steps_per_epoch=2), progress=False)
    assert {"config.yaml", "metrics.jsonl", "summary.json", "ood.npz"} <= {p.name for p in run.iterdir()}
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"last.pt", "best.pt", "best.weights.pt"}
    line = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert line["step"] == 2 and np.isfinite([line["train_exam_report"], line["train_sentence_patch"],
                                                line["train_prompt"]]).all()
    assert 0.0 <= line["val_macro_auc"] <= 1.0
    model, task, cfg = load_run(run)
    assert cfg.method == "report-contrastive" and cfg.method_cfg.pooling == "attention" and model.head is None
    with torch.no_grad():
        probs = model.predict(torch.rand(2, 1, 64, 64))
    assert probs.shape == (2, 4) and torch.allclose(probs.sum(1), torch.ones(2), atol=1e-5)
    res = evaluate_run(run, cache_dir, out=tmp_path / "eval", n_boot=20, gallery_per_class=0, workers=0,
                       device="cpu", progress=False)
    assert res["n_images"] > 0 and 0.0 <= res["metrics"]["auc_macro"] <= 1.0
    image = Path(open_cache(cache_dir).index["image_path"].iloc[0])
    pred = Predictor.from_run(run, device="cpu").predict(image if image.is_absolute() else cache_dir.parent / image)
    assert len(pred.images) == 1 and pred.images["pred"].iloc[0] in task.class_names


def test_report_settings_are_checked(cache_dir, tmp_path):  # noqa: F811
    from mammolens.models.pooling import POOLINGS
    from mammolens.train import config

    assert config.POOLINGS == POOLINGS  # the config checks names without importing torch
    with pytest.raises(ValueError, match="pooling='max' is not one of: mean, attention"):
        _cfg(cache_dir, tmp_path, method={"name": "report-contrastive", "pooling": "max"})
    with pytest.raises(ValueError, match="sentence_patch must be >= 0"):
        _cfg(cache_dir, tmp_path, method={"name": "report-contrastive", "terms": {"sentence_patch": -1}})
