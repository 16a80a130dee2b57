"""Tests for mammolens.io.gating (header gate, For Processing dedupe) and mammolens.io.naming."""

import numpy as np
import pytest

from mammolens.data.synthetic import write_dicom, write_non_mammogram
from mammolens.io import read_image
from mammolens.io.gating import gate_header, mammography_gate, processing_duplicates
from mammolens.io.naming import parse_view_name, read_sidecar

DM = "1.2.840.10008.5.1.4.1.1.1.2"
DX = "1.2.840.10008.5.1.4.1.1.1.1"


@pytest.mark.parametrize("header, view, source, expected", [
    ({"Modality": "MG"}, "", "", (True, "")),
    ({"Modality": "", "SOPClassUID": DM}, "", "", (True, "")),
    ({"Modality": "OT", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.13.1.3"}, "", "", (True, "")),
    ({"Modality": "DX", "SOPClassUID": DX, "BodyPartExamined": "breast"}, "", "", (True, "")),
    ({"Modality": "DX", "SOPClassUID": DX}, "MLO", "ViewCodeSequence", (True, "")),
    ({"Modality": "CR"}, "CC", "ViewPosition", (True, "")),
    # a view read from free text (SeriesDescription) is not evidence enough, nor is OTHER
    ({"Modality": "DX"}, "CC", "SeriesDescription", (False, "not a mammogram: DX image without a breast body "
                                                            "part or a mammography view")),
    ({"Modality": "DX", "BodyPartExamined": "CHEST"}, "OTHER", "ViewPosition",
     (False, "not a mammogram: DX image of CHEST")),
    ({"SOPClassUID": DX, "BodyPartExamined": "ABDOMEN"}, "", "", (False, "not a mammogram: DX image of ABDOMEN")),
    ({"Modality": "MG", "ImageType": "ORIGINAL\\PRIMARY\\FLAT_FIELD"}, "CC", "ViewPosition",
     (False, "not a mammogram: quality-control image (ImageType says FLAT_FIELD)")),
    ({"Modality": "MG", "ProtocolName": "daily qc"}, "", "",
     (False, "not a mammogram: quality-control image (ProtocolName says QC)")),
    ({"Modality": "MG", "SeriesDescription": "ACR Phantom"}, "", "",
     (False, "not a mammogram: quality-control image (SeriesDescription says PHANTOM)")),
    ({"Modality": "MG", "SeriesDescription": "Calibration"}, "", "",
     (False, "not a mammogram: quality-control image (SeriesDescription says CALIBRATION)")),
    ({"Modality": "MG", "BodyPartExamined": "PHANTOM"}, "", "",
     (False, "not a mammogram: quality-control image (BodyPartExamined PHANTOM)")),
    # word boundaries: QC inside a word, "flat" alone, are not QC markers
    ({"Modality": "MG", "SeriesDescription": "AQCUIRED R CC FLAT"}, "", "", (True, "")),
])
def test_gate_header_rules(header, view, source, expected):
    assert gate_header(header, view, source) == expected


def test_mammography_gate_on_datasets_meta_and_rasters(tmp_path):
    import pydicom

    mg = write_dicom(tmp_path / "mg.dcm", np.zeros((32, 24), np.uint16), bits_stored=12)
    dx = write_non_mammogram(tmp_path / "dx.dcm", "dx-abdomen")
    assert mammography_gate(pydicom.dcmread(mg)) == (True, "")
    assert mammography_gate(pydicom.dcmread(dx)) == (False, "not a mammogram: DX image of ABDOMEN")
    meta = read_image(dx).meta  # the reader reads it and records the gate; consumers act on it
    assert (meta["gate_ok"], meta["gate_reason"]) == (False, "not a mammogram: DX image of ABDOMEN")
    assert mammography_gate(meta) == (False, "not a mammogram: DX image of ABDOMEN")
    assert mammography_gate(read_image(mg).meta) == (True, "")
    # rasters and adapter rows carry no header: accepted (the quality gate judges the pixels)
    assert mammography_gate({"laterality": "L", "view": "CC"}) == (True, "")


def test_write_non_mammogram_rejects_unknown_kind(tmp_path):
    with pytest.raises(ValueError, match="kind must be one of"):
        write_non_mammogram(tmp_path / "x.dcm", "ct-head")


def test_processing_duplicates_pairs_same_view_only():
    def rec(study, lat, view, intent, modality="DM"):
        return {"study": study, "laterality": lat, "view": view, "modality": modality, "presentation_intent": intent}

    records = [
        rec("s1", "L", "CC", "FOR PROCESSING"),  # 0: twin of 1
        rec("s1", "L", "CC", "FOR PRESENTATION"),  # 1
        rec("s1", "L", "MLO", "FOR PROCESSING"),  # 2: no presented MLO -> kept
        rec("s2", "L", "CC", "FOR PROCESSING"),  # 3: other study -> kept
        rec("s1", "L", "CC", "FOR PROCESSING", "DBT"),  # 4: other modality -> kept
        rec("s1", "", "", "FOR PROCESSING"),  # 5: unknown view never pairs
        rec("s1", "", "", "FOR PRESENTATION"),  # 6
        rec("s1", "L", "CC", "for processing"),  # 7: case-insensitive
    ]
    assert processing_duplicates(records) == {0: 1, 7: 1}


@pytest.mark.parametrize("name, expected", [
    ("L_CC.png", ("L", "CC")), ("R-MLO.png", ("R", "MLO")), ("RMLO.png", ("R", "MLO")), ("LCC.tif", ("L", "CC")),
    ("case7_LEFT_MLO.png", ("L", "MLO")), ("left_cc.png", ("L", "CC")), ("mdb001_R_MLO.pgm", ("R", "MLO")),
    ("demo_L_CC.png", ("L", "CC")), ("p1 right xccl.png", ("R", "XCCL")),
    ("CLOSE.png", ("", "")), ("scan_LR.png", ("", "")), ("img0.png", ("", "")),
    ("L_R_CC.png", ("", "CC")), ("L_CC_MLO.png", ("L", "")),  # two sides / two views: ambiguous, not guessed
])
def test_parse_view_name(name, expected):
    assert parse_view_name(name) == expected


def test_read_sidecar_paths_values_and_errors(tmp_path):
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"x")
    csv = tmp_path / "side.csv"
    csv.write_text(f"Path, patient,study,laterality,view\na.png,P1,S1,right,mlo\n{tmp_path / 'b.png'},P1,,,\n")
    got = read_sidecar(csv)
    assert got == {(tmp_path / "a.png").resolve(): {"patient": "P1", "study": "S1", "laterality": "R", "view": "MLO"},
                   (tmp_path / "b.png").resolve(): {"patient": "P1", "study": "", "laterality": "", "view": ""}}
    csv.write_text("path\na.png\na.png\n")
    with pytest.raises(ValueError, match="row 2, column path: 'a.png' is listed twice"):
        read_sidecar(csv)
    csv.write_text("path,laterality\n,L\n")
    with pytest.raises(ValueError, match="row 1, column path: empty"):
        read_sidecar(csv)
    csv.write_text("")
    with pytest.raises(ValueError, match="found none"):
        read_sidecar(csv)
    with pytest.raises(FileNotFoundError, match="sidecar CSV not found"):
        read_sidecar(tmp_path / "missing.csv")
