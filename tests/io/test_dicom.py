"""Tests of mammolens.io.dicom on crafted DICOMs (data.synthetic.write_dicom) and pydicom's test files."""

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from mammolens.data.synthetic import available_compressions, write_dicom
from mammolens.io import META_KEYS, ImageReadError, is_dicom, read_image
from mammolens.io.dicom import normalise_manufacturer, read_dicom

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _pydicom_file(name: str) -> Path:
    # get_testdata_file would try to download missing files; tests must stay offline
    path = PYDICOM_FILES / name
    if not path.is_file():
        pytest.skip(f"pydicom test file {name} is not installed")
    return path


@pytest.fixture(scope="module")
def ramp12() -> np.ndarray:
    """A 12-bit ramp image [32, 48] covering 0..4095."""
    return np.linspace(0, 4095, 32 * 48).round().astype(np.uint16).reshape(32, 48)


def test_read_dicom_monochrome1_inverted_numerically(tmp_path, ramp12):
    m2 = read_dicom(write_dicom(tmp_path / "m2.dcm", ramp12, bits_stored=12), apply_voi=False)
    m1 = read_dicom(write_dicom(tmp_path / "m1.dcm", ramp12, bits_stored=12, photometric="MONOCHROME1"), apply_voi=False)
    np.testing.assert_allclose(m2.pixels, ramp12 / 4095.0, atol=1e-6)
    np.testing.assert_allclose(m1.pixels, 1.0 - ramp12 / 4095.0, atol=1e-6)
    assert m1.conversion["inverted"] is True and m2.conversion["inverted"] is False
    assert m1.pixels.dtype == np.float32


def test_read_dicom_monochrome1_inverted_after_window(tmp_path, ramp12):
    path = write_dicom(tmp_path / "m1w.dcm", ramp12, bits_stored=12, photometric="MONOCHROME1", window=(2000, 1000))
    img = read_dicom(path)
    x = ramp12.astype(np.float64)
    expected = 1.0 - np.clip((x - 1999.5) / 999.0 + 0.5, 0, 1)
    np.testing.assert_allclose(img.pixels, expected, atol=1e-5)


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_read_dicom_presentation_lut_shape_inverse(tmp_path, ramp12, photometric):
    """INVERSE inverts a MONOCHROME2 image; with MONOCHROME1 (the conformant pairing) it inverts once, not twice."""
    plain = read_dicom(write_dicom(tmp_path / "p.dcm", ramp12, bits_stored=12, photometric=photometric, window=(2000, 3000)))
    inv = read_dicom(write_dicom(tmp_path / "i.dcm", ramp12, bits_stored=12, photometric=photometric, window=(2000, 3000),
                                 extra={"PresentationLUTShape": "INVERSE"}))
    ident = read_dicom(write_dicom(tmp_path / "d.dcm", ramp12, bits_stored=12, photometric=photometric,
                                   window=(2000, 3000), extra={"PresentationLUTShape": "IDENTITY"}))
    np.testing.assert_array_equal(ident.pixels, plain.pixels)
    ds = pydicom.dcmread(tmp_path / "p.dcm")
    del ds.PresentationLUTShape  # absent: the photometric interpretation alone decides
    ds.save_as(tmp_path / "a.dcm")
    absent = read_dicom(tmp_path / "a.dcm")
    np.testing.assert_array_equal(absent.pixels, plain.pixels)
    assert absent.conversion["presentation_lut_shape"] is None
    if photometric == "MONOCHROME2":
        np.testing.assert_allclose(inv.pixels, 1.0 - plain.pixels, atol=1e-6)
        assert inv.pixels[0, 0] > inv.pixels[-1, -1]  # low stored values display bright
    else:
        np.testing.assert_array_equal(inv.pixels, plain.pixels)
    assert inv.conversion["inverted"] is True and inv.conversion["presentation_lut_shape"] == "INVERSE"
    # the generator writes the conformant pairing by default (INVERSE with MONOCHROME1)
    assert plain.conversion["presentation_lut_shape"] == ("INVERSE" if photometric == "MONOCHROME1" else "IDENTITY")


def test_read_dicom_bits_stored_masks_high_bits(tmp_path, ramp12):
    path = write_dicom(tmp_path / "junk.dcm", ramp12, bits_stored=12, junk_high_bits=True)
    stored = np.frombuffer(pydicom.dcmread(path).PixelData, np.uint16)
    assert stored.max() > 4095  # the file really carries junk above bit 11
    img = read_dicom(path, apply_voi=False)
    np.testing.assert_allclose(img.pixels, ramp12 / 4095.0, atol=1e-6)
    assert img.meta["bits_stored"] == 12 and img.conversion["bits_stored"] == 12


