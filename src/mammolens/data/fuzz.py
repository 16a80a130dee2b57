"""A deterministic corpus of hostile image files (mutated DICOMs and rasters) for robustness tests.

``make_fuzz_corpus(out_dir, n=300, seed=0)`` writes good source files (a small synthetic cohort: native,
RLE and JPEG 2000 DICOMs, single- and multi-frame; a JPEG baseline DICOM; 8- and 16-bit PNGs) and ``n``
mutants of them into ``out_dir``, plus ``out_dir/corpus.csv``. Each row says how the file was made and
what a correct reader must do with it:

* ``expect="ok"``: a legitimate file (the sources, or a harmless change): it must read to a finite
  [0, 1] image of the declared size.
* ``expect="error"``: the reader must refuse it with ``ImageReadError`` (header and data disagree,
  non-finite header numbers, a geometry over the pixel budget, a decompression bomb...).
* ``expect="either"``: random corruption that may or may not stay decodable (byte flips); an image, if
  returned, must still be finite, in [0, 1] and of the declared size.

Only pydicom, Pillow and ``data.synthetic`` are used (never the reader), so the corpus is the same when
it is run against an older reader. Sources can be given instead (``sources=[paths]``); DICOM mutations
then apply to each DICOM source and raster mutations to each PNG.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd

EXPECTS = ("ok", "error", "either")

_TS = {  # transfer syntax UIDs padded to even length, as stored in the file meta group
    "explicit": b"1.2.840.10008.1.2.1\0",
    "rle": b"1.2.840.10008.1.2.5\0",
    "jpeg2000": b"1.2.840.10008.1.2.4.90",
    "jpeg-baseline": b"1.2.840.10008.1.2.4.50",
    "jpegls": b"1.2.840.10008.1.2.4.80",
    "jpeg-lossless": b"1.2.840.10008.1.2.4.57",
}
_PIXEL_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian

# header mutations: name -> (attribute changes, expectation); "RAW:" values are written as raw DS text
_HEADER = {
    "rows_zero": ({"Rows": 0}, "error"),
    "columns_zero": ({"Columns": 0}, "error"),
    "rows_plus_one": ({"Rows": "+1"}, "error"),
    "columns_halved": ({"Columns": "/2"}, "error"),
    "rows_columns_65535": ({"Rows": 65535, "Columns": 65535}, "error"),
    "bits_allocated_zero": ({"BitsAllocated": 0}, "error"),
    "bits_allocated_7": ({"BitsAllocated": 7}, "error"),
    "bits_allocated_64": ({"BitsAllocated": 64}, "error"),
    "bits_stored_zero": ({"BitsStored": 0}, "error"),
    "bits_stored_40": ({"BitsStored": 40}, "error"),
    "frames_zero": ({"NumberOfFrames": 0}, "error"),
    "frames_huge": ({"NumberOfFrames": 100000}, "error"),
    "frames_plus_one": ({"NumberOfFrames": "+1"}, "error"),
    "samples_zero": ({"SamplesPerPixel": 0}, "error"),
    "samples_three": ({"SamplesPerPixel": 3}, "error"),
    "slope_nan": ({"RescaleSlope": "RAW:NaN", "RescaleIntercept": "RAW:0"}, "error"),
    "slope_inf": ({"RescaleSlope": "RAW:Inf", "RescaleIntercept": "RAW:0"}, "error"),
    "slope_zero": ({"RescaleSlope": "RAW:0", "RescaleIntercept": "RAW:0"}, "error"),
    "slope_huge": ({"RescaleSlope": "RAW:1e38", "RescaleIntercept": "RAW:0"}, "error"),
    "intercept_inf": ({"RescaleSlope": "RAW:1", "RescaleIntercept": "RAW:-Inf"}, "error"),
    "window_width_nan": ({"WindowCenter": "RAW:2000", "WindowWidth": "RAW:NaN"}, "error"),
    "window_width_inf": ({"WindowCenter": "RAW:2000", "WindowWidth": "RAW:Inf"}, "error"),
    "window_center_nan": ({"WindowCenter": "RAW:NaN", "WindowWidth": "RAW:1000"}, "error"),
    "window_width_zero": ({"WindowCenter": "RAW:2000", "WindowWidth": "RAW:0"}, "either"),
    "photometric_garbage": ({"PhotometricInterpretation": "XYZ"}, "error"),
}
_PIXEL_NATIVE = {  # native pixel data length changes
    "pixel_data_short": "error",
    "pixel_data_long": "error",
    "pixel_data_two_extra": "error",
    "pixel_data_empty": "error",
}
_TS_SWAPS = {  # (source compression, label written) for the "ts_*" mutations
    "ts_jpeg2000_as_jpeg_baseline": ("jpeg2000", "jpeg-baseline"),
    "ts_jpeg2000_as_jpegls": ("jpeg2000", "jpegls"),
    "ts_jpeg2000_as_jpeg_lossless": ("jpeg2000", "jpeg-lossless"),
    "ts_jpeg_baseline_as_jpeg2000": ("jpeg-baseline", "jpeg2000"),
    "ts_rle_as_explicit": ("rle", "explicit"),
    "ts_explicit_as_rle": ("explicit", "rle"),
    "ts_rle_as_jpeg2000": ("rle", "jpeg2000"),
}
_ALWAYS = ("png_", "tiff_", "ts_", "rows_columns_65535")  # kept in every corpus, however small
_BYTES = ("pixel_flip", "header_flip", "truncate", "append_junk")
_RASTER = ("png_truncate", "png_flip", "png_append_junk")


def _source_files(src_dir: Path) -> list[Path]:
    """Write the good sources: native, RLE and JPEG 2000 DM + DBT files, a JPEG baseline DM, 8/16-bit PNGs."""
    from PIL import Image

    from mammolens.data.synthetic import make_cohort, write_dicom

    files = []
    for name, fraction in (("native", 0.0), ("compressed", 1.0)):
        df = make_cohort(src_dir / name, n_patients=2, modalities=("DM", "DBT"), image_size=(48, 40), dbt_frames=3,
                         compress_fraction=fraction, processing_fraction=0.0, lesion_prob=0.0)
        files += [src_dir / name / p for p in df["image_path"]]
    ramp = np.add.outer(np.arange(48), np.arange(40)).astype(np.uint8) * 2
    files.append(write_dicom(src_dir / "jpeg_baseline.dcm", ramp, compression="jpeg-baseline", bits_stored=8))
    Image.fromarray(ramp).save(src_dir / "ramp8.png")
    Image.fromarray(ramp.astype(np.uint16) * 200).save(src_dir / "ramp16.png")
    return files + [src_dir / "ramp8.png", src_dir / "ramp16.png"]


def _compression(ds) -> str:
    ts = str(ds.file_meta.TransferSyntaxUID).encode()
    for name, uid in _TS.items():
        if uid.rstrip(b"\0") == ts:
            return name
    return "other"


def _set(ds, keyword: str, value) -> None:
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    if isinstance(value, str) and value[:1] in "+/" and value[1:].isdigit():  # relative change
        old = int(ds.get(keyword, 1) or 1)
        value = old + int(value[1:]) if value[0] == "+" else max(1, old // int(value[1:]))
    if isinstance(value, str) and value.startswith("RAW:"):  # bypass pydicom's value validation
        ds.add_new(tag_for_keyword(keyword), dictionary_VR(keyword), value[4:])
        ds[keyword].value = value[4:]
        return
    setattr(ds, keyword, value)


def _write(ds, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(path, enforce_file_format=True)


def _header_mutant(src: Path, dst: Path, changes: dict) -> None:
    import pydicom

    ds = pydicom.dcmread(src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the invalid values are the point
        for keyword, value in changes.items():
            _set(ds, keyword, value)
    if any(k.startswith(("Rescale", "Window")) for k in changes):  # enhanced files keep these per frame
        ds.pop("SharedFunctionalGroupsSequence", None)
        ds.pop("PerFrameFunctionalGroupsSequence", None)
        ds.pop("VOILUTSequence", None)
    _write(ds, dst)


def _native_mutant(src: Path, dst: Path, kind: str) -> None:
    import pydicom

    ds = pydicom.dcmread(src)
    data = bytes(ds.PixelData)
    ds.PixelData = {
        "pixel_data_short": data[: len(data) * 3 // 4],
        "pixel_data_long": data + bytes(len(data) // 4),
        "pixel_data_two_extra": data + b"\0\0",
        "pixel_data_empty": b"",
    }[kind]
    _write(ds, dst)


def _declared(path: Path) -> dict:
    """Declared geometry of a file (what a correct read must return), read with pydicom or Pillow."""
    import pydicom
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if path.suffix in (".png", ".tif"):
                with Image.open(path) as im:
                    return {"rows": im.size[1], "columns": im.size[0], "frames": 1}
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        return {"rows": int(ds.get("Rows", 0) or 0), "columns": int(ds.get("Columns", 0) or 0),
                "frames": int(ds.get("NumberOfFrames", 1) or 1)}
    except Exception:  # the header itself is broken: nothing is declared
        return {"rows": -1, "columns": -1, "frames": -1}


def _png_bomb(path: Path, width: int, height: int) -> None:
    """An 8-bit greyscale PNG of ``width`` x ``height`` zeros: a few hundred kB that decode to ``w * h`` bytes."""
    comp = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte + pixels
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _png_huge_header(src: Path, dst: Path) -> None:
    """The source PNG with its IHDR claiming 65535 x 65535 (a small file that declares 4.3e9 pixels)."""
    data = bytearray(src.read_bytes())
    data[16:24] = struct.pack(">II", 65535, 65535)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    dst.write_bytes(bytes(data))


def _float_tiff_nan(path: Path) -> None:
    from PIL import Image

    arr = np.linspace(0, 1, 48 * 40, dtype=np.float32).reshape(48, 40)
    arr[10:20, 10:20] = np.nan
    Image.fromarray(arr, mode="F").save(path)


def make_fuzz_corpus(out_dir: str | PathLike, n: int = 300, seed: int = 0,
                     sources: list[str | PathLike] | None = None) -> pd.DataFrame:
    """Write good sources and ``n`` mutants of them; return (and write ``corpus.csv``) one row per file.

    Structured mutations (header values, pixel data length, transfer syntax swaps, decompression bombs)
    are applied to one source of each kind (compression x single/multi-frame), an evenly spaced subset
    when they exceed two thirds of ``n``; random byte-level mutations (flips in the pixel data or header,
    truncation, appended junk) fill up to ``n`` files. Same ``seed``, same files.

    Args:
        out_dir: folder for ``sources/`` (unless given), ``mutants/`` and ``corpus.csv``.
        n: number of mutants (the sources are listed as well, with ``expect="ok"``).
        seed: seed of the random byte-level mutations.
        sources: good DICOM/PNG files to mutate instead of the built-in synthetic ones.

    Returns:
        DataFrame with ``path`` (absolute), ``source`` (file name), ``mutation``, ``expect``
        (``EXPECTS``), ``format`` (``dicom``/``png``/``tiff``) and the declared ``rows``, ``columns``,
        ``frames`` of the written file (-1 when its header is unreadable).
    """
    import pydicom

    out_dir = Path(out_dir)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    src_files = [Path(p) for p in sources] if sources is not None else _source_files(out_dir / "sources")
    missing = [str(p) for p in src_files if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"fuzz sources not found: {missing[:3]}")
    mut_dir = out_dir / "mutants"
    mut_dir.mkdir(parents=True, exist_ok=True)
    dicoms = [p for p in src_files if p.suffix.lower() not in (".png",)]
    pngs = [p for p in src_files if p.suffix.lower() == ".png"]
    comp = {}
    for p in dicoms:
        comp[p] = _compression(pydicom.dcmread(p, stop_before_pixels=True))

    def _name(p: Path) -> str:  # sources are named relative to out_dir when they lie inside it
        return p.resolve().relative_to(out_dir.resolve()).as_posix() if p.resolve().is_relative_to(out_dir.resolve()) else p.name

    rows = [dict(path=p, source=_name(p), mutation="none", expect="ok") for p in src_files]
    kinds = {}  # one representative source per (compression, multi-frame) for the structured mutations
    for p in dicoms:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            multi = int(pydicom.dcmread(p, stop_before_pixels=True).get("NumberOfFrames", 1) or 1) > 1
        kinds.setdefault((comp[p], multi), p)
    reps = list(kinds.values())

    planned = []  # (mutation, source, expect, writer(dst))
    for name, (changes, expect) in _HEADER.items():
        for p in reps:
            planned.append((name, p, expect, lambda dst, p=p, c=changes: _header_mutant(p, dst, c)))
    for name, expect in _PIXEL_NATIVE.items():
        for p in reps:
            if comp[p] == "explicit":
                planned.append((name, p, expect, lambda dst, p=p, k=name: _native_mutant(p, dst, k)))
    for name, (src_kind, label) in _TS_SWAPS.items():
        for p in [p for p in dicoms if comp[p] == src_kind][:2]:
            def swap(dst, p=p, src_kind=src_kind, label=label):
                data = p.read_bytes()
                dst.write_bytes(data.replace(_TS[src_kind], _TS[label], 2))
            planned.append((name, p, "error", swap))
    for p in pngs[:1]:
        planned.append(("png_bomb_13000", p, "error", lambda dst: _png_bomb(dst, 13000, 13000)))
        planned.append(("png_header_65535", p, "error", lambda dst, p=p: _png_huge_header(p, dst)))
        planned.append(("tiff_float_nan", p, "error", _float_tiff_nan))

    def byte_mutant(kind: str, p: Path, r: np.random.Generator):
        data = bytearray(p.read_bytes())
        if kind in ("pixel_flip", "header_flip", "png_flip"):
            start = data.rfind(_PIXEL_TAG) + 12 if kind == "pixel_flip" else (132 if kind == "header_flip" else 33)
            stop = len(data) if kind != "header_flip" else max(start + 1, data.rfind(_PIXEL_TAG))
            for i in r.integers(start, stop, size=int(r.integers(1, 9))):
                data[int(i)] ^= int(r.integers(1, 256))
            return bytes(data), "either"
        if kind in ("truncate", "png_truncate"):
            cut = int(r.integers(8, len(data) - 2))
            # a PNG cut inside its final IEND chunk still holds every pixel: readable or not, both are right
            iend = data.rfind(b"IEND") - 4 if kind == "png_truncate" else len(data)
            return bytes(data[:cut]), "error" if cut < iend else "either"
        junk = r.bytes(int(r.integers(1, 4096)))
        return bytes(data) + junk, "either"

    if len(planned) > n - n // 3:  # a third of the corpus stays random byte-level corruption
        must = [x for x in planned if x[0].startswith(_ALWAYS)]
        rest = [x for x in planned if not x[0].startswith(_ALWAYS)]
        keep = max(0, n - n // 3 - len(must))
        planned = must + [rest[i] for i in np.unique(np.linspace(0, len(rest) - 1, keep).round().astype(int))][:keep]
    k = 0
    while len(planned) < n:  # random byte-level mutants fill the rest
        if pngs and k % 6 == 5:
            kind, p = _RASTER[(k // 6) % len(_RASTER)], pngs[int(rng.integers(len(pngs)))]
        else:
            kind, p = _BYTES[k % len(_BYTES)], dicoms[int(rng.integers(len(dicoms)))]
        sub = np.random.default_rng([seed, k])

        def writer(dst, kind=kind, p=p, sub=sub):
            data, _ = byte_mutant(kind, p, sub)
            dst.write_bytes(data)
        planned.append((kind, p, byte_mutant(kind, p, np.random.default_rng([seed, k]))[1], writer))
        k += 1
    for i, (name, p, expect, writer) in enumerate(planned):
        suffix = ".tif" if name == "tiff_float_nan" else (".png" if p.suffix.lower() == ".png" else ".dcm")
        dst = mut_dir / f"{i:04d}_{name}_{p.stem}{suffix}"
        writer(dst)
        rows.append(dict(path=dst, source=_name(p), mutation=name, expect=expect))
    df = pd.DataFrame(rows)
    df["path"] = [str(Path(p).resolve()) for p in df["path"]]
    df["format"] = [{".png": "png", ".tif": "tiff"}.get(Path(p).suffix, "dicom") for p in df["path"]]
    geometry = pd.DataFrame([_declared(Path(p)) for p in df["path"]])
    df = pd.concat([df, geometry], axis=1)
    from mammolens.csvsafe import write_csv

    write_csv(df, out_dir / "corpus.csv")
    return df


__all__ = ["EXPECTS", "make_fuzz_corpus"]
