"""End-to-end workflows that join the layers: evaluate a run, explain images, the demo.

This module sits with ``cli`` and ``serve`` at the application layer (it may import ``train``);
the library below it never imports it. Each function returns a plain dict that the CLI prints.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

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


def _predict_cache(run, cache_dir: Path, batch_size: int, device: str) -> pd.DataFrame:
    """The predictions contract for every successfully cached row of a cache."""
    from mammolens.data.cache import open_cache
    from mammolens.data.dataset import MammoDataset
    from mammolens.train.loop import predict_cache

    cache = open_cache(cache_dir, allow_incomplete=True)
    index = cache.index
    ok = np.flatnonzero((index["status"] == "done").to_numpy()) if "status" in index else np.arange(len(index))
    if not len(ok):
        from mammolens.parallel import NothingReadError

        raise NothingReadError(f"none of the {len(index)} image(s) of {cache_dir} could be read "
                               f"(reasons in {cache_dir / 'errors.csv'})")
    ds = MammoDataset(cache, run.task, rows=ok)
    probs = np.asarray(predict_cache(run.model, run.task, ds, batch_size=batch_size, device=device))  # [N, K]
    df = index.iloc[ok].reset_index(drop=True).copy()
    df["label"] = run.task.encode(df[run.task.label_column]) if run.task.label_column in df else -1
    names = list(run.task.class_names)
    for k, c in enumerate(names):
        df[f"prob_{c}"] = probs[:, k]
    df["pred"] = [names[i] for i in probs.argmax(1)]
    return df


REPORT_MAX_SIDE = 1024  # gallery figures are embedded in report.html: big enough to read, small enough to mail


def _gallery_figure(row, tile: np.ndarray, cam: np.ndarray, cfg, class_name: str, prob: float) -> np.ndarray:
    """A gallery heat map drawn on the original image of a cache row (re-read; its geometry is recomputed
    by the same ``preprocess_image``), else on the cache tile when the file cannot be read here.

    Outside the breast mask the grey image is blanked, as in the cache: a research report must not show
    film labels or burned-in text that the model never saw.
    """
    from mammolens.explain.overlay import render_heatmap
    from mammolens.inference import heatmap_on_original
    from mammolens.io import read_image
    from mammolens.transforms.breast import breast_mask, display_copy, preprocess_image

    try:
        fr = getattr(row, "frame", None)  # a DBT frame as its own row
        fr = None if fr is None or pd.isna(fr) or str(fr).strip() == "" else int(float(fr))
        img = read_image(str(row.image_path), **({"frame": fr} if fr is not None else {"dbt": cfg.dbt}))
        pixels = img.pixels if img.pixels.ndim == 2 or fr is None else img.pixels[fr]
        _, info = preprocess_image(pixels, cfg, laterality=str(getattr(row, "laterality", "") or ""))
        display, _ = display_copy(pixels, REPORT_MAX_SIDE)
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
    from mammolens.inference import classifier_cams

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


def evaluate_run(run_dir: str | PathLike, data: str | PathLike, out: str | PathLike | None = None,
                 compare: str | PathLike | None = None, n_boot: int = 1000, seed: int = 0,
                 gallery_per_class: int = 2, batch_size: int = 32, workers: int | None = None,
                 device: str = "auto", progress: bool = True, include_ids: bool = False) -> dict[str, Any]:
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
    """
    import torch

    from mammolens.evaluation.report import evaluate_predictions, to_jsonable, write_report
    from mammolens.models.run import load_run

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    run = load_run(run_dir)
    out_dir = Path(out) if out else Path(run_dir) / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=".cache-", dir=out_dir))  # the caches hold the manifest: deleted below
    try:
        cache_dir = _cache_for(run, data, work, workers, progress)
        preds = _predict_cache(run, cache_dir, batch_size, device)
        failures = _failures(cache_dir, out_dir / "errors.csv")
        cmp_preds = None
        if compare is not None:
            run_b = load_run(compare)
            if list(run_b.task.class_names) != list(run.task.class_names):
                raise ValueError(f"cannot compare runs with different classes: {run.task.class_names} vs {run_b.task.class_names}")
            cache_b = _cache_for(run_b, data if run_b.preprocess != run.preprocess else cache_dir,
                                 work / "compare", workers, progress)
            cmp_preds = _predict_cache(run_b, cache_b, batch_size, device)
        names = list(run.task.class_names)
        dense = ("C", "D") if set(names) >= {"C", "D"} else None
        result = evaluate_predictions(preds, names, n_boot=n_boot, seed=seed, compare_predictions=cmp_preds,
                                      dense_classes=dense)
        gallery = _gallery(run, cache_dir, preds, out_dir / "gradcam", gallery_per_class, device)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (preds if include_ids else pseudonymise_frame(preds)).to_parquet(out_dir / "predictions.parquet", index=False)
    metrics = to_jsonable({k: v for k, v in result.items() if k != "subgroups"})
    metrics["subgroups"] = to_jsonable(result["subgroups"].to_dict("records")) if result.get("subgroups") is not None else []
    # names, not absolute paths: a path can hold user names or PatientID folders
    provenance = {"run": Path(run_dir).resolve().name, "data": f"{Path(data).resolve().parent.name}/{Path(data).name}",
                  "model": run.cfg.get("model", ""), "method": run.method,
                  "compare": Path(compare).resolve().name if compare else "",
                  "preprocess": run.preprocess, "n_boot": n_boot, "seed": seed}
    metrics["provenance"] = provenance
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=True))
    report = write_report(out_dir, preds, names, result, gallery=gallery,
                          title=f"mammolens evaluation: {provenance['run']} on {provenance['data']}",
                          provenance=provenance)
    return {"out_dir": str(out_dir), "report": str(report), "n_images": int(len(preds)), "n_failed": failures,
            "errors": str(out_dir / "errors.csv"),
            "metrics": metrics["metrics"], "seconds": round(time.perf_counter() - t0, 1)}


