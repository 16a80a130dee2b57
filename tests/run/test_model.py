"""RunModel: a backbone plus named heads; the primary head answers forward/predict."""

import pytest
import torch

from mammolens.models import create_model
from mammolens.run.model import (
    HEAD_KINDS,
    Head,
    LinearHead,
    PromptHead,
    RunModel,
    build_heads,
    head_specs,
    register_head_kind,
)
from mammolens.tasks import resolve_task


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return create_model("tiny-clip", image_size=64).eval()


def _two_heads(clip):
    density, malignancy = resolve_task("density"), resolve_task("malignancy")
    return {"density": PromptHead.build(clip, density), "malignancy": LinearHead.build(clip, malignancy)}


def test_forward_is_the_primary_head_and_forward_heads_gives_all(clip):
    x = torch.rand(3, 1, 64, 64)
    model = RunModel(clip, _two_heads(clip)).eval()
    with torch.no_grad():
        out = model.forward_heads(x)
        assert list(out) == ["density", "malignancy"]
        assert out["density"].shape == (3, 4) and out["malignancy"].shape == (3, model.heads["malignancy"].num_classes)
        torch.testing.assert_close(model(x), out["density"])
        logits, emb = model.logits_and_embedding(x)
        torch.testing.assert_close(logits, out["density"])
        torch.testing.assert_close(emb, clip.encode_image(x))
        other = RunModel(clip, _two_heads(clip), primary="malignancy").eval()
        torch.testing.assert_close(other(x), out["malignancy"])
        assert other.head is other.heads["malignancy"] and model.head is None
    assert model.tasks["malignancy"].name == "malignancy" and model.num_classes == 4


def test_prompt_head_equals_the_clip_prompt_logits_and_the_old_constructor(clip):
    x = torch.rand(2, 1, 64, 64)
    task = resolve_task("density")
    text = clip.class_embeddings(task).float()
    with torch.no_grad():
        new = RunModel(clip, {"density": PromptHead(task, text)})(x)
        old = RunModel(clip, text)(x)  # the one-head signature (clip, text_emb, head, method)
        assert torch.equal(new, clip(x, text)) and torch.equal(old, new)


def test_unknown_primary_and_no_head_are_refused(clip):
    with pytest.raises(ValueError, match="primary head 'x' is not one of"):
        RunModel(clip, _two_heads(clip), primary="x")
    with pytest.raises(ValueError, match="at least one head"):
        RunModel(clip, {})


def test_a_new_head_kind_reading_patch_tokens_plugs_in(clip):
    """Room for dense heads: a registered kind that reads ``tokens`` round-trips through the checkpoint form."""

    @register_head_kind("test-token-mean")
    class TokenMean(Head):
        inputs = ("tokens",)

        def __init__(self, task, dim):
            super().__init__(task)
            self.proj = torch.nn.Linear(dim, len(task.class_names))

        @classmethod
        def build(cls, clip, task, state=None):
            head = cls(task, clip.embed_dim)
            if state is not None:
                head.load_state_dict(state)
            return head

        def forward(self, feats):
            return self.proj(feats["tokens"].mean(1))  # [B, K]

    try:
        task = resolve_task("density")
        heads = {"density": PromptHead.build(clip, task), "tokens": TokenMean.build(clip, task)}
        specs = head_specs(heads)
        assert specs["tokens"]["kind"] == "test-token-mean" and "proj.weight" in specs["tokens"]["state"]
        model = RunModel(clip, build_heads(clip, specs)).eval()
        x = torch.rand(2, 1, 64, 64)
        with torch.no_grad():
            out = model.forward_heads(x)
            torch.testing.assert_close(out["tokens"], heads["tokens"]({"tokens": clip.encode_image_tokens(x)[1]}))
    finally:
        HEAD_KINDS.pop("test-token-mean")


def test_build_heads_names_an_unknown_kind(clip):
    with pytest.raises(ValueError, match=r"head 'seg' has kind 'segmentation', which this mammolens does not know"):
        build_heads(clip, {"seg": {"task": "density", "kind": "segmentation", "state": {}}})
