"""The training loop: one readable function for every method, on one CPU/GPU or under torchrun (DDP).

What differs between methods (the module to optimise, the loss of a batch, the classifier to validate)
lives in ``train.methods``, one module per method; the loop only asks (``methods.base.TrainMethod``).

``train(cfg) -> run_dir`` writes ``config.yaml``, ``metrics.jsonl`` (one line per epoch),
``checkpoints/{last,best}.pt`` and ``summary.json``. A run resumes exactly: per-epoch seeds (sampler
order and augmentation) plus the saved optimizer/scheduler/scaler/RNG states make an interrupted and
resumed CPU run bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mammolens.constants import MODALITIES
from mammolens.data.splits import VAL_NAMES  # noqa: F401  (the old import path)
from mammolens.data.splits import split_rows as _split_rows
from mammolens.evaluation.metrics import val_metrics
from mammolens.models.precision import autocast, autocast_dtype, cuda_math
from mammolens.run.folder import CHECKPOINT_FORMAT, RunFolder, lineage, load_checkpoint, read_checkpoint  # noqa: F401
from mammolens.run.model import RunModel, head_specs
from mammolens.tasks import resolve_task, task_dict
from mammolens.threads import configure_threads, worker_threads
from mammolens.train.config import TrainCfg, cfg_from_dict, load_cfg, save_cfg
from mammolens.train.config import load_run  # noqa: F401  (the old import path: one loader, models.run.load_run)
from mammolens.train.methods import get_method
from mammolens.train.methods.base import extract_features, to_input

log = logging.getLogger(__name__)

BACKGROUND_CHECKPOINTS = False
"""Write checkpoints from a background thread while the next epoch trains. Off: on the 2-core CPU its pickling
(which holds the GIL) slowed the next epoch's steps more than the write it hid (BENCHMARKS.md, issue 19)."""

__all__ = ["train", "load_run", "predict_cache", "resolve_task", "open_run_cache", "split_rows"]


# ----------------------------------------------------------------------------------------- setup helpers
def _dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment (0, 1, 0 when not distributed)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    """RNG states as plain data (ints, lists, tensors), so that checkpoints load with ``weights_only=True``."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = [str(name), keys.tolist(), int(pos), int(has_gauss), float(cached)]
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]  # a list, or the array of older checkpoints
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu() if hasattr(state["torch"], "cpu") else state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(Exception):
            torch.cuda.set_rng_state_all(state["cuda"])


def open_run_cache(cfg: TrainCfg, rank: int = 0, world: int = 1):
    """Open ``cfg.data.cache``, building it first from ``cfg.data.manifest`` when needed."""
    from mammolens.data.cache import PreprocessCfg, build_cache, open_cache

    d = cfg.data
    if d.cache and (Path(d.cache) / "cache.json").is_file():
        return open_cache(d.cache)
    if not d.manifest:
        raise FileNotFoundError(
            f"no data: data.cache={d.cache!r} is not a cache folder and data.manifest is empty; set "
            "data.cache to a folder made by `mammolens preprocess` or data.manifest to a manifest"
        )
    if not Path(d.manifest).is_file():
        raise FileNotFoundError(f"data.manifest {d.manifest} does not exist (make one with `mammolens ingest`)")
    out = Path(d.cache) if d.cache else Path(cfg.out_dir) / "cache"
    if rank == 0:
        build_cache(d.manifest, out, PreprocessCfg.from_dict(d.preprocess), workers=cfg.workers or None,
                    progress=False)
    if world > 1:
        torch.distributed.barrier()
    return open_cache(out)


SPLIT_FILE = "split.json"  # RUN/split.json: the training and validation exams, as keyed pseudonyms


def exam_keys(index) -> list[str]:
    """One keyed pseudonym (``privacy.pseudonym``, kind ``exam``) per manifest/cache row of its patient and
    study (``patient_id|study_id``; study empty when the manifest has none): how ``evaluate`` finds the
    images of a run's training and validation exams without the run folder holding an identifier."""
    from mammolens.privacy import pseudonym

    n = len(index)
    pid = index["patient_id"].astype(str).tolist() if "patient_id" in index else [""] * n
    sid = index["study_id"].astype(str).tolist() if "study_id" in index else [""] * n
    return [pseudonym(f"{p}|{s}", "exam") for p, s in zip(pid, sid)]


def split_rows(index, labels: np.ndarray, cfg: TrainCfg) -> tuple[np.ndarray, np.ndarray]:
    """``data.splits.split_rows`` with the run's ``cfg.data`` and ``cfg.seed``; refuses an empty training
    set when the method needs training rows."""
    d = cfg.data
    train_rows, val_rows = _split_rows(index, labels, split_column=d.split_column, fold=d.fold, val_frac=d.val_frac,
                                       modalities=d.modalities, seed=cfg.seed)
    if len(train_rows) == 0 and get_method(cfg.method).needs_training_rows:
        raise ValueError(f"no labelled training rows left: {_why_no_rows(index, labels, cfg)}")
    return train_rows, val_rows


