"""The mammography DICOM reader: stored values -> float32 [0, 1] display image, bright = dense.

Conversion rules (applied in this order; every choice is written to ``MammoImage.conversion``):

1. **Decode** with pydicom (+ pylibjpeg / pyjpegls plugins): native, deflated, RLE, JPEG baseline /
   extended / lossless, JPEG-LS and JPEG 2000 transfer syntaxes. Only greyscale images are read:
   ``SamplesPerPixel == 1`` and ``PhotometricInterpretation`` MONOCHROME1 or MONOCHROME2; anything
   else (RGB, YBR, PALETTE COLOR), a dataset without pixel data (SR, RT structure sets...), a
   truncated or undecodable pixel stream, or a file that is not DICOM raises ``ImageReadError``.
2. **Bits stored**: values are masked to the low ``BitsStored`` bits (vendors leave overlay or junk bits
   above them) and, when ``PixelRepresentation == 1``, sign-extended from bit ``BitsStored - 1``.
3. **Modality LUT**: a ``ModalityLUTSequence`` is applied as a table; otherwise
   ``RescaleSlope``/``RescaleIntercept`` (top level, or the enhanced-IOD
   ``PixelValueTransformationSequence`` in the shared / per-frame functional groups). Values are
   float32 from here on.
4. **DBT reduction** (multi-frame: Breast Tomosynthesis SOP class or ``NumberOfFrames > 1``), in
   modality space, before VOI: ``dbt="mip"`` maximum-intensity projection over all frames (taken in
   the *display-bright* direction, i.e. the minimum for MONOCHROME1 or a negative slope);
   ``"slab"`` mean of frames ``slab=(start, stop)`` (Python slice, default the central third);
   ``"center"`` the central frame ``F // 2``; ``"frames"`` every frame (``pixels`` is ``[F, H, W]``);
   ``frame=i`` overrides ``dbt`` with frame ``i``. Only the needed frames are decoded.
5. **VOI** (``apply_voi=True``), first match wins:

   * ``PresentationIntentType == "FOR PROCESSING"`` (or a *For Processing* SOP class): raw detector
     data have no display transform, so a robust **percentile window** is used: ``lo, hi`` = the
     ``percentiles`` (default 0.5 and 99.5) of the image, ``y = clip((x - lo) / (hi - lo), 0, 1)``;
     with ``log=True``, ``x`` is first replaced by ``log1p(x - min(x))`` (raw signal is exponential in
     attenuation). Recorded as ``"percentile 0.5-99.5"`` (``"log+percentile ..."``).
   * ``VOILUTSequence`` (first item; top level or enhanced ``FrameVOILUTSequence``) when
     ``voi_prefer="lut"`` (default; GE images carry both a LUT and windows): table lookup with
     ``LUTDescriptor = (entries, first_mapped, bits)``, inputs clamped to the table, output scaled by
     ``2**bits - 1``. Recorded as ``"voi_lut"``.
   * ``WindowCenter``/``WindowWidth`` (the first window), per ``VOILUTFunction`` (PS3.3 C.11.2.1.2):
     LINEAR ``y = clip((x - (c - 0.5)) / (w - 1) + 0.5, 0, 1)``, LINEAR_EXACT
     ``y = clip((x - c) / w + 0.5, 0, 1)``, SIGMOID ``y = 1 / (1 + exp(-4 (x - c) / w))``.
     Recorded as ``"window C/W"``.
   * otherwise the percentile window above.

   ``apply_voi=False``: ``y = (x - lo) / (hi - lo)`` over the full range representable by
   ``BitsStored`` after the modality LUT; recorded as ``"none"``.
6. **MONOCHROME1** images, and images whose ``PresentationLUTShape`` is ``INVERSE``, are inverted after
   VOI, ``y = 1 - y``, so dense tissue is bright. Conformant files pair INVERSE with MONOCHROME1 (one
   inversion, applied once); INVERSE on a MONOCHROME2 image (seen from some CR/DX writers) inverts it.
   A ``PresentationLUTSequence`` (a table) is not applied.
7. Output is float32 clipped to [0, 1].

How (not what): a single frame of unsigned integers goes through one lookup table: stages 2-6 run once
on every value the dtype can hold and the image is gathered through the table (identical float32
results, one pass; the percentile window then reads exact percentiles from the value histogram).
Multi-frame reductions and signed data run the stages per pixel.

Metadata (``MammoImage.meta``, keys ``mammolens.io.META_KEYS``): ``modality`` is ``"DBT"`` for the
Breast Tomosynthesis / Breast Projection SOP classes or multi-frame images, ``"s2D"`` when ``ImageType``
or ``SeriesDescription`` names a synthesized 2D image (GENERATED_2D, SYNTHETIC, C-VIEW, V-PREVIEW,
S-VIEW, INSIGHT 2D...), else ``"DM"``; ``laterality`` from ``ImageLaterality``, ``Laterality``, the
enhanced ``FrameLaterality``, then text (``SeriesDescription``, ``ProtocolName``, ...); ``view`` from
``ViewPosition``, then ``ViewCodeSequence`` (code meaning / SNOMED code), then text; ``manufacturer``
normalised (``"HOLOGIC, Inc."`` -> ``"Hologic"``, ``"GE MEDICAL SYSTEMS"`` -> ``"GE"``...);
``pixel_spacing`` from ``PixelSpacing``, then ``ImagerPixelSpacing``, then the enhanced
``PixelMeasuresSequence`` (source in ``meta["pixel_spacing_source"]``); ``age`` in years from
``PatientAge``; ``gate_ok``/``gate_reason``: whether the header says mammogram (``io.gating``; the
reader reads any greyscale image, ingest and ``Predictor`` act on the gate).
"""

from __future__ import annotations

import struct
import warnings
from os import PathLike
from pathlib import Path

import numpy as np

from mammolens.io._types import (
    MAX_PIXELS_ENV,
    ImageReadError,
    MammoImage,
    check_pixel_budget,
    empty_meta,
    image_read_guard,
    max_pixels_limit,
)
from mammolens.io.gating import GATE_KEYWORDS, gate_header
from mammolens.io.header import (
    S2D_KEYWORDS,
    age_of,
    first_value,
    functional_group_item,
    header_text,
    image_laterality,
    is_s2d,
    laterality_of,
    mammo_view,
    normalise_manufacturer,
    pixel_spacing_of,
    source_reference,
)
from mammolens.io.paths import display_path, resolve_path

