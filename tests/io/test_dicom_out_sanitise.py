"""DICOM outputs from non-conformant sources (issue 20): only values that validate are copied."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

pytest.importorskip("highdicom")

from mammolens.io.dicom_out import (  # noqa: E402
    read_source_reference,
    reference_dataset,
    source_reference,
    write_density_sr,
    write_overlay_sc,
)

from test_dicom_out import _mg  # noqa: E402 — the same minimal MG source

RESULT = {"pred": "C", "probs": {"A": 0.05, "B": 0.15, "C": 0.6, "D": 0.2}}


def _exam(**bad):
    study = pydicom.uid.generate_uid()
    out = []
    for lat, view in (("L", "CC"), ("R", "MLO")):
        ds = _mg(study, lat, view)
        for k, v in bad.items():
            setattr(ds, k, v)
        out.append(ds)
    return out


def test_patient_orientation_holding_a_view_name_is_dropped(tmp_path):
    exam = _exam(PatientOrientation="CC")
    sc = write_overlay_sc(exam[0], np.zeros((8, 8, 3), np.uint8), tmp_path / "sc.dcm", "x")
    assert pydicom.dcmread(sc).PatientOrientation == ""
    write_density_sr(exam, RESULT, tmp_path / "sr.dcm")
    assert pydicom.dcmread(tmp_path / "sr.dcm").PatientID == "PID-0001"


def test_values_that_do_not_validate_are_not_copied(tmp_path):
    exam = _exam(PatientBirthDate="1960-13-45xx", PatientSex="FEMALE-UNKNOWN-TOO-LONG")
    sc = pydicom.dcmread(write_overlay_sc(exam[0], np.zeros((8, 8, 3), np.uint8), tmp_path / "sc.dcm", "x"))
    assert sc.PatientBirthDate == "" and sc.PatientID == "PID-0001"
    sr = pydicom.dcmread(write_density_sr(exam, RESULT, tmp_path / "sr.dcm"))
    assert sr.get("PatientBirthDate", "") == ""


def test_source_reference_round_trips_through_a_plain_dict(tmp_path):
    ds = _mg(pydicom.uid.generate_uid(), "L", "CC")
    ds.save_as(tmp_path / "a.dcm", enforce_file_format=True)
    ref = read_source_reference(tmp_path / "a.dcm")
    assert ref == source_reference(ds) and ref["PatientOrientation"] == "A\\R" and ref["ImageLaterality"] == "L"
    back = reference_dataset(ref)
    assert back.SOPInstanceUID == ds.SOPInstanceUID and list(back.PatientOrientation) == ["A", "R"]
    assert "PatientOrientation" not in reference_dataset({**ref, "PatientOrientation": "CC"})
    assert read_source_reference(tmp_path / "missing.dcm") == {}


def test_empty_sop_class_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="SOPClassUID"):
        write_density_sr(_exam(SOPClassUID=""), RESULT, tmp_path / "sr.dcm")
