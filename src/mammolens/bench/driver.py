"""The driver: ``BenchCfg``, ``run_benchmarks``, the ratio checks and the printed table."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable

import numpy as np

from mammolens.bench._common import GPU_TRAIN_TARGET, machine_info
from mammolens.bench.files import make_bench_files
from mammolens.bench.inference import bench_inference
from mammolens.bench.loader import bench_loader
from mammolens.bench.preprocess import bench_preprocess
from mammolens.bench.shared_cpu import SHARED_CPU_TARGET, bench_shared_cpu
from mammolens.bench.train_peer import TRAIN_PEER_TARGET, bench_train_peer
from mammolens.bench.train_step import bench_train_gpu

SECTIONS = ("preprocess", "inference", "loader", "train-gpu", "shared-cpu", "train-peer")

TARGETS_FULL: dict[str, float] = {
    "preprocess": 3.0,  # issue 6: >= 3x the naive pydicom + PIL + open_clip-transform loop
    "inference": 2.0,  # issue 6: >= 2x the naive open_clip loop (fp32, batch 1)
}
"""Ratio targets (ours / naive) of the full benchmark, from the issue."""

TARGETS_SMALL: dict[str, float] = {
    "preprocess": 1.5,
    "inference": 1.3,
}

PEER_TARGETS_FULL: dict[str, float] = {
    "preprocess": 1.5,  # issue 19: >= 1.5x dicomsdl + OpenCV LUT + INTER_AREA (same processes)
    "predict": 1.5,  # issue 19: files -> probabilities >= 1.5x the peer's DataLoader loop (tiny-clip)
}
"""Ratio targets against the competent peer (``bench.peer``), full mode."""

PEER_TARGETS_SMALL: dict[str, float] = {
    "preprocess": 0.45,
    "predict": 0.7,
}
"""Relaxed peer targets of ``--small`` (CI), regression gates rather than the goal: medians of interleaved rounds
on a noisy 2-core VM, 32 files of 2048x1664 where our fixed costs (the 256-px breast mask, pool and cache set-up)
weigh more than on 3328x2560 archives. Measured at load ~20: preprocess 0.59x, predict 0.93-1.00x; a worker
importing ``pydicom.sr`` per process (fixed in issue 19) gave 0.38x."""
"""Relaxed ratio targets of ``--small`` (CI): a 2-core, shared CI runner adds noise and tiny inputs
carry fixed costs (process start-up, model warm-up) that real archives amortise."""

@dataclass
class BenchCfg:
    """What ``run_benchmarks`` measures.

    Attributes:
        small: the quick CI mode (tiny images, tiny-clip only, relaxed targets).
        only: sections to run (``preprocess``, ``inference``, ``loader``, ``train-gpu``, ``shared-cpu``);
            empty = preprocess, inference and loader.
        workdir: where synthetic files and caches go (default: a temporary folder, removed after).
        repeats: timed runs per measurement (median reported), after one warm-up.
        image_size: ``(H, W)`` of the synthetic DICOM files.
        n_files: files in the preprocessing / end-to-end benchmarks.
        n_unique: distinct synthetic images rendered (the files repeat them; rendering is slow).
        render_scale: render at ``image_size / render_scale`` and repeat each stored value k x k.
        workers: processes for our preprocessing / file reading (default: all cores).
        models: architectures for the inference benchmark.
        n_model_images: images per model-only inference run, per model.
        batch_size: our inference batch size.
        train_model, train_batch, train_steps, train_compile, train_precision, train_mode:
            the GPU training benchmark (see ``bench_train_gpu``).
        shared_busy, shared_steps: busy processes beside training and its steps (see ``bench_shared_cpu``).
    """

    small: bool = False
    only: tuple[str, ...] = ()
    workdir: str | None = None
    repeats: int = 3
    image_size: tuple[int, int] = (3328, 2560)
    n_files: int = 48
    n_unique: int = 8
    render_scale: int = 2
    workers: int | None = None
    models: tuple[str, ...] = ("tiny-clip", "biomedclip")
    n_model_images: dict[str, int] = field(default_factory=lambda: {"tiny-clip": 128, "biomedclip": 32})
    batch_size: int = 32
    train_model: str = "biomedclip"
    train_batch: int = 256
    train_steps: int = 20
    train_compile: bool = False
    train_precision: str = "bf16"
    train_mode: str = "step"
    shared_busy: int = 2
    shared_steps: int = 6

    def __post_init__(self) -> None:
        bad = [s for s in self.only if s not in SECTIONS]
        if bad:
            raise ValueError(f"unknown benchmark section(s) {bad}; choose from {SECTIONS}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")

    @classmethod
    def small_mode(cls, **kw) -> BenchCfg:
        """The CI configuration: seconds, not minutes."""
        base = dict(small=True, repeats=3, image_size=(2048, 1664), n_files=32, n_unique=4, render_scale=4,
                    models=("tiny-clip",), n_model_images={"tiny-clip": 64}, batch_size=32)
        base.update(kw)
        return cls(**base)

    @property
    def sections(self) -> tuple[str, ...]:
        return self.only or ("preprocess", "inference", "loader")


def run_benchmarks(cfg: BenchCfg | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the configured sections; returns ``{"machine", "config", "results", "checks", "passed"}``."""
    cfg = cfg or BenchCfg()
    log = log or (lambda s: None)
    own = cfg.workdir is None
    work = Path(tempfile.mkdtemp(prefix="mammolens-bench-")) if own else Path(cfg.workdir)
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    t_start = time.perf_counter()
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    try:
        files: list[Path] = []
        if {"preprocess", "inference"} & set(cfg.sections):
            log(f"writing {cfg.n_files} synthetic DICOM files {cfg.image_size[0]}x{cfg.image_size[1]} ...")
            files = make_bench_files(work / "dicom", cfg.n_files, cfg.image_size, cfg.n_unique,
                                     render_scale=cfg.render_scale)
        if "preprocess" in cfg.sections:
            log("preprocess: naive loop vs build_cache ...")
            results["preprocess"] = bench_preprocess(files, work / "pre", workers=cfg.workers, repeats=cfg.repeats)
        if "inference" in cfg.sections:
            results["inference"] = {}
            for name in cfg.models:
                log(f"inference: {name} ...")
                n_img = cfg.n_model_images.get(name, 32)
                results["inference"][name] = bench_inference(name, files, n_model_images=n_img,
                                                             batch_size=cfg.batch_size, workers=cfg.workers,
                                                             repeats=cfg.repeats)
        if "loader" in cfg.sections:
            log("loader: cache -> training batches ...")
            results["loader"] = bench_loader(work / "loader", n_images=1024 if cfg.small else 4096,
                                             workers=cfg.workers, repeats=cfg.repeats)
        if "train-gpu" in cfg.sections:
            log("train-gpu ...")
            results["train_gpu"] = bench_train_gpu(cfg.train_model, batch_size=cfg.train_batch, steps=cfg.train_steps,
                                                   precision=cfg.train_precision, compile=cfg.train_compile,
                                                   mode=cfg.train_mode)
        if "shared-cpu" in cfg.sections:
            log(f"shared-cpu: training alone and beside {cfg.shared_busy} busy processes ...")
            results["shared_cpu"] = bench_shared_cpu(work / "shared", k=cfg.shared_busy, steps=cfg.shared_steps,
                                                     repeats=cfg.repeats)
        if "train-peer" in cfg.sections:
            log("train-peer: mammolens train vs a hand-written loop, interleaved ...")
            results["train_peer"] = bench_train_peer(None, work=work / "train_peer", epochs=2 if cfg.small else 5,
                                                     repeats=cfg.repeats)
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    checks = check_targets(results, small=cfg.small)
    cfg_d = asdict(cfg)
    machine = machine_info()
    machine["load_avg_1m_start"] = None if load_start is None else round(load_start, 2)
    return {"machine": machine, "config": cfg_d, "results": results, "checks": checks,
            "passed": all(c["ok"] for c in checks), "total_seconds": round(time.perf_counter() - t_start, 1)}