def test_read_dicom_signed_bits_stored_sign_extended(tmp_path):
    values = np.array([[-2048, -1, 0, 2047]], dtype=np.int16).repeat(4, 0)
    img = read_dicom(write_dicom(tmp_path / "signed.dcm", values, bits_stored=12), apply_voi=False)
    np.testing.assert_allclose(img.pixels[0], (values[0] + 2048) / 4095.0, atol=1e-6)
    assert img.conversion["signed"] is True


@pytest.mark.parametrize(
    "function, formula",
    [
        ("LINEAR", lambda x, c, w: np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0, 1)),
        ("LINEAR_EXACT", lambda x, c, w: np.clip((x - c) / w + 0.5, 0, 1)),
        ("SIGMOID", lambda x, c, w: 1.0 / (1.0 + np.exp(-4 * (x - c) / w))),
    ],
)
def test_read_dicom_window_functions(tmp_path, ramp12, function, formula):
    c, w = 1500.0, 800.0
    path = write_dicom(tmp_path / f"{function}.dcm", ramp12, bits_stored=12, window=(c, w), voi_function=function)
    img = read_dicom(path)
    np.testing.assert_allclose(img.pixels, formula(ramp12.astype(np.float64), c, w), atol=1e-5)
    assert img.conversion["voi"] == "window 1500/800"
    assert img.conversion["voi_function"] == function


def test_read_dicom_rescale_before_window(tmp_path, ramp12):
    path = write_dicom(tmp_path / "rs.dcm", ramp12, bits_stored=12, rescale=(2.0, -100.0), window=(4000, 2000),
                       voi_function="LINEAR_EXACT")
    img = read_dicom(path)
    x = ramp12 * 2.0 - 100.0
    np.testing.assert_allclose(img.pixels, np.clip((x - 4000) / 2000 + 0.5, 0, 1), atol=1e-5)
    assert img.conversion["rescale"] == [2.0, -100.0]


def test_read_dicom_voi_lut_preferred_over_window_ge_style(tmp_path, ramp12):
    table = (4095 - np.arange(4096)).astype(np.uint16)  # an inverting LUT: clearly not the window
    path = write_dicom(tmp_path / "ge.dcm", ramp12, bits_stored=12, voi_lut=(table, 0, 12), window=(2048, 4096),
                       manufacturer="GE MEDICAL SYSTEMS")
    lut = read_dicom(path)
    np.testing.assert_allclose(lut.pixels, 1.0 - ramp12 / 4095.0, atol=1e-6)
    assert lut.conversion["voi"] == "voi_lut"
    win = read_dicom(path, voi_prefer="window")
    assert win.conversion["voi"].startswith("window")
    assert np.corrcoef(win.pixels.ravel(), ramp12.ravel())[0, 1] > 0.99
    assert lut.meta["manufacturer"] == "GE"


def test_read_dicom_voi_lut_first_mapped_clamps(tmp_path, ramp12):
    table = np.linspace(0, 255, 1000).round().astype(np.uint16)
    img = read_dicom(write_dicom(tmp_path / "fm.dcm", ramp12, bits_stored=12, voi_lut=(table, 1000, 8)))
    x = ramp12.astype(int)
    expected = table[np.clip(x - 1000, 0, 999)] / 255.0
    np.testing.assert_allclose(img.pixels, expected, atol=1e-6)


@pytest.mark.parametrize("compression", ["rle", "jpeg2000", "jpegls", "implicit"])
def test_read_dicom_lossless_compression_matches_uncompressed(tmp_path, ramp12, compression):
    if compression not in available_compressions():
        pytest.skip(f"no encoder for {compression}")
    ref = read_dicom(write_dicom(tmp_path / "ref.dcm", ramp12, bits_stored=12, window=(2048, 4096)))
    img = read_dicom(write_dicom(tmp_path / f"{compression}.dcm", ramp12, bits_stored=12, window=(2048, 4096),
                                 compression=compression))
    np.testing.assert_array_equal(img.pixels, ref.pixels)
    assert img.meta["transfer_syntax"] != ref.meta["transfer_syntax"] or compression == "explicit"


