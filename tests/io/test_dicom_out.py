"""Tests for mammolens.io.dicom_out: density SR and overlay Secondary Capture."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

pytest.importorskip("highdicom")

from mammolens.io.dicom_out import DENSITY_CODES, write_density_sr, write_overlay_sc  # noqa: E402

MG_STORAGE = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image Storage - For Presentation
SR_COMPREHENSIVE = "1.2.840.10008.5.1.4.1.1.88.33"
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"


def _mg(study_uid: str, laterality: str, view: str, rows: int = 32, cols: int = 24) -> Dataset:
    """A minimal MG image with patient/study modules."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = MG_STORAGE
    ds.SOPClassUID = MG_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Test^Patient"
    ds.PatientID = "PID-0001"
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "F"
    ds.AccessionNumber = "ACC1"
    ds.StudyID = "1"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101010"
    ds.ReferringPhysicianName = ""
    ds.Modality = "MG"
    ds.ImageLaterality = laterality
    ds.ViewPosition = view
    ds.PatientOrientation = ["A", "R"] if laterality == "L" else ["P", "L"]
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(rows * cols, dtype=np.uint16) % 4096).tobytes()
    return ds


@pytest.fixture
def exam():
    study = generate_uid()
    return [_mg(study, lat, view) for lat in ("L", "R") for view in ("CC", "MLO")]


@pytest.fixture
def result():
    return {
        "pred": "C",
        "probs": {"A": 0.05, "B": 0.15, "C": 0.6, "D": 0.2},
        "dense": True,
        "breasts": [
            {"laterality": "L", "pred": "C", "probs": {"A": 0.1, "B": 0.2, "C": 0.5, "D": 0.2}, "dense": True},
            {"laterality": "R", "pred": "B", "probs": {"A": 0.2, "B": 0.5, "C": 0.2, "D": 0.1}, "dense": False},
        ],
        "model": {"name": "biomedclip", "version": "run-42"},
    }


def _walk(items, depth=0):
    for it in items:
        yield it, depth
        if "ContentSequence" in it:
            yield from _walk(it.ContentSequence, depth + 1)


def _containers(sr):
    return [it for it in sr.ContentSequence if it.ValueType == "CONTAINER"]


def _composition(container):
    """(pred code value, {class code value: prob}, dense code value, finding site code or None)."""
    pred, probs, dense, site = None, {}, None, None
    for it in container.ContentSequence:
        name = it.ConceptNameCodeSequence[0].CodeValue
        if it.ValueType == "CODE" and name == "111006":
            pred = it.ConceptCodeSequence[0].CodeValue
        elif it.ValueType == "NUM" and name == "122157":
            mv = it.MeasuredValueSequence[0]
            assert mv.MeasurementUnitsCodeSequence[0].CodeValue == "1"
            cls = it.ContentSequence[0].ConceptCodeSequence[0].CodeValue
            probs[cls] = float(mv.NumericValue)
        elif it.ValueType == "CODE" and name == "dense":
            dense = it.ConceptCodeSequence[0].CodeValue
        elif it.ValueType == "CODE" and name == "363698007":
            site = it.ConceptCodeSequence[0].CodeValue
    return pred, probs, dense, site


def test_write_density_sr_sop_class_study_and_patient(tmp_path, exam, result):
    path = write_density_sr(exam, result, tmp_path / "sr" / "density.dcm")
    sr = pydicom.dcmread(path)
    assert sr.SOPClassUID == SR_COMPREHENSIVE
    assert sr.file_meta.MediaStorageSOPClassUID == SR_COMPREHENSIVE
    assert sr.Modality == "SR"
    assert sr.StudyInstanceUID == exam[0].StudyInstanceUID
    assert sr.SeriesInstanceUID not in {ds.SeriesInstanceUID for ds in exam}
    assert sr.PatientID == "PID-0001" and str(sr.PatientName) == "Test^Patient"
    assert sr.ConceptNameCodeSequence[0].CodeValue == "18748-4"
    assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"


