"""Tests for mammolens.models: parametrized over the registry itself (random weights, no downloads)."""

import json

import pytest
import torch
import torch.nn.functional as F

from mammolens.losses import WeightedContrastiveLoss
from mammolens.models import (
    BIOMEDCLIP_HUB,
    HashedTokenizer,
    ImageClassifier,
    LinearProbe,
    MammoCLIP,
    MLPHead,
    create_model,
    list_models,
    load_model_config,
    registered_models,
    save_local_dir,
)
from mammolens.tasks import Task

SIZE = 64  # small inputs keep CPU tests fast; ViT position embeddings are interpolated
MODEL_NAMES = registered_models() + ["ViT-S-32", "timm:vit_tiny_patch16_224"]
TWO_CLASS = Task(name="two", label_column="c", class_names=("fatty", "dense"), templates=("{} breast",))


@pytest.fixture(scope="module", params=MODEL_NAMES)
def any_model(request):
    torch.manual_seed(0)
    model = create_model(request.param, image_size=SIZE)
    if isinstance(model.tokenizer, HashedTokenizer):
        model.tokenizer.context_length = 16  # short prompts: BERT-base backward on CPU stays fast
    return model


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_model("tiny-clip", image_size=SIZE).eval()


def test_model_forward_shapes_and_normalised(any_model):
    x = torch.rand(2, 1, SIZE, SIZE)
    with torch.no_grad():
        img = any_model.encode_image(x)
        txt = any_model.class_embeddings(TWO_CLASS)
        logits = any_model(x, txt)
    d = any_model.embed_dim
    assert img.shape == (2, d) and txt.shape == (2, d) and logits.shape == (2, 2)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(2), atol=1e-5, rtol=0)
    assert any_model.image_size == SIZE


