"""A SIMULATED mammography cohort written as real DICOM files, for demos and tests.

Nothing here is patient data: every image is drawn from a simple random model and every name, ID,
age, race and site is invented (``SYNTH^PATIENT^0001`` / ``SYN0001``). The images are not realistic
enough to validate a clinical model; they exist so that the whole pipeline (ingest, preprocessing,
training, evaluation) can run end to end offline, with known answers.

Image model (per breast and view, laterality-dependent side): a half-ellipse breast against the chest
wall (left image edge for L, right edge for R), a pectoral muscle triangle on MLO views, a bright skin
line, a thickness fall-off towards the skin, and fibroglandular tissue obtained by thresholding a smooth
random field so that its area fraction follows the BI-RADS class (about A 8 %, B 28 %, C 52 %,
D 78 % of the breast, with patient-level noise so neighbouring classes overlap a little). Optional
lesions: benign masses are round and smooth, malignant ones irregular/spiculated with a cluster of
micro-calcifications; ``lesion_x, lesion_y`` (column, row) and ``lesion_r`` are in stored-image pixels;
``abnormality`` names the lesion kind (``mass``, ``mass+calcification``, ``normal``).

Files follow the vendors' habits the reader must handle: Hologic (12-bit in 16, window), GE (14-bit,
VOI LUT Sequence *and* windows), Fujifilm (MONOCHROME1, 10-bit, ImagerPixelSpacing only), Siemens
(12-bit, SIGMOID window); a fraction of DM images is *For Processing* (raw, no VOI); s2D images use the
DM SOP class with ``ImageType`` ``DERIVED\\PRIMARY\\TOMOSYNTHESIS\\GENERATED_2D``; DBT images are
multi-frame Breast Tomosynthesis Image Storage with laterality, spacing and window in the functional
groups; a fraction is RLE or JPEG 2000 compressed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd

from mammolens.constants import DENSITY_CLASSES

SOP_CLASSES = {
    "dm": "1.2.840.10008.5.1.4.1.1.1.2",  # Digital Mammography X-Ray Image Storage - For Presentation
    "dm_processing": "1.2.840.10008.5.1.4.1.1.1.2.1",  # ... - For Processing
    "dx": "1.2.840.10008.5.1.4.1.1.1.1",
    "dbt": "1.2.840.10008.5.1.4.1.1.13.1.3",  # Breast Tomosynthesis Image Storage
    "sc": "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
    "sr": "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR (no pixels)
}

COMPRESSIONS = ("explicit", "implicit", "rle", "jpeg2000", "jpegls", "jpeg-baseline")

DEFAULT_DENSITY_PROBS = {"A": 0.10, "B": 0.40, "C": 0.40, "D": 0.10}
DENSE_FRACTION = {"A": 0.08, "B": 0.28, "C": 0.52, "D": 0.78}
"""Mean fibroglandular area fraction drawn for each class (patient-level sd 0.06)."""

_VIEW_CODES = {"CC": ("R-10242", "SRT", "cranio-caudal"), "MLO": ("R-10226", "SRT", "medio-lateral oblique")}


# ------------------------------------------------------------------------------ single DICOM files
@dataclass
class DicomSpec:
    """What ``write_dicom`` puts in a file (defaults: an uncompressed Hologic DM L-CC, 12-bit in 16).

    ``window`` is ``(center, width)``; ``voi_lut`` is ``(table, first_mapped, output_bits)``;
    ``rescale`` is ``(slope, intercept)``; ``sop_class`` is a key of ``SOP_CLASSES`` or a UID;
    ``compression`` one of ``COMPRESSIONS``; ``enhanced`` puts laterality, spacing, rescale and
    window in the functional groups (multi-frame DBT style); ``junk_high_bits`` sets the bits above
    ``bits_stored`` (uncompressed only) to test masking; ``extra`` sets any further keywords.
    """

    photometric: str = "MONOCHROME2"
    bits_stored: int | None = None
    sop_class: str = "dm"
    presentation_intent: str | None = None
    window: tuple[float, float] | None = None
    voi_function: str | None = None
    voi_lut: tuple[np.ndarray, int, int] | None = None
    rescale: tuple[float, float] | None = None
    laterality: str = "L"
    laterality_tag: str = "ImageLaterality"
    view: str = "CC"
    view_tag: str = "ViewPosition"
    manufacturer: str = "HOLOGIC, Inc."
    model: str = "Selenia Dimensions"
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY")
    series_description: str = ""
    patient_id: str = "SYN0001"
    patient_name: str = "SYNTH^PATIENT^0001"
    age: int | None = 55
    pixel_spacing: tuple[float, float] | None = (0.1, 0.1)
    spacing_tag: str = "PixelSpacing"
    compression: str = "explicit"
    enhanced: bool | None = None
    preamble: bool = True
    junk_high_bits: bool = False
    study_uid: str | None = None
    series_uid: str | None = None
    sop_uid: str | None = None
    uid_seed: tuple = ()
    extra: dict = field(default_factory=dict)


def _uid(*parts) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[str(p) for p in parts])


def available_compressions() -> tuple[str, ...]:
    """The ``compression`` values ``write_dicom`` can produce with the installed encoders."""
    from pydicom.pixels import get_encoder
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

    out = ["explicit", "implicit"]
    for name, uid in (("rle", RLELossless), ("jpeg2000", JPEG2000Lossless), ("jpegls", JPEGLSLossless)):
        try:
            if get_encoder(uid).is_available:
                out.append(name)
        except Exception:  # encoder module missing entirely
            pass
    try:
        import PIL  # noqa: F401

        out.append("jpeg-baseline")
    except ImportError:
        pass
    return tuple(out)


def _seq_item(**kw):
    from pydicom.dataset import Dataset

    item = Dataset()
    for k, v in kw.items():
        setattr(item, k, v)
    return item


def _voi_lut_item(table: np.ndarray, first: int, out_bits: int):
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset

    item = Dataset()
    n = len(table)
    item.add(DataElement(0x00283002, "US", [n if n < 65536 else 0, int(first), int(out_bits)]))
    item.add(DataElement(0x00283006, "US", [int(v) for v in np.asarray(table)]))
    item.LUTExplanation = "SYNTHETIC VOI"
    return item


def write_dicom(path: str | PathLike, pixels: np.ndarray | None, spec: DicomSpec | None = None, **overrides) -> Path:
    """Write one DICOM file with the properties of ``spec`` (fields may be overridden by keyword).

    Args:
        path: output file (folders are created).
        pixels: integer array ``[H, W]``, ``[F, H, W]`` (multi-frame) or ``[H, W, 3]`` with
            ``photometric="RGB"``; None writes a dataset without pixel data (use ``sop_class="sr"``).
        spec: the file's properties; ``overrides`` replace its fields.

    Returns:
        The path written.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

    spec = dataclasses.replace(spec or DicomSpec(), **overrides)
    if spec.compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, got {spec.compression!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sop_class = SOP_CLASSES.get(spec.sop_class, spec.sop_class)
    seed = spec.uid_seed or (str(path.name), spec.patient_id)
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = spec.sop_uid or _uid("sop", *seed)
    ds.StudyInstanceUID = spec.study_uid or _uid("study", *seed)
    ds.SeriesInstanceUID = spec.series_uid or _uid("series", *seed)
    ds.PatientName = spec.patient_name
    ds.PatientID = spec.patient_id
    ds.PatientSex = "F"
    if spec.age is not None:
        ds.PatientAge = f"{int(spec.age):03d}Y"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
    ds.StudyTime = ds.ContentTime = "120000"
    ds.AccessionNumber = ""
    ds.Modality = "SR" if spec.sop_class == "sr" else "MG"
    ds.Manufacturer = spec.manufacturer
    ds.ManufacturerModelName = spec.model
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    if spec.series_description:
        ds.SeriesDescription = spec.series_description
    ds.BodyPartExamined = "BREAST"

    is_multi = pixels is not None and pixels.ndim == 3 and spec.photometric != "RGB"
    enhanced = spec.enhanced if spec.enhanced is not None else (spec.sop_class == "dbt")
    if pixels is not None:
        ds.ImageType = list(spec.image_type)
        intent = spec.presentation_intent or ("FOR PROCESSING" if spec.sop_class == "dm_processing" else "FOR PRESENTATION")
        ds.PresentationIntentType = intent
        if spec.view_tag == "ViewPosition":
            ds.ViewPosition = spec.view
        if spec.view in _VIEW_CODES and spec.view_tag in ("ViewPosition", "ViewCodeSequence"):
            code, scheme, meaning = _VIEW_CODES[spec.view]
            ds.ViewCodeSequence = [_seq_item(CodeValue=code, CodingSchemeDesignator=scheme, CodeMeaning=meaning)]
        if not enhanced and spec.laterality_tag in ("ImageLaterality", "Laterality"):
            setattr(ds, spec.laterality_tag, spec.laterality)
        arr = np.asarray(pixels)
        rgb = spec.photometric in ("RGB", "YBR_FULL")
        if arr.dtype.kind not in "iu":
            raise ValueError(f"pixels must be an integer array, got {arr.dtype}")
        bits_alloc = arr.dtype.itemsize * 8
        bits = spec.bits_stored or bits_alloc
        signed = arr.dtype.kind == "i"
        ds.SamplesPerPixel = 3 if rgb else 1
        ds.PhotometricInterpretation = spec.photometric
        if not rgb:  # the DX/MG pairing (PS3.3 C.8.11.3): INVERSE with MONOCHROME1, IDENTITY with MONOCHROME2
            ds.PresentationLUTShape = "INVERSE" if spec.photometric == "MONOCHROME1" else "IDENTITY"
        if rgb:
            ds.PlanarConfiguration = 0
        ds.Rows, ds.Columns = int(arr.shape[-3 if rgb else -2]), int(arr.shape[-2 if rgb else -1])
        ds.BitsAllocated = bits_alloc
        ds.BitsStored = bits
        ds.HighBit = bits - 1
        ds.PixelRepresentation = 1 if signed else 0
        if is_multi:
            ds.NumberOfFrames = int(arr.shape[0])
        if spec.pixel_spacing is not None and not enhanced and spec.spacing_tag in ("PixelSpacing", "ImagerPixelSpacing"):
            setattr(ds, spec.spacing_tag, [f"{spec.pixel_spacing[0]:g}", f"{spec.pixel_spacing[1]:g}"])
        window = None
        if spec.window is not None:
            window = _seq_item(WindowCenter=f"{spec.window[0]:g}", WindowWidth=f"{spec.window[1]:g}")
            if spec.voi_function:
                window.VOILUTFunction = spec.voi_function
        if enhanced:
            shared = Dataset()
            if spec.pixel_spacing is not None:
                shared.PixelMeasuresSequence = [_seq_item(
                    PixelSpacing=[f"{spec.pixel_spacing[0]:g}", f"{spec.pixel_spacing[1]:g}"], SliceThickness="1")]
            shared.FrameAnatomySequence = [_seq_item(
                FrameLaterality=spec.laterality,
                AnatomicRegionSequence=[_seq_item(CodeValue="T-04000", CodingSchemeDesignator="SRT", CodeMeaning="Breast")])]
            if spec.rescale is not None:
                shared.PixelValueTransformationSequence = [_seq_item(
                    RescaleSlope=f"{spec.rescale[0]:g}", RescaleIntercept=f"{spec.rescale[1]:g}", RescaleType="US")]
            if window is not None or spec.voi_lut is not None:
                voi = window if window is not None else Dataset()
                if spec.voi_lut is not None:
                    voi.VOILUTSequence = [_voi_lut_item(*spec.voi_lut)]
                shared.FrameVOILUTSequence = [voi]
            ds.SharedFunctionalGroupsSequence = [shared]
            if is_multi:
                ds.PerFrameFunctionalGroupsSequence = [
                    _seq_item(FrameContentSequence=[_seq_item(InStackPositionNumber=i + 1)]) for i in range(arr.shape[0])]
        else:
            if window is not None:
                for k in ("WindowCenter", "WindowWidth", "VOILUTFunction"):
                    if k in window:
                        setattr(ds, k, window.get(k))
            if spec.voi_lut is not None:
                ds.VOILUTSequence = [_voi_lut_item(*spec.voi_lut)]
            if spec.rescale is not None:
                ds.RescaleSlope, ds.RescaleIntercept = f"{spec.rescale[0]:g}", f"{spec.rescale[1]:g}"
                ds.RescaleType = "US"
        data = arr
        if spec.junk_high_bits and bits < bits_alloc:
            rng = np.random.default_rng(0)
            junk = rng.integers(1, 2 ** (bits_alloc - bits), size=arr.shape, dtype=np.uint32) << bits
            data = (arr.astype(np.uint32) | junk).astype(arr.dtype)
        ds.PixelData = np.ascontiguousarray(data).tobytes()

    for k, v in spec.extra.items():
        setattr(ds, k, v)

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if spec.compression == "implicit" else ExplicitVRLittleEndian
    if pixels is not None and spec.compression in ("rle", "jpeg2000", "jpegls"):
        uid = {"rle": RLELossless, "jpeg2000": JPEG2000Lossless, "jpegls": JPEGLSLossless}[spec.compression]
        ds.compress(uid, np.asarray(pixels), generate_instance_uid=False)
    elif pixels is not None and spec.compression == "jpeg-baseline":
        _jpeg_baseline(ds, np.asarray(pixels))
    pydicom.dcmwrite(path, ds, enforce_file_format=spec.preamble)
    return path


NON_MAMMOGRAMS = {
    "dx-abdomen": {"sop_class": "dx", "view": "AP", "series_description": "ABDOMEN AP",
                   "extra": {"Modality": "DX", "BodyPartExamined": "ABDOMEN"}},
    "cr-test-pattern": {"sop_class": "1.2.840.10008.5.1.4.1.1.1", "view_tag": "none", "laterality_tag": "none",
                        "series_description": "TEST PATTERN", "extra": {"Modality": "CR", "BodyPartExamined": ""}},
    "mg-flatfield": {"image_type": ("ORIGINAL", "PRIMARY", "FLATFIELD"), "series_description": "FLAT FIELD"},
}
"""``DicomSpec`` overrides of the images that must never get a density (``io.gating`` rejects them)."""


def write_non_mammogram(path: str | PathLike, kind: str, size: tuple[int, int] = (64, 48), **overrides) -> Path:
    """Write a DX abdomen, a CR test pattern or a flat-field MG (``NON_MAMMOGRAMS`` keys) with plausible pixels."""
    if kind not in NON_MAMMOGRAMS:
        raise ValueError(f"kind must be one of {sorted(NON_MAMMOGRAMS)}, got {kind!r}")
    yy, xx = np.mgrid[: size[0], : size[1]]
    pixels = (((xx // 8 + yy // 8) % 2) * 3000 + 500).astype(np.uint16)  # a checkerboard, 12-bit
    return write_dicom(path, pixels, bits_stored=12, **{**NON_MAMMOGRAMS[kind], **overrides})


def _jpeg_baseline(ds, arr: np.ndarray) -> None:
    """Encode 8-bit greyscale frames with Pillow as JPEG baseline (lossy) and encapsulate them."""
    import io

    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    if arr.dtype != np.uint8:
        raise ValueError("jpeg-baseline needs 8-bit (uint8) pixels")
    frames = arr if arr.ndim == 3 else arr[None]
    encoded = []
    for f in frames:
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="JPEG", quality=95)
        encoded.append(buf.getvalue())
    ds.PixelData = encapsulate(encoded)
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit


# ------------------------------------------------------------------------------------ image model
def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return (f - f.mean()) / (f.std() + 1e-6)


@dataclass
class _Breast:
    inside: np.ndarray  # [H, W] bool
    r: np.ndarray  # [H, W] normalised elliptic radius
    thickness: np.ndarray  # [H, W]
    pectoral: np.ndarray  # [H, W] bool


def _breast_geometry(rng, size, view) -> _Breast:
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if view == "MLO":
        cy, a, b = h * rng.uniform(0.52, 0.6), w * rng.uniform(0.7, 0.88), h * rng.uniform(0.44, 0.5)
    else:
        cy, a, b = h * rng.uniform(0.46, 0.54), w * rng.uniform(0.62, 0.82), h * rng.uniform(0.38, 0.45)
    r = np.sqrt((xx / a) ** 2 + ((yy - cy) / b) ** 2)
    inside = r < 1.0
    thickness = np.clip(1.0 - r**2, 0.0, 1.0) ** 0.25
    pectoral = np.zeros((h, w), bool)
    if view == "MLO":
        pw, ph = w * rng.uniform(0.25, 0.35), h * rng.uniform(0.4, 0.55)
        pectoral = (xx / pw + yy / ph < 1.0) & inside
    return _Breast(inside, r, thickness, pectoral)


def _lesion_profile(size, cx, cy, radius, malignant, rng) -> np.ndarray:
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    dist = np.sqrt(dx**2 + dy**2)
    if malignant:
        theta = np.arctan2(dy, dx)
        k = rng.integers(5, 9)
        rad = radius * (1 + 0.35 * np.abs(np.sin(k * theta / 2 + rng.uniform(0, np.pi))) ** 3)
        mass = 1.0 / (1.0 + np.exp(np.clip((dist - rad) / 0.8, -50, 50)))
        for _ in range(rng.integers(5, 10)):  # micro-calcification cluster
            px = int(np.clip(cx + rng.normal(0, radius), 0, w - 1))
            py = int(np.clip(cy + rng.normal(0, radius), 0, h - 1))
            mass[py, px] += 1.5
        return mass
    return 1.0 / (1.0 + np.exp(np.clip((dist - radius) / 1.5, -50, 50)))


# What each simulated pathology looks like, in the words of the ``abnormality`` column of CBIS-DDSM: benign
# lesions are round masses, malignant ones spiculated masses with a micro-calcification cluster.
ABNORMALITY = {"normal": "normal", "benign": "mass", "malignant": "mass+calcification"}


def render_breast(rng: np.random.Generator, size: tuple[int, int], laterality: str, view: str,
                  dense_fraction: float, lesion: str = "normal", n_frames: int = 0,
                  lesion_radius: tuple[float, float] = (0.025, 0.05), return_mask: bool = False):
    """Simulate one view's attenuation image (or DBT stack) in [0, 1].

    Returns:
        ``(image, (lesion_x, lesion_y, lesion_r))``: image ``[H, W]`` (``[F, H, W]`` when
        ``n_frames``), lesion in pixels (NaN when ``lesion == "normal"``); the radius is drawn uniformly
        in ``lesion_radius`` times the image height. With ``return_mask`` a third item, the exact lesion
        mask ``[H, W]`` bool (where the rendered lesion profile is >= 0.5: the mass and its calcifications;
        all False for a normal breast; the same for every DBT frame). The random draws, and so the image,
        do not depend on ``return_mask``.
    """
    h, w = size
    geo = _breast_geometry(rng, size, view)
    n1 = _smooth_noise(rng, size, sigma=h / 40)
    n2 = _smooth_noise(rng, size, sigma=h / 40)
    fine = _smooth_noise(rng, size, sigma=1.2)
    central = (1.0 - np.clip(geo.r, 0, 1)) * 1.5  # glandular tissue sits away from the skin

    lesion_xyr = (np.nan, np.nan, np.nan)
    lesion_img = None
    if lesion != "normal":
        ys, xs = np.nonzero(geo.inside & (geo.r < 0.7) & ~geo.pectoral)
        j = rng.integers(len(ys))
        radius = float(rng.uniform(*lesion_radius) * h)
        cx, cy = float(xs[j]), float(ys[j])
        lesion_img = _lesion_profile(size, cx, cy, radius, lesion == "malignant", rng)
        lesion_xyr = (cx, cy, radius)

    def one(field: np.ndarray, lesion_weight: float) -> np.ndarray:
        f = field + central
        thr = np.quantile(f[geo.inside], 1.0 - float(np.clip(dense_fraction, 0.01, 0.99)))
        dense = 1.0 / (1.0 + np.exp(np.clip(-(f - thr) / 0.15, -50, 50)))
        img = (0.22 + 0.40 * dense + 0.04 * fine) * geo.thickness
        img = np.where(geo.pectoral, 0.72 + 0.03 * fine, img)
        skin = (geo.r > 0.975) & geo.inside
        img[skin] += 0.12
        if lesion_img is not None:
            img += 0.28 * lesion_weight * lesion_img
        img = np.where(geo.inside, img, 0.02)
        img += rng.normal(0.0, 0.012, size).astype(np.float32)
        return np.clip(img, 0.0, 1.0).astype(np.float32)

    if n_frames:
        angles = np.linspace(-0.7, 0.7, n_frames)
        z = rng.integers(max(1, n_frames // 4), max(2, 3 * n_frames // 4))
        stack = np.stack([one(np.cos(t) * n1 + np.sin(t) * n2, float(np.exp(-(((k - z) / 1.5) ** 2))))
                          for k, t in enumerate(angles)])
        img = stack
    else:
        img = one(n1, 1.0)
    mask = np.zeros(size, dtype=bool) if lesion_img is None else lesion_img >= 0.5
    if laterality == "R":
        img = img[..., ::-1].copy()
        mask = mask[:, ::-1].copy()
        if lesion != "normal":
            lesion_xyr = (w - 1 - lesion_xyr[0], lesion_xyr[1], lesion_xyr[2])
    return (img, lesion_xyr, mask) if return_mask else (img, lesion_xyr)


def _write_mask(path: Path, mask: np.ndarray) -> None:
    """A lesion mask as an 8-bit PNG (255 = lesion) at the image's size."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def _s2d_look(img: np.ndarray) -> np.ndarray:
    """Synthesized 2D images look smoother with enhanced edges."""
    from scipy.ndimage import gaussian_filter

    smooth = gaussian_filter(img, 1.0)
    return np.clip(smooth + 0.6 * (smooth - gaussian_filter(smooth, 3.0)), 0, 1).astype(np.float32)


# ---------------------------------------------------------------------------------------- vendors
VENDORS = (
    # name, model, bits stored, photometric, style
    ("HOLOGIC, Inc.", "Selenia Dimensions", 12, "MONOCHROME2", "window"),
    ("GE MEDICAL SYSTEMS", "Senographe Pristina", 14, "MONOCHROME2", "voi_lut"),
    ("FUJIFILM Corporation", "AMULET Innovality", 10, "MONOCHROME1", "window"),
    ("SIEMENS", "Mammomat Revelation", 12, "MONOCHROME2", "sigmoid"),
)


def _vendor_spec(vendor_idx: int, processing: bool) -> tuple[DicomSpec, int, str]:
    """(spec, bits stored, mapping) for a vendor; mapping is "linear", "inverted" or "raw"."""
    name, model, bits, photometric, style = VENDORS[vendor_idx % len(VENDORS)]
    top = 2**bits - 1
    spec = DicomSpec(manufacturer=name, model=model, bits_stored=bits, photometric=photometric)
    if name.startswith("FUJI"):
        spec.spacing_tag = "ImagerPixelSpacing"
    if processing:
        return dataclasses.replace(spec, sop_class="dm_processing", photometric="MONOCHROME1"), bits, "raw"
    mapping = "inverted" if photometric == "MONOCHROME1" else "linear"
    if style == "window":
        spec.window = (0.5 * top, 0.9 * top)
    elif style == "sigmoid":
        spec.window, spec.voi_function = (0.45 * top, 0.5 * top), "SIGMOID"
    else:  # GE: a VOI LUT (gentle S-curve to 12 bits) plus windows
        x = np.arange(top + 1, dtype=np.float64) / top
        table = np.round(4095 / (1 + np.exp(-(x - 0.45) / 0.14))).astype(np.uint16)
        spec.voi_lut = (table, 0, 12)
        spec.window = (0.45 * top, 0.8 * top)
    return spec, bits, mapping


def _to_stored(img: np.ndarray, bits: int, mapping: str) -> np.ndarray:
    top = 2**bits - 1
    if mapping == "raw":  # detector signal falls exponentially with attenuation
        v = top * np.exp(-2.5 * img)
    elif mapping == "inverted":
        v = top * (1.0 - img)
    else:
        v = top * img
    return np.clip(np.rint(v), 0, top).astype(np.uint16)


# what the simulated lesions look like, in BI-RADS descriptors (never the pathology itself): benign lesions are
# round smooth masses, malignant ones spiculated masses with a micro-calcification cluster
_LESION_FACTS = {
    "benign": {"mass_shape": "oval", "mass_margins": "circumscribed"},
    "malignant": {"abnormality": ["mass", "calcification"], "mass_shape": "irregular", "mass_margins": "spiculated",
                  "calc_type": "fine pleomorphic", "calc_distribution": "grouped"},
}


def _exam_report(rows: list[dict], rng: np.random.Generator, noise: float, height: int) -> tuple[str, str]:
    """One exam's report text from its rows (density, lesions per breast), some facts wrong on purpose."""
    from mammolens.reports import annotation_report, clock_face, stable_seed

    density, wrong = rows[0]["density"], []
    if rng.random() < noise:
        density = DENSITY_CLASSES[min(3, DENSITY_CLASSES.index(density) + 1) if density != "D" else 2]
        wrong.append("density")
    parts = [annotation_report({"density": density}, stable_seed(rows[0]["study_id"]))]
    for lat in ("R", "L"):
        by_view = {r["view"]: r for r in rows if r["laterality"] == lat}
        cc, mlo = by_view["CC"], by_view["MLO"]
        if cc["pathology"] == "normal":
            facts = {"laterality": lat, "abnormality": "NORM"}
        else:
            hour, quadrant = clock_face(lat, upper=mlo["lesion_y"] < height / 2, outer=cc["lesion_y"] < height / 2)
            side = lat
            if rng.random() < noise:
                side = "L" if lat == "R" else "R"
                wrong.append("side")
            facts = {"laterality": side, "abnormality": "mass", "clock": hour, "quadrant": quadrant,
                     **_LESION_FACTS[cc["pathology"]]}
        text = annotation_report(facts, stable_seed(f"{rows[0]['study_id']}{lat}"))
        parts.append(text.replace("FINDINGS:", "").replace("Findings:", "").strip())
    return "\n".join(parts), "+".join(dict.fromkeys(wrong))


# ----------------------------------------------------------------------------------------- cohort
def make_cohort(
    out_dir: str | PathLike,
    n_patients: int = 24,
    seed: int = 0,
    modalities: tuple[str, ...] = ("DM", "s2D", "DBT"),
    density_probs: dict | list | tuple | None = None,
    image_size: tuple[int, int] = (256, 208),
    dbt_frames: int = 8,
    compress_fraction: float = 0.25,
    processing_fraction: float = 0.1,
    lesion_prob: float = 0.3,
    malignant_fraction: float = 0.5,
    studies_per_patient: int = 1,
    sites: tuple[str, ...] = ("site-1", "site-2", "site-3"),
    report_noise: float = 0.05,
    lesion_masks: bool = True,
    lesion_radius: tuple[float, float] = (0.025, 0.05),
) -> pd.DataFrame:
    """Write a simulated cohort of real DICOM files and ``out_dir/manifest.parquet``.

    Each patient has ``studies_per_patient`` exams of four views (L/R x CC/MLO); exam ``s`` of patient
    ``i`` has modality ``modalities[(i + s) % len(modalities)]`` and vendor ``VENDORS[i % 4]``. Density
    is per patient; pathology per breast (the same lesion type in both views of that breast).

    Args:
        out_dir: output folder (``dicom/`` and ``manifest.parquet`` are written inside).
        n_patients: number of simulated patients.
        seed: everything is deterministic given the seed.
        modalities: subset of ``("DM", "s2D", "DBT")``.
        density_probs: class probabilities, dict ``{"A": p, ...}`` or 4 numbers (default A .10,
            B .40, C .40, D .10 as in screening).
        image_size: ``(H, W)`` of every image.
        dbt_frames: frames of each DBT image.
        compress_fraction: fraction of images stored RLE or JPEG 2000 (alternating; what is encodable).
        processing_fraction: fraction of DM images stored For Processing (raw, no VOI).
        lesion_prob: probability that a breast has a lesion.
        malignant_fraction: fraction of lesions that are malignant (the rest benign).
        studies_per_patient: exams per patient.
        sites: site names cycled over patients.
        lesion_radius: range of lesion radii as fractions of the image height (larger lesions span more
            patches: the report-learning positive controls use them).
        report_noise: probability that a fact of an exam's report is wrong on purpose (density one class
            off, or a lesion on the other side); what was changed is in ``report_noise`` ("density",
            "side" or "" per row). Each exam has one ``report`` (``report_source`` "synthetic") shared
            by its four views: density and, per breast, the lesion's quadrant and clock face taken from
            the CC (upper image half = outer) and MLO (upper image half = upper) lesion centres.
        lesion_masks: write each lesion's exact mask (``masks/.../<image>.png``, 255 = lesion, the image's
            size) and name it in ``lesion_mask`` (relative to ``out_dir``; "" for a normal breast), with
            ``lesion_mask_kind`` "exact" (the manifest's ``lesion_mask`` contract).

    Returns:
        The manifest (``image_path`` relative to ``out_dir``), as written; every row has
        ``simulated = True``, which ``mammolens evaluate`` turns into a "simulated data" banner.
    """
    from mammolens.data.manifest import write_manifest
    from mammolens.io.dicom import normalise_manufacturer

    out_dir = Path(out_dir)
    bad = [m for m in modalities if m not in ("DM", "s2D", "DBT")]
    if bad or not modalities:
        raise ValueError(f"modalities must be a non-empty subset of ('DM', 's2D', 'DBT'), got {modalities!r}")
    if density_probs is None:
        density_probs = DEFAULT_DENSITY_PROBS
    probs = np.asarray([density_probs[c] for c in DENSITY_CLASSES] if isinstance(density_probs, dict) else density_probs, float)
    if probs.shape != (4,) or (probs < 0).any() or probs.sum() <= 0:
        raise ValueError(f"density_probs must give 4 non-negative numbers for A-D, got {density_probs!r}")
    probs = probs / probs.sum()
    codecs = [c for c in ("rle", "jpeg2000") if c in available_compressions()]
    races = ("White", "Black", "Asian", "Hispanic", "Other")
    rows = []
    n_image = 0
    for i in range(n_patients):
        rng = np.random.default_rng([seed, i])
        pid, name = f"SYN{i + 1:04d}", f"SYNTH^PATIENT^{i + 1:04d}"
        density = DENSITY_CLASSES[rng.choice(4, p=probs)]
        fraction = float(np.clip(DENSE_FRACTION[density] + rng.normal(0, 0.06), 0.02, 0.95))
        age = int(rng.integers(40, 76))
        race = races[rng.choice(5, p=[0.55, 0.15, 0.12, 0.13, 0.05])]
        site = sites[i % len(sites)]
        vendor = i % len(VENDORS)
        for s in range(studies_per_patient):
            modality = modalities[(i + s) % len(modalities)]
            study_uid = _uid("study", seed, pid, s)
            series_uid = _uid("series", seed, pid, s)
            pathology = {}
            for lat in ("L", "R"):
                p = "normal"
                if rng.random() < lesion_prob:
                    p = "malignant" if rng.random() < malignant_fraction else "benign"
                pathology[lat] = p
            exam_rows: list[dict] = []
            for lat, view in (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO")):
                n_frames = dbt_frames if modality == "DBT" else 0
                img, (lx, ly, lr), lmask = render_breast(rng, image_size, lat, view, fraction, pathology[lat],
                                                         n_frames, lesion_radius, return_mask=True)
                if modality == "s2D":
                    img = _s2d_look(img)
                processing = modality == "DM" and rng.random() < processing_fraction
                spec, bits, mapping = _vendor_spec(vendor, processing)
                compression = "explicit"
                if codecs and rng.random() < compress_fraction:
                    compression = codecs[n_image % len(codecs)]
                desc = f"{lat} {view}"
                image_type = ("ORIGINAL", "PRIMARY")
                sop = spec.sop_class
                if modality == "s2D":
                    image_type, desc = ("DERIVED", "PRIMARY", "TOMOSYNTHESIS", "GENERATED_2D"), f"{lat} {view} C-View"
                elif modality == "DBT":
                    image_type, sop, desc = ("ORIGINAL", "PRIMARY", "TOMOSYNTHESIS", "NONE"), "dbt", f"{lat} {view} Tomo"
                rel = Path("dicom") / pid / f"study{s + 1}" / f"{modality}_{lat}{view}.dcm"
                sop_uid = _uid("sop", seed, pid, s, lat, view)
                spec = dataclasses.replace(
                    spec, sop_class=sop, laterality=lat, view=view, image_type=image_type, series_description=desc,
                    patient_id=pid, patient_name=name, age=age, compression=compression, pixel_spacing=(0.1, 0.1),
                    study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid,
                )
                write_dicom(out_dir / rel, _to_stored(img, bits, mapping), spec)
                n_image += 1
                exam_rows.append({
                    "image_path": rel.as_posix(), "patient_id": pid, "study_id": study_uid, "laterality": lat,
                    "view": view, "modality": modality, "manufacturer": normalise_manufacturer(spec.manufacturer),
                    "density": density, "pathology": pathology[lat],
                    "abnormality": ABNORMALITY[pathology[lat]], "lesion_x": lx, "lesion_y": ly,
                    "lesion_r": lr, "age": age, "race": race, "site": site, "sop_instance_uid": sop_uid,
                    "presentation_intent": "FOR PROCESSING" if processing else "FOR PRESENTATION",
                    "compression": compression, "n_frames": max(1, n_frames), "dense_fraction": fraction,
                    "simulated": True,  # evaluation reports say the numbers are not clinical performance
                })
                if lesion_masks:
                    mrel = ""
                    if lmask.any():
                        mrel = (Path("masks") / pid / f"study{s + 1}" / f"{modality}_{lat}{view}.png").as_posix()
                        _write_mask(out_dir / mrel, lmask)
                    exam_rows[-1].update(lesion_mask=mrel, lesion_mask_kind="exact" if mrel else "")
            report, noise = _exam_report(exam_rows, np.random.default_rng([seed, i, s, 12]), report_noise,
                                         image_size[0])
            for r in exam_rows:  # a separate generator: the images do not change with the reports
                r.update(report=report, report_id=f"synthetic-{study_uid}", report_source="synthetic",
                         report_noise=noise)
            rows.extend(exam_rows)
    df = pd.DataFrame(rows)
    write_manifest(df, out_dir / "manifest.parquet")
    return df


__all__ = [
    "COMPRESSIONS", "DEFAULT_DENSITY_PROBS", "DENSE_FRACTION", "SOP_CLASSES", "VENDORS", "DicomSpec",
    "NON_MAMMOGRAMS", "available_compressions", "make_cohort", "render_breast", "write_dicom", "write_non_mammogram",
]