def _filled(index, column: str) -> int:
    """Rows of ``index`` with a non-empty value in ``column`` (0 when there is no such column)."""
    if column not in index.columns:
        return 0
    return int((index[column].astype("string").fillna("").str.strip() != "").sum())


def _why_no_rows(index, labels: np.ndarray, cfg: TrainCfg) -> str:
    """Which column is empty (or which filter removed every row), and the registered tasks whose label
    column the data do fill (``--set task=mias`` on mini-MIAS)."""
    from mammolens.tasks import get_task, list_tasks

    task, d = resolve_task(cfg.task), cfg.data
    col = task.label_column
    n_filled = _filled(index, col)
    if n_filled == 0:
        why = (f"the task {task.name!r} reads column {col!r}, which is "
               + ("not in the data" if col not in index.columns else f"empty in all {len(index)} rows"))
    else:
        why = (f"{int((labels >= 0).sum())} row(s) have a {col!r} label, none left after the split/modality filter "
               f"(data.modalities={list(d.modalities) or 'all'}, data.split_column={d.split_column!r})")
    fits = [name for name in list_tasks() if (t := get_task(name)).label_column != col and _filled(index, t.label_column)]
    fits.sort(key=lambda n: col not in get_task(n).label_column)  # the same kind first: density -> mias_density
    if n_filled == 0 and fits:
        best = get_task(fits[0])
        others = f" (other tasks with labels here: {', '.join(fits[1:])})" if len(fits) > 1 else ""
        why += (f"; the data have labels for task {best.name!r} (column {best.label_column!r}){others}: train with "
                f"--set task={best.name}")
    return why


def _make_loader(ds, cfg: TrainCfg, device: torch.device, rank: int, world: int, train: bool):
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    sampler = None
    if train:
        drop_last = len(ds) >= cfg.batch_size * world * 2  # keep contrastive batches full when possible
        sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed,
                                     drop_last=drop_last)
    return DataLoader(
        ds,
        batch_size=cfg.batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=cfg.workers,
        pin_memory=device.type == "cuda",
        drop_last=False,
        collate_fn=getattr(ds, "collate", None),  # exam batches have their own (train.methods.base)
        persistent_workers=cfg.workers > 0 and train,
        worker_init_fn=worker_threads if cfg.workers > 0 else None,
    )


def _lr_lambda(total: int, warmup: int, min_ratio: float):
    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


def predict_cache(model: nn.Module, task, dataset, batch_size: int = 64, device: str | torch.device | None = None,
                  workers: int = 0, precision: str = "fp32") -> np.ndarray:
    """Class probabilities ``[N, K]`` for every sample of ``dataset`` (in dataset order), through
    ``pipeline.encode`` (resized to the model's input size, autocast, inference mode).

    Args:
        model: a ``RunModel`` (or a bare ``MammoCLIP``: the task's prompts are used).
        dataset: a ``MammoDataset`` (or any dataset yielding ``{"image": [1, S, S]}``).
    """
    from mammolens.pipeline import encode as _enc

    if len(dataset) == 0:
        return np.zeros((0, len(task.class_names)), dtype=np.float32)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    batches = _enc.loader(dataset, batch_size, workers, device)
    return _enc.encode(model, batches, ("probs",), device=device, precision=precision, task=task)["probs"]


# ------------------------------------------------------------------------------------------ checkpoints
def _find_resume(cfg: TrainCfg, run_dir: Path) -> Path | None:
    if cfg.resume is False or cfg.resume in ("", None):
        return None
    if cfg.resume is True:
        p = run_dir / "checkpoints" / "last.pt"
        return p if p.is_file() else None  # nothing to resume yet: start afresh
    p = Path(str(cfg.resume))
    if p.is_dir():
        p = p / "checkpoints" / "last.pt"
    if not p.is_file():
        raise FileNotFoundError(f"resume checkpoint {p} does not exist (point resume at a run dir or a .pt file)")
    return p


def _set_grad_checkpointing(clip: nn.Module) -> None:
    for obj in (clip, getattr(clip, "model", None), getattr(clip, "visual", None)):
        fn = getattr(obj, "set_grad_checkpointing", None)
        if callable(fn):
            fn(True)
            return
    log.warning("grad_checkpointing requested but %s has no set_grad_checkpointing(); ignored", type(clip).__name__)


