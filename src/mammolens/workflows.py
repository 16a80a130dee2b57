"""End-to-end workflows that join the layers: evaluate a run, explain images, the demo.

This module sits with ``cli`` and ``serve`` at the application layer (it may import ``train``);
the library below it never imports it. Each function returns a plain dict that the CLI prints.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammolens.csvsafe import write_csv
from mammolens.privacy import pseudonymise_frame

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------- evaluation
def _cache_for(run, data: str | PathLike, out_dir: Path, workers: int | None, progress: bool) -> Path:
    """A cache of ``data`` built with the run's preprocessing (reused when ``data`` already is one)."""
    from mammolens.data.cache import PreprocessCfg, build_cache, open_cache

    data = Path(data)
    want = PreprocessCfg.from_dict(run.preprocess)
    if data.is_dir() and (data / "cache.json").is_file():
        cache = open_cache(data, allow_incomplete=True)
        have = cache.cfg.to_dict()
        diff = {k: (have.get(k), v) for k, v in want.to_dict().items() if have.get(k) != v}
        if diff:
            raise ValueError(
                f"cache {data} was built with other preprocessing than run {run.run_dir.name} "
                f"(field: (cache, run)) {diff}; pass the manifest instead so mammolens rebuilds it")
        return data
    if not data.is_file():
        raise FileNotFoundError(f"evaluation data not found: {data} (a manifest .parquet/.csv or a cache folder)")
    cache_dir = out_dir / "cache"
    build_cache(data, cache_dir, want, workers=workers, progress=progress, overwrite=True)
    return cache_dir


def _predict_cache(run, cache_dir: Path, batch_size: int, device: str,
                   embeddings: bool = False) -> pd.DataFrame | tuple[pd.DataFrame, np.ndarray]:
    """The predictions contract for every successfully cached row of a cache; with ``embeddings``, also
    their image embeddings ``[N, D]`` from the same forward pass (``pipeline.encode``), in row order."""
    from mammolens.data.cache import open_cache
    from mammolens.data.dataset import MammoDataset
    from mammolens.pipeline import encode as _enc

    cache = open_cache(cache_dir, allow_incomplete=True)
    index = cache.index
    ok = np.flatnonzero((index["status"] == "done").to_numpy()) if "status" in index else np.arange(len(index))
    if not len(ok):
        from mammolens.parallel import NothingReadError

        raise NothingReadError(f"none of the {len(index)} image(s) of {cache_dir} could be read "
                               f"(reasons in {cache_dir / 'errors.csv'})")
    ds = MammoDataset(cache, run.task, rows=ok)
    model = run.model.to(device)
    out = _enc.encode(model, _enc.loader(ds, batch_size, 0, device), ("probs", "embedding") if embeddings else ("probs",),
                      device=device, task=run.task)
    probs = out["probs"]  # [N, K]
    from mammolens.data.manifest import without_report_text

    df = without_report_text(index.iloc[ok].reset_index(drop=True))  # report text never leaves the machine
    df["label"] = run.task.encode(df[run.task.label_column]) if run.task.label_column in df else -1
    names = list(run.task.class_names)
    for k, c in enumerate(names):
        df[f"prob_{c}"] = probs[:, k]
    df["pred"] = [names[i] for i in probs.argmax(1)]
    return (df, out["embedding"]) if embeddings else df


REPORT_MAX_SIDE = 1024  # gallery figures are embedded in report.html: big enough to read, small enough to mail


def _gallery_figure(row, tile: np.ndarray, cam: np.ndarray, cfg, class_name: str, prob: float) -> np.ndarray:
    """A gallery heat map drawn on the original image of a cache row (re-read by ``pipeline.prepare``, which
    recomputes its geometry with the cache's recipe), else on the cache tile when the file cannot be read here.

    Outside the breast mask the grey image is blanked, as in the cache: a research report must not show
    film labels or burned-in text that the model never saw.
    """
    from mammolens.explain.cams import heatmap_on_original
    from mammolens.explain.overlay import render_heatmap
    from mammolens.pipeline import prepare as _prep
    from mammolens.transforms.breast import breast_mask

    try:  # the row's own frame (a DBT frame as its own row) and laterality, as the cache read it
        p = _prep.prepare(row, cfg, None, display=REPORT_MAX_SIDE,
                          laterality=str(getattr(row, "laterality", "") or ""))
        if not p.ok:
            raise ValueError(p.reason)
        display, info = p.display, p.geometry
    except Exception as e:  # noqa: BLE001 — the cache is enough to explain; only the picture is smaller
        log.info("gallery: original image not readable (%s), drawing on the cache tile", type(e).__name__)
        return render_heatmap(tile, cam, class_name, prob)
    if cfg.mask_background:
        display = display * breast_mask(display.astype(np.float32) / 255.0)
    return heatmap_on_original(display, cam, info, class_name, prob)


def _gallery(run, cache_dir: Path, preds: pd.DataFrame, out_dir: Path, per_class: int, device: str) -> list[tuple]:
    """GradCAM heat maps of the most confident correct predictions of each class, on their original images."""
    import torch
    from PIL import Image

    from mammolens.data.cache import open_cache
    from mammolens.explain.cams import classifier_cams

    if per_class <= 0 or preds.empty:
        return []
    cache = open_cache(cache_dir, allow_incomplete=True)
    names = list(run.task.class_names)
    model = run.model.to(device).eval()
    items = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for k, c in enumerate(names):
        sel = preds[(preds["pred"] == c)]
        if "label" in sel and (sel["label"] >= 0).any():
            sel = sel[sel["label"] == k]
        sel = sel.sort_values(f"prob_{c}", ascending=False).head(per_class)
        if sel.empty:
            continue
        imgs = np.stack([cache.get(int(r)) for r in sel["cache_row"]])  # float32 [n, S, S]
        maps = classifier_cams(model, torch.from_numpy(imgs)[:, None].to(device), [k] * len(imgs))  # [n, S, S]
        for j, (row, img, m) in enumerate(zip(sel.itertuples(), imgs, maps)):
            prob = float(getattr(row, f"prob_{c}"))
            png = out_dir / f"{c}_{j}.png"
            Image.fromarray(_gallery_figure(row, img, m, cache.cfg, c, prob)).save(png)
            caption = f"GradCAM for class {c}: p={prob:.2f}, {getattr(row, 'modality', '')} {getattr(row, 'view', '')}"
            items.append((c, str(png), caption))
    return items


