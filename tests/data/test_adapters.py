"""Dataset adapters: real mini-MIAS through the fixture; the others on tiny fake releases with the
official file and column names."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mammolens.data.adapters import ADAPTERS, get_adapter, import_dataset, list_adapters, summarize
from mammolens.data.adapters._common import numeric_density
from mammolens.data.adapters.mias import parse_info
from mammolens.data.manifest import read_manifest


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


# ---------------------------------------------------------------- registry and shared helpers


def test_registry_lists_all_datasets():
    assert list_adapters() == ["mias", "cbis-ddsm", "vindr", "rsna", "embed", "inbreast"]
    assert get_adapter("CBIS_DDSM").name == "cbis-ddsm"
    assert get_adapter("mini-mias") is ADAPTERS["mias"]


def test_get_adapter_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="choose one of: mias, cbis-ddsm, vindr, rsna, embed, inbreast"):
        get_adapter("ddsm-full")


@pytest.mark.parametrize(
    "value, expected",
    [("1", "A"), ("4", "D"), ("2.0", "B"), ("DENSITY C", "C"), ("d", "D"), ("5", ""), ("0", ""), ("", ""), ("x", "")],
)
def test_numeric_density_maps_codes(value, expected):
    assert numeric_density(value) == expected


@pytest.mark.parametrize("name", ["mias", "cbis-ddsm", "vindr", "rsna", "embed", "inbreast"])
def test_import_dataset_missing_source_file_names_file_and_dataset(tmp_path, name):
    with pytest.raises(FileNotFoundError) as e:
        import_dataset(name, tmp_path)
    msg = str(e.value)
    assert name in msg
    expected = {"mias": "Info.txt", "cbis-ddsm": "mass_case_description_train_set.csv", "vindr": "breast-level",
                "rsna": "train.csv", "embed": "EMBED_OpenData_clinical.csv", "inbreast": "INbreast.csv"}[name]
    assert expected in msg


# ---------------------------------------------------------------- mini-MIAS (real data)


@pytest.fixture(scope="module")
def mias_df(mini_mias):
    return import_dataset("mias", mini_mias)


def test_mias_counts_match_release(mias_df):
    assert len(mias_df) == 322
    assert mias_df["mias_density"].value_counts().to_dict() == {"F": 106, "G": 104, "D": 112}
    assert mias_df["patient_id"].nunique() == 161
    assert (mias_df["density"] == "").all()  # F/G/D is not mapped to BI-RADS A-D
    assert mias_df.attrs["errors"] == []


def test_mias_laterality_parity_and_pairs(mias_df):
    number = mias_df["image_id"].str[3:].astype(int)
    # the anatomy (mirrored scans; markers read "R" on even films once un-mirrored), not Info.txt's note
    assert ((number % 2 == 0) == (mias_df["laterality"] == "R")).all()
    assert ((number % 2 == 1) == (mias_df["laterality"] == "L")).all()
    assert mias_df.groupby("patient_id").size().eq(2).all()
    pair = mias_df.set_index("image_id")["patient_id"]
    assert pair["mdb001"] == pair["mdb002"] != pair["mdb003"]
    assert set(mias_df["view"]) == {"MLO"} and set(mias_df["modality"]) == {"DM"}
    assert set(mias_df["manufacturer"]) == {"film-digitised (MIAS)"}


def test_mias_known_lesion_rows(mias_df):
    rows = mias_df.set_index("image_id")
    r = rows.loc["mdb001"]
    assert (r["abnormality"], r["pathology"], r["mias_density"]) == ("CIRC", "benign", "G")
    assert (r["lesion_x"], r["lesion_y"], r["lesion_r"]) == (535.0, 1024.0 - 425.0, 197.0)
    assert rows.loc["mdb005", "n_lesions"] == 2  # two CIRC rows, first kept
    assert rows.loc["mdb005", "lesion_x"] == 477.0
    assert rows.loc["mdb144", "pathology"] == "malignant"  # one B and one M lesion
    assert rows.loc["mdb216", "pathology"] == "malignant" and np.isnan(rows.loc["mdb216", "lesion_x"])  # *NOTE 3*
    assert rows.loc["mdb003", "abnormality"] == "NORM" and rows.loc["mdb003", "pathology"] == "normal"
    assert mias_df["pathology"].value_counts().to_dict() == {"normal": 207, "benign": 63, "malignant": 52}
    assert Path(r["image_path"]).is_file()


def test_mias_parse_info_handles_quirks(tmp_path):
    info = tmp_path / "Info.txt"
    info.write_text(
        "MIAS header text\n\nmdb001 G CIRC B 535 425 197   \n\n  mdb002 G NORM \nmdb003 D CALC M *NOTE 3*\n"
        "mdb004 X NORM\nmdb005 F CIRC B\nmdb006 F CIRC B 1 two 3\n=====\n"
    )
    errors = []
    df = parse_info(info, errors)
    assert list(df["ref"]) == ["mdb001", "mdb002", "mdb003", "mdb005", "mdb006"]
    assert df["x"].isna().tolist() == [False, True, True, True, True]
    assert [(e.row, e.skipped) for e in errors] == [(7, True), (9, False)]  # bad tissue; bad coordinates


def test_mias_missing_image_is_reported_not_fatal(tmp_path):
    (tmp_path / "Info.txt").write_text("mdb001 G CIRC B 535 425 197\nmdb002 F NORM\n")
    _touch(tmp_path / "mdb001.pgm")
    df = import_dataset("mias", tmp_path)
    assert list(df["image_id"]) == ["mdb001"]
    assert len(df.attrs["errors"]) == 1 and "mdb002" in df.attrs["errors"][0].reason


# ---------------------------------------------------------------- CBIS-DDSM


def _cbis(tmp_path: Path) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    mass = pd.DataFrame(
        {
            "patient_id": ["P_00001", "P_00001", "P_00004", "P_00009"],
            "breast_density": ["3", "3", "1", "0"],
            "left or right breast": ["LEFT", "LEFT", "RIGHT", "LEFT"],
            "image view": ["CC", "CC", "MLO", "CC"],
            "abnormality id": ["1", "2", "1", "1"],
            "abnormality type": ["mass"] * 4,
            "assessment": ["4", "5", "3", "2"],
            "pathology": ["BENIGN", "MALIGNANT", "BENIGN_WITHOUT_CALLBACK", "BENIGN"],
            "image file path": [
                "Mass-Training_P_00001_LEFT_CC/1.3.6.1/1.3.6.2/000000.dcm",
                "Mass-Training_P_00001_LEFT_CC/1.3.6.1/1.3.6.2/000000.dcm",
                "Mass-Training_P_00004_RIGHT_MLO/1.3.6.3/1.3.6.4/000000.dcm",
                "Mass-Training_P_00009_LEFT_CC/1.3.6.5/1.3.6.6/000000.dcm",
            ],
        }
    )
    calc = pd.DataFrame(
        {
            "patient_id": ["P_00004", "P_00038"],
            "breast density": ["1", "4"],
            "left or right breast": ["RIGHT", "RIGHT"],
            "image view": ["MLO", "MLO"],
            "abnormality type": ["calcification"] * 2,
            "assessment": ["4", "4"],
            "pathology": ["MALIGNANT", "BENIGN"],
            "image file path": [
                "Calc-Test_P_00004_RIGHT_MLO/1.3.6.7/1.3.6.8/000000.dcm",
                "Calc-Test_P_00038_RIGHT_MLO/1.3.6.9/1.3.6.10/000000.dcm\n",
            ],
        }
    )
    mass.to_csv(tmp_path / "mass_case_description_train_set.csv", index=False)
    calc.to_csv(tmp_path / "calc_case_description_test_set.csv", index=False)
    for p in list(mass["image file path"]) + list(calc["image file path"]):
        _touch(tmp_path / p.strip())
    # the NBIA downloader's own layout for P_00038 instead of the CSV path:
    nbia = tmp_path / "Calc-Test_P_00038_RIGHT_MLO"
    for p in list(nbia.rglob("*.dcm")):
        p.unlink()
    _touch(nbia / "08-29-2017-DDSM-NA-96009" / "1.000000-full mammogram images-63992" / "1-1.dcm")
    return tmp_path


def test_cbis_maps_density_pathology_and_dedupes(tmp_path):
    df = import_dataset("cbis-ddsm", _cbis(tmp_path)).set_index(["patient_id", "laterality", "view"])
    assert len(df) == 4  # P_00001 L CC twice (two masses), P_00004 R MLO in mass and calc files
    assert df.loc[("P_00001", "L", "CC"), "density"] == "C"
    assert df.loc[("P_00001", "L", "CC"), "pathology"] == "malignant"
    assert df.loc[("P_00001", "L", "CC"), "birads"] == "5"
    r4 = df.loc[("P_00004", "R", "MLO")]
    assert (r4["density"], r4["pathology"], r4["abnormality"], r4["split"]) == ("A", "malignant",
                                                                                "mass+calcification", "train")
    r9 = df.loc[("P_00009", "L", "CC")]
    assert (r9["density"], r9["pathology"]) == ("", "benign")  # density 0 is kept empty and reported
    r38 = df.loc[("P_00038", "R", "MLO")]
    assert (r38["density"], r38["split"]) == ("D", "test")
    assert r38["image_path"].endswith("1-1.dcm")
    assert set(df["modality"]) == {"DM"}
    errs = df.attrs["errors"]
    assert [(e.file, e.row, e.skipped) for e in errs] == [("mass_case_description_train_set.csv", 3, False)]


def test_cbis_missing_image_skipped_and_reported(tmp_path):
    src = _cbis(tmp_path)
    (src / "Mass-Training_P_00009_LEFT_CC/1.3.6.5/1.3.6.6/000000.dcm").unlink()
    df = import_dataset("cbis-ddsm", src)
    assert "P_00009" not in set(df["patient_id"])
    assert any(e.skipped and "not found" in e.reason for e in df.attrs["errors"])
    assert len(import_dataset("cbis-ddsm", src, check_files=False)) == 4


# ---------------------------------------------------------------- VinDr-Mammo


def test_vindr_maps_columns(tmp_path):
    ann = pd.DataFrame(
        {
            "study_id": ["s1", "s1", "s2", "s3"],
            "series_id": ["a", "a", "b", "c"],
            "laterality": ["L", "R", "L", "R"],
            "view_position": ["CC", "MLO", "MLO", "CC"],
            "height": ["3518"] * 4,
            "width": ["2800"] * 4,
            "breast_birads": ["BI-RADS 1", "BI-RADS 4", "BI-RADS 2", "BI-RADS 1"],
            "breast_density": ["DENSITY A", "DENSITY C", "DENSITY D", ""],
            "split": ["training", "training", "test", "test"],
            "image_id": ["i1", "i2", "i3", "i4"],
        }
    )
    ann.to_csv(tmp_path / "breast-level_annotations.csv", index=False)
    for s, i in zip(ann["study_id"], ann["image_id"]):
        if i != "i4":
            _touch(tmp_path / "images" / s / f"{i}.dicom")
    pd.DataFrame({"SOP Instance UID": ["i1"], "Manufacturer": ["SIEMENS"], "Patient's Age": ["053Y"]}).to_csv(
        tmp_path / "metadata.csv", index=False
    )
    df = import_dataset("vindr", tmp_path)
    assert list(df["density"]) == ["A", "C", "D"]
    assert list(df["patient_id"]) == ["s1", "s1", "s2"] and list(df["study_id"]) == ["s1", "s1", "s2"]
    assert list(df["split"]) == ["train", "train", "test"]
    assert list(df["birads"]) == ["1", "4", "2"]
    assert list(df["manufacturer"]) == ["SIEMENS", "", ""]
    assert df["age"].iloc[0] == 53.0 and df["age"].iloc[1:].isna().all()
    assert df["image_path"].iloc[2].endswith("images/s2/i3.dicom")
    assert [(e.row, e.skipped) for e in df.attrs["errors"]] == [(3, True)]  # i4: no file


# ---------------------------------------------------------------- RSNA


def test_rsna_maps_columns(tmp_path):
    train = pd.DataFrame(
        {
            "site_id": ["2", "2", "1"],
            "patient_id": ["10006", "10006", "10011"],
            "image_id": ["462822612", "1459541791", "220375232"],
            "laterality": ["L", "L", "R"],
            "view": ["CC", "LMO", "MLO"],
            "age": ["61.0", "61.0", ""],
            "cancer": ["0", "0", "1"],
            "biopsy": ["0", "0", "1"],
            "invasive": ["0", "0", "1"],
            "BIRADS": ["", "", "0.0"],
            "implant": ["0", "0", "0"],
            "density": ["", "B", "D"],
            "machine_id": ["29", "29", "21"],
            "difficult_negative_case": ["False", "False", "False"],
        }
    )
    train.to_csv(tmp_path / "train.csv", index=False)
    for p, i in zip(train["patient_id"], train["image_id"]):
        _touch(tmp_path / "train_images" / p / f"{i}.dcm")
    df = import_dataset("rsna", tmp_path)
    assert list(df["density"]) == ["", "B", "D"]
    assert list(df["view"]) == ["CC", "OTHER", "MLO"]
    assert list(df["site"]) == ["2", "2", "1"]
    assert list(df["cancer"]) == [0, 0, 1] and str(df["cancer"].dtype) == "Int64"
    assert set(df["manufacturer"]) == {""}
    assert df["age"].iloc[0] == 61.0 and np.isnan(df["age"].iloc[2])
    assert df["birads"].iloc[2] == "0"
    assert df["image_path"].iloc[2].endswith("train_images/10011/220375232.dcm")
    assert df.attrs["errors"] == []


# ---------------------------------------------------------------- EMBED


def test_embed_joins_clinical_and_metadata(tmp_path):
    clin = pd.DataFrame(
        {
            "empi_anon": ["p1", "p1", "p2", "p3"],
            "acc_anon": ["a1", "a1", "a2", "a3"],
            "side": ["L", "R", "B", ""],
            "asses": ["B", "A", "N", "N"],
            "tissueden": ["2", "2", "4", "5"],
            "age_at_study": ["54.2", "54.2", "61", "70"],
            "RACE_DESC": ["African American  or Black", "African American  or Black", "Caucasian or White", ""],
            "ETHNICITY_DESC": ["Non-Hispanic or Latino"] * 4,
        }
    )
    prefix = "/mnt/NAS2/mammo/anon_dicom/"
    meta = pd.DataFrame(
        {
            "empi_anon": ["p1", "p1", "p2", "p2", "p3", "p1"],
            "acc_anon": ["a1", "a1", "a2", "a2", "a3", "a1"],
            "anon_dicom_path": [f"{prefix}cohort_1/p1/s/1.dcm", f"{prefix}cohort_1/p1/s/2.dcm",
                                f"{prefix}cohort_2/p2/s/3.dcm", f"{prefix}cohort_2/p2/s/4.dcm",
                                f"{prefix}cohort_2/p3/s/5.dcm", f"{prefix}cohort_1/p1/s/6.dcm"],
            "ImageLateralityFinal": ["L", "R", "L", "R", "L", "L"],
            "ViewPosition": ["CC", "MLO", "CC", "CC", "MLO", "CC"],
            "FinalImageType": ["2D", "2D", "cview", "ROI_SSC", "2D", "2D"],
            "Manufacturer": ["HOLOGIC, Inc."] * 5 + ["GE MEDICAL SYSTEMS"],
            "spot_mag": ["", "", "", "", "", "1.0"],
        }
    )
    clin.to_csv(tmp_path / "EMBED_OpenData_clinical.csv", index=False)
    meta.to_csv(tmp_path / "EMBED_OpenData_metadata.csv", index=False)
    df = import_dataset("embed", tmp_path)
    assert list(df["patient_id"]) == ["p1", "p1", "p2", "p3"]
    assert list(df["study_id"]) == ["a1", "a1", "a2", "a3"]
    assert list(df["modality"]) == ["DM", "DM", "s2D", "DM"]
    assert list(df["density"]) == ["B", "B", "D", ""]  # tissueden 5 = male -> empty
    assert list(df["asses"]) == ["B", "A", "N", "N"]  # side-matched finding
    assert df["race"].iloc[0] == "African American  or Black" and df["race"].iloc[2] == "Caucasian or White"
    assert df["age"].tolist() == [54.2, 54.2, 61.0, 70.0]
    assert df["image_path"].iloc[0] == str(tmp_path.resolve() / "cohort_1/p1/s/1.dcm")
    reasons = [(e.row, e.skipped) for e in df.attrs["errors"]]
    assert reasons == [(3, True), (5, True)]  # ROI_SSC type; spot/mag view
    assert len(import_dataset("embed", tmp_path, exclude_spot_mag=False)) == 5


# ---------------------------------------------------------------- INbreast


def test_inbreast_maps_semicolon_csv(tmp_path):
    (tmp_path / "INbreast.csv").write_text(
        "Patient ID;Patient age;Laterality;View;Acquisition date;File Name;ACR;Bi-Rads\n"
        "removed;removed;R;CC;201001;22678622;4;1\n"
        "removed;removed;L;MLO;201001;22678646;3;4c\n"
        "removed;removed;R;MLO;201002;20586908;;2\n"
        "removed;removed;L;CC;201002;99999999;1;1\n"
        ";;;;;;;\n"
    )
    for name in ("22678622_d8a6b6b9b8d8d8a3_MG_R_CC_ANON.dcm", "22678646_d8a6b6b9b8d8d8a3_MG_L_ML_ANON.dcm",
                 "20586908_6c613a14b80a8591_MG_R_ML_ANON.dcm"):
        _touch(tmp_path / "AllDICOMs" / name)
    df = import_dataset("inbreast", tmp_path)
    assert list(df["density"]) == ["D", "C", ""]
    assert list(df["patient_id"]) == ["d8a6b6b9b8d8d8a3", "d8a6b6b9b8d8d8a3", "6c613a14b80a8591"]
    assert list(df["study_id"]) == ["d8a6b6b9b8d8d8a3_201001", "d8a6b6b9b8d8d8a3_201001", "6c613a14b80a8591_201002"]
    assert list(df["view"]) == ["CC", "MLO", "MLO"] and list(df["laterality"]) == ["R", "L", "R"]
    assert list(df["birads"]) == ["1", "4c", "2"]
    assert "age" not in df.columns  # ages are 'removed' in the release
    assert [(e.row, e.skipped) for e in df.attrs["errors"]] == [(2, False), (3, True)]


def test_inbreast_requires_alldicoms(tmp_path):
    (tmp_path / "INbreast.csv").write_text("Laterality;View;File Name;ACR\nR;CC;1;1\n")
    with pytest.raises(FileNotFoundError, match="AllDICOMs"):
        import_dataset("inbreast", tmp_path)


# ---------------------------------------------------------------- writing


def test_import_dataset_writes_manifest_and_errors(tmp_path):
    src = _cbis(tmp_path / "src")
    out = tmp_path / "out"
    df = import_dataset("cbis-ddsm", src, out=out)
    back = read_manifest(out / "manifest.parquet")
    assert len(back) == len(df) == 4
    assert sorted(back["density"]) == ["", "A", "C", "D"]
    errors = pd.read_csv(out / "errors.csv")
    assert list(errors.columns) == ["dataset", "file", "row", "reason", "skipped"]
    assert errors["row"].tolist() == [3]
    assert summarize(df, ("pathology",))["pathology"] == {"benign": 2, "malignant": 2}


# ---------------------------------------------------------------- structured reports from annotations


def _side_of_findings(report: str) -> set[str]:
    from mammolens.reports import split_sentences

    return {s.side for s in split_sentences(report) if s.section == "findings"} - {""}


def test_mias_report_from_info_row(tmp_path):
    (tmp_path / "Info.txt").write_text("mdb001 G CIRC B 535 425 197\nmdb002 F NORM\nmdb004 D SPIC M 300 900 30\n")
    for ref in ("mdb001", "mdb002", "mdb004"):
        _touch(tmp_path / f"{ref}.pgm")
    df = import_dataset("mias", tmp_path).set_index("image_id")
    assert set(df["report_source"]) == {"annotations"}
    assert list(df["report_id"]) == ["mias-mdb001", "mias-mdb002", "mias-mdb004"]
    r1, r2, r4 = (df.loc[k, "report"].lower() for k in ("mdb001", "mdb002", "mdb004"))
    # issue 22: BI-RADS words, no pathology in the text, and the anatomy's side (odd films are left breasts)
    assert "fatty and fibroglandular" in r1 and "circumscribed mass" in r1 and "left breast" in r1
    assert "nipple" in r1  # y = 1024 - 425 = 599 px from the top: the middle third of the MLO view
    assert "fatty" in r2 and "mass" not in r2.replace("no mass", "") and "right breast" in r2
    assert "spiculated margins" in r4 and "superior" in r4  # y = 124 px from the top
    assert not any(w in r for r in (r1, r2, r4) for w in ("benign", "malignant", "third", "ill-defined"))
    assert _side_of_findings(df.loc["mdb001", "report"]) == {"L"} and _side_of_findings(df.loc["mdb004", "report"]) == {"R"}
    assert list(df.loc[["mdb001", "mdb002", "mdb004"], "laterality"]) == ["L", "R", "R"]
    assert (df.loc["mdb004", "lesion_x"], df.loc["mdb004", "lesion_y"], df.loc["mdb004", "lesion_r"]) == (300.0, 124.0, 30.0)
    again = import_dataset("mias", tmp_path).set_index("image_id")
    assert again["report"].equals(df["report"])  # deterministic


def test_cbis_report_uses_official_descriptor_columns(tmp_path):
    src = _cbis(tmp_path)
    mass = pd.read_csv(src / "mass_case_description_train_set.csv", dtype=str)
    mass["mass shape"] = ["IRREGULAR", "", "OVAL", "ROUND"]
    mass["mass margins"] = ["SPICULATED", "", "CIRCUMSCRIBED", "OBSCURED"]
    mass.to_csv(src / "mass_case_description_train_set.csv", index=False)
    calc = pd.read_csv(src / "calc_case_description_test_set.csv", dtype=str)
    calc["calc type"] = ["FINE_LINEAR_BRANCHING", "PUNCTATE"]
    calc["calc distribution"] = ["SEGMENTAL", "CLUSTERED"]
    calc.to_csv(src / "calc_case_description_test_set.csv", index=False)
    df = import_dataset("cbis-ddsm", src).set_index(["patient_id", "laterality", "view"])
    r1 = df.loc[("P_00001", "L", "CC"), "report"].lower()
    assert "irregular" in r1 and "spiculated" in r1 and "bi-rads" in r1 and " 5" in r1 and "malignant" not in r1
    assert "heterogeneously dense" in r1 and "left breast" in r1
    r4 = df.loc[("P_00004", "R", "MLO"), "report"].lower()
    assert "oval" in r4 and "circumscribed" in r4 and "fine linear branching calcifications" in r4 and "segmental" in r4
    assert df.loc[("P_00004", "R", "MLO"), "report_id"] == "cbis-P_00004-R-MLO"
    assert set(df["report_source"]) == {"annotations"}
    phrasings = {re.sub(r"\s+", " ", df.loc[k, "report"].split("IMPRESSION")[0].split("Impression")[0])[:12]
                 for k in df.index}
    assert len(phrasings) > 1  # several phrasings across images


def test_vindr_report_has_finding_categories_birads_density(tmp_path):
    ann = pd.DataFrame({"study_id": ["s1", "s1"], "series_id": ["a", "a"], "laterality": ["L", "R"],
                        "view_position": ["CC", "CC"], "breast_birads": ["BI-RADS 4", "BI-RADS 1"],
                        "breast_density": ["DENSITY C", "DENSITY C"], "split": ["training"] * 2, "image_id": ["i1", "i2"]})
    ann.to_csv(tmp_path / "breast-level_annotations.csv", index=False)
    pd.DataFrame({"image_id": ["i1", "i1", "i2"], "study_id": ["s1"] * 3,
                  "finding_categories": ["['Mass', 'Suspicious Calcification']", "['Focal Asymmetry']", "['No Finding']"],
                  "finding_birads": ["BI-RADS 4", "BI-RADS 3", ""]}).to_csv(tmp_path / "finding_annotations.csv", index=False)
    for i in ("i1", "i2"):
        _touch(tmp_path / "images" / "s1" / f"{i}.dicom")
    df = import_dataset("vindr", tmp_path).set_index("image_id")
    r1, r2 = df.loc["i1", "report"].lower(), df.loc["i2", "report"].lower()
    assert "a mass" in r1 and "suspicious calcifications" in r1 and "focal asymmetry" in r1 and "suspicious" in r1
    assert "4" in r1 and "heterogeneously dense" in r1 and _side_of_findings(df.loc["i1", "report"]) == {"L"}
    assert "mass" not in r2.replace("no mass", "") and "negative" in r2 and _side_of_findings(df.loc["i2", "report"]) == {"R"}
    assert list(df["report_id"]) == ["vindr-i1", "vindr-i2"]


def test_inbreast_and_embed_reports(tmp_path):
    (tmp_path / "in" / "AllDICOMs").mkdir(parents=True)
    (tmp_path / "in" / "INbreast.csv").write_text("Laterality;View;File Name;ACR;Bi-Rads\nL;CC;22678646;4;4c\n")
    _touch(tmp_path / "in" / "AllDICOMs" / "22678646_d8a6_MG_L_CC_ANON.dcm")
    r = import_dataset("inbreast", tmp_path / "in").iloc[0]
    assert "extremely dense" in r["report"].lower() and "4c" in r["report"] and "suspicious" in r["report"].lower()
    assert (r["report_id"], r["report_source"]) == ("inbreast-22678646", "annotations")
    (tmp_path / "em").mkdir()
    pd.DataFrame({"empi_anon": ["p1"], "acc_anon": ["a1"], "side": ["L"], "asses": ["S"], "tissueden": ["1"]}).to_csv(
        tmp_path / "em" / "EMBED_OpenData_clinical.csv", index=False)
    pd.DataFrame({"empi_anon": ["p1"], "acc_anon": ["a1"], "anon_dicom_path": ["c/1.dcm"], "ImageLateralityFinal": ["L"],
                  "ViewPosition": ["CC"], "FinalImageType": ["2D"]}).to_csv(tmp_path / "em" / "EMBED_OpenData_metadata.csv",
                                                                                index=False)
    e = import_dataset("embed", tmp_path / "em").iloc[0]
    assert "almost entirely fatty" in e["report"].lower() and "4" in e["report"] and "suspicious" in e["report"].lower()
    assert (e["report_id"], e["report_source"]) == ("embed-a1-L", "annotations")


def test_import_writes_report_columns_to_manifest(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "Info.txt").write_text("mdb001 G CIRC B 535 425 197\n")
    _touch(tmp_path / "src" / "mdb001.pgm")
    import_dataset("mias", tmp_path / "src", out=tmp_path / "out")
    back = read_manifest(tmp_path / "out" / "manifest.parquet")
    assert back.loc[0, "report_source"] == "annotations" and "circumscribed" in back.loc[0, "report"]