def _progress(it, show: bool, **kw):
    from tqdm.auto import tqdm

    # a bar only on a terminal (redrawn lines make a mess of log files); the epoch lines show either way
    disable = not show or not sys.stderr.isatty() or bool(os.environ.get("CI"))
    return tqdm(it, disable=disable, leave=False, **kw)


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _say(show: bool, rec: dict[str, Any], what: str, elapsed: float, eta: float | None = None) -> None:
    """One progress line on stderr: ``epoch 3/10  loss 1.2345  val macro AUC 0.6789  elapsed 0:00:41  ETA 0:01:36``."""
    if not show:
        return
    parts = [what]
    if "train_loss" in rec:
        parts.append(f"loss {rec['train_loss']:.4f}")
    auc = rec.get("val_macro_auc")
    parts.append("val macro AUC " + ("n/a" if auc is None or not math.isfinite(auc) else f"{auc:.4f}"))
    parts.append(f"elapsed {_clock(elapsed)}")
    if eta is not None:
        parts.append(f"ETA {_clock(eta)}")
    print("  ".join(parts), file=sys.stderr, flush=True)


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (what a run would create), or None."""
    path = path.absolute()
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def _discard_unfinished(created: Path, run_dir: Path) -> None:
    """After a failed run: remove the folder it created, unless a finished epoch's checkpoint makes it
    resumable (then say how to continue)."""
    if (run_dir / "checkpoints" / "last.pt").is_file():
        log.warning("training stopped; %s keeps the last finished epoch: continue with resume=true", run_dir)
        return
    shutil.rmtree(created, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ train
def train(cfg: TrainCfg | dict | str | os.PathLike, *, rows: tuple[np.ndarray, np.ndarray] | None = None,
          stop_after: int | None = None, progress: bool = True) -> Path:
    """Train (or, for ``zeroshot``, just package) a model as configured; return the run directory.

    A run that fails (an error, a diverged loss, Ctrl-C) before its first checkpoint leaves no folder
    behind; one that fails later keeps its last finished epoch for ``resume=true``. A folder that
    existed before the call is never removed.

    Args:
        cfg: a ``TrainCfg``, its dict, or a YAML path.
        rows: explicit ``(train_rows, val_rows)`` positional rows of the cache index (cross-validation).
        stop_after: leave after this many epochs in this call, as if interrupted (time-limited jobs;
            continue with ``resume=True``).
        progress: a bar per epoch (on a terminal) and a line per epoch (loss, validation macro AUC,
            elapsed, ETA) on stderr.
    """
    if isinstance(cfg, (str, os.PathLike)):
        cfg = load_cfg(cfg)
    elif isinstance(cfg, dict):
        cfg = cfg_from_dict(cfg)
    rank, world, local_rank = _dist_env()
    device = _resolve_device(cfg.device, local_rank)
    configure_threads(cfg.workers)  # cores minus loader workers: no oversubscription on a shared CPU
    created = _first_missing(Path(cfg.out_dir)) if rank == 0 else None
    own_pg = False
    try:
        if world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                torch.cuda.set_device(device)
            torch.distributed.init_process_group(backend=backend)
            own_pg = True
        with cuda_math(device, cfg.tf32):
            return _train(cfg, rank, world, device, rows, stop_after, progress and rank == 0)
    except BaseException:
        if created is not None:
            _discard_unfinished(created, Path(cfg.out_dir))
        raise
    finally:
        if own_pg:
            torch.distributed.destroy_process_group()


class _Run:
    """The run folder's side of training: validation, ``metrics.jsonl``, checkpoints, ``summary.json``
    (written by rank 0 only, through ``run.folder.RunFolder``)."""

    def __init__(self, cfg: TrainCfg, rank: int, method, cache, val_ds, val_labels: np.ndarray):
        self.cfg, self.rank, self.method, self.val_ds, self.val_labels = cfg, rank, method, val_ds, val_labels
        self.folder = RunFolder(cfg.out_dir)
        self._writer = self._pending = self._val_loader = None
        self._best_queued = False
        self.dir = self.folder.root
        self.ckpt_dir = self.folder.checkpoints
        ctx = method.ctx
        clip, task = ctx.clip, ctx.task
        self.n_train, self.n_val = len(ctx.train_ds), len(val_ds)
        model_kwargs = _model_kwargs(cfg)
        model_name = getattr(clip, "model_name", "") or cfg.model
        self.lineage = lineage(model_name, cfg.pretrained, cache, cfg.to_dict())
        from mammolens.models.factory import random_weights_reason

        self.lineage["random_weights"] = random_weights_reason(cfg.model, cfg.pretrained, cfg.method)
        self.split = {"train": exam_keys(cache.index.iloc[ctx.train_ds.rows]),  # what evaluate checks overlap on
                      "val": exam_keys(cache.index.iloc[val_ds.rows])}
        self.base_ckpt = {  # the model records how create_model built it (name, pretrained source, image size...)
            "format": CHECKPOINT_FORMAT,
            "model_name": model_name,
            "model_kwargs": dict(getattr(clip, "model_kwargs", None) or {"pretrained": cfg.pretrained, **model_kwargs}),
            "task": task_dict(task),
            "preprocess": cache.cfg.to_dict(),
            "method": cfg.method,
            "cfg": cfg.to_dict(),
            "class_weights": ctx.class_weights.cpu().tolist(),
            "n_train": self.n_train,
            "n_val": self.n_val,
            "lineage": self.lineage,
        }

    def validate(self, model: RunModel | None = None) -> dict[str, float]:
        """Validation metrics of ``model`` (default ``method.run_model()``: the model as trained so far), through
        ``pipeline.encode`` (the same batches in the same order as ``predict_cache``); the loader is made once
        and its workers kept."""
        if self.n_val == 0:
            return {}
        from mammolens.pipeline import encode as _enc

        cfg, ctx = self.cfg, self.method.ctx
        if self._val_loader is None:
            from torch.utils.data import DataLoader

            workers = min(cfg.workers, 2)
            self._val_loader = DataLoader(self.val_ds, batch_size=cfg.batch_size, shuffle=False, num_workers=workers,
                                          pin_memory=ctx.device.type == "cuda", persistent_workers=workers > 0,
                                          worker_init_fn=worker_threads if workers > 0 else None)
        probs = _enc.encode(model or self.method.run_model(), self._val_loader, ("probs",), device=ctx.device,
                            precision=cfg.precision, task=ctx.task)["probs"]
        return val_metrics(self.val_labels, probs, ctx.task.class_names)

    def save(self, state: dict[str, Any], best: bool, model: RunModel | None = None) -> None:
        """``checkpoints/last.pt`` (backbone, heads, method state, ``state``); also ``best.pt`` when ``best``.

        With ``BACKGROUND_CHECKPOINTS`` the tensors are copied now and written by a background thread while the
        next epoch trains (:meth:`wait` before reading the folder; a write's error is raised by the next ``save``
        or ``wait``); otherwise (the default) the write happens here.
        """
        if self.rank != 0:
            return
        model = model or self.method.run_model()  # the epoch's, when validation built it already
        ck = dict(self.base_ckpt)
        ck["state_dict"] = self.method.ctx.clip.state_dict()
        ck["heads"] = head_specs(model.heads)
        ck["primary_head"] = model.primary
        ck["method_state"] = self.method.state_dict()
        ck.update(state)
        self.wait()
        if not BACKGROUND_CHECKPOINTS:
            self.folder.save_checkpoint(ck, best)
            self._best_queued = self._best_queued or best
            return
        ck = _snapshot(ck)  # training goes on changing the live tensors in place
        if self._writer is None:
            from concurrent.futures import ThreadPoolExecutor

            self._writer = ThreadPoolExecutor(1, thread_name_prefix="mammolens-checkpoint")
        self._pending = self._writer.submit(self.folder.save_checkpoint, ck, best)
        self._best_queued = self._best_queued or best

    def has_best(self) -> bool:
        """A ``best.pt`` is written or being written (by this run, or on disk from before a resume)."""
        return self._best_queued or self.folder.checkpoint("best").exists()

    def wait(self) -> None:
        """Until the checkpoint being written is on disk (re-raises the writer's error)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Wait for the last write; stop the writer thread and the validation loader's workers."""
        try:
            self.wait()
        finally:
            if self._writer is not None:
                self._writer.shutdown()
                self._writer = None
            self._val_loader = None

    def restore(self, ck: dict[str, Any]) -> None:
        """The backbone and the method's state (its head, adaptive weights, pool...) of a checkpoint."""
        self.method.ctx.clip.load_state_dict(ck["state_dict"])
        state = ck.get("method_state")
        if state is None:  # format 0: only the head was saved
            state = {"head": ck.get("head_state_dict")}
        self.method.load_state_dict(state)

    def write_line(self, rec: dict[str, Any]) -> None:
        if self.rank == 0:
            self.folder.append_metrics(rec)

    def keep_lines(self, upto_epoch: int) -> None:
        """Drop ``metrics.jsonl`` lines after ``upto_epoch`` (a resumed run redoes them; 0: all)."""
        if self.rank == 0:
            self.folder.keep_metrics(upto_epoch)

    def finish(self, best_metric, best_epoch: int, epochs_done: int, stopped_early: bool = False) -> Path:
        """Wait for the checkpoint writes; write ``best.weights.pt`` (what inference reads), the OOD model and
        ``summary.json``."""
        self.close()
        if self.rank == 0:
            self.folder.write_weights("best")
            cfg, ctx = self.cfg, self.method.ctx
            # without validation rows "best" is the last epoch's checkpoint (saved as best every epoch)
            summary = {"method": cfg.method, "best_metric": best_metric,
                       "best_epoch": best_epoch if self.n_val else epochs_done,
                       "monitor": "val_macro_auc", "epochs": epochs_done, "stopped_early": stopped_early,
                       "n_train": self.n_train, "n_val": self.n_val}
            if cfg.ood and self.n_train >= 2:
                summary["ood"] = _write_ood(self.folder, self.method, ctx.train_ds, cfg, ctx.device)
            summary["lineage"] = self.lineage
            import json

            (self.dir / SPLIT_FILE).write_text(json.dumps({"key": "privacy.pseudonym(patient_id|study_id, 'exam')",
                                                           **self.split}), encoding="utf-8")
            self.folder.write_summary(summary)
        return self.dir


def _snapshot(obj):
    """``obj`` with every tensor copied to the CPU (dicts, lists and tuples walked): a checkpoint frozen now."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_snapshot(v) for v in obj)
    return obj


def _model_kwargs(cfg: TrainCfg) -> dict[str, Any]:
    kw = dict(cfg.model_kwargs)
    if cfg.image_size is not None:
        kw["image_size"] = cfg.image_size
    return kw


def _setup(cfg: TrainCfg, rank: int, world: int, device: torch.device, rows):
    """Data, model and loss weights: ``(MethodContext, cache, val dataset, val labels)``."""
    from mammolens.data.dataset import MammoDataset
    from mammolens.losses import class_weights, normalise_modality_weights
    from mammolens.models import create_model
    from mammolens.train.methods.base import MethodContext

    task = resolve_task(cfg.task)
    cache = open_run_cache(cfg, rank, world)
    labels_all = np.asarray(task.encode(cache.index[task.label_column]), dtype=np.int64)
    if rows is None:
        train_rows, val_rows = split_rows(cache.index, labels_all, cfg)
    else:
        train_rows, val_rows = (np.asarray(r, dtype=np.int64) for r in rows)
    mod_names = cache.index["modality"].astype(str).to_numpy()
    train_mod = np.array([MODALITIES.index(m) if m in MODALITIES else 0 for m in mod_names[train_rows]])

    clip = create_model(cfg.model, pretrained=cfg.pretrained, **_model_kwargs(cfg)).to(device)
    if cfg.method == "zeroshot" and cfg.pretrained is None:  # the tower itself warns only for biomedclip & co
        import warnings

        from mammolens.models.factory import random_weights_reason

        warnings.warn(random_weights_reason(cfg.model, None, "zeroshot"), UserWarning, stacklevel=2)
    if cfg.grad_checkpointing:
        _set_grad_checkpointing(clip)
    if device.type == "cuda":
        clip = clip.to(memory_format=torch.channels_last)
    unknown = set(cfg.data.modality_weights) - set(MODALITIES)
    if unknown:
        raise ValueError(f"data.modality_weights has unknown modalities {sorted(unknown)}; use {MODALITIES}")
    cw = (class_weights(torch.as_tensor(labels_all[train_rows]), len(task.class_names), method=cfg.class_weighting)
          if (labels_all[train_rows] >= 0).any() else torch.ones(len(task.class_names)))  # no labels: pretrain
    mw = torch.tensor([float(cfg.data.modality_weights.get(m, 1.0)) for m in MODALITIES])
    if len(train_mod):  # expectation 1 over the training rows: the weights keep their meaning in every batch
        mw = normalise_modality_weights(mw, train_mod)
    ctx = MethodContext(  # the weights go to the device once: a per-step copy from host memory would synchronise
        cfg=cfg, task=task, clip=clip, device=device, class_weights=cw.float().to(device),
        modality_weights=mw.to(device), train_ds=MammoDataset(cache, task, rows=train_rows),
        train_labels=labels_all[train_rows], train_modality=train_mod, dtype=autocast_dtype(cfg.precision, device))
    return ctx, cache, MammoDataset(cache, task, rows=val_rows), labels_all[val_rows]


def _schedule(opt, cfg: TrainCfg, n_batches: int):
    """Cosine schedule with linear warm-up over the run's optimizer steps."""
    total_steps = math.ceil(n_batches / cfg.grad_accum) * cfg.epochs
    warmup = cfg.warmup_steps or int(round(cfg.warmup_frac * total_steps))
    min_ratio = cfg.min_lr / cfg.lr if cfg.lr > 0 else 0.0
    return torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total_steps, warmup, min_ratio))