def train_overlap(run_dir: str | PathLike, frame: pd.DataFrame) -> np.ndarray | None:
    """Boolean mask ``[N]`` of the rows of ``frame`` (``patient_id``/``study_id``) that belong to one of the run's
    training or validation exams (``RUN/split.json``, ``train.loop.exam_keys``); None for a run trained before
    that file existed (the overlap cannot be checked)."""
    from mammolens.train.loop import SPLIT_FILE, exam_keys

    path = Path(run_dir) / SPLIT_FILE
    if not path.is_file():
        return None
    split = json.loads(path.read_text(encoding="utf-8"))
    seen = set(split.get("train", [])) | set(split.get("val", []))
    return np.array([k in seen for k in exam_keys(frame)], dtype=bool)


def _overlap_warning(mask: np.ndarray | None, preds: pd.DataFrame, excluded: bool) -> dict | None:
    """The banner of evaluating on the run's own training/validation exams (None when there are none)."""
    if mask is None or not mask.any():
        return None
    n, total = int(mask.sum()), int(len(mask))
    pats = int(preds.loc[mask, "patient_id"].nunique()) if "patient_id" in preds else n
    if excluded:
        return {"id": "train-overlap", "level": "note", "count": n, "patients": pats,
                "text": f"{n} image(s) of {pats} patient(s) in this run's training or validation set were "
                        "excluded (--exclude-train); the numbers are on the remaining images only"}
    return {"id": "train-overlap", "level": "warning", "count": n, "patients": pats,
            "text": f"{n} of {total} images ({pats} patient(s)) are from this run's training or validation set: "
                    "these numbers are not a held-out result; rerun with --exclude-train to drop them"}


def _ood_warning(run_dir, emb: np.ndarray) -> tuple[dict | None, np.ndarray | None]:
    """The banner of images outside the training distribution (``models.ood``) and their scores."""
    from mammolens.models.ood import load_ood

    ood = load_ood(run_dir)
    if ood is None or emb is None or not len(emb):
        return None, None
    scores = ood.score(emb)
    n = int((scores > ood.threshold).sum())
    whole = ood.set_outside(scores)
    if not n and not whole:
        return None, scores
    what = (f"this evaluation set is outside the training distribution (median out-of-distribution score "
            f"{np.median(scores):.3g} > {ood.set_threshold:.3g})" if whole else "")
    each = f"{n} of {len(scores)} images ({100 * n / len(scores):.0f}%) score above the per-image threshold {ood.threshold:.3g}"
    loud = whole or n > 0.05 * len(scores)  # a few far images among many of the training kind: a note
    return {"id": "ood", "level": "warning" if loud else "note", "count": n, "set_outside": whole,
            "text": "; ".join(t for t in (what, each) if t) + ": the model was not trained on images like these and "
                    "its numbers may not carry over"}, scores


def evaluate_run(run_dir: str | PathLike, data: str | PathLike, out: str | PathLike | None = None,
                 compare: str | PathLike | None = None, n_boot: int = 1000, seed: int = 0,
                 gallery_per_class: int = 2, batch_size: int = 32, workers: int | None = None,
                 device: str = "auto", progress: bool = True, include_ids: bool = False,
                 exclude_train: bool = False) -> dict[str, Any]:
    """Predict ``data`` with a run and write ``predictions.parquet``, ``metrics.json``, ``report.html``.

    External validation is the same call with another dataset's manifest. With ``compare``, a second
    run is evaluated on the same images and the two are compared (DeLong per class, McNemar).

    No identifier or absolute path is written: identifier columns of ``predictions.parquet`` hold keyed
    pseudonyms (``mammolens.privacy``), ``image_path`` is relative to the images' common folder with
    identifier components pseudonymised, and runs and data are named by their folder/file names. The
    preprocessed cache of a manifest (which holds the manifest) is built in a temporary folder inside
    ``out`` and deleted at the end.

    Args:
        run_dir: a run folder from ``mammolens train``.
        data: a manifest (.parquet/.csv) or a cache folder built with the run's preprocessing.
        out: output folder (default ``RUN/eval`` for the run's own data, ``RUN/eval-<name>`` otherwise).
        compare: a second run folder.
        n_boot: bootstrap replicates (patients resampled) for the 95% CIs.
        gallery_per_class: GradCAM examples per class in the report.
        include_ids: keep identifiers and absolute image paths in ``predictions.parquet``.
        exclude_train: drop the images of the run's own training and validation exams (:func:`train_overlap`)
            before scoring; without it they are scored and a ``train-overlap`` warning says how many.

    Warnings (``metrics.json`` ``warnings``, banners in ``report.html``, printed by the CLI): ``train-overlap``,
    ``one-class`` (``evaluation.report``), ``random-weights`` (the run's lineage) and ``ood`` (images outside the
    training distribution). Cross-validation (``mammolens cv``) and ``mammolens study`` do not come through here:
    their test rows are held out by construction.
    """
    import torch

    from mammolens.evaluation.report import evaluate_predictions, to_jsonable, write_report
    from mammolens.run import load_run

    from mammolens.models.ood import check_ood

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    _not_a_cv_folder(run_dir)
    check_ood(run_dir)  # an ood.npz that is not plain data is refused by every command alike
    run = load_run(run_dir)
    _check_label_column(run, data)  # before anything is preprocessed
    out_dir = Path(out) if out else Path(run_dir) / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=".cache-", dir=out_dir))  # the caches hold the manifest: deleted below
    try:
        cache_dir = _cache_for(run, data, work, workers, progress)
        from mammolens.parallel import NothingReadError

        try:
            preds, emb = _predict_cache(run, cache_dir, batch_size, device, embeddings=True)
        except NothingReadError:  # name the kept, scrubbed errors.csv, not the temporary cache deleted below
            _failures(cache_dir, out_dir / "errors.csv")
            raise NothingReadError(f"none of the images of {Path(data).name} could be read (reasons in "
                                   f"{out_dir / 'errors.csv'})") from None
        overlap = train_overlap(run_dir, preds)
        banners = [w for w in (_overlap_warning(overlap, preds, exclude_train),) if w is not None]
        if exclude_train and overlap is not None and overlap.any():
            if overlap.all():
                raise ValueError(f"all {len(preds)} images of {Path(data).name} are from run {Path(run_dir).name}'s "
                                 "training or validation set: nothing left to evaluate without --exclude-train")
            preds, emb = preds[~overlap].reset_index(drop=True), emb[~overlap]
        from mammolens.inference import random_weights_of

        reason = random_weights_of(run)
        if reason:
            banners.append({"id": "random-weights", "level": "warning", "text": reason})
        ood_banner, ood_scores = _ood_warning(run_dir, emb)
        if ood_scores is not None:
            preds["ood_score"] = ood_scores
        if ood_banner:
            banners.append(ood_banner)
        failures = _failures(cache_dir, out_dir / "errors.csv")
        cmp_preds = None
        if compare is not None:
            run_b = load_run(compare)
            if list(run_b.task.class_names) != list(run.task.class_names):
                raise ValueError(f"cannot compare runs with different classes: {run.task.class_names} vs "
                                 f"{run_b.task.class_names}")
            cache_b = _cache_for(run_b, data if run_b.preprocess != run.preprocess else cache_dir,
                                 work / "compare", workers, progress)
            cmp_preds = _predict_cache(run_b, cache_b, batch_size, device)
        names = list(run.task.class_names)
        from mammolens.tasks import dense_classes_of

        result = evaluate_predictions(preds, names, n_boot=n_boot, seed=seed, compare_predictions=cmp_preds,
                                      dense_classes=dense_classes_of(run.task) or None)
        result["warnings"] = banners + result.get("warnings", [])
        gallery = _gallery(run, cache_dir, preds, out_dir / "gradcam", gallery_per_class, device)
        result["retrieval"] = _retrieval(run, cache_dir, preds, batch_size, device, emb)
        localization = _localization(run_dir, data, out_dir, n_boot, seed, device)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # report text can name the patient: it stays in the manifest
    kept = preds.drop(columns=["report"], errors="ignore")
    (kept if include_ids else pseudonymise_frame(kept)).to_parquet(out_dir / "predictions.parquet", index=False)
    metrics = to_jsonable({k: v for k, v in result.items() if k != "subgroups"})
    metrics["subgroups"] = to_jsonable(result["subgroups"].to_dict("records")) if result.get("subgroups") is not None else []
    # names, not absolute paths: a path can hold user names or PatientID folders
    provenance = {"run": Path(run_dir).resolve().name, "data": f"{Path(data).resolve().parent.name}/{Path(data).name}",
                  "model": run.cfg.get("model", ""), "method": run.method,
                  "task": f"{run.task.name}: {run.task.description}" if run.task.description else run.task.name,
                  "compare": Path(compare).resolve().name if compare else "",
                  "preprocess": run.preprocess, "n_boot": n_boot, "seed": seed}
    metrics["provenance"] = provenance
    if localization is not None:
        metrics["localization"] = to_jsonable({k: v for k, v in localization.items() if k not in ("per_image", "gallery")})
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=True))
    report = write_report(out_dir, preds, names, result, gallery=gallery, localization=localization,
                          title=f"mammolens evaluation: {provenance['run']} on {provenance['data']}",
                          provenance=provenance)
    return {"out_dir": str(out_dir), "report": str(report), "n_images": int(len(preds)), "n_failed": failures,
            "errors": str(out_dir / "errors.csv"), "warnings": metrics.get("warnings", []),
            "metrics": metrics["metrics"], "seconds": round(time.perf_counter() - t0, 1)}


