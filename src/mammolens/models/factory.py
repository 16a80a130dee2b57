"""Model factory: ``create_model(name, pretrained=...) -> MammoCLIP`` over open_clip and timm.

Names: a registry tag (``biomedclip``, ``tiny-clip``), any open_clip architecture (``ViT-B-32``,
``RN50``), ``timm:<timm model>`` (a timm image tower with the tiny text tower), ``hf-hub:ORG/REPO`` or
``local-dir:PATH``. Sources for ``pretrained``:

* ``None`` — random weights, built fully offline. Hugging Face text towers (BiomedBERT) are built
  from a known ``BertConfig`` and get an offline *hashed* tokenizer (open_clip's BPE tokens hashed
  into the BERT vocabulary, ``HashedTokenizer``); good for tests and pipelines, not for prompts that
  must mean something.
* ``hf-hub:ORG/REPO`` — open_clip downloads config, weights and tokenizer (online; cached).
* ``local-dir:PATH`` — offline: a folder with ``open_clip_config.json``, the weights
  (``open_clip_pytorch_model.bin`` or ``*.safetensors``) and, for Hugging Face text towers, the
  tokenizer files (``tokenizer_config.json`` and ``vocab.txt`` or ``tokenizer.json``).
* a file path — weights (an open_clip state dict, or a mammolens checkpoint's ``state_dict``).
* ``run:PATH`` — the towers of a mammolens run (its best checkpoint; e.g. a ``mammolens pretrain`` run), for
  the same architecture; recorded in the new run's lineage.
* an open_clip pretrained tag (``openai``, ``laion2b_s34b_b79k``) for open_clip names (online);
  ``timm`` for ``timm:`` names (timm's ImageNet weights for the image tower, online).

Registry tags backed by a JSON file (``models/configs/<tag>.json``: ``{"model_cfg", "preprocess_cfg"}``,
like open_clip's ``model_configs``) register themselves by file name: adding a file adds a model.
:func:`add_model_config` adds a file or a folder of them at run time.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import json
import logging
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mammolens._optional import optional_import
from mammolens.models.registry import (
    get_model_builder,
    is_registered,
    register_model,
    registered_models,
    unknown_model_error,
    unregister_model,
)

__all__ = [
    "MammoCLIP",
    "RANDOM_BY_DESIGN",
    "random_weights_reason",
    "HashedTokenizer",
    "add_model_config",
    "create_model",
    "list_models",
    "load_model_config",
    "parse_model_source",
    "save_local_dir",
    "BIOMEDCLIP_HUB",
]

_log = logging.getLogger(__name__)

BIOMEDCLIP_HUB = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
CONFIG_FILE = "open_clip_config.json"
WEIGHT_FILES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
)
TOKENIZER_FILES = ("tokenizer_config.json", "vocab.txt|tokenizer.json")

# Text-tower configs that are built offline instead of fetched with AutoConfig.from_pretrained.
_BERT_BASE = dict(model_type="bert", vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                  num_attention_heads=12, intermediate_size=3072, max_position_embeddings=512)
_KNOWN_HF_CONFIGS = {
    "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract": _BERT_BASE,
    "microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract": _BERT_BASE,
}
# Text tower of `tiny-clip`, reused for `timm:` models.
_TINY_TEXT_CFG = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2, "mlp_ratio": 2.0}


# ------------------------------------------------------------------------------------------ tokenizers
@lru_cache(maxsize=1)
def _bpe():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


@lru_cache(maxsize=8)
def _simple_tokenizer(context_length: int):
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


class HashedTokenizer:
    """Offline stand-in for a BERT word-piece tokenizer (random-weight models only).

    Text is split by open_clip's bundled BPE; each BPE id is hashed into the non-special BERT ids
    ``[999, vocab_size)``, framed by ``[CLS]=101`` / ``[SEP]=102`` and padded with ``[PAD]=0``. It needs
    no download; load real weights (``hf-hub:`` / ``local-dir:``) to get the real tokenizer.
    """

    CLS, SEP, PAD, FIRST = 101, 102, 0, 999

    def __init__(self, context_length: int = 256, vocab_size: int = 30522):
        self.context_length = context_length
        self.vocab_size = vocab_size

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        length = context_length or self.context_length
        out = torch.full((len(texts), length), self.PAD, dtype=torch.long)  # [N, L]
        span = self.vocab_size - self.FIRST
        for i, text in enumerate(texts):
            ids = [self.FIRST + t % span for t in _bpe().encode(text)][: length - 2]
            row = [self.CLS, *ids, self.SEP]
            out[i, : len(row)] = torch.tensor(row)
        return out


# ------------------------------------------------------------------------------------------- wrapper
class MammoCLIP(nn.Module):
    """A CLIP model with mammography-friendly inputs: grey [0, 1] images and plain prompt strings.

    Args:
        clip: An open_clip ``CLIP`` / ``CustomTextCLIP``.
        tokenizer: Callable ``list[str] -> LongTensor [N, L]``.
        mean: Per-channel normalisation mean of the image tower.
        std: Per-channel normalisation std of the image tower.
        model_name: Name given to ``create_model`` (to rebuild the model from a checkpoint).
        model_kwargs: Keyword arguments given to ``create_model``.
    """

    def __init__(self, clip: nn.Module, tokenizer, mean=OPENAI_MEAN, std=OPENAI_STD, model_name: str = "",
                 model_kwargs: dict | None = None):
        super().__init__()
        self.clip = clip
        self.tokenizer = tokenizer
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.model_name = model_name
        self.model_kwargs = dict(model_kwargs or {})

    @property
    def visual(self) -> nn.Module:
        """The image tower (GradCAM target)."""
        return self.clip.visual

    @property
    def logit_scale(self) -> nn.Parameter:
        """Temperature in log space; logits use ``exp(logit_scale).clamp(max=100)``."""
        return self.clip.logit_scale

    @property
    def image_size(self) -> int | tuple[int, int]:
        size = getattr(self.clip.visual, "image_size", 224)
        size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
        return size[0] if size[0] == size[1] else size

    @property
    def embed_dim(self) -> int:
        return _embed_dim(self.clip)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def encode_image(self, x: Tensor, normalize: bool = True) -> Tensor:
        """Embed images.

        Args:
            x: ``[B, 1|3, H, W]`` floats in [0, 1]; grey is repeated to 3 channels.
            normalize: L2-normalise the embeddings.

        Returns:
            ``[B, D]``.
        """
        features = self.clip.encode_image(self._normalise_input(x))  # [B, D]
        return F.normalize(features, dim=-1) if normalize else features

    def _normalise_input(self, x: Tensor) -> Tensor:
        """``[B, 1|3, H, W]`` in [0, 1] → the tower's normalised ``[B, 3, H, W]`` on the model's device."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected images [B, 1|3, H, W], got shape {tuple(x.shape)}")
        x = x.to(device=self.mean.device, dtype=self.mean.dtype)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std  # [B, 3, H, W]

    def encode_image_tokens(self, x: Tensor, normalize: bool = True) -> tuple[Tensor, Tensor]:
        """Embed images and return their patch tokens in the joint space too (ViT towers only).

        The tokens are the last block's patch tokens (class/register tokens dropped) after the tower's
        final norm and projection, i.e. what the pooled embedding is made of; their count is the
        model's real grid (``(H / patch) * (W / patch)``).

        Args:
            x: ``[B, 1|3, H, W]`` floats in [0, 1].
            normalize: L2-normalise the pooled embedding and every token.

        Returns:
            ``(pooled [B, D], tokens [B, N, D])``.

        Raises:
            ValueError: the image tower is not an open_clip or timm ViT with token pooling.
        """
        x = self._normalise_input(x)
        visual = self.clip.visual
        trunk = getattr(visual, "trunk", None)
        if trunk is not None and hasattr(trunk, "forward_features") and hasattr(trunk, "num_prefix_tokens"):
            head = getattr(visual, "head", None)
            if head is not None and hasattr(head, "pool"):
                raise ValueError("encode_image_tokens: this timm tower pools with an attention head; its "
                                 "tokens are not patches. Use a ViT with timm_pool '' or 'token'.")
            feats = trunk.forward_features(x)  # [B, P + N, C]
            pooled = trunk.forward_head(feats)  # [B, C] (no classifier: num_classes=0)
            tokens = feats[:, int(trunk.num_prefix_tokens):]  # [B, N, C]
            if head is not None:
                pooled, tokens = head(pooled), head(tokens)  # projection acts on the last dim
        elif hasattr(visual, "output_tokens") and getattr(visual, "attn_pool", None) is None:
            visual.output_tokens = True  # open_clip's own switch; tokens come back without the class token
            try:
                pooled, tokens = visual(x)  # [B, D], [B, N, C]
            finally:
                visual.output_tokens = False
            if getattr(visual, "proj", None) is not None:
                tokens = tokens @ visual.proj  # [B, N, D]
        else:
            raise ValueError(f"encode_image_tokens needs a ViT image tower (open_clip or timm); "
                             f"{type(visual).__name__} has no patch tokens. Use a ViT model (e.g. tiny-clip, biomedclip).")
        if normalize:
            pooled, tokens = F.normalize(pooled, dim=-1), F.normalize(tokens, dim=-1)
        return pooled, tokens

    def encode_text(self, texts: str | Sequence[str], normalize: bool = True) -> Tensor:
        """Embed prompt strings; returns ``[N, D]``."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.encode_tokens(self.tokenizer(texts), normalize=normalize)

    def encode_tokens(self, tokens: Tensor, normalize: bool = True) -> Tensor:
        """Embed already tokenised prompts ``[N, L]``; returns ``[N, D]``."""
        features = self.clip.encode_text(tokens.to(self.mean.device))  # [N, D]
        return F.normalize(features, dim=-1) if normalize else features

    def class_tokens(self, task) -> Tensor:
        """A task's class prompts tokenised once, ``[K, T, L]`` (K classes x T templates) on the model's device.

        The training step keeps these and calls ``class_embeddings(tokens=...)``: tokenising every step
        costs host time, and copying new tokens to a GPU from pageable memory synchronises the stream.
        """
        from mammolens.tasks import get_task

        prompts = get_task(task).prompts()  # K × T
        k, t = len(prompts), len(prompts[0])
        tokens = self._trim_padding(self.tokenizer([p for cls in prompts for p in cls]))  # [K*T, L]
        return tokens.reshape(k, t, -1).to(self.mean.device)

    def _trim_padding(self, tokens: Tensor) -> Tensor:
        """Drop the all-padding columns after the longest prompt when the text tower masks padding itself
        (Hugging Face encoders such as BiomedCLIP's PubMedBERT: same embeddings, and short density
        prompts then cost ~1/10 of the 256-token context). open_clip's own text transformer adds a
        fixed-length positional embedding, so its tokens are kept as they are."""
        from open_clip.hf_model import HFTextEncoder

        text = getattr(self.clip, "text", None)
        if not isinstance(text, HFTextEncoder):
            return tokens
        used = (tokens != text.config.pad_token_id).any(0).nonzero()
        return tokens[:, : int(used.max()) + 1] if used.numel() else tokens

    def class_embeddings(self, task=None, *, tokens: Tensor | None = None) -> Tensor:
        """Template-averaged, renormalised text embeddings of a task's classes, ``[K, D]``.

        Args:
            task: a task name / ``Task`` (its prompts are tokenised now), or
            tokens: the ``[K, T, L]`` result of ``class_tokens`` (no tokenising, no host-device copy).
        """
        if tokens is None:
            if task is None:
                raise ValueError("class_embeddings needs a task or the tokens from class_tokens(task)")
            tokens = self.class_tokens(task)
        k, t, length = tokens.shape
        emb = self.encode_tokens(tokens.reshape(k * t, length))  # [K*T, D]
        return F.normalize(emb.view(k, t, -1).mean(1), dim=-1)  # [K, D]

    def forward(self, x: Tensor, text_emb: Tensor) -> Tensor:
        """Class logits ``[B, K] = exp(logit_scale).clamp(max=100) * img @ text_emb.T``."""
        img = self.encode_image(x)  # [B, D]
        return self.logit_scale.exp().clamp(max=100.0) * img @ text_emb.to(img.dtype).t()

    def set_grad_checkpointing(self, enable: bool = True) -> MammoCLIP:
        self.clip.set_grad_checkpointing(enable)
        return self

    def lock_image_tower(self, unlocked_groups: int = 0) -> MammoCLIP:
        """Freeze the image tower (all of it, or all but the last ``unlocked_groups`` groups)."""
        if unlocked_groups and hasattr(self.clip.visual, "lock"):
            self.clip.visual.lock(unlocked_groups=unlocked_groups)
        else:
            for p in self.clip.visual.parameters():
                p.requires_grad = False
        return self

    def lock_text_tower(self) -> MammoCLIP:
        """Freeze the text tower (everything but the image tower and the logit scale/bias)."""
        for name, p in self.clip.named_parameters():
            if not name.startswith("visual.") and name not in ("logit_scale", "logit_bias"):
                p.requires_grad = False
        return self


# -------------------------------------------------------------------------------------------- builders
def parse_model_source(pretrained: str | Path | None) -> tuple[str, str]:
    """Split a model source into ``(kind, value)``; the one place that reads the source prefixes.

    Kinds: ``"none"`` (random weights; value ``""``), ``"hf-hub"`` (value ``ORG/REPO``), ``"local-dir"``
    (value a folder), ``"run"`` (value a run folder: its best checkpoint's weights, ``run:PATH``), ``"file"``
    (an existing weights file) and ``"tag"`` (anything else: an open_clip
    pretrained tag or ``"timm"``; the caller decides whether it accepts one).

    Raises:
        ValueError: A prefix with nothing after it (``"hf-hub:"``).
    """
    if pretrained is None:
        return "none", ""
    text = str(pretrained)
    for kind in ("hf-hub", "local-dir", "run"):
        if text.startswith(kind + ":"):
            value = text[len(kind) + 1:]
            if not value.strip():
                example = "ORG/REPO" if kind == "hf-hub" else "PATH"
                raise ValueError(f"model source {text!r} names nothing after '{kind}:'; expected '{kind}:{example}'")
            return kind, value
    return ("file" if Path(text).is_file() else "tag"), text


# Packaged JSON configs, scanned like open_clip's ``_rescan_model_configs``: file name = registry tag.
_CONFIG_PATHS: list[Path] = [Path(__file__).parent / "configs"]
_MODEL_CONFIGS: dict[str, Path] = {}  # tag -> JSON file


RANDOM_BY_DESIGN = frozenset({"tiny-clip"})  # registered configs without pretrained weights to load


def random_weights_reason(model: str, pretrained: str | None, method: str | None = None) -> str | None:
    """Why a model built as ``create_model(model, pretrained)`` (and used by ``method``) shows random weights,
    or None: a registered tower with pretrained weights (``biomedclip``) built without them, or
    ``method: zeroshot`` (nothing is trained) on a randomly initialised model. Recorded in a run's lineage
    (``random_weights``) so reports and the web page can say so."""
    if pretrained is not None:
        return None
    if method == "zeroshot":
        return (f"random weights: {model} was built without pretrained weights and 'zeroshot' trains nothing, so its "
                "predictions are chance; give pretrained: hf-hub:ORG/REPO or local-dir:PATH")
    if is_registered(model) and model not in RANDOM_BY_DESIGN:
        return (f"random weights: {model} was built without its pretrained weights (random initialisation, not "
                f"{model}); give pretrained: hf-hub:ORG/REPO or local-dir:PATH")
    return None


def _build_from_config(tag: str, pretrained: str | None = None, image_size=None,
                       load_weights: bool = True) -> MammoCLIP:
    """Builder registered for every JSON config: the config's architecture + a ``pretrained`` source.
    A tower with pretrained weights built without them (``pretrained=None``) warns (``random_weights_reason``)."""
    kwargs = {"pretrained": pretrained, "image_size": image_size}
    reason = random_weights_reason(tag, pretrained) if load_weights else None
    if reason:
        warnings.warn(reason, UserWarning, stacklevel=3)
    return _wrap(_from_config(load_model_config(tag), pretrained, image_size, load_weights, tag), tag, kwargs)


def _rescan_model_configs() -> None:
    """Register one model per ``*.json`` in the config paths (later paths override earlier ones)."""
    found: dict[str, Path] = {}
    for base in _CONFIG_PATHS:
        files = [base] if base.is_file() else sorted(base.glob("*.json"))
        for f in files:
            found[f.stem] = f
    for tag, f in found.items():
        if tag not in _MODEL_CONFIGS and is_registered(tag):
            raise ValueError(
                f"model config {f} is named {tag!r}, which a code builder already registers; rename the file"
            )
        register_model(tag, replace=True)(functools.partial(_build_from_config, tag))
    for tag in set(_MODEL_CONFIGS) - set(found):  # its file or folder left the config paths
        unregister_model(tag)
    _MODEL_CONFIGS.clear()
    _MODEL_CONFIGS.update(found)


def add_model_config(path: str | Path) -> None:
    """Register the JSON config ``path`` (or every ``*.json`` in a folder) as models named by file name.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model config {path} does not exist; pass a .json file or a folder of them")
    _CONFIG_PATHS.append(path)
    _rescan_model_configs()


def load_model_config(name: str) -> dict:
    """The ``{"model_cfg", "preprocess_cfg"}`` of a config-backed registry tag (``configs/<name>.json``)."""
    if name not in _MODEL_CONFIGS:
        raise FileNotFoundError(
            f"no model config {name}.json; known configs: {sorted(_MODEL_CONFIGS)} "
            "(add one with add_model_config(path) or a file in mammolens/models/configs)"
        )
    return json.loads(_MODEL_CONFIGS[name].read_text(encoding="utf-8"))


def _hf_config(text_cfg: dict, local_dir: Path | None = None):
    """The transformers config of a Hugging Face text tower, offline where possible."""
    transformers = optional_import("transformers", "text", "a Hugging Face text tower (BiomedCLIP)")

    if local_dir is not None and (local_dir / "config.json").is_file():
        return transformers.AutoConfig.from_pretrained(str(local_dir))
    if text_cfg.get("hf_config"):
        return transformers.AutoConfig.for_model(**text_cfg["hf_config"])
    name = text_cfg["hf_model_name"]
    if name in _KNOWN_HF_CONFIGS:
        return transformers.AutoConfig.for_model(**_KNOWN_HF_CONFIGS[name])
    try:
        return transformers.AutoConfig.from_pretrained(name)
    except OSError as e:
        raise FileNotFoundError(
            f"cannot get the config of text model {name!r} (offline?). Put its config.json next to "
            f"open_clip_config.json in a local-dir: folder, or download it from https://huggingface.co/{name}"
        ) from e


def _hf_text_tower(text_cfg: dict, embed_dim: int, local_dir: Path | None = None) -> nn.Module:
    """open_clip's HFTextEncoder built from a config (no download), without BERT's unused pooler."""
    transformers = optional_import("transformers", "text", "a Hugging Face text tower (BiomedCLIP)")
    from open_clip.hf_model import HFTextEncoder

    config = _hf_config(text_cfg, local_dir)
    # Build the adapter on a 1-layer stand-in (cheap), then swap in the real transformer.
    stub = copy.deepcopy(config)
    for key, value in (("num_hidden_layers", 1), ("vocab_size", 8), ("intermediate_size", 8)):
        if hasattr(stub, key):
            setattr(stub, key, value)
    pooler_type = text_cfg.get("hf_pooler_type", "mean_pooler")
    encoder = HFTextEncoder(text_cfg["hf_model_name"], output_dim=embed_dim, config=stub, pooler_type=pooler_type,
                            proj_type=text_cfg.get("hf_proj_type", "mlp"), pretrained=False)
    kwargs = {"add_pooling_layer": False} if pooler_type != "cls_pooler" and config.model_type == "bert" else {}
    encoder.transformer = transformers.AutoModel.from_config(config, **kwargs)
    encoder.config = config
    encoder.vocab_size = getattr(config, "vocab_size", 0)
    encoder.context_length = getattr(config, "max_position_embeddings", 0)
    return encoder


def _build_clip(model_cfg: dict, image_size=None, local_dir: Path | None = None) -> nn.Module:
    """Random-weight open_clip model from a ``model_cfg`` dict, offline (timm towers not pretrained)."""
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = copy.deepcopy(model_cfg)
    if "multimodal_cfg" in cfg:
        raise ValueError("CoCa-style models (multimodal_cfg) are not supported; use a contrastive CLIP config")
    vision_cfg, text_cfg = cfg["vision_cfg"], cfg["text_cfg"]
    is_timm = "timm_model_name" in vision_cfg
    if is_timm:
        vision_cfg.setdefault("timm_model_pretrained", False)
    elif image_size is not None:
        vision_cfg["image_size"] = image_size  # native towers are built at the target size
    custom_text = cfg.pop("custom_text", False)
    if text_cfg.get("hf_model_name"):
        cfg["text_cfg"] = dict(context_length=2, vocab_size=2, width=8, heads=1, layers=1)  # replaced below
        clip = CustomTextCLIP(**cfg)
        clip.text = _hf_text_tower(text_cfg, cfg["embed_dim"], local_dir)
        clip.context_length, clip.vocab_size = clip.text.context_length, clip.text.vocab_size
    else:
        text_cfg.pop("hf_config", None)
        clip = (CustomTextCLIP if custom_text else CLIP)(**cfg)
    if is_timm and vision_cfg.get("image_size"):
        clip.visual.set_input_size(vision_cfg["image_size"])  # the size its weights were saved at
    return clip


def _set_timm_size(clip: nn.Module, image_size) -> None:
    """timm towers are built at their native size; resize (pos-embed interpolation) after loading weights."""
    visual = clip.visual
    if image_size is not None and hasattr(visual, "trunk") and hasattr(visual, "set_input_size"):
        visual.set_input_size(image_size)


def _load_weights(clip: nn.Module, path: str | Path) -> None:
    """Load an open_clip state dict (``.bin``/``.pt``/``.safetensors``) or a mammolens checkpoint."""
    from open_clip.factory import load_checkpoint, load_state_dict

    path = Path(path)
    try:
        state = load_state_dict(str(path))
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"cannot read weights from {path}: {e}") from e
    try:
        if any(k.startswith("clip.") for k in state):  # a MammoCLIP state dict
            clip.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("clip.")}, strict=True)
        else:
            load_checkpoint(clip, str(path), strict=True)
    except RuntimeError as e:
        raise ValueError(f"weights in {path} do not fit this architecture: {e}") from e


