"""Training step: img/s and model FLOPs utilisation of the real step, built through the method seam
(``train.methods.get_method`` + ``MethodContext``, as ``train`` builds it), or the whole ``train`` loop."""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from os import PathLike
from pathlib import Path
from typing import Any

from mammolens.bench._common import available_cores, cpu_model
from mammolens.models.precision import autocast, autocast_dtype, cuda_math
from mammolens.tasks import get_task

PEAK_TFLOPS: dict[str, dict[str, float]] = {
    # dense (no sparsity) peak TFLOP/s per GPU from the vendors' data sheets
    "H100": {"bf16": 989.0, "fp32": 67.0, "tf32": 494.0},
    "H200": {"bf16": 989.0, "fp32": 67.0, "tf32": 494.0},
    "A100": {"bf16": 312.0, "fp32": 19.5, "tf32": 156.0},
    "L4": {"bf16": 121.0, "fp32": 30.3, "tf32": 60.0},
}
"""Peak throughput used for MFU (model FLOPs / s ÷ peak); pass ``peak_tflops`` for other GPUs."""


def peak_tflops_for(device_name: str, precision: str) -> float | None:
    for key, table in PEAK_TFLOPS.items():
        if key in device_name.upper():
            return table.get("bf16" if precision == "bf16" else "fp32")
    return None