def _not_a_cv_folder(run_dir) -> None:
    """``mammolens cv``'s output folder is not one run: say what to evaluate instead."""
    folder = Path(run_dir)
    if (folder / "cv_metrics.json").is_file() and not (folder / "checkpoints").is_dir():
        folds = sorted(p.name for p in folder.glob("fold_*") if p.is_dir())
        raise ValueError(
            f"{folder} is a cross-validation folder ({len(folds)} fold runs), not one run: its pooled out-of-fold "
            f"metrics are in {folder / 'report.html'} and cv_metrics.json. To test on other data, evaluate one "
            f"fold's run (mammolens evaluate {folder / (folds[0] if folds else 'fold_0')} --data ...) or train one "
            "run on all the data with the same config (mammolens train) and evaluate that.")


def _manifest_columns(data) -> list[str] | None:
    """The column names of a manifest file without reading its rows (None for a cache folder)."""
    path = Path(data)
    if not path.is_file():
        return None
    if path.suffix.lower() == ".csv":
        from mammolens.data.manifest import read_manifest

        return list(read_manifest(path, validate=False, resolve_paths=False).columns)
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        from mammolens.data.manifest import read_manifest

        try:
            return list(pq.read_schema(path).names)
        except Exception:  # noqa: BLE001 — not Parquet: read_manifest names what it is
            read_manifest(path, validate=False, resolve_paths=False)
    return None


def _check_label_column(run, data) -> None:
    """A manifest without the run's label column is refused before anything is preprocessed."""
    from mammolens.tasks import get_task, list_tasks

    cols = _manifest_columns(data)
    col = run.task.label_column
    if cols is None or col in cols:
        return
    fits = [n for n in list_tasks() if get_task(n).label_column in cols and get_task(n).label_column != col]
    fits.sort(key=lambda n: col not in get_task(n).label_column)  # the same kind first: density -> mias_density
    hint = (f"; it has labels for task {fits[0]!r} (column {get_task(fits[0]).label_column!r}): evaluate a run trained "
            f"with --set task={fits[0]}") if fits else "; add that column (the labels) to the manifest"
    raise ValueError(f"{data}: the manifest has no column {col!r}, which the run's task {run.task.name!r} reads its "
                     f"labels from{hint}")


RETRIEVAL_QUERIES = 2000


def _spaced(n: int) -> np.ndarray:
    """At most ``RETRIEVAL_QUERIES`` evenly spaced indices of ``range(n)``."""
    return np.unique(np.linspace(0, n - 1, min(n, RETRIEVAL_QUERIES)).round().astype(int))


