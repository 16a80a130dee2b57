"""Is the contrastive training step GPU-friendly? Checked on any machine, no GPU needed.

    python experiments/step_graph.py --model biomedclip
    python experiments/step_graph.py --model tiny-clip --run-compiled   # also time eager vs compiled on this device
    python experiments/step_graph.py --model biomedclip --flops [--untrimmed]   # FLOPs: image tower vs text tower

1. ``torch._dynamo.explain`` traces the training step (``_ContrastiveStep``: image + text towers) and the
   weighted contrastive loss (with unlabelled rows) and prints the number of graphs and graph breaks. A
   graph break in a step is host work between GPU kernels; the data-dependent ones (``if tensor.any()``,
   boolean indexing) are host-device synchronisations on CUDA. The target is one graph, no break.
2. ``--run-compiled``: ``mammolens.bench.bench_train_gpu`` in ``step`` and ``train`` mode, eager and
   ``torch.compile``, on this machine's device (CPU here: shows that the compiled path runs forward and
   backward; CPU numbers say nothing about GPU speed).
3. ``--flops``: forward + backward FLOPs of one step split into the image tower (per image) and the text
   tower (per step: K x T prompts), and the text tower's share of a B=256 step. ``--untrimmed`` keeps the
   prompts padded to the full context (256 tokens for BiomedCLIP), as before prompts were trimmed.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch


def explain_step(model: str, image_size: int) -> None:
    from mammolens import losses
    from mammolens.bench import _train_parts
    from mammolens.tasks import get_task

    step, _, k = _train_parts(model, get_task("density"), image_size, torch.device("cpu"))
    t0 = time.perf_counter()
    ex = torch._dynamo.explain(step)(torch.rand(2, 1, image_size, image_size))
    _report(f"step {model} @ {image_size}", ex, f", {ex.op_count} ops ({time.perf_counter() - t0:.1f} s to trace)")
    emb = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(k, 16), dim=-1)
    labels = torch.tensor([0, 1, 2, 3, -1, 0, 1, -1])
    check, losses._check_labels = losses._check_labels, lambda labels, k: None  # the CPU-only eager check
    try:
        ex = torch._dynamo.explain(losses.weighted_contrastive_loss)(emb, txt, labels, torch.tensor(2.0))
    finally:
        losses._check_labels = check
    _report("weighted contrastive loss", ex)


def _report(what: str, ex, extra: str = "") -> None:
    print(f"{what}: {ex.graph_count} graph(s), {ex.graph_break_count} break(s){extra}")
    for b in ex.break_reasons:
        print("  break:", b.reason.splitlines()[0])
    torch._dynamo.reset()


def run_compiled(model: str, image_size: int, batch: int, steps: int) -> None:
    from mammolens.bench import bench_train_gpu

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    for mode in ("step", "train"):
        for comp in (False, True):
            t0 = time.perf_counter()
            kw = {"workdir": tempfile.mkdtemp()} if mode == "train" else {}
            r = bench_train_gpu(model, batch_size=batch, steps=steps, warmup=2, precision="bf16", device=dev,
                                mode=mode, compile=comp, image_size=image_size, peak_tflops=1.0, **kw)
            wait = f", waiting for data {r['data_wait_frac']:.0%}" if "data_wait_frac" in r else ""
            print(f"{mode:5s} {'compiled' if comp else 'eager':8s} {r['images_per_s']:8.1f} img/s{wait} "
                  f"(wall {time.perf_counter() - t0:.0f} s, {r['device']})", flush=True)


def flops(model: str, image_size: int, untrimmed: bool, batch: int = 256) -> None:
    from mammolens.bench import _train_flops
    from mammolens.models.factory import MammoCLIP
    from mammolens.tasks import get_task

    if untrimmed:
        MammoCLIP._trim_padding = lambda self, tokens: tokens
    per_image, per_step = _train_flops(model, get_task("density"), image_size, torch.device("cpu"), "bf16")
    total = batch * per_image + per_step
    print(f"{model} ({'untrimmed' if untrimmed else 'trimmed'} prompts): image tower {per_image / 1e9:.1f} GFLOP "
          f"per image, text tower {per_step / 1e12:.3f} TFLOP per step = {per_step / total:.1%} of a B={batch} step; "
          f"{total / batch / 1e9:.1f} GFLOP per image at B={batch}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="biomedclip")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--run-compiled", action="store_true")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--flops", action="store_true")
    ap.add_argument("--untrimmed", action="store_true")
    args = ap.parse_args()
    if args.flops:
        flops(args.model, args.image_size, args.untrimmed)
        return
    explain_step(args.model, args.image_size)
    if args.run_compiled:
        run_compiled(args.model, args.image_size, args.batch, args.steps)


if __name__ == "__main__":
    main()