def load_run_weights(clip: nn.Module, run_dir: str | Path, name: str = "model", which: str = "best") -> None:
    """Load the towers of a mammolens run (``pretrained: run:PATH``: its ``best`` checkpoint, else ``last``) into
    an open_clip model built for ``name``; a ViT's position embedding is interpolated to this model's grid.

    Raises:
        FileNotFoundError: the folder holds no checkpoint.
        ValueError: the run's backbone is another architecture (the message names both).
    """
    from open_clip.model import resize_pos_embed

    from mammolens.run.folder import load_checkpoint

    ck = load_checkpoint(run_dir, which)
    state = {k[len("clip."):]: v for k, v in (ck.get("state_dict") or {}).items() if k.startswith("clip.")}
    if not state:
        raise ValueError(f"run:{run_dir} holds no model weights (its checkpoint has no 'clip.' state)")
    resize_pos_embed(state, clip)  # a tower pretrained at another input size (open_clip ViTs; timm is resized later)
    try:
        clip.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"run:{run_dir} was trained with model {ck.get('model_name')!r}, whose weights do not fit "
                         f"{name!r}; use model: {ck.get('model_name')} ({str(e).splitlines()[0]})") from None


def _native_mean_std(preprocess_cfg: dict) -> tuple[tuple, tuple]:
    mean = tuple(preprocess_cfg.get("mean", OPENAI_MEAN))
    std = tuple(preprocess_cfg.get("std", OPENAI_STD))
    return mean, std


