"""`TrainCfg`: every knob of a training run, filled from YAML and ``key=value`` overrides.

YAML and CLI flags only fill the dataclasses; the resolved config is written next to each run's outputs
(``config.yaml``) so the run can be rebuilt and resumed exactly.

The training method's settings live in one ``method:`` section (``MethodCfg``): its name, its named and
weighted loss terms (each ``TrainMethod`` declares its own, with defaults, in ``terms``), and the settings
only methods read (pooling, sentences per report, modality weighting). ``method: contrastive`` (a plain
name) is short for ``method: {name: contrastive}``. The flat keys of earlier versions (``prompt_weight``,
``local_weight``, ``pooling``, ``max_sentences``, ``modality_weighting``, ``adaptive_*``,
``report_column``) still load, with a deprecation message naming the new key (``LEGACY_KEYS``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

log = logging.getLogger(__name__)

POOLINGS = ("mean", "attention")  # models.pooling (not imported here: it needs torch)
PRECISIONS = ("auto", "fp32", "bf16")
CLASS_WEIGHTINGS = ("inverse", "effective", "none")
MODALITY_WEIGHTINGS = ("fixed", "adaptive")

# flat keys of earlier versions -> where they live now (they still load, with a deprecation message)
LEGACY_KEYS = {
    "prompt_weight": "method.terms.prompt",
    "local_weight": "method.terms.sentence_patch",
    "pooling": "method.pooling",
    "max_sentences": "method.max_sentences",
    "modality_weighting": "method.modality_weighting.mode",
    "adaptive_momentum": "method.modality_weighting.momentum",
    "adaptive_power": "method.modality_weighting.power",
    "adaptive_min_weight": "method.modality_weighting.min_weight",
    "adaptive_max_weight": "method.modality_weighting.max_weight",
    "report_column": "data.report_column",
}


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
        report_column: the index column with each exam's report text (``report-contrastive``).
    """

    cache: str = ""
    manifest: str = ""
    preprocess: dict[str, Any] = field(default_factory=dict)
    split_column: str = "split"
    fold: int | None = None
    val_frac: float = 0.2
    modalities: list[str] = field(default_factory=list)
    modality_weights: dict[str, float] = field(default_factory=dict)
    report_column: str = "report"


@dataclass
class ModalityWeightingCfg:
    """How the modality weights evolve during training (``method.modality_weighting``; docs/modality_weighting.md).

    Attributes:
        mode: ``fixed`` (``data.modality_weights`` as given) or ``adaptive`` (those weights times a factor
            that follows each modality's running loss, ``losses.AdaptiveModalityWeights``; contrastive
            method; logged per epoch as ``modality_weights``). A plain ``adaptive`` is short for
            ``{mode: adaptive}``.
        momentum: EMA momentum of the per-modality running loss (adaptive only).
        power: exponent of the loss ratio: > 0 weighs the currently harder modality up, < 0 down.
        min_weight: lower bound of an adaptive weight (before renormalisation).
        max_weight: upper bound of an adaptive weight (before renormalisation).
    """

    mode: str = "fixed"
    momentum: float = 0.9
    power: float = 1.0
    min_weight: float = 0.2
    max_weight: float = 5.0