def _optimizer(module: nn.Module, cfg: TrainCfg, device: torch.device):
    """AdamW over the trainable parameters; no weight decay on biases, norms and scalars.

    The fused kernel on CUDA and on the CPU: one pass over all parameters per step. On the CPU the default
    (one small op after another per parameter, each an OpenMP region) took ~40 % of a tiny-clip step
    (BENCHMARKS.md, "training against a hand-written loop"); fused updates agree with it to float rounding.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    fused = device.type in ("cuda", "cpu") and all(p.dtype in (torch.float32, torch.float16, torch.bfloat16)
                                                   for p in params)
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused or None)


def _wrap(module: nn.Module, cfg: TrainCfg, world: int, device: torch.device) -> nn.Module:
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        module = DDP(module, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        # compile the DDP module, not the other way round: TorchDynamo then splits the graph at DDP's
        # gradient buckets, so all-reduces overlap the backward pass (PyTorch's recommended order)
        module = torch.compile(module)
    return module


def _train(cfg: TrainCfg, rank: int, world: int, device: torch.device, rows, stop_after, progress: bool) -> Path:
    resume_path = _open_run_folder(cfg, rank)
    _seed_everything(cfg.seed)
    ctx, cache, val_ds, val_labels = _setup(cfg, rank, world, device, rows)
    method = get_method(cfg.method)(ctx)
    run = _Run(cfg, rank, method, cache, val_ds, val_labels)
    if method.one_shot:  # zero-shot, linear probe: fitted once, one metrics line
        return _fit_once(run, method, progress)
    parts = _training_parts(method, cfg, device, rank, world, int(getattr(ctx.clip, "image_size", cache.cfg.size)))
    pos = _Position()
    if resume_path is not None:
        pos = _resume(run, parts, resume_path)
        if pos.stopped:
            return run.finish(pos.best, pos.best_epoch, pos.epoch, stopped_early=True)
    else:
        run.keep_lines(0)
    model = _wrap(parts.module, cfg, world, device)
    try:
        return _run_epochs(run, method, parts, model, pos, world, stop_after, progress)
    except BaseException:
        with contextlib.suppress(Exception):  # the training's error is the one to report
            run.close()  # the last checkpoint is complete before the folder is judged
        raise


def _open_run_folder(cfg: TrainCfg, rank: int) -> Path | None:
    """Refuse to overwrite a finished run by accident; create the folder and write ``config.yaml``.
    Returns the checkpoint to resume from, or None."""
    folder = RunFolder(cfg.out_dir)
    resume_path = _find_resume(cfg, folder.root)
    if resume_path is None and folder.checkpoint("last").exists() and not cfg.overwrite:
        raise FileExistsError(
            f"{folder.root} already holds a run; set resume=true to continue it, overwrite=true to restart it, "
            "or choose another out_dir"
        )
    if rank == 0:
        folder.checkpoints.mkdir(parents=True, exist_ok=True)
        save_cfg(cfg, folder.config)
    return resume_path


def _fit_once(run: _Run, method, progress: bool) -> Path:
    """A one-shot method (zero-shot, linear probe): ``fit()`` once, one metrics line, one checkpoint."""
    t_start = time.perf_counter()
    run.keep_lines(0)
    rec: dict[str, Any] = {"epoch": 1, "step": 0, **method.fit(), **run.validate()}
    rec["epoch_time_s"] = time.perf_counter() - t_start
    run.write_line(rec)
    _say(progress, rec, method.name, rec["epoch_time_s"])
    best = rec.get("val_macro_auc")
    best = None if best is None or not math.isfinite(best) else best
    run.save({"epoch": 1, "step": rec["step"], "optimizer": None, "scheduler": None, "scaler": None,
              "rng": _rng_state(), "best_metric": best, "best_epoch": 1, "bad_epochs": 0, "stopped": True},
             best=True)
    return run.finish(best, 1, 1)


@dataclass
class _Parts:
    """What the epoch loop steps: the method's module, optimizer, schedule, scaler, loader, augmentation."""

    module: nn.Module
    opt: Any
    sched: Any
    scaler: Any
    loader: Any
    n_batches: int
    size: int
    augment: Any


