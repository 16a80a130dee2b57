"""The run folder: its layout, the checkpoint format, reading, writing, verifying, lineage.

A run folder (written by ``train.loop``, read by every surface)::

    RUN/config.yaml            the resolved TrainCfg (train.config.save_cfg)
    RUN/metrics.jsonl          one JSON line per epoch
    RUN/summary.json           best metric/epoch, counts, ood info, lineage
    RUN/ood.npz                the out-of-distribution model (models.ood), optional
    RUN/checkpoints/last.pt    the last finished epoch (what resume=true continues)
    RUN/checkpoints/best.pt    the best validation epoch (what predict/evaluate load by default)
    RUN/checkpoints/best.weights.pt  best.pt without the resume state (optimizer, scheduler, scaler, RNG),
                               written when the run finishes: what inference reads (memory-mapped)

A checkpoint is a dict of plain data and tensors (loaded with ``weights_only=True``: a run folder cannot run
code). Format 1 (``"format": 1``) holds ``model_name``, ``model_kwargs``, ``state_dict`` (the backbone),
``heads`` (``{name: {"task", "kind", "state"}}``, see ``run.model``), ``primary_head``, ``task`` (the primary
head's), ``method``, ``method_state`` (``TrainMethod.state_dict()``: what resume needs beyond the model),
``lineage``, ``preprocess``, ``cfg``, and the loop's resume state (``epoch``, ``step``, ``optimizer``,
``scheduler``, ``scaler``, ``rng``, ``best_metric``, ``best_epoch``, ``bad_epochs``, ``stopped``). Format 0
(no ``format`` key, written before issue 18) has ``head_state_dict`` instead of ``heads`` and no
``method_state``/``lineage``; it loads unchanged.

Inference never reads the resume state: ``load_run`` reads ``best.weights.pt`` (the same dict less
``RESUME_KEYS``) when it is there, else the checkpoint itself, and both memory-mapped
(``torch.load(mmap=True)``): only the pages of the weights are read, so a biomedclip run with a 2.35 GB
``best.pt`` loads in about the model build's time with the model's memory. Runs without the weights file
(older runs, an interrupted one) load the same way from ``best.pt``. Saving a new best epoch removes the
weights file before ``best.pt`` changes, so it never describes another epoch than ``best.pt``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mammolens.tasks import resolve_task

__all__ = ["CHECKPOINT_FORMAT", "LoadedRun", "RunError", "RunFolder", "cache_fingerprint", "config_hash",
           "lineage", "load_checkpoint", "load_run", "read_checkpoint", "verify_run"]

CHECKPOINT_FORMAT = 1
RESUME_KEYS = ("optimizer", "scheduler", "scaler", "rng")
"""The checkpoint entries only ``resume`` needs (left out of the weights file)."""
REQUIRED_KEYS = ("model_name", "state_dict", "task")
# run-control settings that do not change what is trained: left out of the config hash
_NOT_HASHED = ("resume", "overwrite", "out_dir")


class RunError(ValueError):
    """A run folder that cannot be loaded: the message names the folder and every problem found."""


@dataclass(frozen=True)
class RunFolder:
    """The paths of a run folder (nothing is read or created until asked)."""

    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root))

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def ood(self) -> Path:
        from mammolens.models.ood import OOD_FILE

        return self.root / OOD_FILE

    def checkpoint(self, which: str = "last") -> Path:
        """``checkpoints/<which>.pt`` (``which``: best | last | a path ending in .pt)."""
        return Path(which) if str(which).endswith(".pt") else self.checkpoints / f"{which}.pt"

    def weights(self, which: str = "best") -> Path:
        """``checkpoints/<which>.weights.pt``: the checkpoint without its resume state (see the module doc)."""
        return self.checkpoints / f"{which}.weights.pt"

    # ------------------------------------------------------------------------------------- writing
    def save_checkpoint(self, ck: dict[str, Any], best: bool = False) -> Path:
        """Write ``last.pt`` atomically (a crash never leaves half a checkpoint); make ``best.pt`` the same
        file when ``best`` (a hard link: no second write; a copy where links are not supported). The next
        save replaces ``last.pt`` with a new file, so ``best.pt`` keeps its epoch."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        last = self.checkpoint("last")
        tmp = last.with_suffix(".tmp")
        torch.save(ck, tmp)
        os.replace(tmp, last)
        if best:
            self.weights("best").unlink(missing_ok=True)  # it described the previous best epoch
            _same_file(last, self.checkpoint("best"))
        return last

    def write_weights(self, which: str = "best") -> Path | None:
        """Write ``checkpoints/<which>.weights.pt`` from ``<which>.pt`` (its dict less ``RESUME_KEYS``),
        atomically; returns its path (None when there is no such checkpoint)."""
        src = self.checkpoint(which)
        if not src.is_file():
            return None
        ck = read_checkpoint(src, mmap=True)
        out = self.weights(which)
        tmp = out.with_suffix(".tmp")
        torch.save({k: v for k, v in ck.items() if k not in RESUME_KEYS}, tmp)
        os.replace(tmp, out)
        return out

    def write_summary(self, summary: dict[str, Any]) -> Path:
        self.summary.write_text(json.dumps(summary, indent=2))
        return self.summary

    def append_metrics(self, rec: dict[str, Any]) -> None:
        with open(self.metrics, "a") as f:
            f.write(json.dumps(rec) + "\n")

    def keep_metrics(self, upto_epoch: int) -> None:
        """Drop ``metrics.jsonl`` lines after ``upto_epoch`` (a resumed run redoes them; 0: all)."""
        if not self.metrics.exists():
            return
        kept = [ln for ln in self.metrics.read_text().splitlines() if ln and json.loads(ln)["epoch"] <= upto_epoch]
        if kept:
            self.metrics.write_text("".join(ln + "\n" for ln in kept))
        else:
            self.metrics.unlink()

    # ------------------------------------------------------------------------------------- reading
    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.is_file():
            return []
        return [json.loads(ln) for ln in self.metrics.read_text().splitlines() if ln]

    def read_summary(self) -> dict[str, Any]:
        return json.loads(self.summary.read_text()) if self.summary.is_file() else {}