def test_write_density_sr_evidence_lists_every_source_instance(tmp_path, exam, result):
    sr = pydicom.dcmread(write_density_sr(exam, result, tmp_path / "d.dcm"))
    ev = sr.CurrentRequestedProcedureEvidenceSequence
    assert len(ev) == 1 and ev[0].StudyInstanceUID == exam[0].StudyInstanceUID
    refs = {
        (s.ReferencedSOPClassUID, s.ReferencedSOPInstanceUID)
        for series in ev[0].ReferencedSeriesSequence
        for s in series.ReferencedSOPSequence
    }
    assert refs == {(ds.SOPClassUID, ds.SOPInstanceUID) for ds in exam}
    # the content tree references the images too (IMAGE items, INFERRED FROM)
    images = [it for it, _ in _walk(sr.ContentSequence) if it.ValueType == "IMAGE"]
    assert {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in images} == {
        ds.SOPInstanceUID for ds in exam
    }
    assert all(i.RelationshipType == "INFERRED FROM" for i in images)


def test_write_density_sr_codes_and_probabilities_round_trip(tmp_path, exam, result):
    sr = pydicom.dcmread(write_density_sr(exam, result, tmp_path / "d.dcm"))
    boxes = _containers(sr)
    assert len(boxes) == 3
    code_to_cls = {c.value: k for k, c in DENSITY_CODES.items()}
    assert code_to_cls == {"129716005": "A", "129717001": "B", "129718006": "C", "129719003": "D"}
    by_site = {}
    for box in boxes:
        pred, probs, dense, site = _composition(box)
        by_site[site] = (code_to_cls[pred], {code_to_cls[k]: v for k, v in probs.items()}, dense)
    exam_pred, exam_probs, exam_dense = by_site[None]
    assert exam_pred == "C" and exam_dense == "373066001"  # SCT Yes
    assert exam_probs == pytest.approx(result["probs"], abs=1e-6)
    left, right = by_site["80248007"], by_site["73056007"]
    assert left[0] == "C" and left[1] == pytest.approx(result["breasts"][0]["probs"], abs=1e-6)
    assert right[0] == "B" and right[2] == "373067005"  # SCT No
    # the meaning text is present for viewers that show it
    meanings = {
        it.ConceptCodeSequence[0].CodeMeaning
        for it, _ in _walk(sr.ContentSequence)
        if it.ValueType == "CODE" and it.ConceptNameCodeSequence[0].CodeValue == "111006"
    }
    assert "Heterogeneously dense" in meanings


def test_write_density_sr_algorithm_identification(tmp_path, exam, result):
    from mammolens import __version__

    sr = pydicom.dcmread(write_density_sr(exam, result, tmp_path / "d.dcm"))
    text = {
        it.ConceptNameCodeSequence[0].CodeValue: it.TextValue
        for it in sr.ContentSequence
        if it.ValueType == "TEXT"
    }
    assert text["111001"] == "mammolens"
    assert text["111003"] == __version__
    assert "biomedclip" in text["111002"] and "run-42" in text["111002"]


def test_write_density_sr_without_patient_blanks_identity(tmp_path, exam, result):
    sr = pydicom.dcmread(write_density_sr(exam, result, tmp_path / "d.dcm", include_patient=False))
    assert sr.PatientID == "" and str(sr.PatientName) == "" and sr.PatientBirthDate == ""
    assert sr.StudyInstanceUID == exam[0].StudyInstanceUID


def test_write_density_sr_rejects_bad_input(tmp_path, exam, result):
    with pytest.raises(ValueError, match="at least one source"):
        write_density_sr([], result, tmp_path / "x.dcm")
    other = _mg(generate_uid(), "L", "CC")
    with pytest.raises(ValueError, match="2 studies"):
        write_density_sr(exam + [other], result, tmp_path / "x.dcm")
    with pytest.raises(ValueError, match="unknown density class"):
        write_density_sr(exam, {**result, "probs": {"E": 1.0}}, tmp_path / "x.dcm")
    with pytest.raises(ValueError, match="laterality"):
        write_density_sr(exam, {**result, "breasts": [{"laterality": "X", "probs": {"A": 1.0}}]}, tmp_path / "x.dcm")


def test_write_density_sr_defaults_pred_and_dense_from_probs(tmp_path, exam):
    res = {"probs": {"A": 0.7, "B": 0.1, "C": 0.1, "D": 0.1}}
    sr = pydicom.dcmread(write_density_sr(exam, res, tmp_path / "d.dcm"))
    pred, _, dense, _ = _composition(_containers(sr)[0])
    assert pred == "129716005" and dense == "373067005"


