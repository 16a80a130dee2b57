"""Tests of mammolens.data.synthetic: the simulated DICOM cohort and write_dicom."""

import re
import time

import numpy as np
import pandas as pd
import pydicom
import pytest

from mammolens.constants import MANIFEST_REQUIRED
from mammolens.data.manifest import read_manifest
from mammolens.data.synthetic import make_cohort, render_breast, write_dicom
from mammolens.io import read_image

SMALL = dict(n_patients=8, image_size=(64, 52), dbt_frames=4, compress_fraction=0.5, processing_fraction=0.3)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    return out, make_cohort(out, seed=3, **SMALL)


def test_make_cohort_manifest_schema(cohort):
    out, df = cohort
    extra = {"pathology", "lesion_x", "lesion_y", "lesion_r", "age", "race", "site"}
    assert set(MANIFEST_REQUIRED) | extra <= set(df.columns)
    assert len(df) == 8 * 4
    assert (df.groupby("study_id").size() == 4).all()
    assert set(df.groupby("study_id").apply(lambda g: frozenset(zip(g.laterality, g.view)), include_groups=False)) == {
        frozenset({("L", "CC"), ("R", "CC"), ("L", "MLO"), ("R", "MLO")})}
    assert set(df.modality) == {"DM", "s2D", "DBT"}
    assert set(df.manufacturer) == {"Hologic", "GE", "Fujifilm", "Siemens"}
    assert df.patient_id.str.fullmatch(r"SYN\d{4}").all()
    assert not df.image_path.str.startswith("/").any()
    back = read_manifest(out / "manifest.parquet")
    assert len(back) == len(df) and all((out / p).is_file() for p in df.image_path)
    lesion = df.pathology != "normal"
    assert df.loc[lesion, "lesion_r"].gt(0).all() and df.loc[~lesion, "lesion_x"].isna().all()
    # the lesion kind for the finding tasks (lesion_type reads "abnormality", abnormality reads "pathology")
    want = df.pathology.map({"normal": "normal", "benign": "mass", "malignant": "mass+calcification"})
    assert (df.abnormality == want).all()


def test_make_cohort_dicom_headers_match_manifest(cohort):
    out, df = cohort
    for row in df.itertuples():
        img = read_image(out / row.image_path)
        assert (img.meta["laterality"], img.meta["view"], img.meta["modality"], img.meta["manufacturer"]) == (
            row.laterality, row.view, row.modality, row.manufacturer)
        assert img.meta["study_instance_uid"] == row.study_id
        assert 0.0 <= img.pixels.min() and img.pixels.max() <= 1.0 and img.pixels.shape == (64, 52)
        assert img.meta["presentation_intent"] == row.presentation_intent


def test_make_cohort_vendor_quirks_and_sop_classes(cohort):
    out, df = cohort
    seen = {}
    for row in df.itertuples():
        ds = pydicom.dcmread(out / row.image_path, stop_before_pixels=True)
        seen.setdefault(row.manufacturer, []).append(ds)
        if row.modality == "DBT":
            assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.13.1.3" and int(ds.NumberOfFrames) == 4
        elif row.presentation_intent == "FOR PROCESSING":
            assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.2.1" and "WindowCenter" not in ds
        else:
            assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.2"
        if row.modality == "s2D":
            assert "GENERATED_2D" in list(ds.ImageType)
        assert str(ds.PatientName).startswith("SYNTH^PATIENT^")
    fuji = [d for d in seen["Fujifilm"] if d.get("PresentationIntentType") == "FOR PRESENTATION"]
    assert all(d.PhotometricInterpretation == "MONOCHROME1" and "PixelSpacing" not in d for d in fuji)
    ge_2d = [d for d in seen["GE"] if "NumberOfFrames" not in d and d.PresentationIntentType == "FOR PRESENTATION"]
    assert ge_2d and all("VOILUTSequence" in d and "WindowCenter" in d for d in ge_2d)
    assert any(int(d.BitsStored) == 12 and int(d.BitsAllocated) == 16 for d in seen["Hologic"])
    syntaxes = {pydicom.dcmread(out / p, stop_before_pixels=True).file_meta.TransferSyntaxUID for p in df.image_path}
    assert pydicom.uid.RLELossless in syntaxes