def _tokenizer_for(text_cfg: dict, local_dir: Path | None = None):
    """Tokenizer for a text config: HF files from ``local_dir``, else open_clip BPE or the hashed stand-in."""
    ctx = int(text_cfg.get("context_length", 77))
    if text_cfg.get("hf_tokenizer_name"):
        if local_dir is not None:
            optional_import("transformers", "text", "a Hugging Face tokenizer")
            from open_clip.tokenizer import HFTokenizer

            return HFTokenizer(str(local_dir), context_length=ctx, **(text_cfg.get("tokenizer_kwargs") or {}))
        vocab = (text_cfg.get("hf_config") or _KNOWN_HF_CONFIGS.get(text_cfg.get("hf_model_name"), {})).get(
            "vocab_size", 30522)
        return HashedTokenizer(context_length=ctx, vocab_size=vocab)
    return _simple_tokenizer(ctx)


def _find_weights(folder: Path) -> Path | None:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    return found[0] if found else None


def _missing_files_error(folder: Path, missing: list[str], repo: str = BIOMEDCLIP_HUB) -> FileNotFoundError:
    return FileNotFoundError(
        f"local-dir:{folder} is incomplete; missing: {', '.join(missing)}.\n"
        f"Download them from https://huggingface.co/{repo} (files open_clip_config.json, "
        f"open_clip_pytorch_model.bin, tokenizer_config.json, vocab.txt, tokenizer.json), e.g.\n"
        f"  huggingface-cli download {repo} --local-dir {folder}\n"
        f"and put them directly in {folder} (not in a subfolder)."
    )