@dataclass
class _Position:
    """Where a run stands (what a checkpoint saves besides the weights): epochs done, optimizer steps, the
    best validation metric and its epoch, epochs without improvement, early-stopped."""

    epoch: int = 0
    step: int = 0
    best: float | None = None
    best_epoch: int = 0
    bad: int = 0
    stopped: bool = False


def _training_parts(method, cfg: TrainCfg, device: torch.device, rank: int, world: int, size: int) -> _Parts:
    """The module to optimise (``method.build()``, also kept as ``method.module``), AdamW, the cosine
    schedule over the run's steps, the loader and the GPU augmentation."""
    module = method.build()
    method.module = module
    opt = _optimizer(module, cfg, device)
    loader = _make_loader(method.train_dataset(), cfg, device, rank, world, train=True)
    n_batches = len(loader)
    if cfg.max_steps_per_epoch:
        n_batches = min(n_batches, cfg.max_steps_per_epoch * cfg.grad_accum)
    sched = _schedule(opt, cfg, n_batches)
    scaler = torch.amp.GradScaler(device.type, enabled=False)  # bf16 needs no loss scaling
    augment = None
    if cfg.augment:
        from mammolens.transforms.augment import GpuAugment

        augment = GpuAugment()
        if isinstance(augment, nn.Module):
            augment = augment.to(device)
    return _Parts(module, opt, sched, scaler, loader, n_batches, size, augment)


