"""Tasks as data: a label column, class names, the manifest values of each class and prompt templates.

A task is all the training, evaluation and prediction code needs to know about a labelling problem, so
a new task needs no code change: write it as a YAML/JSON file and pass its path wherever a task name
is accepted (``get_task("my_task.yaml")``), or call ``register_task(Task.from_dict(...))``.

Example YAML::

    name: calcification
    label_column: calc
    class_names: [absent, present]
    class_values: [[no, "0"], [yes, "1"]]     # manifest values of each class (case-insensitive)
    descriptions: [no calcifications, calcifications]
    templates: ["a mammogram with {}", "mammography showing {}"]

Templates use ``{}`` (or ``{description}``) for the class description and ``{name}`` for the class
name, so ``"breast density category {name}"`` yields ``"breast density category C"``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from mammolens.constants import DENSITY_CLASSES, DENSITY_DESCRIPTIONS

__all__ = ["Task", "get_task", "list_tasks", "register_task", "load_task", "dense_classes_of", "legacy_dense_classes"]


def legacy_dense_classes(class_names: Iterable[str]) -> tuple[str, ...]:
    """The rule used before ``Task.dense_classes`` existed: BI-RADS ``C`` and ``D`` when both are classes,
    else a class named ``dense``, else none."""
    names = [str(c) for c in class_names]
    if {"C", "D"} <= set(names):
        return ("C", "D")
    return ("dense",) if "dense" in names else ()


def _norm_value(value: Any) -> str | None:
    """Normalise one manifest value for matching: stripped, upper-case; None for missing."""
    if value is None:
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():  # 1.0 read from CSV/Parquet matches class value "1"
            value = int(value)
    try:
        import pandas as pd

        if value is pd.NA or value is pd.NaT:
            return None
    except ImportError:  # pragma: no cover - pandas is a core dependency
        pass
    text = str(value).strip().upper()
    return text or None


@dataclass(frozen=True)
class Task:
    """A classification task over one manifest column.

    Attributes:
        name: Registry name (``density``).
        label_column: Manifest column that holds the labels.
        class_names: Short class names, in class-index order (``A``, ``B``...).
        class_values: For each class, the manifest values that mean this class (case-insensitive);
            defaults to the class name alone.
        templates: Prompt templates; ``{}``/``{description}`` is the class description, ``{name}`` the
            class name.
        descriptions: One text per class for the prompts; defaults to the class names.
        description: Free text shown in reports.
        dense_classes: the classes that count as "dense": the ``dense`` flag of an image, breast or exam is
            "its reported class ``pred`` is one of them" (:meth:`dense_flag`; docs/outputs.md), and the
            dense-vs-non-dense metrics score their summed probability; ``()`` for a task
            without that notion. Left out (None): the registered task of the same name and classes
            supplies it (a task stored by an older mammolens), else ``legacy_dense_classes``.
    """

    name: str
    label_column: str
    class_names: tuple[str, ...]
    class_values: tuple[tuple[str, ...], ...] = ()
    templates: tuple[str, ...] = ("{}",)
    descriptions: tuple[str, ...] = ()
    description: str = ""
    dense_classes: tuple[str, ...] | None = None
    _lookup: dict = field(default=None, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self):
        set_ = object.__setattr__  # frozen dataclass: normalise the fields once, here
        names = tuple(str(c) for c in self.class_names)
        if len(names) < 2:
            raise ValueError(f"task {self.name!r}: needs at least 2 classes, got {list(names)}")
        if len(set(names)) != len(names):
            raise ValueError(f"task {self.name!r}: class_names must be unique, got {list(names)}")
        set_(self, "class_names", names)
        values = self.class_values or tuple((n,) for n in names)
        values = tuple((v,) if isinstance(v, str) else tuple(str(x) for x in v) for v in values)
        if len(values) != len(names):
            raise ValueError(
                f"task {self.name!r}: class_values has {len(values)} entries but there are "
                f"{len(names)} classes {list(names)}; give one list of manifest values per class"
            )
        set_(self, "class_values", values)
        templates = (self.templates,) if isinstance(self.templates, str) else tuple(self.templates)
        if not templates:
            raise ValueError(f"task {self.name!r}: templates is empty; give at least one, e.g. 'a mammogram of {{}}'")
        for t in templates:
            if "{}" not in t and "{description}" not in t and "{name}" not in t:
                raise ValueError(
                    f"task {self.name!r}: template {t!r} has no placeholder; use {{}} (description) or {{name}}"
                )
        set_(self, "templates", templates)
        descriptions = tuple(str(d) for d in (self.descriptions or names))
        if len(descriptions) != len(names):
            raise ValueError(
                f"task {self.name!r}: {len(descriptions)} descriptions for {len(names)} classes {list(names)}"
            )
        set_(self, "descriptions", descriptions)
        dense = self.dense_classes
        if dense is None:
            known = _TASKS.get(self.name)
            dense = known.dense_classes if known is not None and known.class_names == names else legacy_dense_classes(names)
        dense = (dense,) if isinstance(dense, str) else tuple(str(c) for c in dense)
        unknown = [c for c in dense if c not in names]
        if unknown:
            raise ValueError(f"task {self.name!r}: dense_classes {unknown} are not among its classes {list(names)}")
        set_(self, "dense_classes", dense)
        lookup: dict[str, int] = {}
        for k, vals in enumerate(values):
            for v in vals:
                key = _norm_value(v)
                if key is None:
                    raise ValueError(f"task {self.name!r}: class {names[k]!r} has an empty class value")
                if key in lookup and lookup[key] != k:
                    raise ValueError(
                        f"task {self.name!r}: value {v!r} is listed for both {names[lookup[key]]!r} and {names[k]!r}"
                    )
                lookup[key] = k
        set_(self, "_lookup", lookup)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def encode(self, values: Iterable[Any], strict: bool = False) -> np.ndarray:
        """Map manifest values to class indices.

        Args:
            values: A pandas Series (or any iterable) of manifest values.
            strict: Raise on values that belong to no class instead of mapping them to -1.

        Returns:
            int64 array; -1 where the value is missing or (unless ``strict``) unknown.
        """
        items = list(values)
        out = np.full(len(items), -1, dtype=np.int64)
        unknown: set[str] = set()
        for i, v in enumerate(items):
            key = _norm_value(v)
            if key is None:
                continue
            k = self._lookup.get(key)
            if k is None:
                unknown.add(str(v))
            else:
                out[i] = k
        if strict and unknown:
            raise ValueError(
                f"task {self.name!r}: column {self.label_column!r} has values {sorted(unknown)[:10]} that belong "
                f"to no class; expected one of {sorted(self._lookup)} (or empty for unlabelled)"
            )
        return out

    def decode(self, indices: Iterable[int]) -> list[str]:
        """Class names for class indices ("" for -1)."""
        return [self.class_names[int(i)] if int(i) >= 0 else "" for i in indices]

    def prompts(self) -> list[list[str]]:
        """Prompt texts, K classes × T templates."""
        return [
            [t.format(d, description=d, name=n) for t in self.templates]
            for n, d in zip(self.class_names, self.descriptions)
        ]

    def dense_flag(self, pred: Any) -> bool | None:
        """The one dense rule: ``True`` when the reported class ``pred`` is one of ``dense_classes``.

        ``dense`` is derived from ``pred`` (never from a separate probability threshold), so an output can
        not say "Heterogeneously dense" and "Dense: No". None for a task without dense classes, or when
        there is no prediction (a not-assessable image).
        """
        if not self.dense_classes or pred is None or (isinstance(pred, float) and math.isnan(pred)):
            return None
        return str(pred) in self.dense_classes

    def dense_words(self) -> tuple[str, str] | None:
        """The labels of the dense flag, built from the task's classes: ``("Dense (C/D)", "Not dense (A/B)")``
        for ``density``; None for a task without dense classes (no dense wording is shown)."""
        if not self.dense_classes:
            return None
        rest = [c for c in self.class_names if c not in self.dense_classes]
        if not rest:
            return None
        return f"Dense ({'/'.join(self.dense_classes)})", f"Not dense ({'/'.join(rest)})"

    def describe(self, cls: Any) -> str:
        """The description of class ``cls`` ("" for a name that is no class of this task)."""
        names = list(self.class_names)
        return self.descriptions[names.index(str(cls))] if str(cls) in names else ""

    def wording(self) -> dict[str, Any]:
        """Everything a surface (web page, SR, reports) shows about the task, as plain data: ``task``,
        ``title`` (the description, else the name), ``classes``, ``descriptions`` (class → text),
        ``dense_classes`` and ``dense_label``/``non_dense_label`` (None without a dense rule)."""
        words = self.dense_words()
        return {"task": self.name, "title": self.description or self.name, "classes": list(self.class_names),
                "descriptions": dict(zip(self.class_names, self.descriptions)),
                "dense_classes": list(self.dense_classes),
                "dense_label": words[0] if words else None, "non_dense_label": words[1] if words else None}

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("_lookup", None)
        return {k: list(map(list, v)) if k == "class_values" else (list(v) if isinstance(v, tuple) else v)
                for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Task:
        """Build a task from a plain dict (YAML/JSON); unknown keys raise ValueError."""
        known = {"name", "label_column", "class_names", "class_values", "templates", "descriptions", "description",
                 "dense_classes"}
        extra = set(d) - known
        if extra:
            raise ValueError(f"unknown task field(s) {sorted(extra)}; allowed: {sorted(known)}")
        missing = [k for k in ("name", "label_column", "class_names") if k not in d]
        if missing:
            raise ValueError(f"task definition is missing {missing}; required: name, label_column, class_names")
        kw = dict(d)
        for key in ("class_names", "templates", "descriptions", "dense_classes"):
            if key in kw and kw[key] is not None and not isinstance(kw[key], str):
                kw[key] = tuple(kw[key])
        if kw.get("class_values") is not None:
            kw["class_values"] = tuple(
                (v,) if isinstance(v, (str, int, float)) else tuple(v) for v in kw["class_values"]
            )
        return cls(**{k: v for k, v in kw.items() if v is not None})


_TASKS: dict[str, Task] = {}


def register_task(task: Task | Mapping[str, Any], overwrite: bool = False) -> Task:
    """Add a task to the registry (a Task or its dict form) and return it."""
    if not isinstance(task, Task):
        task = Task.from_dict(task)
    if task.name in _TASKS and not overwrite and _TASKS[task.name] != task:
        raise ValueError(f"task {task.name!r} is already registered; pass overwrite=True to replace it")
    _TASKS[task.name] = task
    return task


def load_task(path: str | PathLike) -> Task:
    """Read a task definition from a YAML or JSON file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if not isinstance(data, Mapping):
        raise ValueError(f"task file {path}: expected a mapping with name, label_column, class_names, ...")
    try:
        return Task.from_dict(data)
    except (TypeError, ValueError) as e:
        raise ValueError(f"task file {path}: {e}") from e