def _check_local_dir(folder: Path, need_weights: bool = True) -> tuple[dict, Path | None]:
    """Validate a ``local-dir:`` folder; return its open_clip config and weights file."""
    if not folder.is_dir():
        need = [CONFIG_FILE, WEIGHT_FILES[2], *TOKENIZER_FILES]
        raise _missing_files_error(folder, [f"the folder itself ({', '.join(need)})"])
    missing: list[str] = []
    config = None
    if (folder / CONFIG_FILE).is_file():
        try:
            config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{folder / CONFIG_FILE} is not valid JSON: {e}") from e
        if "model_cfg" not in config:
            raise ValueError(f"{folder / CONFIG_FILE} has no 'model_cfg' entry; is it an open_clip config?")
    else:
        missing.append(CONFIG_FILE)
    weights = _find_weights(folder)
    if weights is None and need_weights:
        missing.append(f"{WEIGHT_FILES[2]} (or {WEIGHT_FILES[0]})")
    hf_tok = config is None or bool(config["model_cfg"].get("text_cfg", {}).get("hf_tokenizer_name"))
    if hf_tok:
        if not (folder / "tokenizer_config.json").is_file():
            missing.append("tokenizer_config.json")
        if not ((folder / "vocab.txt").is_file() or (folder / "tokenizer.json").is_file()):
            missing.append("vocab.txt (or tokenizer.json)")
    if missing:
        raise _missing_files_error(folder, missing)
    return config, weights