def bench_train_gpu(model_name: str = "biomedclip", batch_size: int = 256, steps: int = 20, warmup: int = 5,
                    precision: str = "bf16", compile: bool = False, mode: str = "step", task: str = "density",
                    image_size: int = 224, peak_tflops: float | None = None, device: str = "cuda",
                    workdir: str | PathLike | None = None) -> dict[str, Any]:
    """Training img/s and MFU of the contrastive method.

    Args:
        mode: ``"step"``: the train loop's step (the ``contrastive`` method's ``build`` + ``training_forward`` + GPU
            augmentation + fused AdamW, channels_last, autocast) on random images already on the GPU;
            ``"train"``: ``mammolens.train.train`` end to end (data loader over a synthetic cache, logging,
            checkpoints) and its own ``images_per_s`` from ``metrics.jsonl``.
        precision: ``"bf16"`` (autocast) or ``"fp32"``.
        compile: ``torch.compile`` the step module.
        peak_tflops: the GPU's peak for MFU (default: ``PEAK_TFLOPS`` by device name).
        device: ``"cuda"`` normally; ``"cpu"`` only to test this code path.

    Returns:
        img/s, FLOPs per image at this batch size (``torch.utils.flop_counter`` on uncompiled steps of batch 1
        and 2, forward + backward: image tower per image + text tower per step / batch)
        and MFU.
    """
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("bench_train_gpu needs a CUDA GPU (none is visible); run it on a GPU machine")
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision must be 'bf16' or 'fp32', got {precision!r}")
    if mode not in ("step", "train"):
        raise ValueError(f"mode must be 'step' or 'train', got {mode!r}")
    dev = torch.device(device)
    dev_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_model()
    image_flops, step_flops = train_flops(model_name, task, image_size, dev, precision)
    flops_per_image = image_flops + step_flops / batch_size  # the text tower's per-step cost shared by the batch
    extra: dict[str, Any] = {}
    if mode == "step":
        with cuda_math(dev):  # the trainer's settings (`tf32: true`); it sets them itself in train mode
            ips = _train_step_rate(model_name, task, image_size, batch_size, steps, warmup, precision, compile, dev)
    else:
        ips, extra["data_wait_frac"] = _train_loop_rate(model_name, task, image_size, batch_size, steps, precision,
                                                        compile, dev, workdir)
    peak = peak_tflops or peak_tflops_for(dev_name, precision)
    out = {"model": model_name, "mode": mode, "device": dev_name, "batch_size": batch_size, "steps": steps,
           "precision": precision, "compile": compile, "image_size": image_size, "images_per_s": ips,
           "flops_per_image": flops_per_image, "image_flops_per_image": image_flops,
           "text_flops_per_step": step_flops, "achieved_tflops": ips * flops_per_image / 1e12,
           "peak_tflops": peak, **extra}
    out["mfu"] = out["achieved_tflops"] / peak if peak else None
    if dev.type == "cuda":
        out["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
    return out


def train_parts(model_name, task, image_size, dev):
    """The contrastive method's real training step, as ``train`` builds it: ``(method, step module, K)``."""
    import torch

    from mammolens.constants import MODALITIES
    from mammolens.models import create_model
    from mammolens.train.config import TrainCfg
    from mammolens.train.methods import MethodContext, get_method

    clip = create_model(model_name, pretrained=None, image_size=image_size).to(dev)
    if dev.type == "cuda":
        clip = clip.to(memory_format=torch.channels_last)
    t = get_task(task)
    k = len(t.class_names)
    ctx = MethodContext(cfg=TrainCfg(model=model_name, method="contrastive"), task=t, clip=clip, device=dev,
                        class_weights=torch.ones(k, device=dev), modality_weights=torch.ones(len(MODALITIES), device=dev))
    method = get_method("contrastive")(ctx)
    return method, method.build().train(), k


def _step_loss(method, step, x, labels):
    """The method's loss of one batch (all images DM)."""
    import torch

    return method.training_forward(step, {"image": x, "label": labels, "modality": torch.zeros_like(labels)})["loss"]


def train_flops(model_name, task, image_size, dev, precision) -> tuple[float, float]:
    """Forward + backward FLOPs of one contrastive step: ``(per image, per step)``.

    The image tower's FLOPs grow with the batch; the text tower's (K classes x T templates, once per step)
    do not. Counting steps of batch 1 and 2 separates them: ``per_image = F(2) - F(1)``,
    ``per_step = F(1) - per_image``. At batch B a step costs ``B * per_image + per_step``.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    method, step, k = train_parts(model_name, task, image_size, dev)

    def count(b: int) -> int:
        x = torch.rand(b, 1, image_size, image_size, device=dev)
        y = torch.arange(b, device=dev) % k
        counter = FlopCounterMode(display=False)
        with counter:
            with autocast(dev, autocast_dtype(precision, dev)):
                loss = _step_loss(method, step, x, y)
            loss.backward()
        step.zero_grad(set_to_none=True)
        return counter.get_total_flops()

    f1, f2 = count(1), count(2)
    per_image = float(f2 - f1)
    return per_image, float(f1) - per_image


def _train_step_rate(model_name, task, image_size, batch_size, steps, warmup, precision, compile, dev) -> float:
    import torch

    method, step, k = train_parts(model_name, task, image_size, dev)
    try:
        from mammolens.transforms.augment import GpuAugment

        augment = GpuAugment().to(dev)
    except ImportError:
        augment = None
    params = [p for p in step.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=dev.type == "cuda")
    fwd = torch.compile(step) if compile else step
    dtype = autocast_dtype(precision, dev)
    g = torch.Generator(device=dev).manual_seed(0)
    # uint16 cache rows → float on the device, as the data loader delivers them
    data = torch.randint(0, 65535, (batch_size, 1, image_size, image_size), generator=g, device=dev,
                         dtype=torch.int32)
    labels = torch.randint(0, k, (batch_size,), generator=g, device=dev)

    def one() -> None:
        x = (data.float() / 65535.0).contiguous(memory_format=torch.channels_last)
        if augment is not None:
            x = augment(x)
        with autocast(dev, dtype):
            loss = _step_loss(method, fwd, x, labels)
        loss.backward()
        opt.step()
        method.after_step()  # the loop's step: the temperature clamp (and adaptive weights) included
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        one()
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    _sync(dev)
    return steps * batch_size / (time.perf_counter() - t0)


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _train_loop_rate(model_name, task, image_size, batch_size, steps, precision, compile, dev,
                     workdir) -> tuple[float, float]:
    """``mammolens.train.train`` on a synthetic cache; medians of ``images_per_s`` and ``data_wait_frac``
    (the share of training time spent waiting for batches) over the epochs after the first."""
    from mammolens.data.cache import PreprocessCfg, build_cache
    from mammolens.data.synthetic import make_cohort
    from mammolens.train import train

    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix="mammolens-bench-")) if own else Path(workdir)
    try:
        src = work / "cohort"
        if not (src / "manifest.parquet").exists():
            make_cohort(src, n_patients=16, seed=0, modalities=("DM",), image_size=(256, 208), compress_fraction=0.0)
        import pandas as pd

        m = pd.read_parquet(src / "manifest.parquet")
        m["image_path"] = [str(src / p) for p in m["image_path"]]
        reps = -(-(batch_size * steps) // len(m))
        big = pd.concat([m] * reps, ignore_index=True)
        big["patient_id"] = [f"{p}-{i // len(m)}" for i, p in enumerate(big["patient_id"])]
        big["split"] = "train"
        cache = build_cache(big, work / "cache", PreprocessCfg(size=image_size), progress=False, overwrite=True)
        cfg = {"data": {"cache": str(cache)}, "task": task, "model": model_name, "method": "contrastive",
               "batch_size": batch_size, "epochs": 3, "precision": precision, "compile": compile,
               "workers": min(8, available_cores()), "out_dir": str(work / "run"), "overwrite": True,
               "device": str(dev), "max_steps_per_epoch": steps}
        run = train(cfg)
        lines = [json.loads(ln) for ln in (Path(run) / "metrics.jsonl").read_text().splitlines() if ln]
        timed = lines[1:] or lines
        return (statistics.median(ln["images_per_s"] for ln in timed),
                statistics.median(ln["data_wait_frac"] for ln in timed))
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