def test_read_dicom_jpeg_baseline_close_to_source(tmp_path):
    arr = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (48, 1))
    img = read_dicom(write_dicom(tmp_path / "jpg.dcm", arr, compression="jpeg-baseline"), apply_voi=False)
    assert img.meta["transfer_syntax"] == pydicom.uid.JPEGBaseline8Bit
    np.testing.assert_allclose(img.pixels, arr / 255.0, atol=0.03)


def test_read_dicom_for_processing_uses_percentile_window(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 16384, size=(40, 50)).astype(np.uint16)
    path = write_dicom(tmp_path / "proc.dcm", arr, bits_stored=14, sop_class="dm_processing", window=(10, 5))
    img = read_dicom(path)
    lo, hi = np.percentile(arr.astype(np.float32), (0.5, 99.5))
    np.testing.assert_allclose(img.pixels, np.clip((arr - lo) / (hi - lo), 0, 1), atol=1e-5)
    assert img.meta["presentation_intent"] == "FOR PROCESSING"
    assert img.conversion["voi"] == "percentile 0.5-99.5"
    logged = read_dicom(path, log=True, percentiles=(1, 99))
    assert logged.conversion["voi"] == "log+percentile 1-99"
    assert 0.0 <= logged.pixels.min() and logged.pixels.max() <= 1.0


def test_read_dicom_no_voi_falls_back_to_percentile(tmp_path, ramp12):
    img = read_dicom(write_dicom(tmp_path / "nowin.dcm", ramp12, bits_stored=12))
    assert img.conversion["voi"].startswith("percentile")
    assert img.pixels.min() == 0.0 and img.pixels.max() == 1.0


@pytest.fixture(scope="module")
def dbt_file(tmp_path_factory):
    """A 6-frame DBT (Breast Tomosynthesis SOP) whose frame k has value 100 * (k + 1) plus a ramp."""
    base = np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) % 50
    frames = np.stack([base + 100 * (k + 1) for k in range(6)]).astype(np.uint16)
    path = write_dicom(tmp_path_factory.mktemp("dbt") / "dbt.dcm", frames, sop_class="dbt", bits_stored=12,
                       laterality="R", view="MLO", window=(2048, 4096), voi_function="LINEAR_EXACT",
                       pixel_spacing=(0.085, 0.085), image_type=("ORIGINAL", "PRIMARY", "TOMOSYNTHESIS"))
    return path, frames.astype(np.float64)


def _linear_exact(x):
    return np.clip((x - 2048) / 4096 + 0.5, 0, 1)


def test_read_dicom_dbt_mip(dbt_file):
    path, frames = dbt_file
    img = read_dicom(path)  # default dbt="mip"
    np.testing.assert_allclose(img.pixels, _linear_exact(frames.max(0)), atol=1e-6)
    assert img.meta["modality"] == "DBT" and img.meta["n_frames"] == 6
    assert img.meta["laterality"] == "R" and img.meta["view"] == "MLO"  # FrameLaterality in functional groups
    assert img.meta["pixel_spacing"] == (0.085, 0.085)
    assert img.conversion["dbt"] == "mip" and img.conversion["voi"] == "window 2048/4096"


def test_read_dicom_dbt_slab_center_frames_and_frame(dbt_file):
    path, frames = dbt_file
    slab = read_dicom(path, dbt="slab", slab=(1, 4))
    np.testing.assert_allclose(slab.pixels, _linear_exact(frames[1:4].mean(0)), atol=1e-6)
    default_slab = read_dicom(path, dbt="slab")  # central third: frames 2..3
    np.testing.assert_allclose(default_slab.pixels, _linear_exact(frames[2:4].mean(0)), atol=1e-6)
    center = read_dicom(path, dbt="center")
    np.testing.assert_allclose(center.pixels, _linear_exact(frames[3]), atol=1e-6)
    stack = read_dicom(path, dbt="frames")
    assert stack.pixels.shape == (6, 20, 30)
    np.testing.assert_allclose(stack.pixels, _linear_exact(frames), atol=1e-6)
    one = read_dicom(path, frame=-1)
    np.testing.assert_allclose(one.pixels, _linear_exact(frames[5]), atol=1e-6)
    assert one.conversion["frames"] == [5]


def test_read_dicom_dbt_mip_monochrome1_takes_display_bright(tmp_path):
    frames = np.stack([np.full((8, 8), v, np.uint16) for v in (100, 50, 300)])
    img = read_dicom(write_dicom(tmp_path / "m1dbt.dcm", frames, sop_class="dbt", bits_stored=12,
                                 photometric="MONOCHROME1"), apply_voi=False)
    np.testing.assert_allclose(img.pixels, 1.0 - 50 / 4095.0, atol=1e-6)  # the lowest raw value is brightest


