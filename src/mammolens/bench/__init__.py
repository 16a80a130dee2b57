"""Throughput and memory of mammolens against the naive pipeline a user would otherwise write.

One module per benchmark, each a plain function returning a JSON-ready dict (``mammolens bench`` prints
and saves them; ``driver`` runs and checks them, ``_common`` times and describes the machine):

- ``bench_preprocess``: DICOM files → preprocessed store. Ours: ``data.cache.build_cache`` (reader with
  VOI/inversion, breast mask, crop, orientation, resize, worker processes, one memory-mapped file).
  Naive: one process, per file ``pydicom.dcmread`` → ``pixel_array`` → min-max to uint8 →
  ``PIL.Image`` → open_clip's eval transform → ``np.save``.
- ``bench_inference``: CPU prediction. *model*: preprocessed images → class probabilities (naive:
  open_clip loop, fp32, batch 1, PIL transform per image; ours: batched ``Predictor.predict_tensor``
  under ``torch.inference_mode``, fp32 and bf16 autocast, the faster reported). *end-to-end*: DICOM
  files → probabilities (naive: per-file pydicom + PIL + transform + batch 1; ours:
  ``Predictor.predict(paths)`` with ``precision="fp32"`` and ``"bf16"``, the faster reported and the fp32
  ratio kept). Peak resident memory of each variant is recorded, and how far bf16 probabilities are
  from fp32 ones on the same inputs (``bf16_vs_fp32``).
- ``bench_train_gpu``: training throughput (img/s) and model FLOPs utilisation of the contrastive
  train step on random data (``mode="step"``) or of the whole ``mammolens train`` loop on a
  synthetic cache (``mode="train"``). Needs CUDA. The step is the ``contrastive`` method's, built through
  ``train.methods`` as ``train`` builds it (``train_step``).
- ``bench_shared_cpu``: the same small CPU training alone and beside K busy processes; its slowdown
  over the fair share ``1 + K / cores`` (``shared_cpu``; see ``mammolens.threads`` for why it once was 5-26x).

Every timing is the median over ``repeats`` runs after one warm-up run. ``check_targets`` compares the
ratios (ours / naive) with the targets: the issue's targets in full mode, relaxed ones in the small CI
mode (ratios only, never absolute times, so a slow or loaded CI machine does not fail spuriously).
"""

from mammolens.bench._common import GPU_TRAIN_TARGET, machine_info
from mammolens.bench.driver import (
    SECTIONS,
    TARGETS_FULL,
    TARGETS_SMALL,
    BenchCfg,
    check_targets,
    format_results,
    run_benchmarks,
)
from mammolens.bench.files import make_bench_files
from mammolens.bench.inference import bench_inference
from mammolens.bench.loader import bench_loader
from mammolens.bench.preprocess import bench_preprocess
from mammolens.bench.shared_cpu import SHARED_CPU_TARGET, bench_shared_cpu, fair_share_ratio
from mammolens.bench.train_step import PEAK_TFLOPS, bench_train_gpu

__all__ = [
    "BenchCfg",
    "SECTIONS",
    "TARGETS_FULL",
    "TARGETS_SMALL",
    "PEAK_TFLOPS",
    "SHARED_CPU_TARGET",
    "machine_info",
    "make_bench_files",
    "bench_preprocess",
    "bench_inference",
    "bench_train_gpu",
    "bench_shared_cpu",
    "fair_share_ratio",
    "run_benchmarks",
    "check_targets",
    "format_results",
    "bench_loader",
    "GPU_TRAIN_TARGET",
]
