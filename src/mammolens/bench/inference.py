"""CPU inference: model-only and DICOM-to-probabilities, batched ``Predictor`` against open_clip's batch-1 loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from mammolens.bench._common import (
    available_cores,
    eval_transform,
    fastest,
    interleaved,
    measure,
    paired_ratio,
    torch_threads,
)
from mammolens.tasks import get_task


class _ZeroShot(nn.Module):
    """``x [B,1,S,S] -> logits [B,K]`` over fixed class embeddings (what a contrastive run predicts with)."""

    def __init__(self, clip: nn.Module, text_emb: torch.Tensor):
        super().__init__()
        self.clip = clip
        self.register_buffer("text_emb", text_emb.detach().clone())  # [K, D]

    @property
    def visual(self) -> nn.Module:
        return self.clip.visual

    @property
    def image_size(self):
        return self.clip.image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clip(x, self.text_emb)  # [B, K]


def _pil_images(n: int, size: int, seed: int = 0) -> list:
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).convert("RGB") for _ in range(n)]


def _naive_probs(raw_clip, transform, text_emb, img):
    """open_clip's README loop for one PIL image: transform, encode, normalise, softmax(100 * cos)."""
    import torch

    x = transform(img).unsqueeze(0)  # [1, 3, S, S]
    with torch.no_grad():
        f = raw_clip.encode_image(x)
        f = f / f.norm(dim=-1, keepdim=True)
        return (100.0 * f @ text_emb.T).softmax(dim=-1)  # [1, K]


def bench_inference(model_name: str, files: list[Path], n_model_images: int = 64, batch_size: int = 32,
                    workers: int | None = None, repeats: int = 3, task: str = "density") -> dict[str, Any]:
    """CPU inference of one architecture (random weights): model-only and end-to-end, naive vs ours."""
    import torch

    from mammolens.data.cache import PreprocessCfg
    from mammolens.inference import Predictor
    from mammolens.models import create_model

    cores = available_cores()
    workers = cores if workers is None else int(workers)
    torch.manual_seed(0)
    clip = create_model(model_name, pretrained=None).eval()
    size = int(clip.image_size)
    with torch.inference_mode():
        text_emb = clip.class_embeddings(task).float()  # [K, D]
    model = _ZeroShot(clip, text_emb).eval()
    transform = eval_transform(size)
    raw_clip = clip.clip  # the open_clip model itself, as a user would load it
    n_params = sum(p.numel() for p in clip.visual.parameters())
    out: dict[str, Any] = {"model": model_name, "image_size": size, "visual_params_m": round(n_params / 1e6, 2),
                           "torch_threads": cores, "batch_size": batch_size}

    with torch_threads(cores):
        # ---- (a) model only: preprocessed images → probabilities
        pils = _pil_images(n_model_images, size)
        x_all = torch.from_numpy(np.stack([np.asarray(p)[..., 0] for p in pils]).astype(np.float32) / 255.0)[:, None]

        def naive_model() -> int:
            for img in pils:
                _naive_probs(raw_clip, transform, text_emb, img)
            return len(pils)

        preds = {prec: Predictor(model, get_task(task), PreprocessCfg(size=size), device="cpu", batch_size=batch_size,
                                 workers=workers, precision=prec) for prec in ("fp32", "bf16")}

        def batched_probs(p: Predictor) -> np.ndarray:
            with torch.inference_mode():
                return np.concatenate([p.predict_tensor(x_all[i : i + batch_size])
                                       for i in range(0, len(x_all), batch_size)])

        out["model_naive"] = measure(naive_model, repeats, precision="fp32", batch_size=1)
        variants = {prec: measure(lambda p=p: len(batched_probs(p)), repeats, precision=prec)
                    for prec, p in preds.items()}
        best = fastest(variants)
        out["model_ours_variants"] = variants
        out["model_ours"] = {**variants[best], "chosen": best, "batch_size": batch_size}
        out["model_ratio"] = variants[best]["items_per_s"] / out["model_naive"]["items_per_s"]
        out["model_ratio_fp32"] = variants["fp32"]["items_per_s"] / out["model_naive"]["items_per_s"]
        # what bf16 costs in accuracy, on the same inputs (random weights: a numerical check, not a clinical one)
        p32, p16 = batched_probs(preds["fp32"]), batched_probs(preds["bf16"])
        out["bf16_vs_fp32"] = {"max_abs_prob_diff": float(np.abs(p32 - p16).max()),
                               "top1_agreement": float((p32.argmax(1) == p16.argmax(1)).mean())}

        # ---- (b) end to end: DICOM files → probabilities
        def naive_e2e() -> int:
            import pydicom
            from PIL import Image

            for f in files:
                ds = pydicom.dcmread(f)
                arr = ds.pixel_array.astype(np.float32)
                arr = (arr - arr.min()) / max(float(arr.max() - arr.min()), 1e-8)
                img = Image.fromarray((arr * 255).astype(np.uint8)).convert("RGB")
                _naive_probs(raw_clip, transform, text_emb, img)
            return len(files)

        def ours_e2e(p) -> Callable[[], int]:
            def run() -> int:
                res = p.predict([str(f) for f in files])
                if res.n_failed:
                    raise RuntimeError(f"Predictor failed on {res.n_failed} benchmark files: {res.errors.head()}")
                return len(res.images)

            return run

        out["e2e_naive"] = measure(naive_e2e, repeats, batch_size=1)
        # ours (fp32, bf16) and the competent peer in interleaved rounds; the data-wait fraction of each of ours
        from mammolens.bench.peer import peer_available, peer_predict

        skipped = peer_available()
        waits: dict[str, list[float]] = {prec: [] for prec in preds}

        def timed(prec: str) -> Callable[[], int]:
            run = ours_e2e(preds[prec])

            def go() -> int:
                n = run()
                waits[prec].append(preds[prec].last_timing.get("data_wait_frac", float("nan")))
                return n

            return go

        fns = {prec: timed(prec) for prec in preds}
        if skipped is None:
            fns["peer"] = lambda: len(peer_predict(raw_clip, text_emb, files, size, batch_size=batch_size,
                                                   workers=workers, precision="bf16"))
        runs = interleaved(fns, max(repeats, 3) if skipped is None else repeats)
        e2e = {prec: {**runs[prec], "batch_size": batch_size, "workers": workers, "precision": prec,
                      "data_wait_frac": float(np.median(waits[prec]))} for prec in preds}
        best = fastest(e2e)
        if skipped is None:
            out["e2e_peer"] = {**runs["peer"], "precision": "bf16", "batch_size": batch_size, "workers": workers}
            out["e2e_peer_ratio"] = paired_ratio(runs, best, "peer")
        else:
            out["e2e_peer_skipped"] = skipped
        out["e2e_ours_variants"] = e2e
        out["e2e_ours"] = {**e2e[best], "chosen": best}
        out["e2e_ratio"] = e2e[best]["items_per_s"] / out["e2e_naive"]["items_per_s"]
        out["e2e_ratio_fp32"] = e2e["fp32"]["items_per_s"] / out["e2e_naive"]["items_per_s"]
        out["n_files"] = len(files)
        out["n_model_images"] = n_model_images
    return out