def test_read_dicom_dbt_invalid_arguments(dbt_file):
    path, _ = dbt_file
    with pytest.raises(ValueError, match="dbt must be one of"):
        read_dicom(path, dbt="average")
    with pytest.raises(ValueError, match="out of range"):
        read_dicom(path, frame=6)


@pytest.mark.parametrize(
    "kw",
    [
        {"image_type": ("DERIVED", "PRIMARY", "TOMOSYNTHESIS", "GENERATED_2D")},
        {"series_description": "L CC C-View"},
        {"series_description": "V-Preview LCC"},
    ],
)
def test_read_dicom_detects_synthesized_2d(tmp_path, ramp12, kw):
    img = read_dicom(write_dicom(tmp_path / "s2d.dcm", ramp12, bits_stored=12, **kw))
    assert img.meta["modality"] == "s2D"


def test_read_dicom_plain_dm_is_dm(tmp_path, ramp12):
    img = read_dicom(write_dicom(tmp_path / "dm.dcm", ramp12, bits_stored=12, series_description="L CC"))
    assert img.meta["modality"] == "DM" and img.meta["presentation_intent"] == "FOR PRESENTATION"


@pytest.mark.parametrize(
    "kw, laterality, view",
    [
        ({"laterality": "R", "laterality_tag": "Laterality"}, "R", "CC"),
        ({"laterality_tag": "none", "series_description": "RMLO screening", "view_tag": "none"}, "R", "MLO"),
        ({"laterality_tag": "none", "series_description": "LEFT CC"}, "L", "CC"),
        ({"laterality_tag": "none", "series_description": "R_CC_tomo"}, "R", "CC"),
        ({"laterality_tag": "none", "series_description": "C-View"}, "", "CC"),
        ({"view": "MLO", "view_tag": "ViewCodeSequence"}, "L", "MLO"),
        ({"laterality_tag": "none", "view_tag": "none"}, "", ""),
    ],
)
def test_read_dicom_laterality_and_view_fallbacks(tmp_path, ramp12, kw, laterality, view):
    img = read_dicom(write_dicom(tmp_path / "lv.dcm", ramp12, bits_stored=12, **kw))
    assert (img.meta["laterality"], img.meta["view"]) == (laterality, view)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("HOLOGIC, Inc.", "Hologic"), ("Lorad, A Hologic Company", "Hologic"), ("GE MEDICAL SYSTEMS", "GE"),
        ("GE Healthcare", "GE"), ("SIEMENS", "Siemens"), ("Siemens Healthineers", "Siemens"),
        ("FUJIFILM Corporation", "Fujifilm"), ("FUJIFILM", "Fujifilm"), ("Philips Medical Systems", "Philips"),
        ("Sectra Imtec AB", "Philips"), ("Planmed", "Planmed"), ("IMS s.r.l.", "IMS"), ("IMS GIOTTO S.p.A.", "IMS"),
        ("Agfa", "Agfa"), ("KONICA MINOLTA", "Konica Minolta"), ("Acme Imaging", "Acme Imaging"), ("", ""),
    ],
)
def test_normalise_manufacturer(raw, expected):
    assert normalise_manufacturer(raw) == expected


def test_read_dicom_fujifilm_imager_pixel_spacing(tmp_path, ramp12):
    path = write_dicom(tmp_path / "fuji.dcm", ramp12, bits_stored=10 + 2, photometric="MONOCHROME1",
                       manufacturer="FUJIFILM Corporation", spacing_tag="ImagerPixelSpacing", pixel_spacing=(0.05, 0.05))
    img = read_dicom(path)
    assert img.meta["pixel_spacing"] == (0.05, 0.05)
    assert img.meta["pixel_spacing_source"] == "ImagerPixelSpacing"
    assert img.meta["manufacturer"] == "Fujifilm" and img.meta["photometric"] == "MONOCHROME1"


def test_read_dicom_meta_keys_and_json_conversion(tmp_path, ramp12):
    img = read_dicom(write_dicom(tmp_path / "meta.dcm", ramp12, bits_stored=12, age=61, patient_id="SYN0042"))
    assert set(META_KEYS) <= set(img.meta)
    assert img.meta["age"] == 61.0 and img.meta["patient_id"] == "SYN0042"
    assert img.meta["sop_instance_uid"] and img.meta["study_instance_uid"]
    assert img.meta["transfer_syntax"] == pydicom.uid.ExplicitVRLittleEndian
    json.dumps(img.conversion)  # caches store it as JSON
    assert img.conversion["reader_version"] and img.conversion["transfer_syntax"] == img.meta["transfer_syntax"]