def _failures(cache_dir: Path, errors_csv: Path) -> int:
    """Rows of the (temporary) evaluation cache that could not be read, written to ``errors_csv`` with the
    image paths scrubbed as in ``predictions.parquet``; returns their number."""
    from mammolens.data.cache import open_cache

    index = open_cache(cache_dir, allow_incomplete=True).index
    failed = index[index["status"] == "failed"]
    paths = pseudonymise_frame(index)["image_path"][failed.index] if len(failed) else []
    pd.DataFrame({"image_path": list(paths), "reason": list(failed["error"])}).to_csv(errors_csv, index=False)
    return int(len(failed))


# ---------------------------------------------------------------------------------------- explain
def explain_run(run_dir: str | PathLike, images: list[str | PathLike], out: str | PathLike,
                class_name: str | None = None, device: str = "auto") -> list[dict[str, Any]]:
    """GradCAM overlays for image files, through the run's own preprocessing and classifier."""
    from mammolens.inference import Predictor

    p = Predictor.from_run(run_dir, device=device, workers=0)
    out = Path(out)
    res = p.predict(images, explain=True, overlay_dir=out, class_name=class_name)
    recs = res.images.to_dict("records")
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
    run_dir = train(cfg)
    steps["train"] = time.perf_counter() - t0 - sum(steps.values())
    ev = evaluate_run(run_dir, out / "external" / "manifest.parquet", out=out / "run" / "eval-external",
                      n_boot=n_boot, workers=workers, progress=progress)
    steps["evaluate"] = time.perf_counter() - t0 - sum(steps.values())
    study = sorted((out / "external" / "dicom").iterdir())[0]
    pred = Predictor.from_run(run_dir, workers=0).predict(study, explain=True, overlay_dir=out / "predict" / "overlays")
    (out / "predict").mkdir(parents=True, exist_ok=True)
    pred.images.to_csv(out / "predict" / "images.csv", index=False)
    pred.exams.to_csv(out / "predict" / "exams.csv", index=False)
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
    all three), ``errors.csv`` (file, reason), ``overlays/*.png`` (GradCAM of the predicted class)
    and, for DICOM inputs, ``dicom/<study>/density_sr.dcm`` (Comprehensive SR with the coded breast
    composition) and ``dicom/<study>/overlay_*.dcm`` (Secondary Capture heat maps), both in the
    source study. Identifiers appear only inside the DICOM files (a PACS needs them) unless
    ``include_ids`` asks for them in the tables too.
    """
    from mammolens.inference import Predictor

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    p = Predictor.from_run(run_dir, device=device, batch_size=batch_size, workers=workers, precision=precision)
    res = p.predict(inputs, explain=overlays, overlay_dir=out / "overlays" if overlays else None,
                    include_ids=include_ids, progress=progress, sidecar=sidecar)
    res.images.to_csv(out / "images.csv", index=False)
    res.breasts.to_csv(out / "breasts.csv", index=False)
    res.exams.to_csv(out / "exams.csv", index=False)
    res.errors.to_csv(out / "errors.csv", index=False)
    images = res.images.drop(columns=["overlay_png"], errors="ignore")
    payload = {"model": dict(p.model_info), "classes": p.class_names,  # not-assessable rows: null, not NaN
               "images": images.astype(object).where(images.notna(), None).to_dict("records"),
               "breasts": res.breasts.to_dict("records"), "exams": res.exams.to_dict("records"),
               "errors": res.errors.to_dict("records"), "warnings": res.warnings}
    (out / "results.json").write_text(json.dumps(payload, indent=2, default=str))
    n_sr = 0
    if dicom and len(res.images):
        n_sr = _write_dicom_outputs(p, res, out / "dicom", overlays)
    n_na = int((~res.images["assessable"].astype(bool)).sum()) if len(res.images) else 0
    return {"out_dir": str(out), "n_images": int(len(res.images)), "n_not_assessable": n_na,
            "n_breasts": int(len(res.breasts)),
            "n_exams": int(len(res.exams)), "n_failed": res.n_failed, "n_sr": n_sr,
            "errors": res.errors.to_dict("records"), "warnings": res.warnings}


def _write_dicom_outputs(p, res, out: Path, overlays: bool) -> int:
    """One SR per DICOM study and one Secondary Capture per overlay; returns the SR count."""
    import pydicom
    from pydicom.uid import generate_uid

    from mammolens.inference import class_probs
    from mammolens.io import is_dicom
    from mammolens.io.dicom_out import write_density_sr, write_overlay_sc

    images = res.images.assign(source_path=res.sources)
    images = images[images["assessable"].astype(bool)]  # not-assessable images are no evidence for a density
    n_sr = 0
    for study, grp in images.groupby("study_id", sort=True):
        headers, srcs = [], []
        for r in grp.itertuples():
            src = r.source_path
            if not is_dicom(src):
                continue
            try:
                headers.append(pydicom.dcmread(src, stop_before_pixels=True))
                srcs.append(r)
            except Exception as e:  # noqa: BLE001 — the prediction exists; only the DICOM output is skipped
                log.warning("no DICOM output for %s: %s", r.file, e)
        if not headers:
            continue
        exam = res.exams[res.exams["study_id"] == study].iloc[0]
        breasts = [{"laterality": b["laterality"], "pred": b["pred"], "probs": class_probs(b, p.class_names),
                    **({"dense": bool(b["dense"])} if "dense" in b else {})}
                   for b in res.breasts[res.breasts["study_id"] == study].to_dict("records")
                   if b["laterality"] in ("L", "R")]
        result = {"pred": exam["pred"], "probs": class_probs(exam, p.class_names), "breasts": breasts,
                  "model": {"name": f"mammolens:{p.name}"}}
        if "dense" in exam:
            result["dense"] = bool(exam["dense"])
        write_density_sr(headers, result, out / study / "density_sr.dcm")
        n_sr += 1
        if overlays:
            from PIL import Image

            series = generate_uid()
            for i, (ds, r) in enumerate(zip(headers, srcs), start=1):
                ov = getattr(r, "overlay", None)
                if isinstance(ov, str) and Path(ov).is_file():
                    rgb = np.asarray(Image.open(ov).convert("RGB"))
                    write_overlay_sc(ds, rgb, out / study / f"overlay_{i:03d}.dcm",
                                     f"mammolens GradCAM, predicted density {r.pred}",
                                     series_instance_uid=series, instance_number=i)
    return n_sr