def get_task(task: str | PathLike | Task | Mapping[str, Any]) -> Task:
    """Resolve a task from a registered name, a YAML/JSON path, a dict or a Task."""
    if isinstance(task, Task):
        return task
    if isinstance(task, Mapping):
        return Task.from_dict(task)
    name = str(task)
    if name in _TASKS:
        return _TASKS[name]
    if Path(name).suffix.lower() in (".yaml", ".yml", ".json"):
        return load_task(name)
    raise ValueError(f"unknown task {name!r}; registered tasks: {list_tasks()} (or give a path to a task YAML file)")


def resolve_task(task: Any) -> Task:
    """A ``Task`` from a registered name (or task file), an inline dict (``Task`` fields) or a ``Task``."""
    if isinstance(task, str):
        return get_task(task)
    if isinstance(task, Mapping):
        try:
            return Task(**task)
        except TypeError as e:
            raise ValueError(f"inline task {task!r} is not a valid Task ({e})") from None
    return task


def task_dict(task: Task) -> dict[str, Any]:
    """``Task`` → plain dict of its init fields (tuples → lists), enough to rebuild it with ``resolve_task``
    (what a checkpoint stores)."""
    from dataclasses import fields

    def plain(v):
        return [plain(x) for x in v] if isinstance(v, (tuple, list)) else v

    return {f.name: plain(getattr(task, f.name)) for f in fields(task) if f.init}