def _resume(run: _Run, parts: _Parts, resume_path: Path) -> _Position:
    """Restore weights, method state, optimizer, schedule, scaler and RNG from a checkpoint."""
    ck = read_checkpoint(resume_path)
    run.restore(ck)
    parts.opt.load_state_dict(ck["optimizer"])
    parts.sched.load_state_dict(ck["scheduler"])
    if ck.get("scaler"):
        parts.scaler.load_state_dict(ck["scaler"])
    _set_rng_state(ck["rng"])
    pos = _Position(int(ck["epoch"]), int(ck["step"]), ck.get("best_metric"), int(ck.get("best_epoch", 0)),
                    int(ck.get("bad_epochs", 0)), bool(ck.get("stopped")))
    run.keep_lines(pos.epoch)
    if not pos.stopped:
        log.info("resumed from %s at epoch %d, step %d", resume_path, pos.epoch, pos.step)
    return pos


def _loop_state(parts: _Parts, pos: _Position) -> dict[str, Any]:
    """The checkpoint's resume fields (beside the model and the method state)."""
    return {"epoch": pos.epoch, "step": pos.step, "optimizer": parts.opt.state_dict(),
            "scheduler": parts.sched.state_dict(), "scaler": parts.scaler.state_dict(), "rng": _rng_state(),
            "best_metric": pos.best, "best_epoch": pos.best_epoch, "bad_epochs": pos.bad, "stopped": pos.stopped}