def test_write_overlay_sc_round_trips_pixels_and_references(tmp_path, exam):
    src = exam[0]
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(20, 16, 3), dtype=np.uint8)
    path = write_overlay_sc(src, rgb, tmp_path / "sc" / "overlay.dcm", "GradCAM density C")
    sc = pydicom.dcmread(path)
    assert sc.SOPClassUID == SC_STORAGE
    assert sc.StudyInstanceUID == src.StudyInstanceUID
    assert sc.SeriesInstanceUID != src.SeriesInstanceUID
    assert sc.PatientID == src.PatientID
    assert sc.PhotometricInterpretation == "RGB" and sc.SamplesPerPixel == 3
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert sc.SourceImageSequence[0].ReferencedSOPClassUID == src.SOPClassUID
    assert sc.SeriesDescription == "GradCAM density C"
    np.testing.assert_array_equal(sc.pixel_array, rgb)


def test_write_overlay_sc_without_patient_orientation_or_patient(tmp_path, exam):
    src = exam[1]
    del src.PatientOrientation
    rgb = np.zeros((6, 5, 3), np.uint8)
    rgb[..., 0] = 255
    sc = pydicom.dcmread(write_overlay_sc(src, rgb, tmp_path / "o.dcm", "x", include_patient=False))
    assert sc.PatientID == "" and sc.StudyInstanceUID == src.StudyInstanceUID
    np.testing.assert_array_equal(sc.pixel_array, rgb)


def test_write_overlay_sc_rejects_non_rgb(tmp_path, exam):
    with pytest.raises(ValueError, match=r"uint8 array \[H, W, 3\]"):
        write_overlay_sc(exam[0], np.zeros((8, 8), np.uint8), tmp_path / "x.dcm", "x")
    with pytest.raises(ValueError, match="uint8"):
        write_overlay_sc(exam[0], np.zeros((8, 8, 3), np.float32), tmp_path / "x.dcm", "x")


def test_density_sr_passes_the_dicom3tools_validator(tmp_path, exam, result, dciodvfy):
    """No errors, no attribute outside the Comprehensive SR IOD; the only warnings are the declared private
    coding scheme (99MMLNS) of the dense flag, which dciodvfy does not know."""
    findings = dciodvfy(write_density_sr(exam, result, tmp_path / "sr.dcm"))
    assert not [f for f in findings if "99MMLNS" not in f], findings
    assert all(f.startswith("Warning") for f in findings), findings


def test_overlay_sc_passes_the_dicom3tools_validator(tmp_path, exam, dciodvfy):
    rgb = np.random.default_rng(0).integers(0, 256, size=(20, 16, 3), dtype=np.uint8)
    assert dciodvfy(write_overlay_sc(exam[0], rgb, tmp_path / "sc.dcm", "GradCAM density C")) == []


def _laterality_in_functional_groups(ds: Dataset) -> Dataset:
    """DBT style: no top-level laterality, FrameLaterality in the shared functional groups."""
    lat = ds.ImageLaterality
    del ds.ImageLaterality
    anatomy, groups = Dataset(), Dataset()
    anatomy.FrameLaterality = lat
    groups.FrameAnatomySequence = [anatomy]
    ds.SharedFunctionalGroupsSequence = [groups]
    return ds


def test_laterality_found_as_the_reader_finds_it(tmp_path, exam, result):
    """Sources whose laterality is only in FrameLaterality: each breast's SR item still references its images,
    and the overlay SC carries the series Laterality (a Type 2C error in dciodvfy otherwise)."""
    exam = [_laterality_in_functional_groups(ds) for ds in exam]
    sr = pydicom.dcmread(write_density_sr(exam, result, tmp_path / "sr.dcm"))
    images = [it.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
              for it, depth in _walk(sr.ContentSequence) if it.ValueType == "IMAGE"]
    assert len(images) == 2 * len(exam)  # once for the exam, once under its breast
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    sc = pydicom.dcmread(write_overlay_sc(exam[0], rgb, tmp_path / "sc.dcm", "overlay"))
    assert sc.Laterality == "L"