def test_read_image_dicom_by_content_not_suffix(tmp_path, ramp12):
    path = write_dicom(tmp_path / "looks_like.png", ramp12, bits_stored=12, window=(2048, 4096))
    assert is_dicom(path)
    assert read_image(path).conversion["reader"] == "mammolens.io.dicom"
    bare = write_dicom(tmp_path / "no_preamble", ramp12, bits_stored=12, window=(2048, 4096), preamble=False)
    assert bare.read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(read_image(bare).pixels, read_image(path).pixels)


# ------------------------------------------------------------------------------------------- errors
def test_read_dicom_rejects_rgb(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    path = write_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB", sop_class="sc")
    with pytest.raises(ImageReadError, match="not a greyscale mammogram") as err:
        read_dicom(path)
    assert err.value.path == str(path) and "rgb.dcm" in str(err.value)


def test_read_dicom_rejects_sr_without_pixels(tmp_path):
    path = write_dicom(tmp_path / "sr.dcm", None, sop_class="sr")
    with pytest.raises(ImageReadError, match="without pixel data") as err:
        read_image(path)
    assert "sr.dcm" in str(err.value)


def test_read_dicom_truncated_pixel_data_names_file(tmp_path, ramp12):
    path = write_dicom(tmp_path / "cut.dcm", ramp12, bits_stored=12)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 500])
    with pytest.raises(ImageReadError, match="cut.dcm"):
        read_dicom(path)


def test_read_image_garbage_names_file(tmp_path):
    path = tmp_path / "garbage.dcm"
    path.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(ImageReadError, match="garbage.dcm") as err:
        read_image(path)
    assert isinstance(err.value, ValueError)
    with pytest.raises(ImageReadError, match="not a DICOM file"):
        read_dicom(path)


def test_read_image_missing_file():
    with pytest.raises(FileNotFoundError, match="nope.dcm"):
        read_image("/nonexistent/nope.dcm")


# ------------------------------------------------------------------------------- pydicom test files
@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm",
                                  "MR_small_implicit.dcm", "MR_small_bigendian.dcm"])
def test_read_dicom_pydicom_compressed_variants_match(name):
    ref = read_dicom(_pydicom_file("MR_small.dcm"))
    img = read_dicom(_pydicom_file(name))
    np.testing.assert_allclose(img.pixels, ref.pixels, atol=1e-6)
    assert img.conversion["voi"] == "window 600/1600"


@pytest.mark.parametrize("name, shape", [("JPEG2000.dcm", (1024, 256)), ("JPGExtended.dcm", (1024, 256)),
                                         ("CT_small.dcm", (128, 128))])
def test_read_dicom_pydicom_files_decode(name, shape):
    img = read_dicom(_pydicom_file(name))
    assert img.pixels.shape == shape and img.pixels.dtype == np.float32
    assert 0.0 <= img.pixels.min() < img.pixels.max() <= 1.0


def test_read_dicom_pydicom_multiframe_is_dbt():
    path = _pydicom_file("rtdose.dcm")
    n = int(pydicom.dcmread(path, stop_before_pixels=True).NumberOfFrames)
    raw = pydicom.dcmread(path).pixel_array.astype(np.float64)
    img = read_dicom(path, dbt="frames", apply_voi=False)
    assert img.pixels.shape == raw.shape and img.meta["n_frames"] == n > 1 and img.meta["modality"] == "DBT"
    mip = read_dicom(path, dbt="mip", apply_voi=False)
    np.testing.assert_allclose(mip.pixels, img.pixels.max(0), atol=1e-6)


@pytest.mark.parametrize("name, message", [
    ("SC_rgb_rle.dcm", "not a greyscale mammogram"),
    ("examples_palette.dcm", "not a greyscale mammogram"),
    ("rtstruct.dcm", "without pixel data"),
    ("test-SR.dcm", "without pixel data"),
    ("MR_truncated.dcm", r"truncated: element \(7FE0,0010\) declares 8,192 bytes, the file holds 8,130"),
])
def test_read_dicom_pydicom_files_rejected(name, message):
    path = _pydicom_file(name)
    with pytest.raises(ImageReadError, match=message) as err:
        read_dicom(path)
    assert name in str(err.value)