@dataclass
class PretrainCfg:
    """``method.pretrain``: self-supervised pretraining of the image tower (``pretrain``; docs/pretraining.md).
    Labels are ignored, except for the monitoring probe.

    Attributes:
        out_dim: prototypes of the DINO (image) head; ``patch_out_dim`` those of the iBOT (patch) head.
        hidden_dim: width of the heads' MLP; ``bottleneck_dim`` the last layer's input.
        student_temp: student softmax temperature; ``teacher_temp`` the teacher's after warm-up, starting
            from ``warmup_teacher_temp`` over the first ``teacher_temp_warmup`` fraction of the steps.
        momentum: EMA momentum of the teacher at the start (cosine schedule to 1 at the end).
        centering: ``sinkhorn`` (Sinkhorn-Knopp, DINOv2) or ``mean`` (a running centre, DINO; lightly's losses).
        center_momentum: momentum of the running centres (``mean``); ``sinkhorn_iters`` the SK iterations.
        global_crops, global_scale: crops of the whole breast (fraction of the breast's bounding box area),
            at the model's input size.
        local_crops, local_scale, local_size: smaller crops inside the breast (``local_size`` None: the
            model's input size, for towers whose position embedding has a fixed grid).
        min_tissue: a crop holds at least this fraction of breast tissue (``transforms.breast.breast_mask``).
        mask_ratio: iBOT: the fraction of a global crop's patches masked for the student, ``[lo, hi]``;
            ``mask_prob`` the fraction of global crops that are masked at all.
        brightness, contrast, gamma, blur_p, noise: intensity augmentations of every crop (kept in [0, 1]).
        probe_max_images: at most this many labelled training images for the per-epoch probes (0: none).
        knn_k: neighbours of the kNN probe.
    """

    out_dim: int = 4096
    patch_out_dim: int = 4096
    hidden_dim: int = 1024
    bottleneck_dim: int = 256
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    teacher_temp_warmup: float = 0.3
    momentum: float = 0.994
    centering: str = "sinkhorn"
    center_momentum: float = 0.9
    sinkhorn_iters: int = 3
    global_crops: int = 2
    global_scale: list[float] = field(default_factory=lambda: [0.95, 1.0])
    local_crops: int = 4
    local_scale: list[float] = field(default_factory=lambda: [0.2, 0.6])
    local_size: int | None = None
    min_tissue: float = 0.3
    mask_ratio: list[float] = field(default_factory=lambda: [0.1, 0.5])
    mask_prob: float = 0.5
    brightness: float = 0.1
    contrast: float = 0.2
    gamma: float = 0.2
    blur_p: float = 0.3
    noise: float = 0.0
    probe_max_images: int = 1024
    knn_k: int = 10

    def __post_init__(self) -> None:
        self.global_scale, self.local_scale, self.mask_ratio = (
            [float(v) for v in x] for x in (self.global_scale, self.local_scale, self.mask_ratio))
        _check_choice("method.pretrain.centering", self.centering, ("sinkhorn", "mean"))
        for name in ("global_scale", "local_scale", "mask_ratio"):
            lo, hi = getattr(self, name) if len(getattr(self, name)) == 2 else (-1.0, -1.0)
            if not 0.0 <= lo <= hi <= 1.0 or (name != "mask_ratio" and lo <= 0):
                raise ValueError(f"TrainCfg.method.pretrain.{name} must be [lo, hi] with 0 < lo <= hi <= 1, "
                                 f"got {list(getattr(self, name))}")
        if int(self.global_crops) < 1 or int(self.local_crops) < 0 or int(self.global_crops) + int(self.local_crops) < 2:
            raise ValueError("TrainCfg.method.pretrain needs global_crops >= 1 and at least two crops in all "
                             f"(got {self.global_crops} global, {self.local_crops} local)")
        if not 0.0 <= self.min_tissue < 1.0:
            raise ValueError(f"TrainCfg.method.pretrain.min_tissue must be in [0, 1), got {self.min_tissue}")
        if not 0.0 < self.momentum <= 1.0:
            raise ValueError(f"TrainCfg.method.pretrain.momentum must be in (0, 1], got {self.momentum}")