def _retrieval(run, cache_dir: Path, preds: pd.DataFrame, batch_size: int, device: str,
               img: np.ndarray | None = None) -> dict[str, dict]:
    """Retrieval metrics of the run's embeddings on the evaluated images (``retrieval`` in metrics.json).

    With finding labels (the task's column): image→text and text→image against the class prompts, and
    image→image (the query itself left out), relevant = same label. With a ``report`` column: image→report
    and report→image, one report per exam (the sentences of all its report rows, ``data.dataset.exam_sentences``,
    each encoded on its own and averaged as in training), relevant = same exam. Report text is never logged. ``img``: the
    rows' image embeddings when the caller has them (``_predict_cache(..., embeddings=True)``), else embedded here.
    """
    import torch
    import torch.nn.functional as F

    from mammolens.data.cache import open_cache
    from mammolens.evaluation.retrieval import retrieval_metrics, same_label
    from mammolens.search import embed_cache

    if preds.empty:
        return {}
    cache = open_cache(cache_dir, allow_incomplete=True)
    if img is None:
        img = embed_cache(run.model, cache, preds["cache_row"].to_numpy(), batch_size, device)  # [N, D]
    # report text is dropped from the predictions (it can name the patient): read it from the cache's index
    texts = cache.index["report"].to_numpy()[preds["cache_row"].to_numpy()] if "report" in cache.index else None
    out: dict[str, dict] = {}
    labels = preds["label"].to_numpy()
    # at most RETRIEVAL_QUERIES evenly spaced image queries: the score matrix is queries × gallery
    q = _spaced(len(img))
    if (labels >= 0).any():
        with torch.no_grad():
            text = run.model.class_embeddings(run.task).float().cpu().numpy()  # [K, D]
        classes = np.arange(len(text))
        out["image_to_text"] = retrieval_metrics(same_label(labels[q], classes), img[q] @ text.T)
        out["text_to_image"] = retrieval_metrics(same_label(classes, labels), text @ img.T)
        out["image_to_image"] = retrieval_metrics(same_label(labels[q], labels), img[q] @ img.T,
                                                  ignore=q[:, None] == np.arange(len(img))[None, :])
    if texts is not None and "study_id" in preds:
        from mammolens.data.dataset import exam_sentences

        lat = preds["laterality"].astype(str).str.upper().map({"L": 0, "R": 1}).fillna(-1).to_numpy() \
            if "laterality" in preds else np.full(len(preds), -1)
        rep = pd.DataFrame({"study_id": preds["study_id"].to_numpy(), "report": texts, "lat": lat})
        # an exam's report: the sentences of every report row of the exam, each encoded on its own and
        # averaged, as report-contrastive trains (one string would be cut at the text context)
        sents = {sid: [t for t, _ in exam_sentences(g["report"].tolist(), g["lat"].to_numpy())]
                 for sid, g in rep.groupby("study_id", sort=False)}
        reports = pd.DataFrame({"study_id": [k for k, v in sents.items() if v]})
        if len(reports):
            with torch.no_grad():
                txt = np.stack([F.normalize(run.model.encode_text(sents[sid]).float().mean(0), dim=-1).cpu().numpy()
                                for sid in reports["study_id"]])
            exams = preds["study_id"].to_numpy()
            out["image_to_report"] = retrieval_metrics(same_label(exams[q], reports["study_id"]), img[q] @ txt.T)
            r = _spaced(len(reports))
            out["report_to_image"] = retrieval_metrics(same_label(reports["study_id"].to_numpy()[r], exams),
                                                       txt[r] @ img.T)
    return out


def _localization(run_dir, data, out_dir: Path, n_boot: int, seed: int, device: str) -> dict[str, Any] | None:
    """The localization section of ``evaluate_run``: only for a manifest with lesion outlines (``lesion_mask``,
    circle or box columns) and at least one lesion; writes ``localization.csv`` (no identifiers) and a gallery."""
    from mammolens.data.manifest import read_manifest
    from mammolens.evaluation.localization import has_lesion_columns

    path = Path(data)
    if not path.is_file():
        return None
    df = read_manifest(path)
    if not has_lesion_columns(df.columns):
        return None
    loc = localization_eval(run_dir, df, n_boot=n_boot, seed=seed, device=device,
                            gallery_dir=out_dir / "localization")
    if not loc["n_images"]:
        return None
    write_csv(loc["per_image"], out_dir / "localization.csv")
    return loc


def _failures(cache_dir: Path, errors_csv: Path) -> int:
    """Rows of the (temporary) evaluation cache that could not be read, written to ``errors_csv`` with the
    image paths scrubbed as in ``predictions.parquet``; returns their number."""
    from mammolens.data.cache import open_cache

    index = open_cache(cache_dir, allow_incomplete=True).index
    failed = index[index["status"] == "failed"]
    paths = pseudonymise_frame(index)["image_path"][failed.index] if len(failed) else []
    write_csv(pd.DataFrame({"image_path": list(paths), "reason": list(failed["error"])}), errors_csv)
    return int(len(failed))


# ---------------------------------------------------------------------------------------- explain
def lesion_circles(manifest: str | PathLike | None) -> dict[str, list[tuple[float, float, float]]]:
    """``{resolved image path: [(x, y, r), ...]}`` of a manifest's ground-truth lesion circles (``lesion_x,
    lesion_y, lesion_r``, pixels of the image as stored); ``{}`` without a manifest.

    Raises:
        ValueError: the manifest has none of those columns.
    """
    if manifest is None:
        return {}
    from mammolens.data.manifest import LESION_COLUMNS, read_manifest

    df = read_manifest(manifest, validate=False)
    if not set(LESION_COLUMNS) <= set(df.columns):
        raise ValueError(f"{manifest}: no lesion outline columns ({', '.join(LESION_COLUMNS)}); the ground-truth "
                         "outline needs them (mammolens import mias writes them for mini-MIAS).")
    out: dict[str, list[tuple[float, float, float]]] = {}
    for path, x, y, r in zip(df["image_path"], *(pd.to_numeric(df[c], errors="coerce") for c in LESION_COLUMNS)):
        if np.isfinite([x, y, r]).all() and r > 0:
            out.setdefault(str(Path(path).resolve()), []).append((float(x), float(y), float(r)))
    return out


def _outline_png(png: Path, source, circles, stored_height: int | None = None) -> None:
    """Draw ``circles`` (stored-image pixels) on an overlay PNG whose image part has the stored aspect."""
    from PIL import Image

    from mammolens.explain.overlay import draw_outlines

    fig = np.asarray(Image.open(png).convert("RGB"))
    if stored_height is None:
        from mammolens.io import read_image

        stored = read_image(source).pixels
        stored_height, stored_width = stored.shape[-2:]
    else:
        stored_width = None
    scale = fig.shape[0] / float(stored_height)
    width = int(round(stored_width * scale)) if stored_width else None
    Image.fromarray(draw_outlines(fig, circles, scale, width)).save(png)


def explain_run(run_dir: str | PathLike, images: list[str | PathLike], out: str | PathLike,
                class_name: str | None = None, device: str = "auto", sidecar: str | PathLike | None = None,
                manifest: str | PathLike | None = None) -> list[dict[str, Any]]:
    """GradCAM overlays for image files, through the run's own preprocessing and classifier.

    ``sidecar`` groups files into exams as in ``predict``; with ``manifest`` (one with ``lesion_x, lesion_y,
    lesion_r``), each image's ground-truth lesion circles are drawn on its overlay in green (``outlined``: how
    many).
    """
    from mammolens.inference import Predictor, find_inputs

    circles = lesion_circles(manifest)
    p = Predictor.from_run(run_dir, device=device, workers=0)
    out = Path(out)
    root = None
    if not circles:
        groups = [images]
    else:  # one file at a time, so that each overlay is known to come from its file; names as in one call
        files, problems = find_inputs(images)
        groups = [[f] for f in files] + ([[q for q, _ in problems]] if problems else [])
        every = [*files, *(q for q, _ in problems)]
        root = os.path.commonpath([str(Path(f).parent.resolve()) for f in every]) if every else None
    recs: list[dict[str, Any]] = []
    for group in groups:
        res = p.predict(group, explain=True, overlay_dir=out, class_name=class_name, sidecar=sidecar, root=root)
        for rec in res.images.to_dict("records"):
            mine = circles.get(str(Path(group[0]).resolve()), []) if circles and len(group) == 1 else []
            if mine and rec.get("overlay"):
                _outline_png(Path(rec["overlay"]), group[0], mine)
                rec["outlined"] = len(mine)
            recs.append(rec)
        for e in res.errors.to_dict("records"):
            recs.append({"file": e["file"], "error": e["reason"]})
    return recs