def _validate_now(epoch: int, cfg: TrainCfg) -> bool:
    """Validate after ``epoch`` (0-based)? Every ``cfg.val_every``-th epoch and always the last one."""
    every = max(1, int(getattr(cfg, "val_every", 1) or 1))
    return (epoch + 1) % every == 0 or epoch + 1 == cfg.epochs


def _track_best(pos: _Position, rec: dict[str, Any], patience: int) -> bool:
    """Update ``pos`` with an epoch's validation macro AUC; True when it improved on the best."""
    auc = rec.get("val_macro_auc")
    improved = auc is not None and math.isfinite(auc) and (pos.best is None or auc > pos.best)
    if improved:
        pos.best, pos.best_epoch, pos.bad = float(auc), pos.epoch, 0
    else:
        pos.bad += 1
    pos.stopped = patience > 0 and pos.bad >= patience and pos.best is not None
    return improved


def _run_epochs(run: _Run, method, parts: _Parts, model: nn.Module, pos: _Position, world: int, stop_after,
                progress: bool) -> Path:
    """The epoch loop: train, validate, log, checkpoint; early stopping and ``stop_after``."""
    cfg, rank = run.cfg, run.rank
    start_epoch, t_start = pos.epoch, time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        # per-epoch seeds: the sampler order and the augmentation do not depend on earlier epochs
        parts.loader.sampler.set_epoch(epoch)
        torch.manual_seed(cfg.seed + 1009 * (epoch + 1) + 1_000_003 * rank)
        parts.module.train()
        t0 = time.perf_counter()
        rec, pos.step = _train_epoch(method, model, parts.loader, parts.n_batches, parts.size, parts.opt,
                                     parts.sched, parts.augment, pos.step, epoch, world, progress)
        rec.update(method.log())
        validated = _validate_now(epoch, cfg)
        run_model = method.run_model() if rank == 0 or validated else None  # one build for validation and save
        if validated:
            rec.update(run.validate(run_model))
        rec["epoch_time_s"] = time.perf_counter() - t0
        run.write_line(rec)
        pos.epoch = epoch + 1
        elapsed = time.perf_counter() - t_start
        _say(progress, rec, f"epoch {epoch + 1}/{cfg.epochs}", elapsed,
             eta=elapsed / (pos.epoch - start_epoch) * (cfg.epochs - pos.epoch))
        improved = _track_best(pos, rec, cfg.patience) if validated else False
        run.save(_loop_state(parts, pos),
                 best=improved or (pos.best is None and not run.has_best()) or not run.n_val,
                 model=run_model)
        if world > 1:
            torch.distributed.barrier()
        if pos.stopped:
            log.info("early stopping after epoch %d: no better val macro AUC for %d epochs", pos.epoch, pos.bad)
            break
        if stop_after is not None and pos.epoch - start_epoch >= stop_after:
            break
    return run.finish(pos.best, pos.best_epoch, pos.epoch, pos.stopped)