def _from_local_dir(folder: str | Path, image_size=None, load_weights: bool = True):
    """(clip, tokenizer, mean, std) from a ``local-dir:`` folder, fully offline."""
    folder = Path(folder).expanduser()
    config, weights = _check_local_dir(folder, need_weights=load_weights)
    model_cfg, pp = config["model_cfg"], config.get("preprocess_cfg", {})
    clip = _build_clip(model_cfg, image_size, local_dir=folder)
    if load_weights and weights is not None:
        _load_weights(clip, weights)
    _set_timm_size(clip, image_size)
    mean, std = _native_mean_std(pp)
    return clip, _tokenizer_for(model_cfg["text_cfg"], folder), mean, std


def _from_hf_hub(repo: str, image_size=None, load_weights: bool = True):
    """(clip, tokenizer, mean, std) through open_clip's hub loader (online, cached by huggingface_hub)."""
    import open_clip

    clip = open_clip.create_model(f"hf-hub:{repo}", force_image_size=image_size, load_weights=load_weights)
    tokenizer = open_clip.get_tokenizer(f"hf-hub:{repo}")
    pp = getattr(clip.visual, "preprocess_cfg", {})
    return clip, tokenizer, tuple(pp.get("mean", OPENAI_MEAN)), tuple(pp.get("std", OPENAI_STD))