# -------------------------------------------------------------------------------------------- demo
def run_demo(out: str | PathLike = "mammolens-demo", n_patients: int = 48, n_external: int = 16,
             size: int = 64, epochs: int = 30, n_boot: int = 200, workers: int | None = None,
             seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """The whole pipeline on a built-in simulated cohort, minutes on a laptop CPU.

    1. write a synthetic DICOM cohort (DM, s2D, DBT; known density) and an "external" one from other
       sites; 2. ingest-equivalent manifest → preprocessed cache; 3. weighted contrastive fine-tuning
       of ``tiny-clip``; 4. evaluation on the external cohort with CIs, subgroups, GradCAM → report.html;
       5. predictions for one study (per image, breast, exam).
    """
    from mammolens.data.cache import PreprocessCfg, build_cache
    from mammolens.data.synthetic import make_cohort
    from mammolens.inference import Predictor
    from mammolens.train.config import TrainCfg
    from mammolens.train.loop import train

    out = Path(out)
    t0 = time.perf_counter()
    steps: dict[str, float] = {}
    make_cohort(out / "cohort", n_patients=n_patients, seed=seed)
    make_cohort(out / "external", n_patients=n_external, seed=seed + 1000, sites=("external-site",))
    steps["cohorts"] = time.perf_counter() - t0
    pre = PreprocessCfg(size=size)
    build_cache(out / "cohort" / "manifest.parquet", out / "cache", pre, workers=workers, progress=progress,
                overwrite=True)
    steps["preprocess"] = time.perf_counter() - t0 - sum(steps.values())
    cfg = TrainCfg(data={"cache": str(out / "cache"), "val_frac": 0.25}, task="density", model="tiny-clip",
                   image_size=size, method="contrastive", class_weighting="inverse", epochs=epochs,
                   batch_size=16, lr=1e-3, weight_decay=0.01, warmup_steps=2, precision="fp32",
                   augment=True, workers=0, seed=seed, out_dir=str(out / "run"), overwrite=True)
    run_dir = train(cfg, progress=progress)
    steps["train"] = time.perf_counter() - t0 - sum(steps.values())
    ev = evaluate_run(run_dir, out / "external" / "manifest.parquet", out=out / "run" / "eval-external",
                      n_boot=n_boot, workers=workers, progress=progress)
    steps["evaluate"] = time.perf_counter() - t0 - sum(steps.values())
    study = sorted((out / "external" / "dicom").iterdir())[0]
    pred = Predictor.from_run(run_dir, workers=0).predict(study, explain=True, overlay_dir=out / "predict" / "overlays")
    (out / "predict").mkdir(parents=True, exist_ok=True)
    if "overlay" in pred.images:
        pred.images["overlay"] = [_relative_to(o, out / "predict") for o in pred.images["overlay"]]
    write_csv(pred.images, out / "predict" / "images.csv")
    write_csv(pred.exams, out / "predict" / "exams.csv")
    steps["predict"] = time.perf_counter() - t0 - sum(steps.values())
    exam = pred.exams.iloc[0] if len(pred.exams) else None
    return {
        # undefined metrics (e.g. AUC when a tiny external cohort has one class) are None in JSON; NaN here
        "report": ev["report"], "run": str(run_dir),
        "metrics": {k: float("nan") if v is None else v for k, v in ev["metrics"].items()},
        "example_exam": None if exam is None else {"pred": exam["pred"], **{c: round(float(exam[f"prob_{c}"]), 3)
                                                                           for c in pred.class_names}},
        "seconds": {k: round(v, 1) for k, v in steps.items()},
    }


# ----------------------------------------------------------------------------------------- predict
def predict_to_dir(run_dir: str | PathLike, inputs: list[str | PathLike], out: str | PathLike, *,
                   overlays: bool = True, dicom: bool = True, include_ids: bool = False,
                   batch_size: int = 16, workers: int | None = None, device: str = "auto",
                   progress: bool = True, precision: str = "fp32",
                   sidecar: str | PathLike | None = None) -> dict[str, Any]:
    """Predict files/folders/archives with a run and write every output a user or a PACS needs.

    Writes into ``out``: ``images.csv``, ``breasts.csv``, ``exams.csv`` (+ one ``results.json`` with
    all three), ``errors.csv`` (file, reason), ``overlays/*.png`` (GradCAM of the predicted class; bounded
    names, see ``inference.overlay_name``, given relative to ``out`` in the tables) and, for DICOM inputs,
    ``dicom/<study>/density_sr.dcm`` (Comprehensive SR with the coded breast composition) and
    ``dicom/<study>/overlay_*.dcm`` (Secondary Capture heat maps), both in the source study. Each study's
    DICOM outputs are written in isolation: a study whose outputs cannot be made is listed in ``errors.csv``
    (file ``study-…``) and the others are still written. Identifiers appear only inside the DICOM files (a
    PACS needs them) unless ``include_ids`` asks for them in the tables too. Every CSV goes through
    ``csvsafe.write_csv`` (formula cells escaped).
    """
    from mammolens.inference import Predictor

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    p = run_dir if isinstance(run_dir, Predictor) else Predictor.from_run(  # a loaded one: the DICOM node
        run_dir, device=device, batch_size=batch_size, workers=workers, precision=precision)
    writer = _DicomOutputs(p, out / "dicom", overlays) if dicom else None
    res = p.predict(inputs, explain=overlays, overlay_dir=out / "overlays" if overlays else None,
                    include_ids=include_ids, progress=progress, sidecar=sidecar,
                    on_image=writer.on_image if writer is not None else None)
    if "overlay" in res.images:  # relative to the output folder, as the privacy section promises
        res.images["overlay"] = [_relative_to(o, out) for o in res.images["overlay"]]
    n_sr = 0
    if writer is not None and len(res.images):
        n_sr, dicom_errors = _write_dicom_outputs(p, res, writer)
        if dicom_errors:
            res.errors = pd.concat([res.errors, pd.DataFrame(dicom_errors, columns=["file", "reason"])],
                                   ignore_index=True)
    write_csv(res.images, out / "images.csv")
    write_csv(res.breasts, out / "breasts.csv")
    write_csv(res.exams, out / "exams.csv")
    write_csv(res.errors, out / "errors.csv")
    images = res.images.drop(columns=["overlay_png"], errors="ignore")
    from mammolens.inference import OOD_WORDS, task_wording

    n_ood = int(res.images["quality_reason"].astype(str).str.contains(OOD_WORDS, regex=False).sum()) if len(res.images) else 0
    payload = {"model": dict(p.model_info), "classes": p.class_names,  # not-assessable rows: null, not NaN
               "task": task_wording(p.task), "random_weights": p.random_weights, "n_outside_training_distribution": n_ood,
               "outside_training_distribution": res.outside,
               "images": images.astype(object).where(images.notna(), None).to_dict("records"),
               "breasts": res.breasts.to_dict("records"), "exams": res.exams.to_dict("records"),
               "errors": res.errors.to_dict("records"), "warnings": res.warnings}
    (out / "results.json").write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
    n_na = int((~res.images["assessable"].astype(bool)).sum()) if len(res.images) else 0
    return {"out_dir": str(out), "n_images": int(len(res.images)), "n_not_assessable": n_na,
            "n_breasts": int(len(res.breasts)),
            "n_exams": int(len(res.exams)), "n_failed": int(len(res.errors)), "n_sr": n_sr,
            "errors": res.errors.to_dict("records"), "warnings": res.warnings,
            "random_weights": p.random_weights, "n_ood": n_ood, "outside": res.outside}


def _relative_to(path, folder: Path):
    """``path`` relative to ``folder`` (POSIX) when it lies inside; other values unchanged."""
    if not isinstance(path, str) or not path:
        return path
    try:
        return Path(path).resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        return path


_REF_IDS = {"PatientID": "patient_id", "PatientName": "patient_name", "AccessionNumber": "accession_number",
            "StudyInstanceUID": "study_instance_uid", "SeriesInstanceUID": "series_instance_uid",
            "SOPInstanceUID": "sop_instance_uid"}


class _DicomOutputs:
    """The DICOM outputs of one ``predict_to_dir`` call, built from the prediction records alone.

    ``on_image`` (``Predictor.predict``'s hook) keeps each DICOM image's source reference (the worker's
    ``dicom_ref``: ``io.dicom_out.source_reference``) and writes its Secondary Capture from the overlay RGB in
    memory; :func:`_write_dicom_outputs` writes one SR per study at the end. No header is parsed again and no
    overlay PNG is re-read. A study whose output fails is removed whole and listed once.
    """

    def __init__(self, p, out: Path, overlays: bool):
        self.p, self.out, self.overlays = p, out, overlays
        self.refs: dict[str, dict] = {}  # source path -> source reference
        self.sc: dict[str, Path] = {}  # source path -> its Secondary Capture
        self.series: dict[str, str] = {}  # study -> the overlay series UID
        self.failed: dict[str, str] = {}  # study -> why its DICOM output could not be written
        self.count: dict[str, int] = {}  # study -> overlays written

    def on_image(self, row: dict, rec: dict, rgb) -> None:
        from pydicom.uid import generate_uid

        from mammolens.io.dicom_out import reference_dataset, write_overlay_sc

        ref = rec.get("dicom_ref") or {}
        if not ref:
            return  # a raster: no DICOM output
        study = row["study_id"]
        self.refs[rec["path"]] = ref
        if not self.overlays or rgb is None or study in self.failed:
            return
        n = self.count[study] = self.count.get(study, 0) + 1
        try:
            self.sc[rec["path"]] = write_overlay_sc(
                reference_dataset(ref), rgb, self.out / study / f"overlay_{n:03d}.dcm",
                f"mammolens GradCAM, predicted {self.p.task.name} {row['pred']}",
                series_instance_uid=self.series.setdefault(study, generate_uid()), instance_number=n)
        except Exception as e:  # noqa: BLE001 — one study's output never stops the others
            self.fail(study, "Secondary Capture", e, [ref])

    def fail(self, study: str, what: str, e: Exception, refs: list[dict]) -> None:
        from mammolens.privacy import ids_of, scrub_text

        ids = [i for r in refs for i in ids_of({col: r.get(kw) for kw, col in _REF_IDS.items()})]
        msg = " ".join(str(e).split())[:300]
        self.failed.setdefault(study, f"DICOM output not written ({what}, {type(e).__name__}): {scrub_text(msg, ids)}")
        log.warning("no DICOM output for %s: %s", study, self.failed[study])
        shutil.rmtree(self.out / study, ignore_errors=True)


def _write_dicom_outputs(p, res, writer: _DicomOutputs) -> tuple[int, list[dict[str, str]]]:
    """One SR per DICOM study (from the records' source references) after ``writer`` wrote the Secondary
    Captures; returns the SR count and one ``errors`` row per study whose outputs could not be written."""
    from mammolens.inference import class_probs
    from mammolens.io.dicom_out import reference_dataset, write_density_sr

    kept = set(res.sources)
    for src, sc in list(writer.sc.items()):  # a For Processing twin dropped after its overlay was made
        if src not in kept:
            Path(sc).unlink(missing_ok=True)
    by_study: dict[str, list[str]] = {}  # source paths stay out of DataFrames: they may not be valid UTF-8
    for sid, ok, src in zip(res.images["study_id"], res.images["assessable"].astype(bool), res.sources):
        if ok:  # not-assessable images are no evidence for a density
            by_study.setdefault(sid, []).append(src)
    n_sr = 0
    for study in sorted(by_study):
        refs = [writer.refs[s] for s in by_study[study] if s in writer.refs]
        if not refs or study in writer.failed:
            continue
        try:
            exam = res.exams[res.exams["study_id"] == study].iloc[0]
            breasts = [{"laterality": b["laterality"], "pred": b["pred"], "probs": class_probs(b, p.class_names),
                        **({"dense": bool(b["dense"])} if "dense" in b else {})}
                       for b in res.breasts[res.breasts["study_id"] == study].to_dict("records")
                       if b["laterality"] in ("L", "R")]
            result = {"pred": exam["pred"], "probs": class_probs(exam, p.class_names), "breasts": breasts,
                      "model": {"name": f"mammolens:{p.name}"}, "task": p.task, "random_weights": p.random_weights}
            if "dense" in exam:
                result["dense"] = bool(exam["dense"])
            write_density_sr([reference_dataset(r) for r in refs], result, writer.out / study / "density_sr.dcm")
            n_sr += 1
        except Exception as e:  # noqa: BLE001 — one study's output never stops the others
            writer.fail(study, "density SR", e, refs)
    return n_sr, [{"file": study, "reason": reason} for study, reason in sorted(writer.failed.items())]


# ---------------------------------------------------------------------------- sentence maps (issue 13)
MAP_TITLES = {"gradcam": "GradCAM", "text": "text-patch", "factor": "FActOR"}
DEFAULT_FINDINGS = ("a mass or abnormality in the breast",)
LOC_DISPLAY_SIDE = 512  # localization is scored on a copy of the original at most this long


def read_sentences(texts=None, report: str | PathLike | None = None) -> list[str]:
    """Sentences from ``--text`` values and a report file (split at full stops, semicolons and new lines)."""
    import re

    out = [str(t).strip() for t in (texts or []) if str(t).strip()]
    if report is not None:
        path = Path(report)
        if not path.is_file():
            raise FileNotFoundError(f"report file {path} does not exist; pass a plain-text report.")
        out += [s.strip() for s in re.split(r"[.;\n]+", path.read_text(encoding="utf-8", errors="replace")) if s.strip()]
    if not out:
        raise ValueError("no sentence given; pass --text \"spiculated mass\" (repeatable) or --report FILE.")
    return out


def fit_factor(run_dir: str | PathLike, texts: list[str], max_images: int = 512, batch_size: int = 32,
               device: str = "cpu"):
    """A ``FactorAttribution`` for ``texts`` fitted on the run's own training rows (never validation/test)."""
    import torch

    from mammolens.data.cache import open_cache
    from mammolens.explain import FactorAttribution
    from mammolens.train.loop import load_run as load_train_run, split_rows

    model, task, cfg = load_train_run(run_dir, device=device)
    cache_dir = Path(cfg.data.cache)
    if not (cache_dir / "cache.json").is_file():
        raise FileNotFoundError(f"the run's training cache {cache_dir.name} is missing; FActOR maps are fitted on "
                                "the training images: rebuild that cache (mammolens preprocess) or use --map text.")
    cache = open_cache(cache_dir)
    labels = np.asarray(task.encode(cache.index[task.label_column]), dtype=np.int64)
    rows, _ = split_rows(cache.index, labels, cfg)
    rows = np.sort(np.random.default_rng(0).permutation(rows)[:max_images])
    batches = (torch.from_numpy(cache.images[rows[i:i + batch_size]].astype(np.float32) / 65535.0)[:, None].to(device)
               for i in range(0, len(rows), batch_size))
    return FactorAttribution(model).fit(batches, texts)


def _image_maps(model, pixels: np.ndarray, pre, laterality, texts, kind, factor, device, display_side):
    """``(display uint8 [h, w], maps [T, h, w] on the display copy of the original, info)`` for one image."""
    import torch

    from mammolens.explain import sentence_maps
    from mammolens.pipeline import prepare as _prep
    from mammolens.transforms.breast import to_original

    p = _prep.prepare(pixels, pre, None, display=display_side, laterality=laterality or None)  # no header: no gate
    x = torch.from_numpy(p.pixels.astype(np.float32) / 65535.0)[None, None].to(device)  # [1, 1, S, S]
    maps = sentence_maps(model, x, texts, kind, factor)[0].numpy()  # [T, S, S]
    display, info = p.display, p.geometry
    return display, np.stack([to_original(m, info, out_shape=display.shape) for m in maps]), info


def explain_sentences(run_dir: str | PathLike, images, out: str | PathLike, texts: list[str], kind: str = "text",
                      device: str = "auto", dicom: bool = False,
                      manifest: str | PathLike | None = None) -> list[dict[str, Any]]:
    """Sentence maps (text-to-patch, FActOR or GradCAM of the sentence) drawn on the original images.

    Writes ``out/<image>_<hash>_<kind>_<t>.png``, named after the source image as GradCAM overlays are
    (``inference.overlay_name`` of the pseudonymised path: a folder or file name holding an identifier
    never reaches it) and, with ``dicom``, a DICOM Secondary Capture per overlay for DICOM inputs (in the
    source study). With ``manifest``, ground-truth lesion circles are drawn in green (see :func:`explain_run`).
    """
    import torch

    from mammolens.data.cache import PreprocessCfg
    from mammolens.explain import MAP_KINDS
    from mammolens.explain.overlay import render_heatmap
    from mammolens.inference import DISPLAY_MAX_SIDE, find_inputs, overlay_name
    from mammolens.io import ImageReadError, is_dicom, read_image
    from mammolens.run import load_run

    from mammolens.models.ood import check_ood

    if kind not in MAP_KINDS:
        raise ValueError(f"unknown map kind {kind!r}; choose one of {list(MAP_KINDS)}.")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    check_ood(run_dir)
    run = load_run(run_dir, device=device)
    model = run.model.to(device).eval()
    pre = PreprocessCfg.from_dict(run.preprocess)
    factor = fit_factor(run_dir, texts, device=device) if kind == "factor" else None
    circles = lesion_circles(manifest)
    from mammolens.io.dicom_out import read_source_reference, reference_dataset
    from mammolens.privacy import display_path, ids_of, scrub_path, scrub_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    recs: list[dict[str, Any]] = []
    files, problems = find_inputs(images)  # FIFOs, devices, loops, folders named *.dcm: listed, never opened
    every = [*files, *(q for q, _ in problems)]
    root = os.path.commonpath([str(p.parent.resolve()) for p in every]) if every else None
    seen: set[tuple[str, str]] = set()  # identifiers of every header read: scrubbed from every record shown

    def shown(path) -> str:  # the path as the tables show it: relative to the inputs' folder, never absolute
        return display_path(scrub_path(path, [], root))

    for q, why in problems:
        recs.append({"file": display_path(q.name), "error": why})
    for path in files:
        ref = read_source_reference(path) if is_dicom(path) else {}
        own = ids_of({col: ref.get(kw) for kw, col in _REF_IDS.items()})
        seen.update(own)
        try:
            img = read_image(path)
        except (ImageReadError, OSError) as e:
            msg = str(e).replace(str(Path(path).resolve()), shown(path)).replace(str(path), shown(path))
            recs.append({"file": shown(path), "error": msg})
            continue
        try:  # an image the preprocessing refuses is that file's problem (a data problem, never exit 2)
            display, maps, _ = _image_maps(model, img.pixels, pre, (img.meta or {}).get("laterality"), texts, kind,
                                           factor, device, DISPLAY_MAX_SIDE)
        except ValueError as e:
            recs.append({"file": shown(path), "error": f"cannot be mapped: {e}"})
            continue
        mine = circles.get(str(Path(path).resolve()), [])
        for t, (text, m) in enumerate(zip(texts, maps)):
            rgb = render_heatmap(display, m, text, method=MAP_TITLES[kind])
            if mine:
                from mammolens.explain.overlay import draw_outlines

                rgb = draw_outlines(rgb, mine, display.shape[0] / img.pixels.shape[-2], display.shape[1])
            png = out / overlay_name(display_path(scrub_path(path, own, root)), f"_{kind}_{t}.png")
            from PIL import Image

            Image.fromarray(rgb).save(png)
            rec = {"file": shown(path), "text": text, "kind": kind, "overlay": str(png),
                   **({"outlined": len(mine)} if mine else {})}
            if dicom and ref:
                from mammolens.io.dicom_out import write_overlay_sc

                sc = png.with_suffix(".dcm")
                try:  # values that do not validate are dropped; an output that cannot be made is listed
                    write_overlay_sc(reference_dataset(ref), rgb, sc, f"mammolens {MAP_TITLES[kind]} map: {text}"[:64])
                    rec["dicom"] = str(sc)
                except Exception as e:  # noqa: BLE001 — one file's DICOM output never stops the others
                    recs.append({"file": shown(path), "error": f"DICOM output not written ({type(e).__name__}): {e}"})
            recs.append(rec)
    for r in recs:  # names and UIDs of every header read (a failed file's folder may carry them)
        r["file"] = display_path(scrub_path(r["file"], seen))
        if "error" in r:
            r["error"] = display_path(scrub_text(r["error"], seen))
    return recs


def localization_eval(run_dir: str | PathLike, manifest: pd.DataFrame, texts=DEFAULT_FINDINGS,
                      kinds=("text", "gradcam"), factor=None, threshold: str = "otsu", top_percent: float = 10.0,
                      n_boot: int = 1000, seed: int = 0, device: str = "cpu", gallery_dir: str | PathLike | None = None,
                      n_gallery: int = 3) -> dict[str, Any]:
    """Zero-shot localization of the manifest's lesions by each map kind (the maps of ``texts``, averaged).

    Rows without a lesion outline are skipped. Scores are computed on a copy of the original image (longest
    side <= ``LOC_DISPLAY_SIDE``) inside the breast mask: Dice and IoU of the thresholded map, pointing game,
    hit within 5% of the image side. Returns ``per_image`` (DataFrame: kind, row, patient pseudonym, class,
    scores), ``summary`` (per kind and metric: mean with patient-bootstrap CI), ``by_class``, ``paired``
    (paired t / Wilcoxon between kinds) and ``gallery`` (best/worst cases with the outline drawn).
    """
    from mammolens.data.cache import PreprocessCfg
    from mammolens.evaluation.localization import lesion_mask_from_row, localization_scores, mean_with_ci, paired_tests
    from mammolens.io import read_image
    from mammolens.run import load_run
    from mammolens.privacy import pseudonym
    from mammolens.transforms.breast import breast_mask

    run = load_run(run_dir, device=device)
    model = run.model.to(device).eval()
    pre = PreprocessCfg.from_dict(run.preprocess)
    texts = list(texts)
    if "factor" in kinds and factor is None:
        factor = fit_factor(run_dir, texts, device=device)
    cls_col = next((c for c in ("abnormality", "pathology", run.task.label_column) if c in manifest.columns), None)
    rows, keep = [], {}
    for i, r in enumerate(manifest.to_dict("records")):
        try:
            img = read_image(r["image_path"])
        except (ValueError, OSError) as e:
            log.warning("localization: image %d unreadable (%s)", i, type(e).__name__)
            continue
        pix = img.pixels.max(axis=0) if img.pixels.ndim == 3 else img.pixels
        try:
            full = lesion_mask_from_row(r, pix.shape)
        except (ValueError, OSError) as e:  # a missing or misshapen mask file skips its image, never the run
            log.warning("localization: image %d: lesion outline unusable (%s)", i, type(e).__name__)
            continue
        if full is None or not full.any():
            continue
        for kind in kinds:
            display, maps, _ = _image_maps(model, pix, pre, r.get("laterality"), texts, kind, factor, device,
                                           LOC_DISPLAY_SIDE)
            m = maps.mean(axis=0)
            # the outline at the display copy's size (nearest pixel: a mask stays a mask)
            ry = (np.arange(display.shape[0]) * pix.shape[0] / display.shape[0]).astype(int)
            rx = (np.arange(display.shape[1]) * pix.shape[1] / display.shape[1]).astype(int)
            truth = full[ry][:, rx]
            breast = breast_mask(display.astype(np.float32) / 255.0)
            s = localization_scores(truth, m, breast if breast.any() else None, method=threshold, top_percent=top_percent)
            rows.append({"kind": kind, "row": i, "patient": pseudonym(str(r.get("patient_id", i)), "patient"),
                         "class": str(r.get(cls_col, "")) if cls_col else "", **s})
            keep[(kind, i)] = (display, m, truth)
    per = pd.DataFrame(rows, columns=["kind", "row", "patient", "class", "dice", "iou", "pointing_game", "hit"])
    metrics = ("dice", "iou", "pointing_game", "hit")
    summary, by_class, paired = {}, [], {}
    for kind, g in per.groupby("kind", sort=False):
        summary[kind] = {k: mean_with_ci(g[k], g["patient"], n_boot, seed) for k in metrics}
        for c, gc in g.groupby("class"):
            by_class.append({"kind": kind, "class": c, "n": int(len(gc)),
                             **{k: mean_with_ci(gc[k], gc["patient"], n_boot, seed) for k in metrics}})
    kinds_present = list(summary)
    for a_i, a in enumerate(kinds_present):
        for b in kinds_present[a_i + 1:]:
            pa = per[per.kind == a].set_index("row")
            pb = per[per.kind == b].set_index("row").reindex(pa.index)
            paired[f"{a} vs {b}"] = {k: paired_tests(pa[k].to_numpy(), pb[k].to_numpy(), groups=pa["patient"].to_numpy())
                                     for k in metrics}  # clustered by patient
    gallery = _localization_gallery(per, keep, gallery_dir, n_gallery) if gallery_dir is not None else []
    return {"per_image": per, "summary": summary, "by_class": by_class, "paired": paired, "texts": texts,
            "threshold": threshold, "n_images": int(per["row"].nunique()) if len(per) else 0, "gallery": gallery}


def _localization_gallery(per: pd.DataFrame, keep: dict, out_dir, n: int) -> list[tuple]:
    """Best and worst cases (by Dice) of each kind as overlays with the lesion outline in green."""
    from PIL import Image

    from mammolens.explain.overlay import render_heatmap

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = []
    for kind, g in per.groupby("kind", sort=False):
        g = g.sort_values("dice", ascending=False)
        for tag, sel in (("best", g.head(n)), ("worst", g.tail(n).iloc[::-1])):
            for r in sel.to_dict("records"):
                display, m, truth = keep[(kind, r["row"])]
                rgb = np.array(render_heatmap(display, m, f"{tag}: {kind}", method=MAP_TITLES.get(kind, kind)))
                edge = truth & ~(np.roll(truth, 1, 0) & np.roll(truth, -1, 0) & np.roll(truth, 1, 1) & np.roll(truth, -1, 1))
                rgb[: edge.shape[0], : edge.shape[1]][edge] = (0, 255, 0)
                png = out_dir / f"{kind}_{tag}_{r['row']:04d}.png"
                Image.fromarray(rgb).save(png)
                caption = f"image {r['row']}: Dice {r['dice']:.2f}, pointing {r['pointing_game']:.0f}"
                items.append((f"{kind} {tag}", str(png), caption))
    return items