def dense_classes_of(task: Any) -> tuple[str, ...]:
    """A task's ``dense_classes``; for an object without the field (a stand-in task), ``legacy_dense_classes``
    of its class names."""
    dense = getattr(task, "dense_classes", None)
    return tuple(dense) if dense is not None else legacy_dense_classes(getattr(task, "class_names", ()))


def list_tasks() -> list[str]:
    return sorted(_TASKS)


# ----------------------------------------------------------------------------------------- built-ins
register_task(Task(
    name="density",
    label_column="density",
    class_names=DENSITY_CLASSES,
    descriptions=tuple(DENSITY_DESCRIPTIONS[c] for c in DENSITY_CLASSES),
    templates=(
        "a mammogram showing {} breast tissue",
        "breast composition: {}",
        "BI-RADS breast density category {name}: {}",
        "breast density category {name}",
    ),
    description="BI-RADS breast composition A-D (5th edition)",
    dense_classes=("C", "D"),
))
register_task(Task(
    name="dense",
    label_column="density",
    class_names=("non-dense", "dense"),
    class_values=(("A", "B"), ("C", "D")),
    descriptions=("non-dense, fatty or scattered fibroglandular", "dense, heterogeneously or extremely dense"),
    templates=("a mammogram showing {} breast tissue", "the breasts are {}", "{name} breasts"),
    description="dense (BI-RADS C/D) vs non-dense (A/B)",
    dense_classes=("dense",),
))
register_task(Task(
    name="mias",
    label_column="mias_density",
    class_names=("F", "G", "D"),
    descriptions=("fatty", "fatty-glandular", "dense-glandular"),
    templates=("a mammogram showing {} breast tissue", "{} breast", "MIAS background tissue {name}: {}"),
    description="MIAS background tissue: fatty, fatty-glandular, dense-glandular",
    dense_classes=(),
))
register_task(Task(
    name="pathology",
    label_column="pathology",
    class_names=("normal", "benign", "malignant"),
    class_values=(
        ("normal", "norm", "N", "NORMAL"),
        ("benign", "B", "BENIGN_WITHOUT_CALLBACK"),
        ("malignant", "M", "cancer"),
    ),
    descriptions=("normal", "a benign finding", "a malignant finding"),
    templates=("a mammogram showing {}", "a {name} mammogram"),
    description="normal / benign / malignant (MIAS severity B/M, CBIS-DDSM pathology)",
    dense_classes=(),
))
# Finding tasks, zero-shot from their prompts (``method: zeroshot``) or trained like any task. The label
# columns are those the adapters write: ``pathology`` (normal/benign/malignant: MIAS, CBIS-DDSM, the
# synthetic cohort) and ``abnormality`` (CBIS-DDSM mass/calcification, MIAS CALC/CIRC/SPIC/MISC...).
register_task(Task(
    name="abnormality",
    label_column="pathology",
    class_names=("absent", "present"),
    class_values=(("normal", "norm", "N"),
                  ("benign", "B", "BENIGN_WITHOUT_CALLBACK", "malignant", "M", "cancer")),
    descriptions=("no abnormality, a normal mammogram", "an abnormality, a mass or calcifications"),
    templates=("a mammogram showing {}", "mammography: {}"),
    description="abnormality present (benign or malignant lesion) vs absent (normal)",
))
register_task(Task(
    name="lesion_type",
    label_column="abnormality",
    class_names=("mass", "calcification"),
    # MIAS: CIRC circumscribed, SPIC spiculated, MISC ill-defined masses; CALC calcification.
    # Several kinds on one image ("mass+calcification") belong to neither class: unlabelled.
    class_values=(("mass", "CIRC", "SPIC", "MISC"), ("calcification", "calc", "calcifications")),
    descriptions=("a mass", "calcifications"),
    templates=("a mammogram showing {}", "mammography: the lesion is {}"),
    description="lesion type: mass vs calcification (images with both or neither are unlabelled)",
))
register_task(Task(
    name="malignancy",
    label_column="pathology",
    class_names=("benign", "malignant"),
    class_values=(("benign", "B", "BENIGN_WITHOUT_CALLBACK"), ("malignant", "M", "cancer")),
    descriptions=("a benign finding", "a malignant finding, suspicious for cancer"),
    templates=("a mammogram showing {}", "a {name} lesion on mammography"),
    description="benign vs malignant lesion (normal images are unlabelled)",
))