def _from_config(config: dict, pretrained: str | None, image_size=None, load_weights: bool = True,
                 name: str = "model"):
    """(clip, tokenizer, mean, std) for a packaged/open_clip config and a pretrained source."""
    kind, value = parse_model_source(pretrained)
    if kind == "hf-hub":
        return _from_hf_hub(value, image_size, load_weights)
    if kind == "local-dir":
        return _from_local_dir(value, image_size, load_weights)
    if kind == "tag":
        raise FileNotFoundError(
            f"pretrained={pretrained!r} for {name!r} is not 'hf-hub:ORG/REPO', 'local-dir:PATH' or an "
            f"existing weights file"
        )
    model_cfg = config["model_cfg"]
    clip = _build_clip(model_cfg, image_size)
    if kind == "file" and load_weights:
        _load_weights(clip, value)
    elif kind == "run" and load_weights:
        load_run_weights(clip, value, name)
    _set_timm_size(clip, image_size)
    mean, std = _native_mean_std(config.get("preprocess_cfg", {}))
    return clip, _tokenizer_for(model_cfg["text_cfg"]), mean, std


def _wrap(parts, name: str, kwargs: dict) -> MammoCLIP:
    clip, tokenizer, mean, std = parts
    return MammoCLIP(clip, tokenizer, mean, std, model_name=name, model_kwargs=kwargs)