def _train_epoch(method, model: nn.Module, loader, n_batches: int, size: int, opt, sched, augment, step: int,
                 epoch: int, world: int, progress: bool) -> tuple[dict[str, Any], int]:
    """One pass over the training loader: ``(metrics line without validation, optimizer step count)``."""
    cfg, device = method.ctx.cfg, method.ctx.device
    t0 = time.perf_counter()
    # the running sums stay on the device: a float() per step would make the host wait for every
    # step to finish before queueing the next (no CPU/GPU overlap)
    sums: dict[str, torch.Tensor] = {}
    n_seen = 0
    opt.zero_grad(set_to_none=True)
    it = _progress(loader, progress, total=n_batches, desc=f"epoch {epoch + 1}/{cfg.epochs}")
    # time the loop spends waiting for the next batch: near 0 when the model sets the pace,
    # a large fraction when data loading is the bottleneck (more workers, a smaller cache size)
    data_wait, t_fetch = 0.0, time.perf_counter()
    for i, batch in enumerate(it):
        data_wait += time.perf_counter() - t_fetch
        if i >= n_batches:
            break
        x = to_input(batch["image"], size, device)  # [B, 1, S, S]
        if augment is not None:
            x = augment(x)
        b = {"image": x, "label": batch["label"].to(device, non_blocking=True),  # [B]
             "modality": batch["modality"].to(device, non_blocking=True)}  # [B]
        b.update({k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                  for k, v in batch.items() if k not in b})  # a method's own keys (exam batches)
        last_micro = (i + 1) % cfg.grad_accum == 0 or i + 1 == n_batches
        sync = contextlib.nullcontext() if (last_micro or world == 1) else model.no_sync()
        with sync:
            with autocast(device, method.ctx.dtype):
                out = method.training_forward(model, b)
            (out["loss"] / cfg.grad_accum).backward()
        if last_micro:
            opt.step()
            method.after_step()  # e.g. clamp the temperature parameter, update adaptive modality weights
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
        n = len(b["label"])
        for key, value in out.items():
            sums[key] = sums.get(key, torch.zeros((), dtype=torch.float64, device=device)) + value.detach().double() * n
        n_seen += n
        if not it.disable and i % 10 == 0:  # a terminal bar: an occasional wait for the device is fine
            it.set_postfix(loss=f"{float(out['loss']):.4f}", refresh=False)
        t_fetch = time.perf_counter()
    keys = list(sums)
    totals = [float(sums[k]) for k in keys]  # one synchronisation per epoch
    train_time = time.perf_counter() - t0
    if world > 1:
        t = torch.tensor([*totals, n_seen], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        totals, n_seen = t[:-1].tolist(), int(t[-1])
    means = {("train_loss" if k == "loss" else f"train_{k}"): v / max(n_seen, 1) for k, v in zip(keys, totals)}
    if not math.isfinite(means.get("train_loss", 0.0)):
        raise ValueError(f"training diverged: the loss is {means['train_loss']} in epoch {epoch + 1}; lower lr "
                         f"(now {cfg.lr}), keep warm-up steps, or use precision: fp32")
    rec = {"epoch": epoch + 1, "step": step, **means, "lr": opt.param_groups[0]["lr"],
           "images_per_s": n_seen / max(train_time, 1e-9), "data_wait_s": data_wait,
           "data_wait_frac": data_wait / max(train_time, 1e-9)}
    return rec, step


def _write_ood(folder: RunFolder, method, train_ds, cfg: TrainCfg, device) -> dict[str, Any]:
    """Fit the out-of-distribution model on the best checkpoint's training embeddings; write ``ood.npz``.

    At most ``cfg.ood_max_images`` training images (evenly spaced) are embedded: the fit needs the
    distribution, not every image, and this keeps the step to seconds on large runs.
    """
    from mammolens.models.ood import fit_ood

    t0 = time.perf_counter()
    ck = load_checkpoint(folder.root, "best", mmap=True)  # the weights Predictor uses by default
    clip = method.ctx.clip
    clip.load_state_dict(ck["state_dict"])  # training is over: the live model may be replaced
    n = len(train_ds)
    sel = np.unique(np.linspace(0, n - 1, min(n, cfg.ood_max_images)).round().astype(int))
    sub = torch.utils.data.Subset(train_ds, sel.tolist())
    model = RunModel(clip, None, nn.Linear(1, 1), cfg.method)  # only encode_image is used
    emb = extract_features(model, sub, cfg.batch_size, cfg.workers, device,
                           autocast_dtype(cfg.precision, device)).numpy()  # [N, D]
    ood = fit_ood(emb, checkpoint="best", epoch=int(ck.get("epoch") or 0))
    ood.save(folder.root)
    info = {"file": folder.ood.name, **ood.info, "seconds": round(time.perf_counter() - t0, 2)}
    log.info("out-of-distribution model: %d training embeddings, threshold %.3g", ood.info["n"], ood.threshold)
    return info
