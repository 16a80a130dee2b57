"""``Predictor``: load a trained run once, predict any image, aggregate whatever views an exam has.

The CLI (``mammolens predict``), the web page (``mammolens serve``) and user code all go through
this one class::

    from mammolens import Predictor
    p = Predictor.from_run("runs/density")
    result = p.predict(["study/L_CC.dcm", "study/L_MLO.dcm", "study/R_CC.dcm"])
    result.images   # one row per image: prob_A..prob_D, pred, dense, laterality, view, modality ...
    result.breasts  # one row per (study, laterality)
    result.exams    # one row per study (BI-RADS: the denser breast)
    result.errors   # files that could not be read, with the reason

Images are read by ``mammolens.io.read_image`` and preprocessed by the run's own recipe
(``PreprocessCfg`` saved in the checkpoint), so a prediction sees exactly what training saw.
Reading and preprocessing run in a pool of worker processes while the model works on the previous
batch; at most a few batches are in flight, so memory stays flat on any number of files.

Privacy: outputs carry a pseudonymous ``study`` key (a hash of the StudyInstanceUID) instead of
identifiers, and folder/file names in the ``file`` column that contain the image's PatientID or
StudyInstanceUID are pseudonymised too; ``include_ids=True`` keeps them and adds ``patient_id`` and
``study_instance_uid``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mammolens.data.cache import PreprocessCfg
from mammolens.models.precision import autocast, autocast_dtype
from mammolens.parallel import run_tasks

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".dcm", ".dicom", ".dic", ".png", ".pgm", ".tif", ".tiff", ".jpg", ".jpeg")


@dataclass
class PredictionResult:
    """Image-, breast- and exam-level predictions plus the files that failed."""

    images: pd.DataFrame
    breasts: pd.DataFrame
    exams: pd.DataFrame
    errors: pd.DataFrame
    class_names: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # source path of each ``images`` row (not exported)

    @property
    def n_failed(self) -> int:
        return len(self.errors)


def study_key(uid: str, fallback: str) -> str:
    """A short pseudonymous key for a study (no identifier leaves the machine unless asked)."""
    basis = uid or fallback
    return "study-" + hashlib.sha1(basis.encode()).hexdigest()[:10]


def _mask_ids(rel: str, meta: dict[str, Any]) -> str:
    """``rel`` with path components that hold the image's PatientID or StudyInstanceUID pseudonymised.

    Archives are often foldered by patient ID (``1234567/study1/L_CC.dcm``); without this the ``file``
    column of the tables would leak it.
    """
    pid = str(meta.get("patient_id") or "").strip()
    uid = str(meta.get("study_instance_uid") or "").strip()
    alias = "patient-" + hashlib.sha1(pid.encode()).hexdigest()[:8]
    parts = []
    for part in rel.split("/"):
        if pid and (part == pid or (len(pid) >= 4 and pid in part)):  # short IDs only as a whole name
            part = part.replace(pid, alias)
        if uid and uid in part:
            part = part.replace(uid, study_key(uid, ""))
        parts.append(part)
    return "/".join(parts)


def find_images(inputs: str | PathLike | Iterable[str | PathLike]) -> list[Path]:
    """Files to predict: a file, a folder (walked recursively) or several of them.

    In folders, files with an image suffix and suffix-less files (DICOM archives often have none)
    are taken; hidden files are skipped. Order is sorted and stable.
    """
    if isinstance(inputs, (str, PathLike)):
        inputs = [inputs]
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and not f.name.startswith(".") and (f.suffix.lower() in IMAGE_SUFFIXES or f.suffix == ""):
                    out.append(f)
        else:
            raise FileNotFoundError(f"input not found: {p}")
    return out


def _load_one(path: str, cfg_dict: dict) -> dict[str, Any]:
    """Worker: read + preprocess one file; raises on a bad file (``run_tasks`` records the reason)."""
    from mammolens.io import read_image
    from mammolens.transforms.breast import preprocess_image

    cfg = PreprocessCfg.from_dict(cfg_dict)
    img = read_image(path, dbt=cfg.dbt)
    meta = img.meta or {}
    arr, info = preprocess_image(img.pixels, cfg, laterality=meta.get("laterality") or None)
    return {
        "path": path,
        "pixels": arr,
        "meta": {k: meta.get(k) for k in ("laterality", "view", "modality", "manufacturer",
                                          "study_instance_uid", "sop_instance_uid", "patient_id")},
        "flipped": bool(info.get("flipped")),
        "bbox": info.get("bbox"),
        "orig_shape": info.get("orig_shape"),
        "error": None,
    }


def _load_item(item: tuple[str, dict]) -> dict[str, Any]:
    return _load_one(*item)  # looked up at call time, so tests can swap _load_one


class Predictor:
    """A trained run, ready to predict.

    Args:
        model: a ``RunModel`` (``model(x [B,1,S,S] in [0,1]) -> logits [B, K]``).
        task: the run's ``Task`` (class names).
        preprocess: the ``PreprocessCfg`` the run was trained with.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``...
        batch_size: images per forward pass.
        workers: processes reading/preprocessing files (default: all cores; 0 = in this process).
        name: a label for reports (the run folder's name).
        timeout: seconds per file before its reading worker is killed and replaced (default
            ``MAMMOLENS_FILE_TIMEOUT`` or 120; ``workers > 1`` only).
        precision: ``"fp32"`` (default: the numbers the evaluation reported), ``"bf16"`` (autocast;
            1.5-2x faster on CPUs with AVX-512 BF16/AMX and on GPUs, probabilities differ by ~1e-2)
            or ``"fp16"`` (CUDA only).
    """

    PRECISIONS = ("fp32", "bf16", "fp16")

    def __init__(self, model: torch.nn.Module, task, preprocess: PreprocessCfg, device: str = "auto",
                 batch_size: int = 16, workers: int | None = None, name: str = "model", precision: str = "fp32",
                 timeout: float | None = None):
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if precision not in self.PRECISIONS:
            raise ValueError(f"precision must be one of {self.PRECISIONS}, got {precision!r}")
        if precision == "fp16" and torch.device(device).type != "cuda":
            raise ValueError("precision 'fp16' needs a CUDA device; use 'bf16' on CPU")
        self.precision = precision
        self.device = torch.device(device)
        self._dtype = autocast_dtype(precision, self.device)
        self.model = model.to(self.device).eval()
        self.task = task
        self.class_names = list(task.class_names)
        self.preprocess = preprocess
        self.batch_size = int(batch_size)
        self.workers = (os.cpu_count() or 1) if workers is None else int(workers)
        self.timeout = timeout
        self.name = name
        self._dense_idx = self._dense_indices()

    @classmethod
    def from_run(cls, run_dir: str | PathLike, device: str = "auto", which: str = "best", **kw) -> "Predictor":
        """Load a run folder written by ``mammolens train``."""
        from mammolens.models.run import load_run

        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise FileNotFoundError(f"run folder not found: {run_dir} (train one with `mammolens train`)")
        run = load_run(run_dir, device="cpu", which=which)
        pre = PreprocessCfg.from_dict(run.preprocess)
        return cls(run.model, run.task, pre, device=device, name=run_dir.name, **kw)

    # ------------------------------------------------------------------------------------- helpers
    def _dense_indices(self) -> list[int] | None:
        names = self.class_names
        if set(names) >= {"C", "D"}:
            return [names.index("C"), names.index("D")]
        if "dense" in names:
            return [names.index("dense")]
        return None

    @torch.no_grad()
    def predict_tensor(self, x: torch.Tensor) -> np.ndarray:
        """Class probabilities ``[B, K]`` for images ``[B, 1, S, S]`` in [0, 1]."""
        x = x.to(self.device, non_blocking=True)
        with autocast(self.device, self._dtype):
            logits = self.model(x).float()  # [B, K]
        return torch.softmax(logits, dim=-1).cpu().numpy()

    def predict_array(self, pixels: np.ndarray, laterality: str | None = None) -> dict[str, float]:
        """Probabilities for one image given as an array (``[H, W]`` in [0, 1], any size)."""
        from mammolens.transforms.breast import preprocess_image

        arr, _ = preprocess_image(np.asarray(pixels, dtype=np.float32), self.preprocess, laterality=laterality)
        probs = self.predict_tensor(torch.from_numpy(arr.astype(np.float32) / 65535.0)[None, None])[0]
        return dict(zip(self.class_names, map(float, probs)))

    def iter_batches(self, paths: Sequence[str | PathLike]) -> Iterator[list[dict[str, Any]]]:
        """Loaded records (``{"path", "error": None, "pixels", ...}`` or ``{"path", "error": reason}``)
        in batches, in input order; at most ``2 * workers + batch`` files are in memory at once. A file
        whose worker crashes or runs past ``self.timeout`` is a record with its reason."""
        paths = [str(p) for p in paths]
        if min(self.workers, len(paths)) > 1:
            from mammolens.data.cache import preload_worker_modules

            preload_worker_modules()  # forked workers inherit the reader instead of importing it
        cfg_dict = self.preprocess.to_dict()
        window = max(2 * max(self.workers, 1), self.batch_size) + self.batch_size
        batch: list[dict[str, Any]] = []
        workers = min(self.workers, len(paths))  # no idle processes for a handful of files
        for i, rec, err in run_tasks(_load_item, ((p, cfg_dict) for p in paths), workers, timeout=self.timeout, ordered=True,
                                     max_in_flight=window):
            batch.append(rec if err is None else {"path": paths[i], "error": err})
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    # ---------------------------------------------------------------------------------- prediction
    def predict(self, inputs, *, explain: bool = False, overlay_dir: str | PathLike | None = None,
                include_ids: bool = False, progress: bool = False, root: str | PathLike | None = None,
                class_name: str | None = None) -> PredictionResult:
        """Predict files/folders; aggregate per breast and exam; collect errors.

        Args:
            inputs: a file, a folder or a list of them (see :func:`find_images`).
            explain: also compute a GradCAM heat map per image for its predicted class.
            overlay_dir: where to write overlay PNGs (``explain=True``); None keeps them in memory
                (``images["overlay_png"]`` holds PNG bytes).
            include_ids: add ``patient_id`` and ``study_instance_uid`` columns (off by default).
            progress: show a progress bar.
            root: paths in the output are shown relative to this folder (default: common parent).
            class_name: explain this class instead of each image's predicted class.
        """
        from mammolens.evaluation.aggregate import aggregate_breast, aggregate_exam

        paths = find_images(inputs)
        if class_name is not None and class_name not in self.class_names:
            raise ValueError(f"class {class_name!r} is not one of this run's classes {self.class_names}")
        if root is None and paths:
            root = Path(os.path.commonpath([str(p.parent.resolve()) for p in paths]))
        rows, errors, sources = [], [], []
        bar = _progress(len(paths), progress)
        for batch in self.iter_batches(paths):
            ok = [r for r in batch if r["error"] is None]
            for r in batch:
                if r["error"] is not None:
                    rel = _rel(r["path"], root)
                    # the reason names the file as the tables do (no absolute path into the archive)
                    reason = r["error"].replace(str(Path(r["path"]).resolve()), rel).replace(r["path"], rel)
                    errors.append({"file": rel, "reason": reason})
                    log.debug("skipped %s: %s", rel, reason)  # the caller reports errors (CLI: a short list)
            if ok:
                x = torch.from_numpy(np.stack([r["pixels"] for r in ok]).astype(np.float32) / 65535.0)[:, None]
                probs = self.predict_tensor(x)  # [B, K]
                target = probs.argmax(1) if class_name is None else np.full(len(ok), self.class_names.index(class_name))
                cams = list(classifier_cams(self.model, x.to(self.device), target)) if explain else [None] * len(ok)
                for r, p, cam in zip(ok, probs, cams):
                    rows.append(self._image_row(r, p, cam, root, overlay_dir, include_ids))
                    sources.append(r["path"])
            bar.update(len(batch))
        bar.close()
        images = pd.DataFrame(rows)
        if images.empty:
            images = pd.DataFrame(columns=["file", "study_id", "laterality", "view", "modality",
                                           *[f"prob_{c}" for c in self.class_names], "pred"])
        images_for_agg = images.assign(laterality=images["laterality"].replace("", "unknown"))
        breasts = aggregate_breast(images_for_agg, self.class_names) if len(images) else images.iloc[:0]
        exams = aggregate_exam(images_for_agg, self.class_names) if len(images) else images.iloc[:0]
        for df in (breasts, exams):
            if len(df) and self._dense_idx is not None:
                df["dense"] = df[[f"prob_{self.class_names[i]}" for i in self._dense_idx]].sum(axis=1) >= 0.5
        return PredictionResult(images, breasts, exams, pd.DataFrame(errors, columns=["file", "reason"]),
                                self.class_names, sources)

    def _image_row(self, r, p, cam, root, overlay_dir, include_ids) -> dict[str, Any]:
        meta = r["meta"]
        rel = _rel(r["path"], root)
        if not include_ids:
            rel = _mask_ids(rel, meta)
        row: dict[str, Any] = {
            "file": rel,
            "study_id": study_key(meta.get("study_instance_uid") or "", str(Path(r["path"]).parent)),
            "laterality": meta.get("laterality") or "",
            "view": meta.get("view") or "",
            "modality": meta.get("modality") or "",
            "manufacturer": meta.get("manufacturer") or "",
        }
        for c, v in zip(self.class_names, p):
            row[f"prob_{c}"] = float(v)
        row["pred"] = self.class_names[int(np.argmax(p))]
        if self._dense_idx is not None:
            row["dense"] = bool(sum(p[i] for i in self._dense_idx) >= 0.5)
        if include_ids:
            row["patient_id"] = meta.get("patient_id") or ""
            row["study_instance_uid"] = meta.get("study_instance_uid") or ""
        if cam is not None:
            from mammolens.explain.overlay import overlay

            rgb = overlay(r["pixels"].astype(np.float32) / 65535.0, cam)
            if overlay_dir is not None:
                out = Path(overlay_dir) / (Path(rel).with_suffix("").as_posix().replace("/", "__") + "_gradcam.png")
                out.parent.mkdir(parents=True, exist_ok=True)
                _save_png(out, rgb)
                row["overlay"] = str(out)
            else:
                row["overlay_png"] = _png_bytes(rgb)
        return row


    def predict_files(self, paths: Sequence[str | PathLike]) -> dict[str, Any]:
        """The web page's protocol: JSON-ready dict with overlay PNG bytes per image."""
        res = self.predict(list(paths), explain=True)
        def probs(row) -> dict[str, float]:
            return class_probs(row, self.class_names)

        images = [{
            "file": r["file"], "laterality": r["laterality"], "view": r["view"], "modality": r["modality"],
            "probs": probs(r), "pred": r["pred"], "dense": bool(r.get("dense", False)),
            "overlay_png": r.get("overlay_png"),
        } for r in res.images.to_dict("records")]
        breasts = [{"study": r["study_id"], "laterality": r["laterality"], "probs": probs(r), "pred": r["pred"],
                    "dense": bool(r.get("dense", False))} for r in res.breasts.to_dict("records")]
        exams = [{"study": r["study_id"], "probs": probs(r), "pred": r["pred"], "dense": bool(r.get("dense", False))}
                 for r in res.exams.to_dict("records")]
        errors = [{"file": Path(e["file"]).name, "reason": e["reason"]} for e in res.errors.to_dict("records")]
        return {"images": images, "breasts": breasts, "exams": exams, "errors": errors, "classes": self.class_names,
                "model": self.name}


# ------------------------------------------------------------------------------------------ utilities
def class_probs(row, class_names: Sequence[str]) -> dict[str, float]:
    """``{class: probability}`` from a prediction row's ``prob_<class>`` fields."""
    return {c: float(row[f"prob_{c}"]) for c in class_names}


def classifier_cams(model: torch.nn.Module, x: torch.Tensor, classes) -> np.ndarray:
    """GradCAM maps ``[B, H, W]`` of a run's classifier (``model(x) -> logits``) for one class per image."""
    from mammolens.explain.gradcam import GradCAM, OutputIndexTarget

    with torch.enable_grad(), GradCAM(model, forward_fn=model.forward) as cam:
        maps = cam.compute(x, OutputIndexTarget(torch.as_tensor(classes)))
    return maps.detach().cpu().numpy()


def _rel(path: str, root) -> str:
    try:
        return Path(path).resolve().relative_to(Path(root)).as_posix() if root else Path(path).name
    except ValueError:
        return Path(path).name


def _png_bytes(rgb: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _save_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(rgb).save(path)


class _NoBar:
    def update(self, n): ...
    def close(self): ...


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc="predict")