def _embed_dim(clip: nn.Module) -> int:
    text = getattr(clip, "text", None)
    if text is not None and hasattr(text, "output_dim"):
        return int(text.output_dim)
    proj = getattr(clip, "text_projection", None)
    if isinstance(proj, nn.Linear):
        return proj.out_features
    return int(proj.shape[1]) if proj is not None else int(getattr(clip.visual, "output_dim", 0))


# ------------------------------------------------------------------------------------ registry entries
def _timm_clip(timm_name: str, pretrained: str | None = None, image_size=None, load_weights: bool = True,
               embed_dim: int = 256) -> MammoCLIP:
    import timm

    if not timm.is_model(timm_name):
        import difflib

        close = difflib.get_close_matches(timm_name, timm.list_models(), n=5)
        raise ValueError(f"unknown timm model {timm_name!r}; close matches: {close} (see timm.list_models())")
    use_timm_weights = pretrained == "timm"
    cfg = {"model_cfg": {
        "embed_dim": embed_dim,
        "vision_cfg": {"timm_model_name": timm_name, "timm_model_pretrained": use_timm_weights and load_weights,
                       "timm_pool": "", "timm_proj": "linear"},
        "text_cfg": dict(_TINY_TEXT_CFG),
    }}
    parts = _from_config(cfg, None if use_timm_weights else pretrained, image_size, load_weights, f"timm:{timm_name}")
    clip, tokenizer, _, _ = parts
    pcfg = getattr(clip.visual.trunk, "pretrained_cfg", {}) or {}
    mean, std = tuple(pcfg.get("mean", OPENAI_MEAN)), tuple(pcfg.get("std", OPENAI_STD))
    if len(mean) != 3:
        mean, std = OPENAI_MEAN, OPENAI_STD
    kwargs = {"pretrained": pretrained, "image_size": image_size, "embed_dim": embed_dim}
    return _wrap((clip, tokenizer, mean, std), f"timm:{timm_name}", kwargs)