def _same_file(src: Path, dst: Path) -> None:
    """``dst`` becomes ``src`` atomically: a hard link, or a copy where the file system has none."""
    tmp = dst.with_suffix(".lnk")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


# ------------------------------------------------------------------------------------------ lineage
def config_hash(cfg: dict[str, Any] | None) -> str | None:
    """A short hash of a resolved config dict (``TrainCfg.to_dict()``), without ``resume``/``overwrite``/
    ``out_dir``: two runs with the same hash were trained with the same settings."""
    if not cfg:
        return None
    d = {k: v for k, v in cfg.items() if k not in _NOT_HASHED}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_fingerprint(meta: dict[str, Any]) -> str:
    """The fingerprint of a cache from its ``cache.json``: the recorded ``fingerprint`` when the cache has
    one, else a hash of what determines its pixels (preprocessing, manifest hash, shape)."""
    if meta.get("fingerprint"):
        return str(meta["fingerprint"])
    d = {k: meta.get(k) for k in ("cfg", "manifest_hash", "shape")}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def lineage(model_name: str, pretrained: str | None, cache=None, cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """Where a run came from, as recorded in its checkpoints and ``summary.json``.

    Args:
        model_name: the registry name of the backbone.
        pretrained: the weights both towers started from (``hf-hub:…``, ``local-dir:…``, a file,
            ``run:PATH`` for another run's, or None: random initialisation).
        cache: the ``data.cache.Cache`` trained on (its path and fingerprint are recorded).
        cfg: the resolved config dict (its hash is recorded).
    """
    from mammolens._version import __version__

    source: dict[str, Any] = {"weights": pretrained}
    if isinstance(pretrained, str) and pretrained.startswith("run:"):
        source["run"] = pretrained[len("run:"):]
    out: dict[str, Any] = {"mammolens": __version__, "model": model_name,
                           "towers": {"image": dict(source), "text": dict(source)}, "config_hash": config_hash(cfg)}
    if cache is not None:
        out["cache"] = {"path": str(Path(cache.path).absolute()), "fingerprint": cache_fingerprint(cache.meta)}
    return out


# ------------------------------------------------------------------------------------------ reading
def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    mmap: bool = False) -> dict[str, Any]:
    """A checkpoint file loaded as plain data only (``torch.load(weights_only=True)``): a run folder
    cannot run code.

    With ``mmap`` the tensors are memory-mapped from the file (``torch.load(mmap=True)``): nothing is
    read until used, so the optimizer state of a checkpoint costs neither time nor memory when only the
    weights are used. A file in torch's legacy (non-zip) format is read whole.

    Checkpoints of earlier mammolens versions hold the NumPy RNG state as an array; NumPy's array
    reconstruction is allowed for them (it builds arrays and scalars, nothing callable).

    Raises:
        ValueError: the file holds other objects (a pickle that could run code is never executed).
    """
    import pickle

    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            if mmap:
                try:
                    return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
                except RuntimeError as e:  # a legacy-format file cannot be mapped
                    if "mmap" not in str(e):
                        raise
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f" (found {found.group(1)})" if found else ""
        raise ValueError(f"checkpoint {path} holds objects other than tensors and plain data{what}; refusing to "
                         "load it (it could run code). Only load checkpoints written by mammolens from a source "
                         "you trust") from None