# ------------------------------------------------------------------- single-frame lookup-table path
_TABLE_CASES = {
    "window": dict(window=(1800, 2500)),
    "window_sigmoid_m1": dict(window=(2100, 1500), voi_function="SIGMOID", photometric="MONOCHROME1"),
    "rescale_window": dict(rescale=(2.0, -100.0), window=(3000, 5000)),
    "voi_lut": dict(voi_lut=((np.linspace(0, 65535, 3000) ** 1.2 / 65535**0.2).astype(np.uint16), 500, 16),
                    window=(10, 5)),
    "percentile": dict(),
    "processing_log": dict(sop_class="dm_processing", window=(10, 5)),
    "junk_bits": dict(junk_high_bits=True, window=(2000, 3000)),
}


@pytest.mark.parametrize("case", sorted(_TABLE_CASES))
def test_single_frame_table_path_equals_frame_by_frame_path(tmp_path, case):
    """A one-frame read goes through the lookup table; a one-frame slab runs the per-pixel stages."""
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 4096, size=(2, 40, 52)).astype(np.uint16)
    frames[1] = frames[0]
    kw = dict(_TABLE_CASES[case])
    path = write_dicom(tmp_path / f"{case}.dcm", frames, sop_class=kw.pop("sop_class", "dbt"), bits_stored=12, **kw)
    log = case == "processing_log"
    fast = read_dicom(path, frame=0, log=log)
    slow = read_dicom(path, dbt="slab", slab=(0, 1), log=log)
    np.testing.assert_array_equal(fast.pixels, slow.pixels)
    assert fast.conversion["voi"] == slow.conversion["voi"]
    if "window_lo" in slow.conversion:
        assert fast.conversion["window_lo"] == slow.conversion["window_lo"]
        assert fast.conversion["window_hi"] == slow.conversion["window_hi"]


def test_percentile_window_is_exact_over_every_pixel(tmp_path):
    """Above 1M pixels the histogram gives np.percentile of the whole image (no subsampling)."""
    rng = np.random.default_rng(2)
    arr = rng.gamma(2.0, 600.0, size=(1100, 1000)).clip(0, 16383).astype(np.uint16)
    path = write_dicom(tmp_path / "big.dcm", arr, bits_stored=14)
    img = read_dicom(path, percentiles=(1.3, 97.7))
    lo, hi = np.percentile(arr, (1.3, 97.7))
    assert img.conversion["window_lo"] == pytest.approx(lo, abs=1e-9)
    assert img.conversion["window_hi"] == pytest.approx(hi, abs=1e-9)
    np.testing.assert_allclose(img.pixels, np.clip((arr - lo) / (hi - lo), 0, 1), atol=1e-6)


def test_native_frame_is_a_view_and_masks_junk_bits(tmp_path, ramp12):
    """The uncompressed fast path reads PixelData without a copy; the table masks bits above BitsStored."""
    from mammolens.io.dicom import _native_frame

    path = write_dicom(tmp_path / "junk.dcm", ramp12, bits_stored=12, junk_high_bits=True, window=(2048, 4096))
    ds = pydicom.dcmread(path)
    raw = _native_frame(ds, 1)
    assert raw is not None and not raw.flags.writeable and raw.max() > 4095
    img = read_dicom(path)
    expected = np.clip((ramp12 - 2047.5) / 4095.0 + 0.5, 0, 1)
    np.testing.assert_allclose(img.pixels, expected, atol=1e-6)
    compressed = write_dicom(tmp_path / "rle.dcm", ramp12, bits_stored=12, compression="rle")
    assert _native_frame(pydicom.dcmread(compressed), 1) is None  # pydicom decodes those


# ------------------------------------------------------------ hostile files (issue 10): refused cleanly
def _needs(compression):
    if compression not in available_compressions():
        pytest.skip(f"no encoder for {compression}")


def _edit(path: Path, **attrs) -> Path:
    """Rewrite a DICOM with header attributes changed (values written as given, unvalidated)."""
    ds = pydicom.dcmread(path)
    with pydicom.config.disable_value_validation():
        for k, v in attrs.items():
            setattr(ds, k, v)
    ds.save_as(path, enforce_file_format=True)
    return path


class _FakePanic(BaseException):
    """Like pyo3's PanicException: derives from BaseException, so ``except Exception`` misses it."""