def _open_clip_arch(name: str, pretrained: str | None = None, image_size=None, load_weights: bool = True):
    import open_clip

    kwargs = {"pretrained": pretrained, "image_size": image_size}
    if parse_model_source(pretrained)[0] != "tag":
        config = {"model_cfg": open_clip.get_model_config(name)}
        tags = open_clip.list_pretrained_tags_by_model(name)
        if tags and pretrained is None:
            _log.info("%s: random weights; pretrained tags available: %s", name, tags)
        return _wrap(_from_config(config, pretrained, image_size, load_weights, name), name, kwargs)
    # an open_clip pretrained tag (online; cached)
    clip = open_clip.create_model(name, pretrained=pretrained, force_image_size=image_size, load_weights=load_weights)
    pp = getattr(clip.visual, "preprocess_cfg", {})
    parts = (clip, open_clip.get_tokenizer(name), tuple(pp.get("mean", OPENAI_MEAN)), tuple(pp.get("std", OPENAI_STD)))
    return _wrap(parts, name, kwargs)


# ------------------------------------------------------------------------------------------ public API
def list_models(pattern: str | None = None) -> list[str]:
    """Registry tags followed by open_clip architecture names (optionally filtered by a glob pattern).

    Any ``timm:<name>`` (timm image tower + tiny text tower) is also accepted by :func:`create_model`.
    """
    import open_clip

    names = registered_models() + [n for n in open_clip.list_models() if not is_registered(n)]
    return fnmatch.filter(names, pattern) if pattern else names


def create_model(name: str, pretrained: str | None = None, image_size: int | tuple[int, int] | None = None,
                 **kw: Any) -> MammoCLIP:
    """Build a :class:`MammoCLIP`.

    Args:
        name: Registry tag, open_clip architecture, ``timm:<name>``, ``hf-hub:ORG/REPO`` or ``local-dir:PATH``.
        pretrained: None (random, offline), ``hf-hub:ORG/REPO``, ``local-dir:PATH``, ``run:PATH``, a weights file, an
            open_clip tag (open_clip names) or ``"timm"`` (``timm:`` names).
        image_size: Input size override (ViT position embeddings are interpolated).
        **kw: Builder options, e.g. ``load_weights=False`` (architecture and tokenizer only),
            ``embed_dim`` for ``timm:`` models.

    Raises:
        ValueError: Unknown name (the message lists the choices).
        FileNotFoundError: A ``local-dir:`` folder or one of its files is missing.
    """
    if is_registered(name):
        return get_model_builder(name)(pretrained=pretrained, image_size=image_size, **kw)
    if name.startswith("timm:"):
        return _timm_clip(name[len("timm:"):], pretrained=pretrained, image_size=image_size, **kw)
    kind, value = parse_model_source(name)
    if kind in ("hf-hub", "local-dir"):
        if pretrained is not None:
            warnings.warn(f"pretrained={pretrained!r} is ignored: {name!r} names its own weights", stacklevel=2)
        load_weights = kw.pop("load_weights", True)
        if kw:
            raise TypeError(f"unexpected options for {name!r}: {sorted(kw)}")
        loader = _from_local_dir if kind == "local-dir" else _from_hf_hub
        parts = loader(value, image_size, load_weights)
        return _wrap(parts, name, {"pretrained": None, "image_size": image_size})
    import open_clip

    if name in open_clip.list_models():
        return _open_clip_arch(name, pretrained=pretrained, image_size=image_size, **kw)
    raise unknown_model_error(name, list_models())


def save_local_dir(model: MammoCLIP, folder: str | Path, model_cfg: dict | None = None) -> Path:
    """Write a ``local-dir:`` folder (open_clip_config.json + open_clip_pytorch_model.bin) for ``model``.

    ``model_cfg`` defaults to the packaged config of ``model.model_name`` (registry tags only). HF
    tokenizer files are not written; copy them in for models with a Hugging Face text tower.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if model_cfg is None:
        cfg = load_model_config(model.model_name)["model_cfg"]
        cfg = copy.deepcopy(cfg)
        size = model.image_size
        cfg["vision_cfg"]["image_size"] = size if isinstance(size, int) else list(size)
    else:
        cfg = model_cfg
    config = {"model_cfg": cfg,
              "preprocess_cfg": {"mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist()}}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
    torch.save(model.clip.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


_rescan_model_configs()
