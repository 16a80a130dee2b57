"""The training step is GPU-friendly: one compiled graph, no per-step tokenising, losses without
host-device synchronisation (checked on CPU through torch.compile's tracer: a `.any()` in an `if`, a
boolean index or a Python builtin such as the tokenizer's text normalisation each break the graph)."""

import pytest
import torch

from mammolens import losses
from mammolens.models import create_model
from mammolens.train.methods.contrastive import ContrastiveStep


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_model("tiny-clip", pretrained=None, image_size=64).train()


def _breaks(fn, *args, **kwargs):
    explained = torch._dynamo.explain(fn)(*args, **kwargs)
    return explained.graph_count, explained.graph_break_count, [b.reason.splitlines()[0] for b in explained.break_reasons]


def test_contrastive_step_traces_as_one_graph(tiny):
    step = ContrastiveStep(tiny, "density")
    graphs, breaks, reasons = _breaks(step, torch.rand(2, 1, 64, 64))
    assert (graphs, breaks) == (1, 0), reasons


def test_contrastive_step_does_not_tokenise_per_step(tiny, monkeypatch):
    step = ContrastiveStep(tiny, "density")
    expected = tiny.class_embeddings("density")

    def no_tokenizer(*a, **k):
        raise AssertionError("the training step tokenised prompts again")

    monkeypatch.setattr(tiny, "tokenizer", no_tokenizer)
    img, txt, scale = step(torch.rand(2, 1, 64, 64))
    assert img.shape == (2, tiny.embed_dim) and txt.shape == (4, tiny.embed_dim)
    torch.testing.assert_close(txt, expected)
    assert "tokens" not in step.state_dict()  # derived from the task, not saved in checkpoints


def test_class_embeddings_from_tokens_equal_from_task(tiny):
    tokens = tiny.class_tokens("density")
    assert tokens.ndim == 3 and tokens.shape[0] == 4
    torch.testing.assert_close(tiny.class_embeddings(tokens=tokens), tiny.class_embeddings("density"))
    with pytest.raises(ValueError, match="needs a task"):
        tiny.class_embeddings()


@pytest.mark.parametrize("name", ["contrastive", "cross_entropy", "focal"])
def test_losses_trace_without_graph_breaks(name, monkeypatch):
    """Fixed-shape masking instead of boolean indexing: nothing in the loss waits for the device."""
    monkeypatch.setattr(losses, "_check_labels", lambda labels, k: None)  # the CPU-only eager label check
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 2, -1, 1, 2, -1])
    modality = torch.tensor([0, 1, 2, 0, 1, 2])
    mw = torch.tensor([1.0, 2.0, 0.5, 1.0])
    cw = torch.tensor([0.5, 1.0, 1.5])
    if name == "contrastive":
        img = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
        txt = torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=-1)
        fn, args = losses.weighted_contrastive_loss, (img, txt, labels, torch.tensor(2.0))
        kwargs = dict(modality=modality, class_weights=cw, modality_weights=mw)
    else:
        fn = losses.weighted_cross_entropy if name == "cross_entropy" else losses.focal_loss
        args = (torch.randn(6, 3, generator=g), labels)
        kwargs = dict(class_weights=cw, modality=modality, modality_weights=mw)
    graphs, breaks, reasons = _breaks(fn, *args, **kwargs)
    assert (graphs, breaks) == (1, 0), reasons


def test_loss_rejects_out_of_range_labels_on_cpu():
    img = torch.nn.functional.normalize(torch.randn(2, 4), dim=-1)
    with pytest.raises(ValueError, match="out of range"):
        losses.weighted_contrastive_loss(img, img, torch.tensor([0, 2]), 0.0)
    with pytest.raises(ValueError, match="out of range"):
        losses.weighted_cross_entropy(torch.randn(2, 2), torch.tensor([0, 5]))


def test_gpu_augment_traces_as_one_graph():
    from mammolens.transforms.augment import GpuAugment

    aug = GpuAugment(erase_p=0.5).train()
    graphs, breaks, reasons = _breaks(aug, torch.rand(4, 1, 32, 32))
    assert (graphs, breaks) == (1, 0), reasons


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (CI has none; run on a GPU machine)")
def test_training_step_never_waits_for_the_gpu():
    """augment → step → loss → backward → fused AdamW under CUDA's sync debug mode 'error'."""
    from mammolens.transforms.augment import GpuAugment

    dev = torch.device("cuda")
    clip = create_model("tiny-clip", pretrained=None, image_size=64).to(dev).train()
    step, aug = ContrastiveStep(clip, "density"), GpuAugment().to(dev)
    loss_fn = losses.WeightedContrastiveLoss(class_weights=torch.ones(4, device=dev),
                                             modality_weights={"DBT": 2.0}).to(dev)
    opt = torch.optim.AdamW([p for p in step.parameters() if p.requires_grad], lr=1e-4, fused=True)
    x = torch.rand(8, 1, 64, 64, device=dev)
    y = torch.tensor([0, 1, 2, 3, -1, 0, 1, 2], device=dev)
    mod = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1], device=dev)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                img, txt, scale = step(aug(x))
                loss = loss_fn(img.float(), txt.float(), y, scale, modality=mod)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(loss).item()