def test_make_cohort_deterministic(tmp_path, cohort):
    _, df = cohort
    again = make_cohort(tmp_path, seed=3, **SMALL)
    pd.testing.assert_frame_equal(df, again)
    first = df.image_path.iloc[0]
    assert (cohort[0] / first).read_bytes() == (tmp_path / first).read_bytes()
    other = make_cohort(tmp_path / "other", seed=4, **SMALL)
    assert not df.density.equals(other.density) or not df.age.equals(other.age)


def test_make_cohort_density_probs(tmp_path):
    df = make_cohort(tmp_path, n_patients=4, image_size=(48, 40), dbt_frames=2, density_probs={"A": 0, "B": 0, "C": 0, "D": 1})
    assert set(df.density) == {"D"}
    with pytest.raises(ValueError, match="density_probs"):
        make_cohort(tmp_path / "bad", n_patients=1, density_probs=[1, 2])
    with pytest.raises(ValueError, match="modalities"):
        make_cohort(tmp_path / "bad", n_patients=1, modalities=("MRI",))


def test_render_breast_dense_fraction_orders_classes():
    # brightness inside the breast rises with the dense fraction of classes A<B<C<D (what a model learns)
    means = []
    for f in (0.08, 0.28, 0.52, 0.78):
        vals = []
        for s in range(4):
            img, _ = render_breast(np.random.default_rng(s), (96, 80), "L", "CC", f)
            vals.append(img[img > 0.1].mean())
        means.append(np.mean(vals))
    assert np.all(np.diff(means) > 0.03), means


def test_render_breast_side_and_lesion():
    img_l, (x, y, r) = render_breast(np.random.default_rng(0), (96, 80), "L", "CC", 0.3, lesion="malignant")
    img_r, _ = render_breast(np.random.default_rng(0), (96, 80), "R", "CC", 0.3, lesion="malignant")
    assert img_l[:, :40].mean() > img_l[:, 40:].mean()  # L: breast against the left edge
    np.testing.assert_array_equal(img_r, img_l[:, ::-1])
    assert 0 <= x < 80 and 0 <= y < 96 and r > 0
    stack, _ = render_breast(np.random.default_rng(0), (96, 80), "L", "MLO", 0.3, n_frames=5)
    assert stack.shape == (5, 96, 80) and not np.allclose(stack[0], stack[-1])


def test_write_dicom_rejects_unknown_compression(tmp_path):
    with pytest.raises(ValueError, match="compression must be one of"):
        write_dicom(tmp_path / "x.dcm", np.zeros((4, 4), np.uint16), compression="zip")


def test_make_cohort_default_is_fast(tmp_path):
    start = time.perf_counter()
    df = make_cohort(tmp_path)
    elapsed = time.perf_counter() - start
    assert len(df) == 24 * 4 and elapsed < 20.0
    counts = df.drop_duplicates("patient_id").density.value_counts()
    assert counts.get("B", 0) + counts.get("C", 0) > counts.get("A", 0) + counts.get("D", 0)


def test_make_cohort_writes_exam_reports(cohort):
    from mammolens.reports import sentences_for_breast, split_sentences

    out, df = cohort
    assert set(df["report_source"]) == {"synthetic"}
    assert (df.groupby("study_id")["report"].nunique() == 1).all()  # exam-level text shared by its views
    for _, exam in df[df["report_noise"] == ""].groupby("study_id"):
        text = exam["report"].iloc[0]
        assert f"({'ACR' if 'ACR' in text else 'BI-RADS density'} {exam['density'].iloc[0]})" in text or \
            f"category {exam['density'].iloc[0]}" in text
        for lat, g in exam.groupby("laterality"):
            about = " ".join(sentences_for_breast(text, lat)).lower()
            lesion = g["pathology"].iloc[0] != "normal"
            assert bool(re.search(r"(?<!no )\bmass\b", about)) == lesion
            if lesion:
                assert "o'clock" in about and {s.side for s in split_sentences(text) if "o'clock" in s.text} <= {"L", "R"}


def test_make_cohort_report_noise_is_recorded(tmp_path):
    df = make_cohort(tmp_path, seed=1, n_patients=6, image_size=(48, 40), modalities=("DM",), report_noise=1.0,
                     lesion_prob=1.0, compress_fraction=0.0)
    assert (df["report_noise"] == "density+side").all()
    for _, exam in df.groupby("study_id"):
        text, true = exam["report"].iloc[0], exam["density"].iloc[0]
        assert f" {true})" not in text and f"category {true}:" not in text