def test_read_dicom_decoder_base_exception_becomes_image_read_error(tmp_path, ramp12, monkeypatch):
    _needs("rle")
    path = write_dicom(tmp_path / "panic.dcm", ramp12, bits_stored=12, compression="rle")

    def panic(self):
        raise _FakePanic("index out of bounds: the len is 1920 but the index is 1921")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(panic))
    for reader in (read_dicom, read_image):
        with pytest.raises(ImageReadError, match=r"panic\.dcm: .*_FakePanic: index out of bounds"):
            reader(path)


def test_read_dicom_real_rle_decoder_panic_becomes_image_read_error(tmp_path, ramp12):
    """Half the Columns on an RLE file: pylibjpeg-rle panics (a Rust PanicException) on the longer segments."""
    _needs("rle")
    from pydicom.pixels import get_decoder

    if "pylibjpeg" not in get_decoder(pydicom.uid.RLELossless).available_plugins:
        pytest.skip("pylibjpeg-rle is not installed")
    path = _edit(write_dicom(tmp_path / "rle.dcm", ramp12, bits_stored=12, compression="rle"), Columns=24)
    with pytest.raises(ImageReadError, match=r"rle\.dcm: .*(PanicException|cannot decode)"):
        read_image(path)


@pytest.mark.parametrize("attrs, message", [
    (dict(Rows=0), "Rows x Columns is 0 x 48"),
    (dict(Columns=0), "Rows x Columns is 32 x 0"),
    (dict(NumberOfFrames=0), "NumberOfFrames is 0"),
    (dict(BitsAllocated=12), "BitsAllocated 12 is not 1, 8, 16 or 32"),
    (dict(BitsStored=0), "BitsStored 0 is not between 1 and BitsAllocated"),
    (dict(Rows=33), r"pixel data hold 3,072 bytes but .* \(33 x 48 x 1 x 16\) needs 3,168: truncated"),
    (dict(Rows=16), r"pixel data hold 3,072 bytes, 1,536 more than .* declares"),
    (dict(RescaleSlope="NaN", RescaleIntercept="0"), "(?i)RescaleSlope 'nan' is not a finite number"),
    (dict(RescaleSlope="1", RescaleIntercept="-inf"), "RescaleIntercept '-inf' is not a finite number"),
    (dict(RescaleSlope="0", RescaleIntercept="0"), "RescaleSlope 0 maps every pixel to one value"),
    (dict(RescaleSlope="1e31", RescaleIntercept="0"), "RescaleSlope '1e31' is not a finite number of sensible size"),
    (dict(WindowCenter="NaN", WindowWidth="1000"), "(?i)WindowCenter 'nan' is not a finite number"),
    (dict(WindowCenter="2000", WindowWidth="inf"), "WindowWidth 'inf' is not a finite number"),
])
def test_read_dicom_refuses_bad_geometry_and_header_numbers(tmp_path, ramp12, attrs, message):
    path = _edit(write_dicom(tmp_path / "bad.dcm", ramp12, bits_stored=12), **attrs)
    with pytest.raises(ImageReadError, match=message) as err:
        read_image(path)
    assert err.value.path == str(path)


def test_read_dicom_pixel_data_one_pad_byte_allowed(tmp_path):
    arr = np.arange(3 * 5, dtype=np.uint8).reshape(3, 5)  # 15 bytes: written padded to 16
    img = read_dicom(write_dicom(tmp_path / "odd.dcm", arr, bits_stored=8), apply_voi=False)
    np.testing.assert_allclose(img.pixels, arr / 255.0, atol=1e-6)


def test_read_dicom_pixel_data_short_or_long_refused(tmp_path, ramp12):
    for name, cut in (("short.dcm", slice(0, -2)), ("long.dcm", slice(None))):
        path = write_dicom(tmp_path / name, ramp12, bits_stored=12)
        ds = pydicom.dcmread(path)
        ds.PixelData = ds.PixelData[cut] + (b"\0\0" if name == "long.dcm" else b"")
        ds.save_as(path)
        with pytest.raises(ImageReadError, match="bytes but|more than"):
            read_dicom(path)


