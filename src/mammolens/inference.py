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

Quality gate: every image passes ``transforms.quality.check_image`` (size, finite, not constant, breast
area, grey levels) in the worker and, when the run has ``ood.npz``, the out-of-distribution score of its
embedding (``models.ood``) after the forward pass. Images that fail keep their row in ``images`` with
``assessable=False`` and ``quality_reason``, no probabilities/prediction, and are left out of the breast
and exam aggregation (and of DICOM SR outputs).

Images go through ``pipeline.prepare`` (read by ``mammolens.io.read_image``, header gate, quality gate,
preprocessed by the run's own recipe, the ``PreprocessCfg`` saved in the checkpoint): the function the
cache builder uses, so a prediction sees exactly what training saw.
Reading and preprocessing run in a pool of worker processes while the model works on the previous
batch; at most a few batches are in flight, so memory stays flat on any number of files.

Privacy: outputs carry a pseudonymous ``study`` key (a keyed hash of the StudyInstanceUID, see
``mammolens.privacy``) instead of identifiers, and folder/file names in the ``file`` column and in
error rows that contain a PatientID, a word of the PatientName (any case or separator), the
AccessionNumber or a Study/Series/SOP Instance UID are pseudonymised too; ``include_ids=True`` keeps them
and adds ``patient_id`` and ``study_instance_uid``. File names that are not valid UTF-8 are shown escaped
(``privacy.display_path``); overlay files get bounded names (:func:`overlay_name`).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import stat
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mammolens.data.cache import PreprocessCfg
from mammolens.explain.cams import classifier_cams, heatmap_on_original  # noqa: F401  (moved to explain.cams; importable here for one release)
from mammolens.io.gating import PROCESSING_DUPLICATE, processing_duplicates
from mammolens.io.naming import parse_view_name, read_sidecar
from mammolens.models.precision import autocast_dtype
from mammolens.pipeline import prepare as _prep  # looked up at call time (tests count the calls)
from mammolens.pipeline.aggregate import add_dense, dense_indices
from mammolens.pipeline.executor import get_executor, prefetch
from mammolens.privacy import display_path, ids_of, pseudonym, relative_path, scrub_path, scrub_text
from mammolens.tasks import dense_classes_of
from mammolens.transforms.quality import QualityCfg

log = logging.getLogger(__name__)

SIDECAR_HINT = "give --sidecar to group them"  # Predictor.predict's default grouping hint (the predict CLI's)
OOD_WORDS = "outside the training distribution"  # what every surface says of an image above the OOD threshold
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
    warnings: list[str] = field(default_factory=list)  # one line each, e.g. rasters without study information
    outside: bool = False  # the set as a whole lies outside the training distribution (models.ood set rule)

    @property
    def n_failed(self) -> int:
        return len(self.errors)


def study_key(uid: str, fallback: str) -> str:
    """A pseudonymous key for a study (no identifier leaves the machine unless asked)."""
    return pseudonym(uid or fallback, "study")


def find_images(inputs: str | PathLike | Iterable[str | PathLike]) -> list[Path]:
    """Files to predict: a file, a folder (walked recursively) or several of them.

    In folders, files with an image suffix and suffix-less files (DICOM archives often have none)
    are taken; hidden files are skipped. Order is sorted and stable. Entries that are not regular files
    (FIFOs, devices, symlink loops, folders named ``*.dcm``) are left out: :func:`find_inputs` lists them.
    """
    return find_inputs(inputs)[0]


def file_type_problem(path: str | PathLike) -> str | None:
    """Why ``path`` cannot be an image file, from ``os.lstat``/``os.stat`` alone (nothing is opened, so a
    FIFO or a device never blocks); None for a regular file (or a symlink to one)."""
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symlink loop: the link never reaches a file"
        return f"broken symlink or unreadable entry ({e.strerror})"
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory, not an image file"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe), not an image file: never opened"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device, not an image file: never opened"
    if stat.S_ISSOCK(mode):
        return "a socket, not an image file"
    return "not a regular file"


def _candidate(name: str) -> bool:
    suffix = os.path.splitext(name)[1]
    return not name.startswith(".") and (suffix.lower() in IMAGE_SUFFIXES or suffix == "")


def find_inputs(inputs: str | PathLike | Iterable[str | PathLike]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """``(files, problems)``: the files :func:`find_images` returns, and ``(path, reason)`` for every entry
    with an image name (or a given input) that is not a regular file (:func:`file_type_problem`): FIFOs,
    devices, symlink loops, folders named ``*.dcm``. Folders are walked without following symlinked
    folders (a loop cannot recurse). A given input that does not exist raises ``FileNotFoundError``."""
    if isinstance(inputs, (str, PathLike)):
        inputs = [inputs]
    out: list[Path] = []
    problems: list[tuple[Path, str]] = []
    for item in inputs:
        p = Path(item)
        if not os.path.lexists(p):
            raise FileNotFoundError(f"input not found: {display_path(p)}")
        if os.path.isdir(p):
            found: list[Path] = []
            for dirpath, dirnames, filenames in os.walk(p):
                d = Path(dirpath)
                dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
                for n in dirnames:
                    if os.path.splitext(n)[1].lower() in IMAGE_SUFFIXES:  # a folder named x.dcm: listed, walked
                        problems.append((d / n, "a directory, not an image file"))
                for n in filenames:
                    if _candidate(n):
                        found.append(d / n)
            for f in sorted(found):
                why = file_type_problem(f)
                if why is None:
                    out.append(f)
                else:
                    problems.append((f, why))
            continue
        why = file_type_problem(p)
        if why is None:
            out.append(p)
        else:
            problems.append((p, why))
    return out, sorted(set(problems))


def _lexical_rel(path: Path, root) -> str:
    """``path`` relative to ``root`` with only its parent resolved (a symlink loop cannot be resolved)."""
    try:
        return (path.parent.resolve() / path.name).relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return path.name


def overlay_name(rel: str, suffix: str = "_gradcam.png") -> str:
    """A bounded, filesystem-safe overlay file name for an image shown as ``rel`` in the tables: a short
    ASCII stem of its file name and 12 hex of a hash of ``rel`` (unique per image), e.g.
    ``L_CC_3f9a0c1d2e4b_gradcam.png``; never longer than 96 bytes whatever the input path.

    ``rel`` is the already scrubbed name (``images.csv``'s ``file``), so the hash reveals nothing the table
    does not show."""
    shown = display_path(rel)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(shown).stem).strip("._")[:40] or "image"
    digest = hashlib.sha256(shown.encode("utf-8")).hexdigest()[:12]
    return f"{stem}_{digest}{suffix}"


DISPLAY_MAX_SIDE = 2048  # heat maps are drawn on a copy of the original at most this long (memory stays flat)


def _load_one(path: str, cfg_dict: dict, quality: dict | None = None, display: int = 0) -> dict[str, Any]:
    """Worker: ``pipeline.prepare`` one file (read, gate, quality-check, preprocess); raises on an
    unreadable file (the ``Executor`` records the reason); gate and quality failures come back as records.

    ``display > 0`` also returns ``display`` (a uint8 copy of the original image, longest side
    ``<= display``, see ``transforms.breast.display_copy``) and ``geometry`` (``Prepared.geometry``) so
    that a heat map can be drawn on the original image rather than on the model's tile.
    """
    p = _prep.prepare(path, PreprocessCfg.from_dict(cfg_dict), QualityCfg.from_dict(quality), display=display)
    if p.status == "refused":  # never preprocessed, never predicted: listed in errors with the reason
        return {"path": path, "error": p.reason}
    ref = p.reference  # read with the image (io.dicom's meta["source_reference"]): the header is parsed once
    meta = {**p.meta, "patient_name": ref.get("PatientName", ""), "accession_number": ref.get("AccessionNumber", "")}
    if p.status == "not_assessable":
        return {"path": path, "pixels": None, "meta": meta, "error": None, "quality_reason": p.reason,
                "dicom_ref": ref}
    rec = {
        "path": path,
        "pixels": p.pixels,
        "meta": meta,
        "flipped": bool(p.geometry.get("flipped")),
        "bbox": p.geometry.get("bbox"),
        "orig_shape": p.geometry.get("orig_shape"),
        "error": None,
        "quality_reason": "",
        "dicom_ref": ref,  # what the SR / Secondary Capture copy (io.dicom_out.source_reference)
    }
    if display > 0:
        rec["display"] = p.display
        rec["geometry"] = p.geometry
    return rec


def _load_item(item: tuple) -> dict[str, Any]:
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
        quality: the image quality gate's thresholds (default ``QualityCfg()``).
        ood: the run's ``OODModel`` (``models.ood``); None skips the out-of-distribution check.
    """

    PRECISIONS = ("fp32", "bf16", "fp16")

    def __init__(self, model: torch.nn.Module, task, preprocess: PreprocessCfg, device: str = "auto",
                 batch_size: int = 16, workers: int | None = None, name: str = "model", precision: str = "fp32",
                 quality: QualityCfg | None = None, ood=None, timeout: float | None = None):
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
        # what produced the predictions (filled from the run by from_run): model, task, method, run folder
        self.model_info = {"name": name, "task": getattr(task, "name", ""), "method": "", "run": ""}
        self._dense_idx = dense_indices(self.class_names, dense_classes_of(task))  # Task.dense_classes
        self.quality = quality or QualityCfg()
        self.ood = ood if self.quality.enabled and self.quality.ood else None
        self.random_weights: str | None = None  # why the run's predictions come from random weights (from_run)
        # the last predict's timing: total_s, data_wait_s (the model waiting for files), data_wait_frac
        self.last_timing: dict[str, float] = {}

    @classmethod
    def from_run(cls, run_dir: str | PathLike, device: str = "auto", which: str = "best", **kw) -> Predictor:
        """Load a run folder written by ``mammolens train``."""
        from mammolens.run import load_run

        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise FileNotFoundError(f"run folder not found: {run_dir} (train one with `mammolens train`)")
        run = load_run(run_dir, device="cpu", which=which)
        pre = PreprocessCfg.from_dict(run.preprocess)
        p = cls(run.model, run.task, pre, device=device, name=run_dir.name, ood=_run_ood(run_dir, which), **kw)
        p.model_info = {"name": str(run.cfg.get("model", "")), "task": run.task.name, "method": run.method,
                        "run": run_dir.name}
        p.random_weights = random_weights_of(run)
        return p

    # ------------------------------------------------------------------------------------- helpers
    def predict_tensor(self, x: torch.Tensor) -> np.ndarray:
        """Class probabilities ``[B, K]`` for images ``[B, 1, S, S]`` in [0, 1] (any ``S``: ``pipeline.encode``
        resizes to the run's input size)."""
        from mammolens.pipeline import encode as _enc

        return _enc.encode(self.model, [x], ("probs",), device=self.device, precision=self._dtype,
                           task=self.task)["probs"]

    def predict_array(self, pixels: np.ndarray, laterality: str | None = None) -> dict[str, float]:
        """Probabilities for one image given as an array (``[H, W]`` in [0, 1], any size; no header gate,
        no quality gate: ``pipeline.prepare`` preprocesses it)."""
        p = _prep.prepare(np.asarray(pixels, dtype=np.float32), self.preprocess, None, laterality=laterality)
        probs = self.predict_tensor(torch.from_numpy(p.pixels.astype(np.float32) / 65535.0)[None, None])[0]
        return dict(zip(self.class_names, map(float, probs)))

    def iter_batches(self, paths: Sequence[str | PathLike], display: int = 0) -> Iterator[list[dict[str, Any]]]:
        """Loaded records (``{"path", "error": None, "pixels", ...}`` or ``{"path", "error": reason}``)
        in batches, in input order; at most ``2 * workers + batch`` files are in memory at once. A file
        whose worker crashes or runs past ``self.timeout`` is a record with its reason. ``display > 0``
        adds the original image's display copy (see ``_load_one``)."""
        paths = [str(p) for p in paths]
        if min(self.workers, len(paths)) > 1:
            from mammolens.data.cache import preload_worker_modules

            preload_worker_modules()  # forked workers inherit the reader instead of importing it
        cfg_dict, quality = self.preprocess.to_dict(), self.quality.to_dict()
        window = max(2 * max(self.workers, 1), self.batch_size) + self.batch_size
        batch: list[dict[str, Any]] = []
        workers = min(self.workers, len(paths))  # no idle processes for a handful of files
        items = ((p, cfg_dict, quality, display) for p in paths)
        results = get_executor("local", workers=workers).map(_load_item, items, ordered=True, timeout=self.timeout,
                                                             window=window)
        if workers > 1:  # the workers go on reading while the caller runs the model on the last batch
            results = prefetch(results, window)
        for i, rec, err in results:
            batch.append(rec if err is None else {"path": paths[i], "error": err})
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    # ---------------------------------------------------------------------------------- prediction
    def predict(self, inputs, *, explain: bool = False, overlay_dir: str | PathLike | None = None,
                include_ids: bool = False, progress: bool = False, root: str | PathLike | None = None,
                class_name: str | None = None, sidecar: str | PathLike | None = None,
                on_image=None, grouping_hint: str | None = SIDECAR_HINT) -> PredictionResult:
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
            sidecar: a CSV (``path, patient, study, laterality, view``; ``io.naming.read_sidecar``) that
                groups files into exams and names their side and view; its values win over headers.
            on_image: called as ``on_image(row, record, rgb)`` for every predicted image, with its
                ``images`` row, the worker's record (``path``, ``meta``, ``dicom_ref``...) and the overlay
                RGB array (None without ``explain``): the DICOM outputs are written from it, so nothing is
                read twice.
            grouping_hint: the end of the "without study information" warning: how the caller's user can group
                the files (``predict`` says ``give --sidecar``, the web page its sidecar field); None when they
                cannot (``explain``).

        Images whose header says they are not mammograms are listed in ``errors`` ("not a mammogram:
        ..."), and so is a For Processing image whose view also came For Presentation; neither gets a
        density. Without a StudyInstanceUID or a sidecar study, each file is its own exam (one warning).
        """
        from mammolens.pipeline.aggregate import aggregate_breast, aggregate_exam

        paths, problems = find_inputs(inputs)
        hints = read_sidecar(sidecar) if sidecar is not None else {}
        if class_name is not None and class_name not in self.class_names:
            raise ValueError(f"class {class_name!r} is not one of this run's classes {self.class_names}")
        if root is None and (paths or problems):
            root = Path(os.path.commonpath([str(p.parent.resolve()) for p in [*paths, *(q for q, _ in problems)]]))
        rows, failed, sources, intents = [], [], [], []
        for q, why in problems:  # FIFOs, devices, loops, folders named *.dcm: listed, never opened
            failed.append((str(q), display_path(_lexical_rel(q, root)), why))
        seen_ids: set[tuple[str, str]] = set()  # identifiers of the images read: scrubbed from error rows too
        no_study = 0

        def add(row: dict[str, Any], r: dict[str, Any]) -> None:  # an images row, its source file and its intent
            rows.append(row)
            sources.append(r["path"])
            intents.append(r["meta"].get("presentation_intent") or "")

        first_sop: dict[str, str] = {}  # SOPInstanceUID -> the file shown for it: a repeated image counts once

        bar = _progress(len(paths), progress)
        timing = {"data_wait_s": 0.0, "t0": time.perf_counter()}
        for batch in _timed(self.iter_batches(paths, display=DISPLAY_MAX_SIDE if explain else 0), timing):
            for r in batch:
                sop = str((r.get("meta") or {}).get("sop_instance_uid") or "") if r["error"] is None else ""
                if sop and sop in first_sop:
                    r["error"] = f"duplicate SOPInstanceUID: the same image as {first_sop[sop]}; not counted"
                elif sop:
                    first_sop[sop] = display_path(relative_path(r["path"], root))
            ok = [r for r in batch if r["error"] is None and not r.get("quality_reason")]
            no_study += sum(_apply_grouping(r, hints) for r in batch if r["error"] is None)
            for r in batch:
                if r["error"] is not None:
                    rel = relative_path(r["path"], root)
                    # the reason names the file as the tables do (no absolute path into the archive)
                    reason = r["error"].replace(str(Path(r["path"]).resolve()), rel).replace(r["path"], rel)
                    failed.append((r["path"], display_path(rel), display_path(reason)))
                else:
                    seen_ids.update((k, str(v)) for k, v in ids_of(r["meta"] or {}))
            for r in batch:  # failed the image checks in the worker: a row without a density
                if r["error"] is None and r.get("quality_reason"):
                    add(self._not_assessable_row(r, r["quality_reason"], root, include_ids), r)
            if ok:
                x = torch.from_numpy(np.stack([r["pixels"] for r in ok]).astype(np.float32) / 65535.0)[:, None]
                probs, scores = self._probs_and_ood(x)  # [B, K], [B]
                passed = [i for i, sc in enumerate(scores) if not sc > self.ood.threshold] if self.ood else list(range(len(ok)))
                for i in sorted(set(range(len(ok))) - set(passed)):
                    reason = (f"not assessable: {OOD_WORDS} (out-of-distribution score {scores[i]:.3g} > threshold "
                              f"{self.ood.threshold:.3g})")
                    add(self._not_assessable_row(ok[i], reason, root, include_ids, float(scores[i])), ok[i])
                x, ok, probs, scores = x[passed], [ok[i] for i in passed], probs[passed], scores[passed]
                target = probs.argmax(1) if class_name is None else np.full(len(ok), self.class_names.index(class_name))
                cams = list(classifier_cams(self.model, x.to(self.device), target)) if explain and ok else [None] * len(ok)
                for r, p, k, cam, sc in zip(ok, probs, target, cams, scores):
                    row, rgb = self._image_row(r, p, cam, root, overlay_dir, include_ids, float(sc), int(k))
                    add(row, r)
                    if on_image is not None:
                        on_image(row, r, rgb)
            bar.update(len(batch))
        bar.close()
        total = time.perf_counter() - timing["t0"]
        self.last_timing = {"total_s": total, "data_wait_s": timing["data_wait_s"],
                            "data_wait_frac": timing["data_wait_s"] / total if total > 0 else 0.0}
        special = {str(q) for q, _ in problems}  # never opened, not even for their header's identifiers
        own = [[]] * len(failed) if include_ids else self._header_ids([path for path, _, _ in failed], special)
        errors = [_error_row(rel, reason, [*seen_ids, *ids], include_ids) for (_, rel, reason), ids in zip(failed, own)]
        for e in errors:
            log.debug("skipped %s: %s", e["file"], e["reason"])
        rows, sources, skipped = _drop_processing_duplicates(rows, sources, intents)  # files already scrubbed
        errors += skipped
        warnings = []
        if no_study:
            warnings.append(f"{no_study} image file(s) without study information: each treated as its own exam"
                            + (f"; {grouping_hint}" if grouping_hint else ""))
            log.warning(warnings[-1])
        images = pd.DataFrame(rows)
        outside = self._set_outside(images)
        if outside:
            warnings.append(outside)
            log.warning(outside)
        if images.empty:
            images = pd.DataFrame(columns=["file", "study_id", "laterality", "view", "modality",
                                           *[f"prob_{c}" for c in self.class_names], "pred", "assessable",
                                           "quality_reason"])
        images_for_agg = images[images["assessable"].astype(bool)] if len(images) else images
        images_for_agg = images_for_agg.assign(laterality=images_for_agg["laterality"].replace("", "unknown"))
        breasts = aggregate_breast(images_for_agg, self.class_names) if len(images_for_agg) else images.iloc[:0, :0]
        exams = aggregate_exam(images_for_agg, self.class_names) if len(images_for_agg) else images.iloc[:0, :0]
        for df in (breasts, exams):
            if len(df):
                add_dense(df, self.class_names, self._dense_idx)
        return PredictionResult(images, breasts, exams, pd.DataFrame(errors, columns=["file", "reason"]),
                                self.class_names, sources, warnings, bool(outside))

    def _set_outside(self, images: pd.DataFrame) -> str | None:
        """The warning when the scored images, as a set, lie outside the training distribution
        (``OODModel.set_outside``: median score above the set threshold), else None."""
        if self.ood is None or images.empty or "ood_score" not in images:
            return None
        scores = images["ood_score"].to_numpy(dtype=np.float64)
        if not self.ood.set_outside(scores):
            return None
        n = int(np.isfinite(scores).sum())
        return (f"these {n} images are {OOD_WORDS}: their median out-of-distribution score "
                f"{np.nanmedian(scores):.3g} is above {self.ood.set_threshold:.3g}; the model was not trained on images "
                "like these and its predictions cannot be trusted")

    def _header_ids(self, paths: list[str], skip: set[str] = frozenset()) -> list[list[tuple[str, object]]]:
        """The header identifiers of files that failed, read in the worker pool (a hostile header can crash
        or hang a parser: not in this process); a file whose header cannot be read, or in ``skip`` (not a
        regular file), gives none."""
        out: list[list[tuple[str, object]]] = [[] for _ in paths]
        todo = [i for i, q in enumerate(paths) if q not in skip]
        ex = get_executor("local", workers=min(self.workers, len(todo)))
        for j, ids, err in ex.map(_header_ids, [paths[i] for i in todo], ordered=False, timeout=self.timeout):
            out[todo[j]] = ids if err is None else []
        return out

    def _probs_and_ood(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities ``[B, K]`` and out-of-distribution scores ``[B]`` (NaN without an OOD model) from one
        forward pass of the image tower (``pipeline.encode``, called once per batch: the workers keep reading
        the next files meanwhile)."""
        from mammolens.pipeline import encode as _enc

        if self.ood is None:
            return self.predict_tensor(x), np.full(len(x), np.nan)
        out = _enc.encode(self.model, [x], ("probs", "embedding"), device=self.device, precision=self._dtype,
                          task=self.task)  # [B, K], [B, D]
        return out["probs"], self.ood.score(out["embedding"])

    def _row_base(self, r, root, include_ids) -> dict[str, Any]:
        meta = r["meta"]
        rel = relative_path(r["path"], root) if include_ids else scrub_path(r["path"], ids_of(meta), root)
        row: dict[str, Any] = {
            "file": display_path(rel),  # non-UTF-8 bytes of a file name shown as \xNN
            "study_id": study_key(r.get("group") or meta.get("study_instance_uid") or "", str(Path(r["path"]).parent)),
            "laterality": meta.get("laterality") or "",
            "view": meta.get("view") or "",
            "modality": meta.get("modality") or "",
            "manufacturer": meta.get("manufacturer") or "",
        }
        if include_ids:
            row["patient_id"] = meta.get("patient_id") or ""
            row["study_instance_uid"] = meta.get("study_instance_uid") or ""
        return row

    def _not_assessable_row(self, r, reason: str, root, include_ids, score: float = float("nan")) -> dict[str, Any]:
        """An ``images`` row for an image that failed the quality gate: the reason, no density."""
        row = self._row_base(r, root, include_ids)
        log.debug("%s: %s", row["file"], reason)  # the caller summarises (CLI: one line; images.csv)
        row.update({f"prob_{c}": float("nan") for c in self.class_names})
        row["pred"] = None
        if self._dense_idx is not None:
            row["dense"] = None
        row.update(assessable=False, quality_reason=reason, ood_score=score)
        return row

    def _image_row(self, r, p, cam, root, overlay_dir, include_ids, score: float = float("nan"),
                   explained: int | None = None) -> tuple[dict[str, Any], np.ndarray | None]:
        """An ``images`` row for a predicted image and its overlay RGB (None without a heat map)."""
        row = self._row_base(r, root, include_ids)
        rel = row["file"]
        for c, v in zip(self.class_names, p):
            row[f"prob_{c}"] = float(v)
        row["pred"] = self.class_names[int(np.argmax(p))]
        if self._dense_idx is not None:
            row["dense"] = row["pred"] in {self.class_names[i] for i in self._dense_idx}  # Task.dense_flag's rule
        row.update(assessable=True, quality_reason="", ood_score=score)
        rgb = None
        if cam is not None:
            c = self.class_names[int(np.argmax(p)) if explained is None else explained]
            rgb = heatmap_on_original(r["display"], cam, r["geometry"], c, float(p[self.class_names.index(c)]))
            row["gradcam_class"] = c
            if overlay_dir is not None:  # bounded name: a long or deep input path cannot exceed NAME_MAX
                out = Path(overlay_dir) / overlay_name(rel)
                out.parent.mkdir(parents=True, exist_ok=True)
                _save_png(out, rgb)
                row["overlay"] = str(out)
            else:
                row["overlay_png"] = _png_bytes(rgb)
        return row, rgb


    def predict_files(self, paths: Sequence[str | PathLike], sidecar: str | PathLike | None = None) -> dict[str, Any]:
        """The web page's protocol: JSON-ready dict with overlay PNG bytes per image, the task's wording
        (``task``: ``Task.wording``), ``random_weights`` and, per image, ``ood`` (outside the training
        distribution). ``sidecar``: a CSV grouping the files (``predict``'s ``--sidecar``)."""
        res = self.predict(list(paths), explain=True, sidecar=sidecar,
                           grouping_hint="add a sidecar CSV (path, patient, study, laterality, view) to group them")
        has_dense = self._dense_idx is not None

        def dense(r):  # None for a task without a dense rule (no dense wording is shown), never a made-up False
            return bool(r.get("dense", False)) if has_dense else None

        def probs(row) -> dict[str, float]:
            return class_probs(row, self.class_names)

        images = [{
            "file": r["file"], "laterality": r["laterality"], "view": r["view"], "modality": r["modality"],
            "assessable": bool(r["assessable"]), "quality_reason": r["quality_reason"],
            # a not-assessable image has no density: null, never NaN (JSON) nor a made-up class
            "probs": probs(r) if r["assessable"] else None, "pred": r["pred"] if r["assessable"] else None,
            "dense": dense(r) if r["assessable"] else None,
            "ood": OOD_WORDS in str(r["quality_reason"] or "") or res.outside,
            "overlay_png": r.get("overlay_png") if isinstance(r.get("overlay_png"), bytes) else None,
            "gradcam_class": r.get("gradcam_class") if isinstance(r.get("overlay_png"), bytes) else None,
        } for r in res.images.to_dict("records")]
        breasts = [{"study": r["study_id"], "laterality": r["laterality"], "probs": probs(r), "pred": r["pred"],
                    "dense": dense(r)} for r in res.breasts.to_dict("records")]
        exams = [{"study": r["study_id"], "probs": probs(r), "pred": r["pred"], "dense": dense(r)}
                 for r in res.exams.to_dict("records")]
        errors = [{"file": Path(e["file"]).name, "reason": e["reason"]} for e in res.errors.to_dict("records")]
        return {"images": images, "breasts": breasts, "exams": exams, "errors": errors, "classes": self.class_names,
                "model": self.name, "warnings": list(res.warnings), "task": task_wording(self.task),
                "random_weights": self.random_weights, "outside_training_distribution": res.outside}


# ------------------------------------------------------------------------------------------ grouping
def _timed(batches: Iterator, timing: dict) -> Iterator:
    """``batches``, adding the time spent waiting for each one to ``timing["data_wait_s"]`` (the model's wait
    for data: ``Predictor.last_timing``)."""
    while True:
        t = time.perf_counter()
        batch = next(batches, None)
        timing["data_wait_s"] += time.perf_counter() - t
        if batch is None:
            return
        yield batch


def _apply_grouping(r: dict[str, Any], hints: dict[Path, dict[str, str]]) -> bool:
    """Fill a loaded record's study group, laterality and view from the sidecar, else the file name.

    Sets ``r["group"]``, the basis of the study key: the sidecar's patient+study, else the
    StudyInstanceUID, else the file itself. Returns True in the last case (the file is its own exam,
    never pooled with its folder).
    """
    meta = r["meta"]
    hint = hints.get(Path(r["path"]).resolve(), {})
    for k in ("laterality", "view"):
        meta[k] = hint.get(k) or meta.get(k) or ""
    if not (meta["laterality"] and meta["view"]):
        lat, view = parse_view_name(r["path"])
        meta["laterality"], meta["view"] = meta["laterality"] or lat, meta["view"] or view
    if hint.get("study") or hint.get("patient"):  # the user's grouping wins over the header's
        r["group"] = f"sidecar:{hint.get('patient', '')}|{hint.get('study', '')}"
        return False
    r["group"] = meta.get("study_instance_uid") or f"file:{Path(r['path']).resolve()}"
    return not meta.get("study_instance_uid")


def _drop_processing_duplicates(rows: list[dict], sources: list[str], intents: list[str]):
    """Rows and sources without For Processing images whose view came For Presentation too, and error rows for them."""
    recs = [{"study": r["study_id"], "laterality": r["laterality"], "view": r["view"], "modality": r["modality"],
             "presentation_intent": pi} for r, pi in zip(rows, intents)]
    dupes = processing_duplicates(recs)
    errors = [{"file": rows[i]["file"], "reason": f"{PROCESSING_DUPLICATE} ({rows[j]['file']})"}
              for i, j in dupes.items()]
    keep = [i for i in range(len(rows)) if i not in dupes]
    return [rows[i] for i in keep], [sources[i] for i in keep], errors


# ------------------------------------------------------------------------------------------ utilities
def _run_ood(run_dir: Path, which: str):
    """The run's out-of-distribution model for checkpoint ``which``; None (logged once) when absent."""
    from mammolens.models.ood import OOD_FILE, load_ood

    ood = load_ood(run_dir)
    if ood is None:
        log.info("run %s has no %s (trained before the out-of-distribution check existed): "
                 "that check is skipped; the image checks still run", run_dir.name, OOD_FILE)
        return None
    fitted_on = ood.info.get("checkpoint", "best")
    if Path(which).stem != fitted_on:
        log.info("%s was fitted on the %r checkpoint, not %r: out-of-distribution check skipped",
                 OOD_FILE, fitted_on, which)
        return None
    return ood


def random_weights_of(run) -> str | None:
    """Why a loaded run's predictions come from random weights (``models.factory.random_weights_reason``), or
    None: the run's lineage ``random_weights``, else (runs trained before it was recorded) worked out from its
    model, starting weights and method."""
    from mammolens.models.factory import random_weights_reason

    lin = getattr(run, "lineage", None) or {}
    if "random_weights" in lin:
        return lin["random_weights"]
    weights = ((lin.get("towers") or {}).get("image") or {}).get("weights") if lin else run.cfg.get("pretrained")
    return random_weights_reason(str(run.cfg.get("model") or lin.get("model") or ""), weights, run.method)


def task_wording(task) -> dict[str, Any]:
    """``Task.wording()`` of a task, or the same keys for a stand-in with class names only (no dense rule
    unless ``legacy_dense_classes`` finds one)."""
    if hasattr(task, "wording"):
        return task.wording()
    from mammolens.tasks import Task

    names = list(getattr(task, "class_names", ()))
    return Task(name=str(getattr(task, "name", "task")), label_column="label", class_names=tuple(names),
                dense_classes=dense_classes_of(task)).wording()


def class_probs(row, class_names: Sequence[str]) -> dict[str, float]:
    """``{class: probability}`` from a prediction row's ``prob_<class>`` fields."""
    return {c: float(row[f"prob_{c}"]) for c in class_names}


def _error_row(rel: str, reason: str, ids: list, include_ids: bool) -> dict[str, str]:
    """An ``errors`` row; without ``include_ids``, ``ids`` (the identifiers of the file's own header, when it
    has one, and of every image read in this call) are pseudonymised in its path and reason, so a file that
    failed inside a PatientID/StudyUID folder does not leak the folder names."""
    if include_ids:
        return {"file": display_path(rel), "reason": display_path(reason)}
    return {"file": display_path(scrub_path(rel, ids)), "reason": display_path(scrub_text(reason, ids))}


def _header_ids(path: str) -> list[tuple[str, object]]:
    """Identifiers in a DICOM header that may be readable although its pixels are not (else none)."""
    import pydicom

    tags = {"PatientID": "patient_id", "PatientName": "patient_name", "AccessionNumber": "accession_number",
            "StudyInstanceUID": "study_instance_uid", "SeriesInstanceUID": "series_instance_uid",
            "SOPInstanceUID": "sop_instance_uid"}
    try:  # values are parsed lazily: every access stays inside the guard
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(tags), defer_size=4096)
        return ids_of({col: str(ds.get(tag, "") or "") for tag, col in tags.items()})
    except Exception:  # noqa: BLE001 — not DICOM or broken: only the IDs seen elsewhere are scrubbed
        return []


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
