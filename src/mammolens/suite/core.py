"""``run_suite``: backbones × tasks on frozen features, resumable, one table and a rank summary.

Layout of ``OUT``:

- ``cache/`` (when ``data`` is a manifest): the cache, built once;
- ``backbones/<slug>/``: a zero-shot run folder for ``random:NAME`` / ``timm:NAME`` backbones (weights as
  created: random init, or timm's), so every backbone is a run folder the feature cache can key on;
- ``features/``: ``pipeline.features.cache_features`` sets (one feature pass per backbone and cache);
- ``results/<slug>__<task>.json``: one finished (backbone, task), written atomically; a killed suite
  skips what is there (``resume``), so a new backbone costs one feature pass and its own tasks;
- ``suite.json``, ``suite.csv``, ``suite.html``: the table, ranks and paired tests (``suite.report``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["ALL_TASKS", "resolve_backbone", "run_suite"]

ALL_TASKS = ("density", "abnormality", "lesion-seg", "lesion-det", "retrieval", "vqa")


def _slug(spec: str) -> str:
    name = Path(spec).name if not re.match(r"^(random|timm):", spec) else spec.replace(":", "-")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80] or "backbone"


def resolve_backbone(spec: str, cache_dir: Path, out: Path, image_size: int | None = None) -> Path:
    """A run folder for a backbone: ``RUN`` (a run folder, as is), ``random:NAME`` (model NAME, random
    init) or ``timm:NAME`` (model ``timm:NAME`` with timm's weights), the last two as zero-shot runs made
    once under ``OUT/backbones`` with input size ``image_size`` (the suite passes the cache's tile size).

    Raises:
        FileNotFoundError: a folder that is not a run (no checkpoint).
        ValueError: an unknown model name (the message lists the choices).
    """
    m = re.match(r"^(random|timm):(.+)$", spec)
    if m is None:
        run = Path(spec)
        if not (run / "checkpoints").is_dir():
            raise FileNotFoundError(f"backbone {spec}: not a run folder (no checkpoints/); give a run folder, "
                                    "random:MODEL or timm:MODEL")
        return run
    kind, name = m.groups()
    run = out / "backbones" / _slug(spec)
    if (run / "checkpoints" / "last.pt").is_file() or (run / "checkpoints" / "best.pt").is_file():
        return run
    from mammolens.train import train
    from mammolens.train.config import cfg_from_dict

    model = name if kind == "random" else f"timm:{name}"
    cfg = {"data": {"cache": str(cache_dir)}, "task": _labelled_task(cache_dir), "model": model, "method": "zeroshot",
           "pretrained": None if kind == "random" else "timm", "out_dir": str(run), "device": "cpu", "ood": False,
           "workers": 0, "precision": "fp32", "overwrite": True}
    if image_size:
        cfg["image_size"] = int(image_size)
    train(cfg_from_dict(cfg), progress=False)
    return run


def _labelled_task(cache_dir: Path) -> str:
    """A built-in task with labels in the cache (a zero-shot run needs one; its prompts are not used here)."""
    from mammolens.data.cache import open_cache
    from mammolens.tasks import get_task

    index = open_cache(cache_dir, allow_incomplete=True).index
    for name in ("density", "pathology", "mias"):
        task = get_task(name)
        if task.label_column in index and (task.encode(index[task.label_column]) >= 0).any():
            return name
    raise ValueError(f"cache {cache_dir.name} has no density, pathology or mias labels to make a zero-shot run "
                     "of a random/timm backbone; give a run folder instead")


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, default=_plain))
    os.replace(tmp, path)


def _plain(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def run_suite(backbones: list[str], tasks: list[str] | tuple[str, ...] = ALL_TASKS, data: str | PathLike = "",
              out: str | PathLike = "suite", *, external: list[str] | tuple = (), folds: int = 3, n_boot: int = 200,
              seed: int = 0, size: int = 128, steps: int = 150, resume: bool = True, device: str = "cpu",
              progress: bool = False) -> dict[str, Any]:
    """Evaluate every backbone on every task (module docstring) and write the table.

    Args:
        backbones: run folders, ``random:NAME`` or ``timm:NAME``.
        tasks: names from ``suite.tasks.TASKS``.
        data: a manifest (.parquet/.csv, cached into ``OUT/cache`` at ``size`` px) or a cache folder.
        out: the output folder.
        external: further manifests or caches, each scored with the folds of its own patients (a separate
            block of the table, ``<task>@<name>``).
        folds: patient-grouped folds (stratified by density where present).
        n_boot: patient-bootstrap replicates of every CI.
        size: the cache's tile size when ``data`` is a manifest.
        steps: optimisation steps of each dense head per fold.
        resume: reuse ``results/*.json`` of an earlier (killed) call.

    Returns:
        The ``suite.json`` content (``table``, ``ranks``, ``paired``, ``backbones``, ``tasks``, ``timing``).

    Raises:
        ValueError: an unknown task (the message lists them), no backbones.
    """
    from mammolens.suite.report import build_report
    from mammolens.suite.tasks import TASKS

    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise ValueError(f"unknown suite task(s) {bad}; choose from: {', '.join(TASKS)}")
    if not backbones:
        raise ValueError("the suite needs at least one backbone (a run folder, random:MODEL or timm:MODEL)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sets = [("", data)] + [(_slug(str(e)).removesuffix(".parquet").removesuffix(".csv"), e) for e in external]
    results: dict[str, dict[str, dict]] = {}
    timing: dict[str, float] = {}
    for set_name, source in sets:
        cache_dir = _ensure_cache(source, out / ("cache" if not set_name else f"cache-{set_name}"), size)
        for spec in backbones:
            t0 = time.perf_counter()
            slug = _slug(spec)
            run = resolve_backbone(spec, cache_dir, out, _tile_size(cache_dir))
            res = _backbone_tasks(spec, slug, run, cache_dir, tasks, set_name, out, folds, n_boot, seed, steps, resume,
                                  device)
            results.setdefault(spec, {}).update(res)
            timing[f"{slug}{'@' + set_name if set_name else ''}"] = round(time.perf_counter() - t0, 2)
    report = build_report(results, backbones, seed=seed, n_boot=n_boot)
    report["timing_s"] = timing
    report["settings"] = {"folds": folds, "n_boot": n_boot, "seed": seed, "size": size, "steps": steps,
                          "tasks": list(tasks), "external": [str(e) for e in external]}
    from mammolens.suite.report import write_report

    write_report(report, out)
    return report


def _tile_size(cache_dir: Path) -> int:
    """The cache's tile size: a new random/timm backbone takes it as its input size (no resize)."""
    return int(json.loads((cache_dir / "cache.json").read_text())["cfg"]["size"])


def _ensure_cache(source, cache_dir: Path, size: int) -> Path:
    """A cache folder: ``source`` itself when it is one, else the manifest cached into ``cache_dir``."""
    from mammolens.data.cache import PreprocessCfg, build_cache

    src = Path(source)
    if (src / "cache.json").is_file():
        return src
    if not src.is_file():
        raise FileNotFoundError(f"suite data {src}: neither a manifest file nor a cache folder")
    if not (cache_dir / "cache.json").is_file():
        build_cache(src, cache_dir, PreprocessCfg(size=int(size)), workers=0, progress=False)
    return cache_dir


def _backbone_tasks(spec, slug, run, cache_dir, tasks, set_name, out, folds, n_boot, seed, steps, resume, device):
    from mammolens.data.cache import open_cache
    from mammolens.data.splits import patient_kfold
    from mammolens.pipeline.features import cache_features
    from mammolens.privacy import pseudonym
    from mammolens.suite.tasks import CACHE_TASKS, TASKS, TOKEN_TASKS, SuiteContext

    suffix = f"@{set_name}" if set_name else ""
    todo = [t for t in tasks if not (resume and (out / "results" / f"{slug}__{t}{suffix}.json").is_file())]
    done = {t: json.loads((out / "results" / f"{slug}__{t}{suffix}.json").read_text()) for t in tasks if t not in todo}
    if not todo:
        return {f"{t}{suffix}": r for t, r in done.items()}
    cache = open_cache(cache_dir)
    want_tokens = any(t in TOKEN_TASKS for t in todo)
    feats = _features(cache_features, run, cache, want_tokens, out, device)
    index = cache.index.iloc[feats.rows].reset_index(drop=True)
    groups = np.asarray([pseudonym(str(p), "patient") for p in index["patient_id"]])
    label = "density" if "density" in index and index["density"].astype(str).isin(list("ABCD")).all() else None
    if label is not None:
        fold = patient_kfold(index, k=folds, label_col=label, seed=seed).to_numpy()
    else:  # no stratification label: patients dealt round-robin in a seeded order
        pats = np.unique(index["patient_id"].astype(str))
        order = {p: i % folds for i, p in enumerate(np.random.default_rng(seed).permutation(pats))}
        fold = np.asarray([order[str(p)] for p in index["patient_id"]])
    encode_text = _text_encoder(run, device) if "vqa" in todo else None
    ctx = SuiteContext(index=index, rows=np.asarray(feats.rows), embeddings=np.asarray(feats.embeddings), groups=groups,
                       folds=fold, tile=int(cache.cfg.size),
                       tokens=None if feats.tokens is None else np.asarray(feats.tokens, dtype=np.float32),
                       encode_text=encode_text, n_boot=n_boot, seed=seed, steps=steps)
    for t in todo:
        t0 = time.perf_counter()
        res = TASKS[t](ctx, cache) if t in CACHE_TASKS else TASKS[t](ctx)
        res["seconds"] = round(time.perf_counter() - t0, 2)
        res["backbone"] = spec
        _write_json(out / "results" / f"{slug}__{t}{suffix}.json", res)
        done[t] = res
        log.info("suite: %s %s done in %.1f s", slug, t, res["seconds"])
    return {f"{t}{suffix}": r for t, r in done.items()}


def _features(cache_features, run, cache, tokens: bool, out: Path, device: str):
    try:
        return cache_features(run, cache, tokens=tokens, root=out / "features", device=device)
    except ValueError as e:
        if not tokens or "ViT" not in str(e):
            raise
        log.warning("suite: %s has no patch tokens (%s); dense tasks are skipped", Path(run).name, e)
        return cache_features(run, cache, tokens=False, root=out / "features", device=device)


def _text_encoder(run, device: str):
    import torch

    from mammolens.run import load_run

    model = load_run(run, device=device).model.eval()

    def encode(texts: list[str]) -> np.ndarray:
        with torch.no_grad():
            return np.concatenate([model.encode_text(texts[i:i + 64]).float().cpu().numpy()
                                   for i in range(0, len(texts), 64)])

    return encode