def test_read_dicom_pixel_budget_refuses_huge_rle_without_allocating(tmp_path, ramp12):
    import time
    import tracemalloc

    _needs("rle")
    path = _edit(write_dicom(tmp_path / "bomb.dcm", ramp12, bits_stored=12, compression="rle"),
                 Rows=65535, Columns=65535)
    tracemalloc.start()
    t = time.perf_counter()
    with pytest.raises(ImageReadError, match=r"65535 x 65535 = 4,294,836,225 pixels exceeds the pixel budget"):
        read_image(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert time.perf_counter() - t < 2.0 and peak < 20 * 2**20  # refused from the header: no 8 GiB buffer


def test_read_dicom_rle_data_too_short_for_geometry(tmp_path, ramp12):
    _needs("rle")
    path = _edit(write_dicom(tmp_path / "rle.dcm", ramp12, bits_stored=12, compression="rle"), Rows=3000, Columns=3000)
    with pytest.raises(ImageReadError, match="RLE data of .* bytes cannot hold 1 frame"):
        read_dicom(path)


def test_read_dicom_max_pixels_keyword_and_environment(tmp_path, ramp12, monkeypatch):
    path = write_dicom(tmp_path / "ok.dcm", ramp12, bits_stored=12)
    assert read_image(path, max_pixels=32 * 48).shape == (32, 48)
    with pytest.raises(ImageReadError, match="1,536 pixels exceeds the pixel budget of 1,535"):
        read_image(path, max_pixels=32 * 48 - 1)
    monkeypatch.setenv("MAMMOLENS_MAX_PIXELS", "1000")
    with pytest.raises(ImageReadError, match="budget of 1,000"):
        read_dicom(path)
    monkeypatch.setenv("MAMMOLENS_MAX_PIXELS", "lots")
    with pytest.raises(ValueError, match="MAMMOLENS_MAX_PIXELS must be a positive number"):
        read_dicom(path)


def test_read_dicom_dbt_budget_counts_decoded_frames(tmp_path):
    stack = np.arange(4 * 8 * 6, dtype=np.uint16).reshape(4, 8, 6)
    path = write_dicom(tmp_path / "dbt.dcm", stack, sop_class="dbt", bits_stored=12)
    with pytest.raises(ImageReadError, match="8 x 6 x 4 frames = 192 pixels exceeds"):
        read_dicom(path, dbt="mip", max_pixels=100)
    assert read_dicom(path, frame=1, max_pixels=100).shape == (8, 6)  # one frame decoded: 48 pixels


@pytest.mark.parametrize("source, label, message", [
    ("jpeg2000", pydicom.uid.JPEGBaseline8Bit, "says JPEG Baseline .* hold a JPEG 2000 codestream"),
    ("jpeg-baseline", pydicom.uid.JPEG2000Lossless, "says JPEG 2000 .* hold a JPEG codestream"),
    ("jpeg2000", pydicom.uid.JPEGLSLossless, "says JPEG-LS .* hold a JPEG 2000 codestream"),
])
def test_read_dicom_transfer_syntax_must_match_codestream(tmp_path, source, label, message):
    _needs(source)
    arr = np.tile(np.linspace(0, 255, 40).astype(np.uint8), (32, 1))
    path = write_dicom(tmp_path / "ts.dcm", arr, bits_stored=8, compression=source)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = label
    ds.save_as(path)
    with pytest.raises(ImageReadError, match=message):
        read_dicom(path)


def test_read_dicom_codestream_size_must_match_header(tmp_path, ramp12):
    _needs("jpeg2000")
    path = _edit(write_dicom(tmp_path / "j2k.dcm", ramp12, bits_stored=12, compression="jpeg2000"), Rows=64)
    with pytest.raises(ImageReadError, match="JPEG 2000 codestream is 32 x 48 but Rows x Columns is 64 x 48"):
        read_dicom(path)


def test_read_dicom_install_hint_only_without_decoder(tmp_path, monkeypatch):
    _needs("jpegls")
    from pydicom.encaps import encapsulate, generate_frames

    arr = np.tile(np.linspace(0, 4095, 40).astype(np.uint16), (32, 1))
    path = write_dicom(tmp_path / "ls.dcm", arr, bits_stored=12, compression="jpegls")
    ds = pydicom.dcmread(path)
    frag = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frag[:17] + b"\x02" + frag[18:]])  # non-conformant scan header: 2 components
    ds.save_as(path)
    with pytest.raises(ImageReadError, match="cannot decode pixel data") as err:
        read_dicom(path)
    assert "A decoder is installed" in str(err.value) and "pip install" not in str(err.value)

    class _Missing:
        is_available, available_plugins = False, ()
        missing_dependencies = ["pylibjpeg - requires pylibjpeg>=2.0"]

    monkeypatch.setattr("pydicom.pixels.get_decoder", lambda ts: _Missing())
    with pytest.raises(ImageReadError, match="No decoder for this transfer syntax is installed: pip install"):
        read_dicom(path)
