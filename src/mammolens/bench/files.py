"""Synthetic DICOM input files for the preprocessing and end-to-end inference benchmarks."""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np


def make_bench_files(out_dir: str | PathLike, n_files: int, image_size: tuple[int, int] = (3328, 2560),
                     n_unique: int = 8, seed: int = 0, render_scale: int = 1) -> list[Path]:
    """Synthetic DM DICOM files for the benchmarks: ``n_unique`` rendered images copied to ``n_files``.

    Rendering is far slower than reading, so distinct files repeat a few rendered images (vendors,
    bit depths, windows, MONOCHROME1 and laterality all vary among them), and with ``render_scale``
    k > 1 the images are rendered at ``image_size / k`` and their stored values repeated k x k (the
    files have the full size, the header and bit depth of the rendered ones; only fine texture is
    coarser). Files are uncompressed: the codecs are the same for the naive and our path and would
    only dilute the comparison.
    """
    from mammolens.data.synthetic import make_cohort

    k = max(1, int(render_scale))
    h, w = (int(v) for v in image_size)
    if h % k or w % k:
        raise ValueError(f"image size {h}x{w} is not a multiple of render_scale {k}")
    out = Path(out_dir)
    src = out / f"rendered_{h // k}x{w // k}"
    n_patients = max(min(4, n_unique), -(-n_unique // 4))  # patient i has vendor i % 4: all four when n_unique >= 4
    if not (src / "manifest.parquet").exists():
        make_cohort(src, n_patients=n_patients, seed=seed, modalities=("DM",),
                    image_size=(h // k, w // k), compress_fraction=0.0, lesion_prob=0.3)
    import pandas as pd

    df = pd.read_parquet(src / "manifest.parquet")
    df = df.assign(_k=df.groupby("patient_id", sort=False).cumcount(), _p=df.groupby("patient_id", sort=False).ngroup())
    df = df.sort_values(["_k", "_p"], kind="stable")  # round-robin over patients, hence vendors
    rendered = [src / p for p in df["image_path"]][:n_unique]
    if k > 1:
        rendered = [_upscaled_copy(p, out / f"upscaled_{h}x{w}" / f"u{i:03d}.dcm", k) for i, p in enumerate(rendered)]
    files = []
    uids = [_sop_uid(p) for p in rendered]
    for i in range(n_files):
        dst = out / f"files_{h}x{w}" / f"img{i:05d}.dcm"
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            _copy_as_new_image(rendered[i % len(rendered)], uids[i % len(rendered)], i, dst)
        files.append(dst)
    return files


def _sop_uid(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _copy_as_new_image(src: Path, uid: str, i: int, dst: Path) -> None:
    """Copy ``src`` as a distinct image: its SOPInstanceUID (file meta and dataset) gets the last 6 digits ``i``, a
    same-length byte patch (as fast as a copy; a repeated SOPInstanceUID would count once in ``predict``)."""
    last = uid.rsplit(".", 1)[-1]
    data = src.read_bytes()
    if len(last) > 6:
        new = uid[:-6] + f"{i % 10**6:06d}"
        data = data.replace(uid.encode("ascii"), new.encode("ascii"))
        dst.write_bytes(data)
        return
    import pydicom  # a short last component: rewrite the header instead
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[uid, str(i)])
    ds.save_as(dst, enforce_file_format=True)


def _upscaled_copy(src: Path, dst: Path, k: int) -> Path:
    """Write ``src`` (uncompressed) with every stored value repeated k x k and the pixel spacing / k."""
    import pydicom

    if dst.exists():
        return dst
    ds = pydicom.dcmread(src)
    dtype = np.dtype("<u2") if int(ds.BitsAllocated) == 16 else np.dtype(np.uint8)
    raw = np.frombuffer(ds.PixelData, dtype=dtype, count=int(ds.Rows) * int(ds.Columns))
    up = np.repeat(np.repeat(raw.reshape(int(ds.Rows), int(ds.Columns)), k, axis=0), k, axis=1)
    ds.PixelData = up.tobytes()
    ds.Rows, ds.Columns = up.shape
    for kw in ("PixelSpacing", "ImagerPixelSpacing"):
        if kw in ds:
            setattr(ds, kw, [float(v) / k for v in getattr(ds, kw)])
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst, enforce_file_format=True)
    return dst