READER_VERSION = "1.2"
"""Bumped whenever the conversion of stored values to pixels changes (caches record it)."""

DBT_MODES = ("mip", "slab", "center", "frames")

SOP_DM_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
SOP_DM_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1"
SOP_DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
SOP_DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
SOP_BREAST_TOMO = "1.2.840.10008.5.1.4.1.1.13.1.3"
SOP_BREAST_PROJ_PRESENTATION = "1.2.840.10008.5.1.4.1.1.13.1.4"
SOP_BREAST_PROJ_PROCESSING = "1.2.840.10008.5.1.4.1.1.13.1.5"
_PROCESSING_SOPS = {SOP_DM_PROCESSING, SOP_DX_PROCESSING, SOP_BREAST_PROJ_PROCESSING}
_DBT_SOPS = {SOP_BREAST_TOMO, SOP_BREAST_PROJ_PRESENTATION, SOP_BREAST_PROJ_PROCESSING}

def looks_like_headerless_dicom(path: str | PathLike) -> bool:
    """True when pydicom parses a preamble-less file into a dataset with some standard attributes."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True, defer_size=1 << 20)
        return any(k in ds for k in ("SOPClassUID", "Modality", "StudyInstanceUID", "Rows", "PatientID"))
    except Exception:  # anything pydicom chokes on is not DICOM
        return False


def dicom_meta(ds) -> dict:
    """Header metadata of a dataset (``META_KEYS`` plus a few ``*_source`` extras); no pixel access.

    A field whose value is out of range or unparseable (``PatientAge 130Y``, a ``PixelSpacing`` of text) is
    left empty and described in ``meta["header_warnings"]`` (a list of lines; ``[]`` when clean).
    """
    meta = empty_meta()
    header_warnings: list[str] = []
    sop = str(ds.get("SOPClassUID", ""))
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if sop in _DBT_SOPS or n_frames > 1:
        modality = "DBT"
    elif is_s2d(ds):
        modality = "s2D"
    else:
        modality = "DM"
    intent = header_text(ds, "PresentationIntentType").upper()
    if not intent and sop:
        intent = "FOR PROCESSING" if sop in _PROCESSING_SOPS else "FOR PRESENTATION"
    lat, lat_src = laterality_of(ds)
    view, view_src = mammo_view(ds)  # e.g. LMO, CV: kept as OTHER so the manifest vocabulary holds
    spacing, spacing_src = pixel_spacing_of(ds, header_warnings)
    gate_ok, gate_reason = gate_header({kw: header_text(ds, kw) for kw in GATE_KEYWORDS}, view, view_src)
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    bits = ds.get("BitsStored")
    meta.update(
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        study_instance_uid=str(ds.get("StudyInstanceUID", "")),
        series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
        patient_id=header_text(ds, "PatientID"),
        laterality=lat,
        view=view,
        modality=modality,
        manufacturer=normalise_manufacturer(header_text(ds, "Manufacturer")),
        model=header_text(ds, "ManufacturerModelName"),
        presentation_intent=intent,
        photometric=header_text(ds, "PhotometricInterpretation").upper(),
        bits_stored=int(bits) if bits is not None else None,
        transfer_syntax=str(ts) if ts else "",
        n_frames=n_frames,
        pixel_spacing=spacing,
        age=age_of(ds, header_warnings),
        sop_class_uid=sop,
        manufacturer_raw=header_text(ds, "Manufacturer"),
        laterality_source=lat_src,
        view_source=view_src,
        pixel_spacing_source=spacing_src,
        gate_ok=gate_ok,  # io.gating: only mammograms get a density
        gate_reason=gate_reason,
        header_warnings=header_warnings,
    )
    return meta


# ---------------------------------------------------------------------------------- pixel stages
def _mask_bits(arr: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    """Keep the low ``bits_stored`` bits (sign-extended when signed). Idempotent on clean data."""
    nbits = arr.dtype.itemsize * 8
    if bits_stored >= nbits:
        return arr
    if not signed:
        mask = (1 << bits_stored) - 1
        if arr.size and int(arr.max()) > mask:
            np.bitwise_and(arr, mask, out=arr)
        return arr
    work = arr.astype(np.int32)
    work &= (1 << bits_stored) - 1
    sign = 1 << (bits_stored - 1)
    work ^= sign
    work -= sign
    return work


def _stored_range(bits_stored: int, signed: bool) -> tuple[float, float]:
    if signed:
        return -(2.0 ** (bits_stored - 1)), 2.0 ** (bits_stored - 1) - 1
    return 0.0, 2.0**bits_stored - 1


def _lut_apply(x: np.ndarray, item) -> tuple[np.ndarray, int]:
    """Apply a LUT item (``LUTDescriptor``, ``LUTData``) to float ``x``; returns (values, output bits)."""
    desc = [int(v) for v in item.LUTDescriptor]
    n_entries = desc[0] or 65536
    first = desc[1]
    if first >= 2**15 and x.size and float(x.min()) < 0:  # first-mapped stored as US for signed input
        first -= 2**16
    out_bits = desc[2]
    data = item.get("LUTData")
    if data is None:
        raise ValueError("LUT item has no LUTData")
    if isinstance(data, (bytes, bytearray)):
        table = np.frombuffer(data, dtype=np.uint8 if out_bits <= 8 and len(data) == n_entries else "<u2")
    else:
        table = np.asarray(data)
    table = table[:n_entries].astype(np.float32)
    idx = np.clip(np.rint(x - first), 0, len(table) - 1).astype(np.intp)
    return table[idx], out_bits


def _window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """VOI window per PS3.3 C.11.2.1.2 with output range [0, 1] (in place on float32 ``x``)."""
    if function == "SIGMOID":
        x -= center
        x *= -4.0 / max(width, 1e-6)
        np.exp(x, out=x)
        x += 1.0
        np.reciprocal(x, out=x)
        return x
    if function == "LINEAR_EXACT":
        x -= center
        x /= max(width, 1e-6)
        x += 0.5
    else:  # LINEAR (default)
        x -= center - 0.5
        x /= max(width - 1.0, 1e-6)
        x += 0.5
    np.clip(x, 0.0, 1.0, out=x)
    return x


def _weighted_percentiles(values: np.ndarray, counts: np.ndarray, pcts) -> list[float]:
    """``np.percentile(data, pcts)`` (linear interpolation) of data given as distinct values and counts."""
    order = np.argsort(values, kind="stable")
    v, c = values[order], counts[order]
    keep = c > 0
    v, cum = v[keep], np.cumsum(c[keep])
    n = int(cum[-1])
    out = []
    for q in pcts:
        pos = q / 100.0 * (n - 1)
        k = int(np.floor(pos))
        lo = float(v[np.searchsorted(cum, k, side="right")])
        hi = float(v[np.searchsorted(cum, min(k + 1, n - 1), side="right")])
        out.append(lo + (pos - k) * (hi - lo))
    return out


def _percentile_window(x: np.ndarray, pcts: tuple[float, float], log: bool,
                       counts: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Robust window between two percentiles of the image (in place on float32 ``x``).

    With ``counts``, ``x`` holds the distinct values (a lookup table) and ``counts`` how often each occurs
    in the image: the percentiles are then exact over every pixel.
    """
    if log:
        x -= float(x.min() if counts is None else x[counts > 0].min())
        if counts is not None:  # table entries below the image minimum are never looked up
            np.maximum(x, 0.0, out=x)
        np.log1p(x, out=x)
    if counts is not None:
        lo, hi = _weighted_percentiles(x, counts, pcts)
    else:
        sample = x.reshape(-1)
        if sample.size > 1_000_000:  # a strided sample gives the same percentiles to ~1e-3, 4x faster
            sample = sample[:: max(1, sample.size // 1_000_000)]
        lo, hi = (float(v) for v in np.percentile(sample, pcts))
    if hi <= lo:
        hi = lo + 1.0
    x -= lo
    x /= hi - lo
    np.clip(x, 0.0, 1.0, out=x)
    return x, {"window_lo": lo, "window_hi": hi}


def _modality_params(ds, frame: int | None):
    """(slope, intercept, modality LUT item or None, where found)."""
    if ds.get("ModalityLUTSequence"):
        return 1.0, 0.0, ds.ModalityLUTSequence[0], "ModalityLUTSequence"
    per_frame = functional_group_item(ds, "PixelValueTransformationSequence", frame)
    for src, where in ((ds, "Rescale"), (per_frame, "PixelValueTransformationSequence")):
        if src is not None and ("RescaleSlope" in src or "RescaleIntercept" in src):
            slope, intercept = src.get("RescaleSlope", 1), src.get("RescaleIntercept", 0)
            slope = 1.0 if slope is None or slope == "" else _number(slope, "RescaleSlope")
            intercept = 0.0 if intercept is None or intercept == "" else _number(intercept, "RescaleIntercept")
            if slope == 0:
                raise ValueError("RescaleSlope 0 maps every pixel to one value")
            return slope, intercept, None, where
    return 1.0, 0.0, None, "none"


def _number(value, keyword: str) -> float:
    """A header number as a finite float; ``ValueError`` naming the attribute otherwise (NaN, Inf, text)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{keyword} {str(value)[:40]!r} is not a number") from None
    if not np.isfinite(x) or abs(x) > 1e30:
        raise ValueError(f"{keyword} {str(value)[:40]!r} is not a finite number of sensible size")
    return x


def _voi_params(ds, frame: int | None):
    """(VOI LUT item or None, (center, width) or None, function) from top level or FrameVOILUTSequence."""
    src = ds
    if not (ds.get("VOILUTSequence") or "WindowCenter" in ds):
        item = functional_group_item(ds, "FrameVOILUTSequence", frame)
        if item is not None:
            src = item
    lut = src.get("VOILUTSequence")
    lut_item = lut[0] if lut else None
    window = None
    if src.get("WindowCenter") is not None and src.get("WindowWidth") is not None:
        c, w = first_value(src.WindowCenter), first_value(src.WindowWidth)
        if c is not None and w is not None:
            window = (_number(c, "WindowCenter"), _number(w, "WindowWidth"))
            if window[1] <= 0:  # an invalid width: no usable window (the percentile window is used)
                window = None
    function = str(src.get("VOILUTFunction", "LINEAR") or "LINEAR").upper().strip()
    return lut_item, window, function


# ---------------------------------------------------------------------------------------- reader
def _load(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # values over 1 MiB stay on disk until used: a corrupt length field must not make pydicom
            # read (allocate) gigabytes; they are checked against the file size below
            try:
                ds = pydicom.dcmread(path, defer_size=_DEFER_SIZE)
            except InvalidDicomError:
                if not looks_like_headerless_dicom(path):
                    raise
                ds = pydicom.dcmread(path, force=True, defer_size=_DEFER_SIZE)
            if str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "")) == "1.2.840.10008.1.2.1.99":
                return pydicom.dcmread(path, force=True)  # deflated: offsets are in the inflated stream
    except InvalidDicomError:
        raise ImageReadError(path, "not a DICOM file (no 'DICM' preamble and no parseable DICOM header)") from None
    except Exception as exc:  # pydicom raises assorted errors on truncated headers
        raise ImageReadError(path, f"unreadable or truncated DICOM header ({type(exc).__name__}: {exc})") from exc
    size = path.stat().st_size
    for tag in ds.keys():  # top-level elements as stored: their lengths, deferred values left unread
        elem = ds.get_item(tag, keep_deferred=True)
        length, tell = getattr(elem, "length", None), getattr(elem, "value_tell", None)
        if length is not None and tell is not None and length != 0xFFFFFFFF and tell + length > size:
            raise ImageReadError(path, f"truncated: element {elem.tag} declares {length:,} bytes, the file holds "
                                 f"{max(size - tell, 0):,} after it")
    return ds


_DEFER_SIZE = 1 << 20


def _check_image(path: Path, ds) -> None:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        sop = ds.get("SOPClassUID")
        name = getattr(sop, "name", str(sop)) if sop else "unknown SOP class"
        raise ImageReadError(path, f"DICOM without pixel data ({name}); not an image, nothing to read")
    if "PixelData" not in ds:
        raise ImageReadError(path, "float pixel data is not a mammogram (expected integer PixelData)")
    photometric = header_text(ds, "PhotometricInterpretation").upper()
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or spp != 1:
        raise ImageReadError(
            path,
            f"PhotometricInterpretation {photometric or '(missing)'} with {spp} sample(s) per pixel: "
            "not a greyscale mammogram (expected MONOCHROME1 or MONOCHROME2)",
        )
    for kw in ("Rows", "Columns", "BitsAllocated"):
        if kw not in ds:
            raise ImageReadError(path, f"image attribute {kw} is missing")
    _check_geometry(path, ds)


def _header_int(path: Path, ds, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword, default)
    value = default if value is None or value == "" else value
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ImageReadError(path, f"{keyword} {str(value)[:40]!r} is not an integer") from None


def _check_geometry(path: Path, ds) -> None:
    """The declared geometry is one a greyscale image can have (header only; pixel data not touched)."""
    rows, cols = _header_int(path, ds, "Rows"), _header_int(path, ds, "Columns")
    frames = _header_int(path, ds, "NumberOfFrames", 1)
    alloc = _header_int(path, ds, "BitsAllocated")
    stored = _header_int(path, ds, "BitsStored", alloc)
    if rows <= 0 or cols <= 0:
        raise ImageReadError(path, f"Rows x Columns is {rows} x {cols}: an image needs at least one row and column")
    if frames < 1:
        raise ImageReadError(path, f"NumberOfFrames is {frames}: an image needs at least one frame")
    if alloc not in (1, 8, 16, 32):
        raise ImageReadError(path, f"BitsAllocated {alloc} is not 1, 8, 16 or 32")
    if not 1 <= stored <= alloc:
        raise ImageReadError(path, f"BitsStored {stored} is not between 1 and BitsAllocated ({alloc})")


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_CODESTREAM = {  # transfer syntax -> the codestream its fragments must hold
    "1.2.840.10008.1.2.4.50": "JPEG", "1.2.840.10008.1.2.4.51": "JPEG", "1.2.840.10008.1.2.4.57": "JPEG",
    "1.2.840.10008.1.2.4.70": "JPEG", "1.2.840.10008.1.2.4.80": "JPEG-LS", "1.2.840.10008.1.2.4.81": "JPEG-LS",
    "1.2.840.10008.1.2.4.90": "JPEG 2000", "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.4.201": "JPEG 2000", "1.2.840.10008.1.2.4.202": "JPEG 2000",
    "1.2.840.10008.1.2.4.203": "JPEG 2000", "1.2.840.10008.1.2.5": "RLE",
}


def _codestream(frag: bytes) -> tuple[str, int, int]:
    """(kind, rows, columns) of the codestream a fragment starts with; rows/columns 0 when not stated."""
    if frag[:4] == b"\xff\x4f\xff\x51" or frag[4:8] == b"jP  ":  # J2K codestream, or a JP2 file (boxes)
        siz = frag.find(b"\xff\x4f\xff\x51")
        if siz < 0 or len(frag) < siz + 24:
            return "JPEG 2000", 0, 0
        x, y, x0, y0 = (int.from_bytes(frag[siz + i : siz + i + 4], "big") for i in (8, 12, 16, 20))
        return "JPEG 2000", y - y0, x - x0
    if frag[:2] == b"\xff\xd8":
        i = 2
        while i + 9 <= len(frag) and frag[i] == 0xFF:
            marker = frag[i + 1]
            if marker == 0xF7 or marker in _JPEG_SOF:
                rows, cols = int.from_bytes(frag[i + 5 : i + 7], "big"), int.from_bytes(frag[i + 7 : i + 9], "big")
                return ("JPEG-LS" if marker == 0xF7 else "JPEG"), rows, cols
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker == 0xDA:  # start of scan before any frame header
                break
            i += 2 + int.from_bytes(frag[i + 2 : i + 4], "big")
        return "JPEG", 0, 0
    return "unknown", 0, 0


def _check_declared_length(path: Path, ds, geometry: tuple[int, int, int, int], max_pixels: int | None, native: bool) -> None:
    """Refuse, from the header and the file size alone (the value is not read), a pixel data element whose
    declared length exceeds the pixel budget (at BitsAllocated a pixel) or, for native data, is not the size
    the geometry declares (``_load`` already refused a length beyond the end of the file)."""
    elem = ds.get_item(0x7FE00010, keep_deferred=True)
    length = getattr(elem, "length", None)
    if length is None or length == 0xFFFFFFFF:  # encapsulated (undefined length): fragments are checked after
        return
    limit, per_pixel = max_pixels_limit(max_pixels), max(1, geometry[3] // 8)
    if length > max(limit * per_pixel, _DEFER_SIZE):  # values under _DEFER_SIZE are read with the header
        raise ImageReadError(path, f"the pixel data element declares {length:,} bytes, more than {limit:,} pixels of "
                             f"{per_pixel} byte(s): it exceeds the pixel budget (max_pixels= or ${MAX_PIXELS_ENV} "
                             "raise it); not read")
    need = (geometry[0] * geometry[1] * geometry[2] * geometry[3] + 7) // 8
    if native and length > need + 1:
        raise ImageReadError(
            path, f"pixel data hold {length:,} bytes, {length - need:,} more than Rows x Columns x Frames "
            f"x BitsAllocated ({' x '.join(map(str, geometry))}) declares: the header does not describe the data")


def _check_pixel_data(path: Path, ds, frames: int, max_pixels: int | None, decoded_frames: int) -> None:
    """Refuse, before decoding, pixel data that cannot hold the declared geometry or exceeds the budget.

    Native data must be exactly Rows x Columns x Frames x BitsAllocated / 8 bytes (plus one pad byte);
    encapsulated data must hold at least one fragment per frame (exactly one for RLE) and the codestream
    of its transfer syntax, with the header's Rows and Columns.
    """
    from pydicom.encaps import generate_fragments, parse_basic_offsets, parse_fragments

    rows, cols, alloc = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
    check_pixel_budget(path, rows, cols, decoded_frames, max_pixels)
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    _check_declared_length(path, ds, (rows, cols, frames, alloc), max_pixels, native=ts is None or not ts.is_encapsulated)
    data = ds.PixelData
    if not isinstance(data, (bytes, bytearray)):
        return
    if ts is None or not ts.is_encapsulated:
        need = (rows * cols * frames * alloc + 7) // 8
        if len(data) < need:
            raise ImageReadError(
                path, f"pixel data hold {len(data):,} bytes but Rows x Columns x Frames x BitsAllocated "
                f"({rows} x {cols} x {frames} x {alloc}) needs {need:,}: truncated, or the header is wrong")
        if len(data) > need + 1:
            raise ImageReadError(
                path, f"pixel data hold {len(data):,} bytes, {len(data) - need:,} more than Rows x Columns x Frames "
                f"x BitsAllocated ({rows} x {cols} x {frames} x {alloc}) declares: the header does not describe the data")
        return
    expected = _CODESTREAM.get(str(ts))
    try:
        parse_basic_offsets(data)  # validates the Basic Offset Table item
        rest = bytes(data[8 + int.from_bytes(bytes(data[4:8]), "little") :])
        n_fragments, _ = parse_fragments(rest)
        first = next(generate_fragments(rest), b"")
    except (ValueError, EOFError, struct.error) as exc:
        raise ImageReadError(path, f"encapsulated pixel data are malformed ({exc})") from None
    if n_fragments < frames or (expected == "RLE" and n_fragments != frames):
        raise ImageReadError(path, f"{frames} frame(s) declared but the encapsulated pixel data hold {n_fragments} "
                             f"fragment(s){' (RLE: one per frame)' if expected == 'RLE' else ''}")
    if expected is None:
        return
    ts_name = getattr(ts, "name", str(ts))
    if expected == "RLE":
        n_seg = int.from_bytes(bytes(first[:4]), "little") if len(first) >= 64 else 0
        need_seg = alloc // 8 if alloc >= 8 else 1
        if n_seg != need_seg:
            raise ImageReadError(path, f"RLE header declares {n_seg} segment(s); {alloc}-bit greyscale needs {need_seg}")
        # PackBits stores at most 128 bytes in 2: data shorter than that bound cannot fill the declared size
        least = frames * (64 + n_seg * 2 * -(-rows * cols // 128))
        if len(data) < least:
            raise ImageReadError(path, f"RLE data of {len(data):,} bytes cannot hold {frames} frame(s) of {rows} x {cols} "
                                 f"(at least {least:,} bytes): the header is wrong or the data truncated")
        return
    kind, c_rows, c_cols = _codestream(bytes(first[:65536]))
    if kind != expected:
        raise ImageReadError(path, f"transfer syntax says {ts_name} but the pixel data hold "
                             f"{'a ' + kind + ' codestream' if kind != 'unknown' else 'no recognisable codestream'}")
    if (c_rows and c_rows != rows) or (c_cols and c_cols != cols):
        raise ImageReadError(path, f"the {kind} codestream is {c_rows} x {c_cols} but Rows x Columns is {rows} x {cols}")


def _frames(path: Path, ds, indices: list[int], n_frames: int):
    """Yield the requested frames as (index, int array [H, W]); decodes only those frames."""
    from pydicom.pixels import pixel_array

    try:
        if n_frames == 1:
            yield 0, ds.pixel_array
            return
        if len(indices) > n_frames // 2:  # most frames: one decode of the whole stack is faster
            stack = ds.pixel_array  # [F, H, W]
            for i in indices:
                yield i, stack[i]
            return
        for i in indices:
            yield i, pixel_array(ds, index=i)
    except ImageReadError:
        raise
    except Exception as exc:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        raise ImageReadError(
            path, f"cannot decode pixel data ({getattr(ts, 'name', str(ts))}): {type(exc).__name__}: {exc}. "
            + _decoder_advice(ts)
        ) from exc


def _decoder_advice(ts) -> str:
    """What to do about a decode failure: install a plugin only when pydicom has none for ``ts``."""
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(ts)
    except (NotImplementedError, ValueError):
        return f"pydicom cannot decode transfer syntax {ts} at all; convert the file (e.g. dcmdjpeg / gdcmconv)"
    if decoder.is_available:
        return (f"A decoder is installed ({', '.join(decoder.available_plugins)}): the pixel data are corrupt, "
                "truncated or not conformant")
    return (f"No decoder for this transfer syntax is installed: pip install pylibjpeg pylibjpeg-openjpeg "
            f"pylibjpeg-libjpeg pylibjpeg-rle pyjpegls ({'; '.join(decoder.missing_dependencies)})")


_CHUNK = 1 << 18  # elements per block in the table passes: the index conversion stays in cache
_CV2: list = []


def _cv2():
    """``cv2`` when OpenCV is importable (a core dependency; None without it: numpy does the same work)."""
    if not _CV2:
        try:
            import cv2
        except ImportError:  # pragma: no cover - opencv-python-headless is a core dependency
            cv2 = None
        _CV2.append(cv2)
    return _CV2[0]


class StoredImage(MammoImage):
    """A single-frame image held as its stored values and the table that maps them to display values
    (``read_dicom(..., lazy=True)``), so that a reduced copy needs no full-resolution float32 image.

    ``pixels`` is ``table[stored]`` (float32 ``[H, W]``, exactly ``read_dicom``'s), made on first use and kept;
    ``bands(rows)`` yields ``(y0, table[stored[y0:y0 + rows]])`` for a band-by-band reduction
    (``transforms.breast.reduce_image``). ``stored`` and ``table`` are the uint8/uint16 values and the
    256/65,536-entry float32 table.
    """

    def __init__(self, stored: np.ndarray, table: np.ndarray, meta: dict, conversion: dict, path: str = ""):
        self.stored, self.table, self._pixels = stored, table, None
        super().__init__(pixels=None, meta=meta, conversion=conversion, path=path)

    @property
    def pixels(self) -> np.ndarray:
        if self._pixels is None:
            self._pixels = np.ascontiguousarray(_gather(self.table, self.stored), dtype=np.float32)
        return self._pixels

    @pixels.setter
    def pixels(self, value) -> None:
        if value is not None:
            self._pixels = value

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.stored.shape)

    @property
    def ndim(self) -> int:
        return self.stored.ndim

    def bands(self, rows: int):
        """``(y0, float32 [rows, W])`` over the image, top to bottom (the last band may be shorter)."""
        for y0 in range(0, self.stored.shape[0], max(1, int(rows))):
            if self._pixels is not None:
                yield y0, self._pixels[y0 : y0 + rows]
            else:
                yield y0, _gather(self.table, self.stored[y0 : y0 + rows])

    def __repr__(self) -> str:
        return f"StoredImage(shape={self.shape}, dtype={self.stored.dtype}, path={self.path!r})"


def _source_reference(ds) -> dict[str, str]:
    """``io.header.source_reference`` of the parsed header (the DICOM outputs' copy of the source's identity,
    also ``io.dicom_out.source_reference``): read here with the image, so nobody parses the header again."""
    return source_reference(ds)


def _gather(table: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """``table[raw]``: OpenCV's ``LUT`` when installed (a 256- or 65,536-entry table on uint8 / uint16 values,
    1.5-2x faster than numpy's gather and the same values: a table lookup has no arithmetic), else ``np.take``
    in blocks (~15 % faster than one fancy index on a 3328x2560 image)."""
    cv2 = _cv2()
    if cv2 is not None and raw.ndim == 2 and raw.size and table.size == 1 << (8 * raw.dtype.itemsize):
        try:
            return cv2.LUT(np.ascontiguousarray(raw), table)
        except cv2.error:  # an OpenCV without 16-bit tables (before 4.11): numpy below
            pass
    flat = raw.reshape(-1)
    out = np.empty(flat.size, dtype=table.dtype)
    for i in range(0, flat.size, _CHUNK):
        np.take(table, flat[i : i + _CHUNK], out=out[i : i + _CHUNK])
    return out.reshape(raw.shape)


def _value_counts(raw: np.ndarray, n: int) -> np.ndarray:
    """``np.bincount(raw, minlength=n)`` in blocks (2x faster on a 3328x2560 uint16 image)."""
    flat = raw.reshape(-1)
    counts = np.zeros(n, dtype=np.int64)
    for i in range(0, flat.size, 4 * _CHUNK):
        counts += np.bincount(flat[i : i + 4 * _CHUNK], minlength=n)
    return counts


_NATIVE_LE = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")  # implicit / explicit VR little endian


def _native_frame(ds, n_frames: int) -> np.ndarray | None:
    """The pixel data of a native little-endian single-frame 8/16-bit image as a read-only view (no copy).

    ``None`` when anything is unusual (another syntax, other bit depths, short data): pydicom decodes it.
    """
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    bits_alloc = int(ds.BitsAllocated)
    if ts not in _NATIVE_LE or n_frames != 1 or bits_alloc not in (8, 16) or ds.get("SamplesPerPixel", 1) != 1:
        return None
    rows, cols = int(ds.Rows), int(ds.Columns)
    data = ds.get("PixelData")
    if not isinstance(data, (bytes, bytearray)) or len(data) < rows * cols * bits_alloc // 8:
        return None
    return np.frombuffer(data, dtype="<u2" if bits_alloc == 16 else np.uint8, count=rows * cols).reshape(rows, cols)


def read_dicom(
    path: str | PathLike,
    *,
    dbt: str = "mip",
    slab: tuple[int, int] | None = None,
    frame: int | None = None,
    apply_voi: bool = True,
    voi_prefer: str = "lut",
    percentiles: tuple[float, float] = (0.5, 99.5),
    log: bool = False,
    max_pixels: int | None = None,
    lazy: bool = False,
) -> MammoImage:
    """Read a mammography DICOM (DM, s2D or DBT) into a float32 [0, 1] image, bright = dense.

    The conversion rules are the module docstring's; ``MammoImage.conversion`` records those applied.

    Args:
        path: the DICOM file (preamble optional).
        dbt: multi-frame reduction: ``"mip"``, ``"slab"``, ``"center"`` or ``"frames"`` (``[F, H, W]``).
        slab: ``(start, stop)`` frames averaged by ``dbt="slab"`` (default the central third).
        frame: read only this frame (overrides ``dbt``).
        apply_voi: apply the VOI LUT / window (or the percentile window); False scales the full
            BitsStored range linearly.
        voi_prefer: ``"lut"`` or ``"window"`` when a file carries both a VOI LUT and windows.
        percentiles: the robust window used without VOI (For Processing images).
        log: log-transform before the percentile window.
        max_pixels: pixel budget, Rows x Columns x frames decoded (default ``$MAMMOLENS_MAX_PIXELS`` or
            1.2e9); a larger declared size is refused before decoding.
        lazy: return a ``StoredImage`` when the file goes through the value table (one frame of unsigned
            integers): the stored values and the table, ``pixels`` made on first use, ``bands`` for a reduced
            copy without the full-resolution float32 image (``pipeline.prepare`` reads this way). Other files
            give a ``MammoImage`` as without it.

    Raises:
        FileNotFoundError: no such file.
        ImageReadError: not DICOM, not a greyscale image, a geometry the pixel data cannot hold or over the
            budget, non-finite header numbers or results, undecodable pixel data, or any other failure
            (decoder panics included).
    """
    path = Path(resolve_path(path))
    if not path.is_file():
        raise FileNotFoundError(f"DICOM file not found: {display_path(path)}")
    if dbt not in DBT_MODES:
        raise ValueError(f"dbt must be one of {DBT_MODES}, got {dbt!r}")
    if voi_prefer not in ("lut", "window"):
        raise ValueError(f"voi_prefer must be 'lut' or 'window', got {voi_prefer!r}")
    with image_read_guard(path):
        return _read_dicom(path, dbt, slab, frame, apply_voi, voi_prefer, percentiles, log, max_pixels, lazy)


def _read_dicom(path: Path, dbt, slab, frame, apply_voi, voi_prefer, percentiles, log, max_pixels,
                lazy: bool = False) -> MammoImage:
    """The conversion rules of the module docstring, stage by stage (each stage is a function below)."""
    ds = _load(path)
    _check_image(path, ds)
    meta = dicom_meta(ds)
    meta["source_reference"] = _source_reference(ds)
    n_frames = meta["n_frames"]
    _check_volume_complete(path, ds, n_frames)
    indices, mode = _frame_selection(path, n_frames, dbt, slab, frame)
    # whole stack when most frames are needed (see _frames), else only those
    decoded = n_frames if n_frames == 1 or len(indices) > n_frames // 2 else len(indices)
    _check_pixel_data(path, ds, n_frames, max_pixels, decoded)
    stages = _Stages(path, ds, meta, indices[len(indices) // 2], apply_voi, voi_prefer, percentiles, log)
    stages.conversion.update(dbt=mode, frames=[indices[0], indices[-1] + 1] if mode in ("slab", "mip", "frames")
                             else list(indices), n_frames=n_frames)
    table = None
    if len(indices) == 1 and mode != "slab" and not stages.signed and stages.bits <= 16:
        table, raw = _convert_by_table(path, ds, stages, indices, n_frames)
    else:
        x = _convert_frames(path, ds, stages, indices, n_frames, mode)
    conversion = stages.conversion
    conversion["inverted"] = stages.inverted
    conversion["photometric"] = meta["photometric"]
    conversion["presentation_lut_shape"] = stages.plut_shape or None
    if table is not None:
        if lazy and np.isfinite(table).all():  # every value the image can hold maps to a finite pixel
            return StoredImage(raw, table, meta=meta, conversion=conversion, path=display_path(path))
        x = _gather(table, raw)
    pixels = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(pixels).all():
        raise ImageReadError(path, f"conversion produced NaN/Inf pixels (modality LUT {stages.mlut_src}, VOI "
                             f"{conversion.get('voi')}): the header's numbers do not fit the data")
    return MammoImage(pixels=pixels, meta=meta, conversion=conversion, path=display_path(path))


def _check_volume_complete(path: Path, ds, n_frames: int) -> None:
    """Refuse a partial tomosynthesis volume: fewer frames than its per-frame functional groups describe
    (an interrupted export; a MIP of the frames present would look like a whole breast and get a density)."""
    sop = str(ds.get("SOPClassUID", ""))
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    described = len(per_frame) if per_frame is not None else 0
    if sop in _DBT_SOPS and described > n_frames:
        raise ImageReadError(path, f"partial tomosynthesis volume: {n_frames} frame(s) stored but its per-frame "
                             f"functional groups describe {described} frames; not assessable")


def _frame_selection(path: Path, n_frames: int, dbt: str, slab, frame) -> tuple[range, str]:
    """Which frames are read (a ``range``: nothing proportional to ``NumberOfFrames`` is built) and the mode."""
    if frame is not None:
        if not -n_frames <= frame < n_frames:
            raise ValueError(f"{display_path(path)}: frame {frame} out of range for {n_frames} frame(s)")
        f = frame % n_frames
        return range(f, f + 1), "frame"
    if n_frames == 1:
        return range(1), "single"
    if dbt == "center":
        return range(n_frames // 2, n_frames // 2 + 1), "center"
    if dbt == "slab":
        start, stop = slab if slab is not None else (n_frames // 3, max(n_frames // 3 + 1, 2 * n_frames // 3))
        indices = range(n_frames)[slice(start, stop)]
        if not indices:
            raise ValueError(f"{display_path(path)}: slab {slab} selects no frame of {n_frames}")
        return indices, "slab"
    return range(n_frames), dbt


class _Stages:
    """Stages 2-6 of the module docstring for one file: bits, modality LUT, VOI and display inversion,
    decided from the header alone; ``conversion`` records each choice."""

    def __init__(self, path: Path, ds, meta: dict, ref_frame: int, apply_voi: bool, voi_prefer: str,
                 percentiles, log: bool):
        self.path, self.percentiles, self.log = path, percentiles, log
        bits_alloc = int(ds.BitsAllocated)
        self.bits = int(ds.get("BitsStored", bits_alloc) or bits_alloc)
        self.signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
        try:
            self.slope, self.intercept, self.mlut, self.mlut_src = _modality_params(ds, ref_frame)
            self.voi_lut, self.window, self.function = _voi_params(ds, ref_frame)
        except ValueError as exc:
            raise ImageReadError(path, f"invalid header value: {exc}") from None
        if self.mlut is None and max(abs(v * self.slope + self.intercept)
                                     for v in _stored_range(self.bits, self.signed)) > 1e38:
            raise ImageReadError(path, f"RescaleSlope {self.slope:g} and RescaleIntercept {self.intercept:g} "
                                 f"overflow float32 for {self.bits}-bit values")
        # Presentation LUT Shape INVERSE (PS3.3 C.11.6) also means "invert for display". Conformant DX/MG files
        # pair it with MONOCHROME1 (one inversion described twice, applied once); some CR/DX writers put it on
        # MONOCHROME2 images, which then also need inverting.
        self.plut_shape = header_text(ds, "PresentationLUTShape").upper()
        self.inverted = meta["photometric"] == "MONOCHROME1" or self.plut_shape == "INVERSE"
        self.bright_is_high = (not self.inverted) == (self.slope >= 0)
        self.processing = meta["presentation_intent"] == "FOR PROCESSING"
        self.voi_kind = _voi_kind(apply_voi, self.processing, self.voi_lut, self.window, voi_prefer)
        import pydicom

        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        self.conversion: dict = {
            "reader": "mammolens.io.dicom",
            "reader_version": READER_VERSION,
            "pydicom_version": pydicom.__version__,
            "transfer_syntax": meta["transfer_syntax"],
            "transfer_syntax_name": getattr(ts, "name", "") if hasattr(ds, "file_meta") else "",
            "bits_allocated": bits_alloc,
            "bits_stored": self.bits,
            "signed": self.signed,
            "modality_lut": self.mlut_src,
            "rescale": [self.slope, self.intercept],
        }

    def to_modality(self, raw: np.ndarray) -> np.ndarray:
        """Stages 2-3: bits masked (sign-extended), then the modality LUT or rescale; float32."""
        raw = _mask_bits(raw, self.bits, self.signed)
        if self.mlut is not None:
            out, _ = _lut_apply(raw.astype(np.float32, copy=False), self.mlut)
            return out
        x = raw.astype(np.float32)
        if self.slope != 1.0:
            x *= self.slope
        if self.intercept != 0.0:
            x += self.intercept
        return x

    def to_display(self, x: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
        """Stages 5-6: VOI and the display inversion on float32 modality values, in place where possible.

        ``counts``: ``x`` is a table of every stored value and ``counts`` their frequencies in the image.
        """
        conversion = self.conversion
        if self.voi_kind == "none":
            lo, hi = _stored_range(self.bits, self.signed)
            if self.mlut is None:
                lo, hi = sorted((lo * self.slope + self.intercept, hi * self.slope + self.intercept))
            else:
                lo, hi = 0.0, 2.0 ** int(self.mlut.LUTDescriptor[2]) - 1
            x -= lo
            x /= max(hi - lo, 1e-6)
            np.clip(x, 0.0, 1.0, out=x)
            conversion["voi"] = "none"
        elif self.voi_kind == "percentile":
            x, info = _percentile_window(x, self.percentiles, self.log, counts)
            pct = self.percentiles
            conversion["voi"] = f"{'log+' if self.log else ''}percentile {pct[0]:g}-{pct[1]:g}"
            conversion.update(info)
            if self.processing:
                conversion["voi_reason"] = "FOR PROCESSING image: VOI attributes ignored"
        elif self.voi_kind == "lut":
            try:
                x, out_bits = _lut_apply(x, self.voi_lut)
            except Exception as exc:
                raise ImageReadError(self.path, f"malformed VOI LUT Sequence: {exc}") from exc
            x /= float(2**out_bits - 1)
            np.clip(x, 0.0, 1.0, out=x)
            conversion["voi"] = "voi_lut"
            conversion["voi_lut_descriptor"] = [int(v) for v in self.voi_lut.LUTDescriptor]
        else:
            c, w = self.window
            x = _window(x, c, w, self.function)
            conversion["voi"] = f"window {c:g}/{w:g}"
            conversion["voi_function"] = self.function
        if self.inverted:
            np.subtract(1.0, x, out=x)
        return x


def _voi_kind(apply_voi: bool, processing: bool, voi_lut, window, voi_prefer: str) -> str:
    """Which VOI transform applies (rule 5): ``none``, ``percentile``, ``lut`` or ``window``."""
    if not apply_voi:
        return "none"
    if processing or (voi_lut is None and window is None):
        return "percentile"
    if voi_lut is not None and (voi_prefer == "lut" or window is None):
        return "lut"
    return "window"


def _convert_by_table(path: Path, ds, stages: _Stages, indices, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """One frame of unsigned integers through one lookup table: ``(table, stored values)``; the image is
    ``_gather(table, raw)``.

    Every stage is a function of the stored value, so they run once on each value the dtype can hold (256
    or 65,536 of them, junk high bits masked as the image would be) and the image is gathered: the same
    float32 operations on the same values, in one pass over the image (or band by band into a reduced copy,
    ``StoredImage.bands``). The percentile window reads its
    percentiles from the value histogram (exact over every pixel).
    """
    raw = _native_frame(ds, n_frames)
    if raw is None:
        _, raw = next(_frames(path, ds, indices, n_frames))
        if raw.dtype.kind != "u" or raw.dtype.itemsize > 2:
            raw = _mask_bits(raw, stages.bits, False).astype(np.uint16 if stages.bits > 8 else np.uint8)
    values = np.arange(2 ** (8 * raw.dtype.itemsize), dtype=raw.dtype)
    counts = _value_counts(raw, values.size) if stages.voi_kind == "percentile" else None
    table = stages.to_display(stages.to_modality(values), counts)
    return np.ascontiguousarray(table, dtype=np.float32), raw


def _convert_frames(path: Path, ds, stages: _Stages, indices, n_frames: int, mode: str) -> np.ndarray:
    """Frames to modality values, reduced (rule 4: MIP in the display-bright direction, slab mean, or the
    stack for ``frames``), then VOI."""
    acc = None
    stack = []
    for _, raw in _frames(path, ds, indices, n_frames):
        x = stages.to_modality(raw)
        if mode == "frames":
            stack.append(x)
        elif acc is None:
            acc = x
        elif mode == "mip":
            (np.maximum if stages.bright_is_high else np.minimum)(acc, x, out=acc)
        else:  # slab: running sum
            acc += x
    if mode == "frames":
        x = np.stack(stack)  # [F, H, W]
    else:
        x = acc  # [H, W]
        if mode == "slab":
            x /= len(indices)
    return stages.to_display(x)


_ID_TAGS = {"PatientID": "patient_id", "PatientName": "patient_name", "AccessionNumber": "accession_number",
            "StudyInstanceUID": "study_instance_uid", "SeriesInstanceUID": "series_instance_uid",
            "SOPInstanceUID": "sop_instance_uid"}


def header_identifiers(path: str | PathLike) -> dict[str, str]:
    """The identifiers a file's header holds (``{manifest column: value}``: PatientID, PatientName,
    AccessionNumber, the three UIDs), read best-effort so that an error about the file can be scrubbed
    (``mammolens.privacy``); ``{}`` when the file has no readable header."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(resolve_path(path), force=True, stop_before_pixels=True, defer_size=1 << 16,
                                 specific_tags=list(_ID_TAGS))
            return {col: str(ds.get(kw, "") or "").strip() for kw, col in _ID_TAGS.items() if ds.get(kw)}
    except Exception:  # noqa: BLE001 - not DICOM or broken: only the identifiers seen elsewhere are scrubbed
        return {}


def read_dicom_header(path: str | PathLike) -> dict:
    """``dicom_meta`` of one image DICOM without decoding (or reading) its pixels, after the checks the
    pixel reader makes from the header: a DICOM file, pixel data present, greyscale, a possible geometry,
    no element longer than the file, native pixel data of the declared size, a complete DBT volume.

    Raises:
        FileNotFoundError: no such file.
        ImageReadError: any of the checks fails, or the header cannot be parsed.
    """
    path = Path(resolve_path(path))
    if not path.is_file():
        raise FileNotFoundError(f"DICOM file not found: {display_path(path)}")
    with image_read_guard(path):
        ds = _load(path)
        _check_image(path, ds)
        meta = dicom_meta(ds)
        _check_volume_complete(path, ds, meta["n_frames"])
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        geometry = (int(ds.Rows), int(ds.Columns), meta["n_frames"], int(ds.BitsAllocated))
        _check_declared_length(path, ds, geometry, None, native=ts is None or not ts.is_encapsulated)
        # the identifiers an error report about any file of the job must scrub (never written to a manifest)
        meta["patient_name"] = str(ds.get("PatientName", "") or "").strip()
        meta["accession_number"] = str(ds.get("AccessionNumber", "") or "").strip()
        return meta


__all__ = ["DBT_MODES", "READER_VERSION", "S2D_KEYWORDS", "StoredImage", "dicom_meta", "header_identifiers", "image_laterality",
           "looks_like_headerless_dicom", "normalise_manufacturer",
           "read_dicom", "read_dicom_header"]