def test_model_every_trainable_parameter_gets_gradient(any_model):
    any_model.train()
    any_model.zero_grad(set_to_none=True)
    img = any_model.encode_image(torch.rand(2, 1, SIZE, SIZE))
    txt = any_model.class_embeddings(TWO_CLASS)
    loss = WeightedContrastiveLoss()(img, txt, torch.tensor([0, 1]), any_model.logit_scale)
    loss.backward()
    assert torch.isfinite(loss)
    missing = [n for n, p in any_model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing[:10]}"
    bad = [n for n, p in any_model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad


def test_grey_input_equals_repeated_rgb(tiny):
    x = torch.rand(2, 1, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(tiny.encode_image(x), tiny.encode_image(x.repeat(1, 3, 1, 1)))


def test_encode_image_rejects_bad_shape(tiny):
    with pytest.raises(ValueError, match=r"\[B, 1\|3, H, W\]"):
        tiny.encode_image(torch.rand(2, SIZE, SIZE))


def test_forward_is_scaled_cosine(tiny):
    x = torch.rand(3, 1, SIZE, SIZE)
    with torch.no_grad():
        txt = tiny.class_embeddings("density")
        expected = tiny.logit_scale.exp().clamp(max=100) * tiny.encode_image(x) @ txt.t()
        torch.testing.assert_close(tiny(x, txt), expected)


def test_class_embeddings_average_templates(tiny):
    with torch.no_grad():
        per_template = tiny.encode_text(["fatty breast", "a fatty mammogram"])
        task = Task(name="t", label_column="c", class_names=("fatty", "x"), templates=("{} breast", "a {} mammogram"))
        expected = F.normalize(per_template.mean(0), dim=-1)
        torch.testing.assert_close(tiny.class_embeddings(task)[0], expected, atol=1e-5, rtol=1e-5)


def test_unknown_model_lists_choices():
    with pytest.raises(ValueError, match="biomedclip.*tiny-clip"):
        create_model("no-such-model")
    with pytest.raises(ValueError, match="unknown timm model"):
        create_model("timm:no_such_timm_net")


def test_list_models_contains_registry_and_open_clip():
    names = list_models()
    assert names[:2] == ["biomedclip", "tiny-clip"] and "ViT-B-32" in names and "RN50" in names
    assert list_models("tiny*") == ["tiny-clip"]


def test_biomedclip_config_matches_hub_architecture():
    cfg = load_model_config("biomedclip")["model_cfg"]
    assert cfg["embed_dim"] == 512 and cfg["vision_cfg"]["timm_model_name"] == "vit_base_patch16_224"
    text = cfg["text_cfg"]
    assert (text["hf_proj_type"], text["hf_pooler_type"], text["context_length"]) == (
        "mlp", "cls_last_hidden_state_pooler", 256)


def test_biomedclip_random_init_is_offline_bert():
    model = create_model("biomedclip")  # would fail here (no internet) if anything were downloaded
    bert = model.clip.text.transformer
    assert (bert.config.vocab_size, bert.config.hidden_size, bert.config.num_hidden_layers) == (30522, 768, 12)
    assert bert.pooler is None  # as in the hub checkpoint: cls_last_hidden_state pooling needs no pooler
    assert model.image_size == 224 and model.embed_dim == 512
    assert isinstance(model.tokenizer, HashedTokenizer)
    assert model.model_kwargs == {"pretrained": None, "image_size": None}


def test_hashed_tokenizer_frames_and_pads():
    tok = HashedTokenizer(context_length=12, vocab_size=30522)
    ids = tok(["dense breast tissue", ""])
    assert ids.shape == (2, 12) and ids.dtype == torch.long
    assert ids[0, 0] == 101 and (ids[0] == 102).sum() == 1 and ids[0, -1] == 0
    assert ((ids[0, 1:4] >= 999) & (ids[0, 1:4] < 30522)).all()
    assert ids[1, :2].tolist() == [101, 102] and (ids[1, 2:] == 0).all()
    torch.testing.assert_close(tok(["dense breast tissue"]), ids[:1])  # deterministic


def test_local_dir_missing_folder_names_the_files(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        create_model("biomedclip", pretrained=f"local-dir:{tmp_path / 'absent'}")
    msg = str(err.value)
    assert "open_clip_config.json" in msg and "open_clip_pytorch_model.bin" in msg and BIOMEDCLIP_HUB in msg


def test_local_dir_missing_files_listed_exactly(tmp_path):
    (tmp_path / "open_clip_config.json").write_text(json.dumps(load_model_config("biomedclip")))
    (tmp_path / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(FileNotFoundError) as err:
        create_model("biomedclip", pretrained=f"local-dir:{tmp_path}")
    msg = str(err.value)
    missing = msg.split("missing: ")[1].split(".\n")[0]
    assert "open_clip_pytorch_model.bin" in missing and "tokenizer_config.json" in missing
    assert "open_clip_config.json" not in missing and "vocab.txt" not in missing
    assert str(tmp_path) in msg and f"huggingface.co/{BIOMEDCLIP_HUB}" in msg


def test_local_dir_roundtrip_identical_outputs(tiny, tmp_path):
    save_local_dir(tiny, tmp_path)
    x = torch.rand(2, 1, SIZE, SIZE)
    for loaded in (create_model("tiny-clip", pretrained=f"local-dir:{tmp_path}", image_size=SIZE),
                   create_model(f"local-dir:{tmp_path}")):
        loaded.eval()
        with torch.no_grad():
            torch.testing.assert_close(loaded.encode_image(x), tiny.encode_image(x))
            torch.testing.assert_close(loaded.encode_text(["dense"]), tiny.encode_text(["dense"]))


def test_local_dir_image_size_override_interpolates(tiny, tmp_path):
    save_local_dir(tiny, tmp_path)
    bigger = create_model("tiny-clip", pretrained=f"local-dir:{tmp_path}", image_size=96)
    assert bigger.image_size == 96
    assert bigger.encode_image(torch.rand(1, 1, 96, 96)).shape == (1, 64)


def _write_tiny_bert_dir(folder):
    """A BiomedCLIP-shaped local-dir (HF BERT text tower + word-piece tokenizer files), but tiny."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "dense", "fatty", "breast", "tissue", "a", "mammogram"]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer",
                                                              "do_lower_case": True}))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "bert", "vocab_size": len(words), "hidden_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64}))
    cfg = {"model_cfg": {"embed_dim": 16,
                         "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 32, "head_width": 16,
                                        "layers": 1},
                         "text_cfg": {"hf_model_name": "tiny-bert", "hf_tokenizer_name": "tiny-bert",
                                      "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                                      "context_length": 16}},
           "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))


def test_local_dir_hf_text_tower_offline(tmp_path):
    from mammolens.models.factory import _build_clip

    _write_tiny_bert_dir(tmp_path)
    cfg = json.loads((tmp_path / "open_clip_config.json").read_text())
    torch.manual_seed(1)
    source = _build_clip(cfg["model_cfg"], local_dir=tmp_path)
    torch.save(source.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    model = create_model(f"local-dir:{tmp_path}").eval()
    tokens = model.tokenizer(["dense breast tissue"])
    assert tokens.shape == (1, 16) and tokens[0, :5].tolist() == [2, 5, 7, 8, 3]  # real word-piece ids
    assert model.mean.flatten().tolist() == [0.5, 0.5, 0.5]
    with torch.no_grad():
        expected = F.normalize(source.eval().encode_text(tokens), dim=-1)
        torch.testing.assert_close(model.encode_text(["dense breast tissue"]), expected)


def test_pretrained_weights_file_roundtrip(tiny, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(tiny.state_dict(), path)  # MammoCLIP state dict ("clip." keys)
    loaded = create_model(tiny.model_name, **{**tiny.model_kwargs, "pretrained": str(path)}).eval()
    x = torch.rand(1, 1, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(x), tiny.encode_image(x))


def test_pretrained_missing_file_raises():
    with pytest.raises(FileNotFoundError, match="not 'hf-hub:ORG/REPO'"):
        create_model("tiny-clip", pretrained="/nonexistent/weights.bin")


def test_model_kwargs_rebuild_architecture(tiny):
    rebuilt = create_model(tiny.model_name, **tiny.model_kwargs)
    rebuilt.load_state_dict(tiny.state_dict())  # strict: same architecture
    assert rebuilt.image_size == tiny.image_size == SIZE


def test_lock_towers_freeze_the_right_parameters():
    model = create_model("tiny-clip", image_size=SIZE)
    model.lock_image_tower()
    assert not any(p.requires_grad for p in model.visual.parameters())
    assert all(p.requires_grad for n, p in model.clip.named_parameters() if not n.startswith("visual."))
    model = create_model("tiny-clip", image_size=SIZE).lock_text_tower()
    trainable = {n for n, p in model.clip.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.clip.named_parameters() if n.startswith("visual.")} | {"logit_scale"}


def test_grad_checkpointing_gives_same_loss():
    torch.manual_seed(0)
    model = create_model("tiny-clip", image_size=SIZE)
    x = torch.rand(2, 1, SIZE, SIZE)
    plain = model(x, model.class_embeddings(TWO_CLASS)).sum()
    model.set_grad_checkpointing(True)
    checkpointed = model(x, model.class_embeddings(TWO_CLASS)).sum()
    checkpointed.backward()
    torch.testing.assert_close(plain, checkpointed)
    assert model.visual.conv1.weight.grad is not None


def test_heads_shapes():
    assert LinearProbe(16, 4)(torch.randn(3, 16)).shape == (3, 4)
    assert MLPHead(16, 4, hidden_dim=8)(torch.randn(3, 16)).shape == (3, 4)


def test_image_classifier_trains_image_tower_only():
    model = create_model("tiny-clip", image_size=SIZE)
    clf = ImageClassifier(model, num_classes=4, head="mlp")
    logits = clf(torch.rand(2, 1, SIZE, SIZE))
    assert logits.shape == (2, 4)
    F.cross_entropy(logits, torch.tensor([0, 3])).backward()
    assert model.visual.conv1.weight.grad is not None
    assert all(p.grad is None for n, p in model.clip.named_parameters() if not n.startswith("visual."))
    assert isinstance(clf.backbone, MammoCLIP) and clf.visual is model.visual


def test_class_tokens_trim_padding_for_hf_text_towers():
    """BiomedCLIP's BERT masks padding itself: prompts are cut after the longest one (same embeddings);
    open_clip's own text transformer has a fixed-length positional embedding and keeps its context."""
    torch.manual_seed(0)
    bio = create_model("biomedclip", image_size=SIZE).eval()
    tokens = bio.class_tokens(TWO_CLASS)  # [K, T, L']
    full = bio.tokenizer([p for cls in TWO_CLASS.prompts() for p in cls]).view(2, 1, -1)  # [K, T, 256]
    assert full.shape[-1] == 256 and 2 < tokens.shape[-1] < 16
    assert torch.equal(full[..., : tokens.shape[-1]], tokens) and (full[..., tokens.shape[-1]:] == 0).all()
    with torch.no_grad():
        torch.testing.assert_close(bio.class_embeddings(tokens=tokens), bio.class_embeddings(tokens=full),
                                   atol=1e-5, rtol=0)
    tiny = create_model("tiny-clip", image_size=SIZE)
    assert tiny.class_tokens(TWO_CLASS).shape[-1] == 77


@pytest.mark.parametrize("size", [64, 96])
def test_encode_image_tokens_real_grid_and_pooled(size):
    """Patch tokens in the joint space, class token dropped, on the model's real grid."""
    torch.manual_seed(0)
    model = create_model("tiny-clip", image_size=size).eval()
    x = torch.rand(2, 1, size, size)
    pooled, tokens = model.encode_image_tokens(x)
    assert tokens.shape == (2, (size // 16) ** 2, model.embed_dim)
    assert torch.allclose(pooled, model.encode_image(x), atol=1e-6)
    assert torch.allclose(tokens.norm(dim=-1), torch.ones(2, (size // 16) ** 2), atol=1e-5)
    assert model.visual.output_tokens is False  # the switch is put back