def check_targets(results: dict[str, Any], small: bool = False,
                  targets: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """One record per ratio: ``{"name", "ratio", "target", "ok"}`` (a NaN/inf/missing ratio fails).

    Speed-ups must reach their target; the shared-CPU slowdown over the fair share (``"at_most": True``)
    must stay at or below ``SHARED_CPU_TARGET`` in both modes (a ratio of ratios, safe on a loaded CI).
    """
    targets = targets or (TARGETS_SMALL if small else TARGETS_FULL)
    checks = []

    def add(name: str, ratio: Any, target: float, at_most: bool = False) -> None:
        ok = isinstance(ratio, (int, float)) and np.isfinite(ratio)
        ok = ok and (ratio <= target if at_most else ratio >= target)
        rec = {"name": name, "ratio": ratio, "target": target, "ok": bool(ok)}
        checks.append({**rec, "at_most": True} if at_most else rec)

    peer_targets = PEER_TARGETS_SMALL if small else PEER_TARGETS_FULL
    if "preprocess" in results:
        add("preprocess", results["preprocess"].get("ratio"), targets["preprocess"])
        if "peer_skipped" not in results["preprocess"] and "peer_ratio" in results["preprocess"]:
            add("preprocess/peer", results["preprocess"]["peer_ratio"], peer_targets["preprocess"])
    for model, r in results.get("inference", {}).items():
        add(f"inference/{model}/model", r.get("model_ratio"), targets["inference"])
        add(f"inference/{model}/end-to-end", r.get("e2e_ratio"), targets["inference"])
        if model == "tiny-clip" and "e2e_peer_ratio" in r:  # biomedclip's goal is the 2-core bound, not a ratio
            add(f"inference/{model}/peer", r["e2e_peer_ratio"], peer_targets["predict"])
    if "shared_cpu" in results:
        add("shared-cpu/fair-share", results["shared_cpu"].get("ratio"), SHARED_CPU_TARGET, at_most=True)
    if "train_peer" in results and not small:
        add("train-peer", results["train_peer"].get("ratio"), TRAIN_PEER_TARGET)
    if not small:  # absolute rates against the GPU target: full mode only (CI checks ratios, not speed)
        if "loader" in results:
            add("loader/feeds-gpu-target", results["loader"].get("ratio_to_gpu_target"), 1.0)
        if "train_gpu" in results and "max_memory_allocated_gib" in results["train_gpu"]:  # ran on CUDA
            add("train-gpu/target", results["train_gpu"].get("images_per_s", float("nan")) / GPU_TRAIN_TARGET, 1.0)
    return checks


def format_results(report: dict[str, Any]) -> str:
    """A short human-readable table of the report (what the CLI prints)."""
    res = report["results"]
    lines = []
    m = report["machine"]
    lines.append(f"machine: {m['cpu']} | {m['cores']} cores | torch {m['torch']} | {m['date']}")
    if "preprocess" in res:
        p = res["preprocess"]
        lines.append(
            f"preprocess  {p['n_files']} files: naive {p['naive']['items_per_s']:.1f} img/s (1 proc) | "
            f"ours {p['ours']['items_per_s']:.1f} img/s ({p['ours']['processes']} procs, "
            f"{p['ours']['per_core']:.1f}/core) | ratio {p['ratio']:.2f}x (per core {p['ratio_per_core']:.2f}x)"
            + (f" | peer {p['peer']['items_per_s']:.1f} img/s -> {p['peer_ratio']:.2f}x" if "peer" in p else
               f" | peer skipped ({p.get('peer_skipped', '')})"))
    for name, r in res.get("inference", {}).items():
        lines.append(
            f"inference {name}: model naive {r['model_naive']['items_per_s']:.1f} | ours "
            f"{r['model_ours']['items_per_s']:.1f} img/s ({r['model_ours']['chosen']}) | ratio {r['model_ratio']:.2f}x; "
            f"files->probs naive {r['e2e_naive']['items_per_s']:.1f} | ours {r['e2e_ours']['items_per_s']:.1f} img/s "
            f"({r['e2e_ours']['chosen']}) | ratio {r['e2e_ratio']:.2f}x (fp32 {r['e2e_ratio_fp32']:.2f}x); "
            + (f"peer {r['e2e_peer']['items_per_s']:.1f} img/s -> {r['e2e_peer_ratio']:.2f}x; " if "e2e_peer" in r else
               f"peer skipped ({r.get('e2e_peer_skipped', '')}); ")
            + f"data wait {r['e2e_ours'].get('data_wait_frac', float('nan')):.1%}; "
            f"bf16 vs fp32 max |dp| {r['bf16_vs_fp32']['max_abs_prob_diff']:.3f}; "
            f"peak RSS naive {r['model_naive']['peak_rss_mib']:.0f} / ours "
            f"{r['model_ours']['peak_rss_mib']:.0f} MiB")
    if "loader" in res:
        ld = res["loader"]
        per = ", ".join(f"{k} workers {v['items_per_s']:.0f}" for k, v in ld["by_workers"].items())
        lines.append(f"loader {ld['n_images']} rows {ld['size']}px B={ld['batch_size']}: {per} img/s "
                     f"({ld['ratio_to_gpu_target']:.2f}x the {ld['gpu_target']:.0f} img/s GPU target)")
    if "train_gpu" in res:
        t = res["train_gpu"]
        mfu = f"{t['mfu']:.1%}" if t.get("mfu") is not None else "n/a"
        lines.append(f"train-gpu {t['model']} {t['mode']} B={t['batch_size']} {t['precision']}"
                     f"{'+compile' if t['compile'] else ''}: {t['images_per_s']:.0f} img/s, MFU {mfu}"
                     + (f", waiting for data {t['data_wait_frac']:.1%} of the time" if "data_wait_frac" in t else ""))
    if "shared_cpu" in res:
        s = res["shared_cpu"]
        lines.append(f"shared-cpu {s['model']} {s['steps']} steps, {s['torch_threads']} threads: "
                     f"alone {s['idle_s']:.1f} s | "
                     f"beside {s['k']} busy {s['loaded_s']:.1f} s | slowdown {s['slowdown']:.2f}x, fair "
                     f"{s['fair_slowdown']:.2f}x on {s['cores']} cores -> {s['ratio']:.2f}x the fair share "
                     f"(load {s['load_avg_1m_before']} -> {s['load_avg_1m_after']})")
    if "train_peer" in res:
        t = res["train_peer"]
        lines.append(f"train-peer {t['epochs']} epochs of the demo training: ours {t['ours_s']:.1f} s | hand-written "
                     f"{t['peer_s']:.1f} s | ratio {t['ratio']:.2f}x (steady epochs {t['ours_steady_images_per_s']:.0f} "
                     f"vs {t['peer_steady_images_per_s']:.0f} img/s, {t['steady_ratio']:.2f}x; load "
                     f"{t['load_avg_1m_before']} -> {t['load_avg_1m_after']})")
    for c in report["checks"]:
        cmp = "<=" if c.get("at_most") else ">="
        lines.append(f"check {c['name']}: {c['ratio']:.2f}x vs target {cmp} {c['target']}x -> "
                     f"{'ok' if c['ok'] else 'MISSED'}")
    return "\n".join(lines)