@dataclass
class DistillCfg:
    """``method.distill``: a student trained on several tasks plus distillation from a frozen teacher run
    (``distill``; docs/pretraining.md).

    Attributes:
        teacher: the teacher run (``run:PATH`` or a run folder); empty when every distillation term weighs 0.
        teacher_which: its checkpoint (``best``, ``last``).
        tasks: more tasks beside ``task`` (the primary head), each a head of its own; a row without a task's
            label is left out of that task's loss only.
        class_weighting: per task, ``inverse`` | ``effective`` | ``none`` (default ``TrainCfg.class_weighting``).
        temperature: of the batch similarity-matrix KL.
        label_fraction: keep the labels of this fraction of the training patients (seeded; the others are
            unlabelled and only distilled): label-efficiency studies.
        cache_teacher: teacher features computed once into the teacher's feature cache
            (``pipeline.features.cache_features``); otherwise a teacher forward pass every step.
    """

    teacher: str = ""
    teacher_which: str = "best"
    tasks: list[str] = field(default_factory=list)
    class_weighting: dict[str, str] = field(default_factory=dict)
    temperature: float = 0.1
    label_fraction: float = 1.0
    cache_teacher: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.label_fraction) <= 1.0:
            raise ValueError(f"TrainCfg.method.distill.label_fraction must be in [0, 1], got {self.label_fraction}")
        for task, how in self.class_weighting.items():
            _check_choice(f"method.distill.class_weighting.{task}", how, CLASS_WEIGHTINGS)
        if float(self.temperature) <= 0:
            raise ValueError(f"TrainCfg.method.distill.temperature must be > 0, got {self.temperature}")


@dataclass
class MethodCfg:
    """The ``method:`` section without its name: loss terms and the settings methods read.

    Attributes:
        terms: weight of each named loss term of the method (``{"prompt": 0.5}``); the method's own
            ``TrainMethod.terms`` give the names and the defaults of those not set. A term of weight 0 is
            not computed. Unknown names are an error that lists the method's terms.
        pooling: ``report-contrastive``: exam/breast embedding from its views, ``mean`` or ``attention``.
        max_sentences: ``report-contrastive``: at most this many sentences per report.
        modality_weighting: ``ModalityWeightingCfg`` (``fixed`` or ``adaptive`` and the adaptive rule's knobs).
        pretrain: ``PretrainCfg`` (``pretrain``: heads, temperatures, crops, masking).
        distill: ``DistillCfg`` (``distill``: teacher run, extra tasks, per-task class weighting).
    """

    terms: dict[str, float] = field(default_factory=dict)
    pooling: str = "mean"
    max_sentences: int = 32
    modality_weighting: ModalityWeightingCfg = field(default_factory=ModalityWeightingCfg)
    pretrain: PretrainCfg = field(default_factory=PretrainCfg)
    distill: DistillCfg = field(default_factory=DistillCfg)

    def __post_init__(self) -> None:
        if isinstance(self.pretrain, dict):
            self.pretrain = _from_dict(PretrainCfg, self.pretrain, "method.pretrain")
        if isinstance(self.distill, dict):
            self.distill = _from_dict(DistillCfg, self.distill, "method.distill")
        if isinstance(self.modality_weighting, str):
            self.modality_weighting = ModalityWeightingCfg(mode=self.modality_weighting)
        elif isinstance(self.modality_weighting, dict):
            self.modality_weighting = _from_dict(ModalityWeightingCfg, self.modality_weighting,
                                                 "method.modality_weighting")
        _check_choice("method.pooling", self.pooling, POOLINGS)
        _check_choice("method.modality_weighting.mode", self.modality_weighting.mode, MODALITY_WEIGHTINGS)
        if int(self.max_sentences) < 1:
            raise ValueError(f"TrainCfg.method.max_sentences must be >= 1, got {self.max_sentences}")


