"""`TrainCfg`: every knob of a training run, filled from YAML and ``key=value`` overrides.

YAML and CLI flags only fill the dataclasses; the resolved config is written next to each run's outputs
(``config.yaml``) so the run can be rebuilt and resumed exactly.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

METHODS = ("contrastive", "zeroshot", "linear-probe", "finetune-ce", "report-contrastive")  # built in (train.methods)
POOLINGS = ("mean", "attention")  # models.pooling (not imported here: it needs torch)
PRECISIONS = ("auto", "fp32", "bf16")
CLASS_WEIGHTINGS = ("inverse", "effective", "none")
MODALITY_WEIGHTINGS = ("fixed", "adaptive")


@dataclass
class DataCfg:
    """Where the images come from and how they are split.

    Attributes:
        cache: a preprocessed cache folder (``mammolens preprocess``). Preferred.
        manifest: or a manifest; it is preprocessed into ``cache`` (or ``OUT_DIR/cache``) first.
        preprocess: ``PreprocessCfg`` fields used when building the cache from ``manifest``.
        split_column: manifest column with ``train``/``val``/``test``; ``test`` rows are never used.
        fold: when set, rows whose ``fold`` column equals it form the validation set.
        val_frac: fraction of patients held out for validation when no split/fold says otherwise.
        modalities: keep only these modalities (e.g. ``["DM"]`` for a single-modality run); empty = all.
        modality_weights: loss weight per modality (``{"DBT": 0.5}``); missing ones weigh 1. Normalised to
            expectation 1 over the training rows, so they keep their meaning in a one-modality batch.
    """

    cache: str = ""
    manifest: str = ""
    preprocess: dict[str, Any] = field(default_factory=dict)
    split_column: str = "split"
    fold: int | None = None
    val_frac: float = 0.2
    modalities: list[str] = field(default_factory=list)
    modality_weights: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainCfg:
    """One training run (see ``configs/*.yaml`` for examples).

    Attributes:
        task: a registered task name (``density``) or an inline task dict (``Task`` fields).
        model: a model registry name (``biomedclip``, ``tiny-clip``) or open_clip name.
        pretrained: ``None``, ``hf-hub:ORG/REPO``, ``local-dir:PATH`` or a weights file.
        model_kwargs: extra keyword arguments for ``create_model``.
        image_size: network input size; ``None`` keeps the model's; the cache is resized on the device.
        method: ``contrastive`` (weighted image-text contrastive fine-tuning), ``zeroshot`` (no
            training), ``linear-probe`` (frozen image tower + linear layer), ``finetune-ce`` (image tower
            + linear head, weighted cross-entropy), ``report-contrastive`` (exams ↔ their reports; batches
            of ``batch_size`` exams), or a method registered with ``train.methods.register_method``.
        class_weighting: ``inverse`` | ``effective`` | ``none`` class weights from the training labels.
        modality_weighting: ``fixed`` (``data.modality_weights`` as given) or ``adaptive`` (those weights
            times a factor that follows each modality's running loss, ``losses.AdaptiveModalityWeights``;
            contrastive method; logged per epoch as ``modality_weights``; docs/modality_weighting.md).
        adaptive_momentum: EMA momentum of the per-modality running loss (adaptive only).
        adaptive_power: exponent of the loss ratio: > 0 weighs the currently harder modality up, < 0 down.
        adaptive_min_weight: lower bound of an adaptive weight (before renormalisation).
        adaptive_max_weight: upper bound of an adaptive weight (before renormalisation).
        warmup_steps: linear warm-up optimizer steps; when 0, ``warmup_frac`` of all steps.
        min_lr: the cosine schedule's floor.
        precision: ``auto`` (bf16 autocast on CUDA when supported, fp32 otherwise), ``fp32``, ``bf16``.
        tf32: on CUDA, let fp32 matrix products / convolutions (everything outside bf16 autocast, or all of
            it with ``precision: fp32``) use TF32 tensor cores; ``false`` for strict fp32.
        augment: apply the GPU augmentation preset to training batches.
        patience: early stopping after this many epochs without a better validation macro AUC (0 = off).
        out_dir: the run directory.
        resume: ``True`` continues ``out_dir/checkpoints/last.pt``; a path continues that checkpoint/run.
        overwrite: allow starting afresh in an ``out_dir`` that already holds checkpoints.
        probe_steps: full-batch optimisation steps of the linear probe.
        max_steps_per_epoch: cap on batches per epoch (0 = no cap), for smoke runs.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``...
        ood: at the end, fit the training-embedding distribution for the out-of-distribution check and
            write it to ``out_dir/ood.npz`` (``models.ood``).
        ood_max_images: at most this many training images (evenly spaced) are embedded for that fit.
        report_column: ``report-contrastive``: the index column with each exam's report text.
        pooling: ``report-contrastive``: exam/breast embedding from its views, ``mean`` or ``attention``.
        prompt_weight: ``report-contrastive``: weight of the class-weighted prompt loss on the views (0 = off).
        local_weight: ``report-contrastive``: weight of the sentence ↔ patch loss (0 = off; needs a ViT).
        max_sentences: ``report-contrastive``: at most this many sentences per report.
    """

    data: DataCfg = field(default_factory=DataCfg)
    task: Union[str, dict[str, Any]] = "density"
    model: str = "biomedclip"
    pretrained: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    image_size: int | None = None
    method: str = "contrastive"
    class_weighting: str = "inverse"
    modality_weighting: str = "fixed"
    adaptive_momentum: float = 0.9
    adaptive_power: float = 1.0
    adaptive_min_weight: float = 0.2
    adaptive_max_weight: float = 5.0
    epochs: int = 10
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-5
    weight_decay: float = 0.1
    warmup_steps: int = 0
    warmup_frac: float = 0.05
    min_lr: float = 0.0
    precision: str = "auto"
    tf32: bool = True
    grad_checkpointing: bool = False
    compile: bool = False
    augment: bool = True
    workers: int = 4
    seed: int = 0
    patience: int = 0
    out_dir: str = "runs/run"
    resume: Union[bool, str] = False
    overwrite: bool = False
    probe_steps: int = 300
    max_steps_per_epoch: int = 0
    device: str = "auto"
    ood: bool = True
    ood_max_images: int = 2048
    report_column: str = "report"
    pooling: str = "mean"
    prompt_weight: float = 0.0
    local_weight: float = 1.0
    max_sentences: int = 32

    def __post_init__(self) -> None:
        if isinstance(self.data, dict):
            self.data = _from_dict(DataCfg, self.data, "data")
        from mammolens.train.methods import list_methods

        _check_choice("method", self.method, tuple(list_methods()))
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("class_weighting", self.class_weighting, CLASS_WEIGHTINGS)
        _check_choice("pooling", self.pooling, POOLINGS)
        _check_choice("modality_weighting", self.modality_weighting, MODALITY_WEIGHTINGS)
        for name in ("prompt_weight", "local_weight"):
            if not float(getattr(self, name)) >= 0:
                raise ValueError(f"TrainCfg.{name} must be >= 0 (0 turns the term off), got {getattr(self, name)}")
        for name in ("epochs", "batch_size", "grad_accum", "max_sentences"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainCfg.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.data.val_frac < 1.0:
            raise ValueError(f"data.val_frac must be in [0, 1), got {self.data.val_frac}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"TrainCfg.{name}={value!r} is not one of: {', '.join(choices)}")


def _from_dict(cls: type, d: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from ``d``; unknown keys raise a ValueError listing the valid ones."""
    if not isinstance(d, dict):
        raise ValueError(f"config section {where or cls.__name__!r} must be a mapping, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ValueError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
            f"valid keys{' in ' + where if where else ''}: {', '.join(sorted(names))}"
        )
    hints = get_type_hints(cls)
    kwargs = {}
    for key, value in d.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = _from_dict(hint, value, f"{where}.{key}" if where else key)
        kwargs[key] = _coerce(value, hint, f"{where}.{key}" if where else key)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Light type coercion for values coming from YAML/CLI (``"3"`` → 3 for an int field)."""
    if value is None or dataclasses.is_dataclass(value):
        return value
    if hint in (int, float) and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return hint(value)
        except ValueError:
            raise ValueError(f"config key {key} expects {hint.__name__}, got {value!r}") from None
    if hint is bool and not isinstance(value, bool):
        raise ValueError(f"config key {key} expects true/false, got {value!r}")
    origin = get_origin(hint)
    if origin is Union or str(origin) == "types.UnionType":
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return _coerce(value, args[0], key)
    if origin is list and isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = d
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            node[p] = nxt
        node = nxt
    node[parts[-1]] = value


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """``["a.b=3", "lr=1e-4"]`` → nested dict; values are parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value (e.g. epochs=5 or data.fold=1)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ValueError(f"override {item!r} has an empty key")
        value = yaml.safe_load(raw) if raw.strip() else ""
        _set_dotted(out, key, value)
    return out


def _merge(base: dict[str, Any], upd: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("task",):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def cfg_from_dict(d: dict[str, Any], overrides: list[str] | None = None) -> TrainCfg:
    """Build a ``TrainCfg`` from a plain dict plus ``key=value`` overrides."""
    return _from_dict(TrainCfg, _merge(d or {}, parse_overrides(overrides)))


def load_cfg(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> TrainCfg:
    """Read a YAML config (or start from defaults when ``path`` is None) and apply overrides.

    Raises:
        FileNotFoundError: the YAML file does not exist.
        ValueError: unknown keys (the message lists the valid ones) or invalid values.
    """
    d: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file {p} does not exist; see configs/*.yaml for examples")
        try:
            d = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"config file {p} is not valid YAML: {e}") from None
        if not isinstance(d, dict):
            raise ValueError(f"config file {p} must hold a mapping of keys, got {type(d).__name__}")
    return cfg_from_dict(d, overrides)


def save_cfg(cfg: TrainCfg, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML (``load_cfg`` reads it back to an equal ``TrainCfg``)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return p