def _numpy_globals() -> list:
    import numpy as np

    try:
        from numpy._core import multiarray  # NumPy >= 2
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core import multiarray
    return [np.ndarray, np.dtype, type(np.dtype(np.uint32)), type(np.dtype(np.float64)),
            multiarray._reconstruct, multiarray.scalar,
            # the names NumPy 1.x wrote into the pickles
            (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
            (multiarray.scalar, "numpy.core.multiarray.scalar")]


def _checkpoint_path(run_dir: str | os.PathLike, which: str) -> Path:
    folder = RunFolder(run_dir)
    p = folder.checkpoint(which)
    if not p.is_file() and which == "best":
        p = folder.checkpoint("last")
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found: {run_dir} is not a finished mammolens run (train one first)")
    return p


def load_checkpoint(run_dir: str | os.PathLike, which: str = "best", device: str = "cpu",
                    mmap: bool = False) -> dict[str, Any]:
    """The checkpoint dict of a run (``which``: best | last | a .pt path; best falls back to last), with its
    resume state; ``mmap``: see ``read_checkpoint``."""
    return read_checkpoint(_checkpoint_path(run_dir, which), map_location=device, mmap=mmap)


def _weights_path(run_dir: str | os.PathLike, which: str) -> Path:
    """What inference reads for ``which``: ``<which>.weights.pt`` when written, else the checkpoint."""
    if which in ("best", "last"):
        w = RunFolder(run_dir).weights(which)
        if w.is_file() and RunFolder(run_dir).checkpoint(which).is_file():
            return w
    return _checkpoint_path(run_dir, which)


def _problems(ck: dict[str, Any]) -> list[str]:
    """What makes a checkpoint dict unloadable by this mammolens (empty: loadable)."""
    from mammolens.run.model import HEAD_KINDS

    out = [f"key {k!r} missing" for k in REQUIRED_KEYS if k not in ck]
    fmt = ck.get("format", 0)
    if not isinstance(fmt, int) or fmt > CHECKPOINT_FORMAT:
        out.append(f"checkpoint format {fmt!r} is newer than this mammolens reads ({CHECKPOINT_FORMAT}): upgrade "
                   "mammolens")
    heads = ck.get("heads") or {}
    for name, spec in heads.items():
        if not isinstance(spec, dict) or "task" not in spec or "kind" not in spec:
            out.append(f"head {name!r} lacks its task or kind")
        elif spec["kind"] not in HEAD_KINDS:
            out.append(f"head {name!r} has unknown kind {spec['kind']!r} (known: {', '.join(sorted(HEAD_KINDS))})")
    if heads and ck.get("primary_head") not in heads:
        out.append(f"primary_head {ck.get('primary_head')!r} is not one of the heads {sorted(heads)}")
    for where, task in [("task", ck.get("task"))] + [(f"head {n!r}", s.get("task")) for n, s in heads.items()
                                                     if isinstance(s, dict)]:
        if task is None:
            continue
        try:
            resolve_task(task)
        except (ValueError, KeyError, TypeError) as e:
            out.append(f"{where}: {e}")
    return out


def verify_run(run_dir: str | os.PathLike, which: str = "best") -> dict[str, Any]:
    """Check a run folder without building its model; return what it holds.

    Returns:
        ``{"checkpoint": path, "format", "method", "heads": {name: {"kind", "task"}}, "primary_head",
        "lineage", "files": {name: present}}``.

    Raises:
        RunError: one message naming the folder and everything missing or incompatible (no checkpoint, an
            unsafe or unreadable checkpoint, missing keys, a newer format, unknown head kinds or tasks).
    """
    folder = RunFolder(run_dir)
    if not folder.root.is_dir():
        raise RunError(f"run folder {folder.root} does not exist (train one with `mammolens train`)")
    try:
        path = _checkpoint_path(run_dir, which)
    except FileNotFoundError:
        have = sorted(p.name for p in folder.checkpoints.glob("*.pt")) if folder.checkpoints.is_dir() else []
        raise RunError(f"run folder {folder.root}: no checkpoints/{which}.pt (nor last.pt); found "
                       f"{', '.join(have) or 'no checkpoints'}: is the training finished?") from None
    try:
        ck = read_checkpoint(path, mmap=True)
    except Exception as e:  # unsafe pickle, truncated file, not a torch file
        raise RunError(f"run folder {folder.root}: cannot read {path.name}: {e}") from None
    problems = _problems(ck) if isinstance(ck, dict) else [f"{path.name} does not hold a dict"]
    if problems:
        raise RunError(f"run folder {folder.root} ({path.name}) cannot be loaded: " + "; ".join(problems))
    heads = ck.get("heads") or {_legacy_head_name(ck): {"kind": _legacy_kind(ck), "task": ck["task"]}}
    return {"checkpoint": path, "format": ck.get("format", 0), "method": ck.get("method", "contrastive"),
            "heads": {n: {"kind": s["kind"], "task": resolve_task(s["task"]).name} for n, s in heads.items()},
            "primary_head": ck.get("primary_head") or next(iter(heads)), "lineage": ck.get("lineage"),
            "files": {name: (folder.root / name).is_file()
                      for name in ("config.yaml", "metrics.jsonl", "summary.json", folder.ood.name)}}


def _legacy_kind(ck: dict[str, Any]) -> str:
    from mammolens.run.model import HEAD_METHODS

    return "linear" if ck.get("head_state_dict") is not None or ck.get("method") in HEAD_METHODS else "prompt"


def _legacy_head_name(ck: dict[str, Any]) -> str:
    return resolve_task(ck["task"]).name or "main"


@dataclass
class LoadedRun:
    """A run folder, loaded: ``model`` (``RunModel``, eval mode), ``task`` (the primary head's), the resolved
    config as a dict, the cache's ``preprocess`` dict (what predictions must reproduce), the checkpoint's
    ``method``, ``lineage`` (None for runs of format 0) and ``method_state``. Unpacks as
    ``model, task, cfg = load_run(...)``."""

    model: Any
    task: Any
    cfg: dict = field(default_factory=dict)
    preprocess: dict = field(default_factory=dict)
    method: str = "contrastive"
    run_dir: Path = Path(".")
    lineage: dict | None = None
    method_state: dict = field(default_factory=dict)

    @property
    def tasks(self) -> dict[str, Any]:
        """``{head name: Task}`` of every head (the primary first)."""
        return self.model.tasks

    def __iter__(self):
        return iter((self.model, self.task, self.cfg))


def load_run(run_dir: str | os.PathLike, device: str = "cpu", which: str = "best") -> LoadedRun:
    """Rebuild a run's model from its checkpoint (no download: the architecture comes from the
    registry, the weights from the checkpoint). Checkpoints of format 0 (one head) load unchanged.

    Raises:
        FileNotFoundError: the folder holds no checkpoint.
        ValueError: the checkpoint could run code, or (``RunError``) this mammolens cannot load it.
    """
    from mammolens.models import create_model
    from mammolens.run.model import RunModel, build_heads, build_run_model

    path = _weights_path(run_dir, which)
    ck = read_checkpoint(path, map_location="cpu", mmap=True)  # the weights' pages only, not the optimizer's
    problems = _problems(ck)
    if problems:
        raise RunError(f"run folder {run_dir} ({path.name}) cannot be loaded: " + "; ".join(problems))
    task = resolve_task(ck["task"])
    kwargs = dict(ck.get("model_kwargs") or {})
    kwargs.setdefault("pretrained", None)
    try:  # the architecture and tokenizer of the source, not its weights (the checkpoint has them)
        clip = create_model(ck["model_name"], load_weights=False, **kwargs)
    except TypeError:
        clip = create_model(ck["model_name"], **kwargs)
    clip.load_state_dict(ck["state_dict"])
    clip.to(device)
    method = ck.get("method", "contrastive")
    if ck.get("heads"):
        model = RunModel(clip, build_heads(clip, ck["heads"]), method=method, primary=ck["primary_head"])
    else:  # format 0: one head, the linear layer's state or the task's prompts
        model = build_run_model(clip, task, method, ck.get("head_state_dict"))
    model.to(device).eval()
    return LoadedRun(model, task, dict(ck.get("cfg") or {}), dict(ck.get("preprocess") or {}), method,
                     Path(run_dir), ck.get("lineage"), dict(ck.get("method_state") or {}))