@dataclass
class TrainCfg:
    """One training run (see ``configs/*.yaml`` for examples).

    Attributes:
        task: a registered task name (``density``) or an inline task dict (``Task`` fields).
        model: a model registry name (``biomedclip``, ``tiny-clip``) or open_clip name.
        pretrained: ``None``, ``hf-hub:ORG/REPO``, ``local-dir:PATH`` or a weights file.
        model_kwargs: extra keyword arguments for ``create_model``.
        image_size: network input size; ``None`` keeps the model's; the cache is resized on the device.
        method: the method's name: ``contrastive`` (weighted image-text contrastive fine-tuning),
            ``zeroshot`` (no training), ``linear-probe`` (frozen image tower + linear layer), ``finetune-ce``
            (image tower + linear head, weighted cross-entropy), ``report-contrastive`` (exams ↔ their
            reports; batches of ``batch_size`` exams), or a method registered with
            ``train.methods.register_method``. In YAML and ``to_dict`` it is the ``name`` of the ``method:``
            section, whose other keys fill ``method_cfg``.
        method_cfg: the rest of the ``method:`` section (``MethodCfg``: terms, pooling...). The name stays a
            plain string in ``method`` (not inside ``MethodCfg``) so that ``cfg.method == "contrastive"``,
            ``get_method(cfg.method)`` and the checkpoint's and summary's ``method`` keep working unchanged;
            only the dict form (YAML, ``config.yaml``) nests it, and Python callers may pass that form too
            (``TrainCfg(method={"name": "report-contrastive", "terms": {"prompt": 0.5}})``).
        class_weighting: ``inverse`` | ``effective`` | ``none`` class weights from the training labels.
        warmup_steps: linear warm-up optimizer steps; when 0, ``warmup_frac`` of all steps.
        min_lr: the cosine schedule's floor.
        precision: ``auto`` (bf16 autocast on CUDA when supported, fp32 otherwise), ``fp32``, ``bf16``.
        tf32: on CUDA, let fp32 matrix products / convolutions (everything outside bf16 autocast, or all of
            it with ``precision: fp32``) use TF32 tensor cores; ``false`` for strict fp32.
        augment: apply the GPU augmentation preset to training batches.
        patience: early stopping after this many epochs without a better validation macro AUC (0 = off).
        val_every: validate (and so choose ``best.pt``) after every ``val_every``-th epoch and the last one
            (1 = every epoch; patience then counts validations).
        out_dir: the run directory.
        resume: ``True`` continues ``out_dir/checkpoints/last.pt``; a path continues that checkpoint/run.
        overwrite: allow starting afresh in an ``out_dir`` that already holds checkpoints.
        probe_steps: full-batch optimisation steps of the linear probe.
        max_steps_per_epoch: cap on batches per epoch (0 = no cap), for smoke runs.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``...
        ood: at the end, fit the training-embedding distribution for the out-of-distribution check and
            write it to ``out_dir/ood.npz`` (``models.ood``).
        ood_max_images: at most this many training images (evenly spaced) are embedded for that fit.
    """

    data: DataCfg = field(default_factory=DataCfg)
    task: str | dict[str, Any] = "density"
    model: str = "biomedclip"
    pretrained: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    image_size: int | None = None
    method: str = "contrastive"
    method_cfg: MethodCfg = field(default_factory=MethodCfg)
    class_weighting: str = "inverse"
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
    val_every: int = 1
    out_dir: str = "runs/run"
    resume: bool | str = False
    overwrite: bool = False
    probe_steps: int = 300
    max_steps_per_epoch: int = 0
    device: str = "auto"
    ood: bool = True
    ood_max_images: int = 2048

    def __post_init__(self) -> None:
        if isinstance(self.data, dict):
            self.data = _from_dict(DataCfg, self.data, "data")
        if isinstance(self.method, dict):  # the YAML form: {name: ..., terms: ..., ...}
            section = _method_section(self.method, "method")
            if self.method_cfg != MethodCfg() and len(section) > 1:
                raise ValueError("TrainCfg got method settings twice (in method and in method_cfg); give them once")
            self.method = section.pop("name", "contrastive")
            if section:
                self.method_cfg = section
        if isinstance(self.method_cfg, dict):
            self.method_cfg = _from_dict(MethodCfg, self.method_cfg, "method")
        from mammolens.train.methods import list_methods

        _check_choice("method", self.method, tuple(list_methods()))
        self.method_cfg.terms = resolve_terms(self.method, self.method_cfg.terms)
        _check_adaptive(self.method, self.method_cfg.modality_weighting.mode)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("class_weighting", self.class_weighting, CLASS_WEIGHTINGS)
        for name in ("epochs", "batch_size", "grad_accum"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainCfg.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.data.val_frac < 1.0:
            raise ValueError(f"data.val_frac must be in [0, 1), got {self.data.val_frac}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data in the YAML form: the ``method:`` section holds the name, the terms and the settings."""
        out = {}
        for key, value in dataclasses.asdict(self).items():
            if key == "method":
                section = dataclasses.asdict(self.method_cfg)
                for name, default in (("pretrain", PretrainCfg()), ("distill", DistillCfg())):
                    if value != name and section[name] == dataclasses.asdict(default):
                        del section[name]  # other methods' config.yaml (and config hash) stay as they were
                out["method"] = {"name": value, **section}
            elif key != "method_cfg":
                out[key] = value
        return out


def resolve_terms(method: str, terms: dict[str, Any]) -> dict[str, float]:
    """The weights of ``method``'s loss terms: ``terms`` over the method's defaults (``TrainMethod.terms``),
    in the method's order.

    Raises:
        ValueError: a name the method does not declare (the message lists its terms), a weight that is
            not a number >= 0, or every weight 0.
    """
    from mammolens.train.methods import get_method

    declared = dict(getattr(get_method(method), "terms", None) or {})
    unknown = sorted(set(terms or {}) - set(declared))
    if unknown:
        valid = ", ".join(declared) if declared else "none (it has no weighted loss terms)"
        raise ValueError(f"unknown loss term(s) {', '.join('method.terms.' + k for k in unknown)} for method "
                         f"{method!r}; its terms: {valid}")
    out = {}
    for name, default in declared.items():
        value = (terms or {}).get(name, default)
        try:
            weight = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"method.terms.{name} expects a number, got {value!r}") from None
        if not weight >= 0:
            raise ValueError(f"TrainCfg.method.terms.{name} must be >= 0 (0 turns the term off), got {value}")
        out[name] = weight
    if out and not any(w > 0 for w in out.values()):
        raise ValueError(f"every loss term of method {method!r} weighs 0 ({', '.join(out)}); give one a weight > 0")
    return out


def _check_adaptive(method: str, mode: str) -> None:
    """``modality_weighting: adaptive`` only where the method updates the weights (``TrainMethod`` attribute
    ``adaptive_modality_weighting``); elsewhere it would be silently ignored."""
    if mode != "adaptive":
        return
    from mammolens.train.methods import get_method, list_methods

    takes = [m for m in list_methods() if getattr(get_method(m), "adaptive_modality_weighting", False)]
    if method not in takes:
        raise ValueError(f"method.modality_weighting: adaptive is not supported by method {method!r}; the methods "
                         f"that take it: {', '.join(takes) or 'none'} (use mode: fixed, or one of those methods)")


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


def _method_section(value: Any, where: str) -> dict[str, Any]:
    """``method:`` as given (a name or a mapping) -> a new mapping (``{"name": ...}`` for a plain name)."""
    if isinstance(value, str):
        return {"name": value}
    if not isinstance(value, dict):
        raise ValueError(f"{where}: method must be a method name or a mapping (name, terms, ...), "
                         f"got {type(value).__name__}")
    section = dict(value)
    valid = {"name"} | {f.name for f in dataclasses.fields(MethodCfg)}
    unknown = sorted(set(section) - valid)
    if unknown:
        raise ValueError(f"unknown config key(s) {', '.join('method.' + k for k in unknown)}; "
                         f"valid keys in method: {', '.join(sorted(valid))}")
    if isinstance(section.get("terms"), dict):
        section["terms"] = dict(section["terms"])
    if isinstance(section.get("modality_weighting"), str):
        section["modality_weighting"] = {"mode": section["modality_weighting"]}
    elif isinstance(section.get("modality_weighting"), dict):
        section["modality_weighting"] = dict(section["modality_weighting"])
    return section


def _method_name(d: dict[str, Any]) -> str | None:
    m = d.get("method")
    return m if isinstance(m, str) else m.get("name") if isinstance(m, dict) else None


def _upgrade(d: dict[str, Any], method: str, where: str) -> dict[str, Any]:
    """A copy of the config dict ``d`` in the current form: ``method`` as a mapping, and the flat keys of
    earlier versions (``LEGACY_KEYS``) moved to their new place with one deprecation message naming the
    new keys. A term of a method other than ``method`` (``prompt_weight`` in an old contrastive run's
    config.yaml) is dropped, as it was ignored then."""
    if "method_cfg" in d:
        raise ValueError(f"{where}: write the method settings in the method: section (method.terms, "
                         "method.pooling...), not method_cfg")
    d = dict(d)
    if "method" in d:
        d["method"] = _method_section(d["method"], where)
    moved = []
    for old, new in LEGACY_KEYS.items():
        if old not in d:
            continue
        value = d.pop(old)
        *parents, leaf = new.split(".")
        if parents == ["method", "terms"]:
            from mammolens.train.methods import get_method

            if leaf not in (getattr(get_method(method), "terms", None) or {}):
                moved.append(f"{old} -> {new} (ignored: method {method} has no {leaf} term)")
                continue
        node = d
        for p in parents:
            node[p] = dict(node[p]) if isinstance(node.get(p), dict) else {}
            node = node[p]
        if leaf in node:
            raise ValueError(f"{where}: both {old} (old name) and {new} are set; keep only {new}")
        node[leaf] = value
        moved.append(f"{old} -> {new}")
    if moved:
        msg = f"deprecated config key(s) in {where}: {'; '.join(moved)}. Write the new keys (docs/training.md)"
        warnings.warn(msg, DeprecationWarning, stacklevel=3)
        log.warning(msg)
    return d


def _merge(base: dict[str, Any], upd: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("task",):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def cfg_from_dict(d: dict[str, Any], overrides: list[str] | None = None, *, source: str = "the config") -> TrainCfg:
    """Build a ``TrainCfg`` from a plain dict plus ``key=value`` overrides.

    The dict is in the YAML form (``method:`` a name or a section); old flat keys are moved to their new
    place with a deprecation message (``LEGACY_KEYS``). Overrides merge key by key
    (``method.terms.prompt=0.5`` keeps the file's other terms); an override that changes the method's name
    drops the file's ``method.terms`` (they name the other method's losses) and keeps its other settings.
    ``source`` names the dict in messages (a file's path).
    """
    d, upd = d or {}, parse_overrides(overrides)
    method = _method_name(upd) or _method_name(d) or TrainCfg.method
    d, upd = _upgrade(d, method, source), _upgrade(upd, method, "the --set overrides")
    if "method" in d and "method" in upd and _method_name(upd) not in (None, _method_name(d) or TrainCfg.method):
        d["method"] = {k: v for k, v in d["method"].items() if k != "terms"}
    merged = _merge(d, upd)
    section = merged.pop("method", None)
    if section is not None:
        if "name" in section:
            merged["method"] = section.pop("name")
        merged["method_cfg"] = _from_dict(MethodCfg, section, "method")
    return _from_dict(TrainCfg, merged)


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
    return cfg_from_dict(d, overrides, source=f"config file {path}" if path is not None else "the config")


def save_cfg(cfg: TrainCfg, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML in the current form (``load_cfg`` reads it back to an equal ``TrainCfg``)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return p


def load_run(run_dir: str | os.PathLike, device: str = "cpu", which: str = "best"):
    """``models.run.load_run`` (the one run loader) with the run's config as a ``TrainCfg``.

    Returns:
        the ``LoadedRun``; its ``cfg`` is the ``TrainCfg`` (from the checkpoint, or the run's
        ``config.yaml`` for a checkpoint without one). Unpacks as ``model, task, cfg = load_run(...)``.
    """
    from mammolens.models.run import load_run as load

    run = load(run_dir, device=device, which=which)
    cfg = cfg_from_dict(run.cfg, source=f"run {run_dir}") if run.cfg else load_cfg(Path(run_dir) / "config.yaml")
    return dataclasses.replace(run, cfg=cfg)
