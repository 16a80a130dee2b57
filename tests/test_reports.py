"""Tests of mammolens.reports on realistic (invented) report text."""

import pandas as pd
import pytest

from mammolens.data.manifest import ManifestError, validate_manifest, without_report_text
from mammolens.reports import (
    Sentence,
    annotation_report,
    clock_face,
    sentence_side,
    sentences_for_breast,
    split_sections,
    split_sentences,
)

REPORT_1 = """CLINICAL HISTORY: 52 y.o. female, screening. Family hx of breast cancer.
COMPARISON: Prior exam dated 2019.
FINDINGS:
The breasts are heterogeneously dense (ACR C), which may obscure small masses.
There is an oval mass measuring approx. 1.2 cm. in the right breast at 10 o'clock, i.e. upper outer quadrant. Dr. Smith was informed.
Grouped amorphous calcifications in the LCC view, 4 cm from the nipple.
No suspicious findings in either breast otherwise.
IMPRESSION:
1. Indeterminate mass in the upper outer quadrant at 10 o'clock.
2. Amorphous calcifications, left breast.
BI-RADS 4: Suspicious. Follow-up in 6 mos. is recommended."""

REPORT_2 = """Bilateral screening mammogram
Findings - Scattered fibroglandular densities. RIGHT BREAST: There is a spiculated mass. It measures 2 cm.
LEFT BREAST: Benign calcifications.
impression - BI-RADS 5, highly suggestive of malignancy."""

REPORT_3 = "Indication: lump. No mammographic abnormality. Conclusion: BI-RADS 1 negative."


def test_split_sections_header_variants():
    s1 = split_sections(REPORT_1)
    assert list(s1) == ["findings", "impression", "history", "other"]
    assert s1["history"].startswith("52 y.o. female") and s1["other"] == "Prior exam dated 2019."
    s2 = split_sections(REPORT_2)
    assert s2["findings"].startswith("Scattered") and s2["impression"].startswith("BI-RADS 5")
    assert s2["other"] == "Bilateral screening mammogram"
    # unheaded text after a header stays in that section (a known limit of header-based splitting)
    assert split_sections(REPORT_3) == {"impression": "BI-RADS 1 negative.", "history": "lump. No mammographic abnormality."}
    assert split_sections("The breasts are fatty. No mass.") == {"findings": "The breasts are fatty. No mass."}
    assert split_sections("") == {}


def test_split_sentences_abbreviations_and_lists_do_not_split():
    imp = [s for s in split_sentences(REPORT_1) if s.section == "impression"]
    assert [s.text for s in imp] == ["Indeterminate mass in the upper outer quadrant at 10 o'clock.",
                                     "Amorphous calcifications, left breast.", "BI-RADS 4: Suspicious.",
                                     "Follow-up in 6 mos. is recommended."]
    fnd = [s.text for s in split_sentences(REPORT_1) if s.section == "findings"]
    assert fnd[1] == ("There is an oval mass measuring approx. 1.2 cm. in the right breast at 10 o'clock, "
                      "i.e. upper outer quadrant.")
    assert fnd[2] == "Dr. Smith was informed." and len(fnd) == 5


def test_split_sentences_sides():
    by_text = {s.text: s for s in split_sentences(REPORT_1)}
    assert by_text["The breasts are heterogeneously dense (ACR C), which may obscure small masses."].side == ""
    assert by_text["Grouped amorphous calcifications in the LCC view, 4 cm from the nipple."].side == "L"
    assert by_text["No suspicious findings in either breast otherwise."].side == "B"
    assert by_text["Indeterminate mass in the upper outer quadrant at 10 o'clock."].side == "R"  # clock + quadrant
    s2 = split_sentences(REPORT_2)
    assert Sentence("It measures 2 cm.", "findings", "R") in s2  # side label carries over
    assert Sentence("Benign calcifications.", "findings", "L") in s2


@pytest.mark.parametrize("text, side", [
    ("Mass in the left breast.", "L"), ("RMLO shows a nodule.", "R"), ("Bilateral benign calcifications.", "B"),
    ("Right breast denser than left.", "B"), ("Lower inner quadrant at 8 o'clock.", "L"),
    ("Upper outer quadrant at 2 o'clock.", "L"), ("Mass at 12 o'clock.", ""), ("BI-RADS 2.", ""),
])
def test_sentence_side(text, side):
    assert sentence_side(text) == side


def test_sentences_for_breast():
    right = sentences_for_breast(REPORT_1, "R")
    assert "Amorphous calcifications, left breast." not in right
    assert "No suspicious findings in either breast otherwise." in right and "BI-RADS 4: Suspicious." in right
    assert sentences_for_breast(REPORT_2, "left") == ["Scattered fibroglandular densities.", "Benign calcifications.",
                                                      "BI-RADS 5, highly suggestive of malignancy.",
                                                      "Bilateral screening mammogram"]
    with pytest.raises(ValueError, match="laterality must be"):
        sentences_for_breast(REPORT_1, "X")


def test_annotation_report_deterministic_and_varied():
    facts = {"density": "B", "laterality": "R", "abnormality": "SPIC", "severity": "M", "birads": "5", "clock": 10,
             "quadrant": "upper outer"}
    texts = {annotation_report(facts, seed) for seed in range(12)}
    assert annotation_report(facts, 3) == annotation_report(facts, 3) and len(texts) > 3
    for t in texts:
        assert "spiculated margins" in t.lower() and "5" in t and "fibroglandular" in t
        assert "malignant" not in t.lower()  # the pathology is a label, never report text (issue 22)
        assert {s.side for s in split_sentences(t) if "mass" in s.text} == {"R"}
        assert set(split_sections(t)) == {"findings", "impression"}
    assert annotation_report({}, 0) == ""


def test_clock_face():
    assert clock_face("R", upper=True, outer=True) == (10, "upper outer")
    assert clock_face("L", upper=True, outer=True) == (2, "upper outer")
    assert clock_face("L", upper=False, outer=False) == (8, "lower inner")


def test_manifest_report_columns_validated_without_quoting_text():
    base = {"image_path": ["a.dcm"], "patient_id": ["p"], "study_id": ["s"], "laterality": ["L"], "view": ["CC"],
            "modality": ["DM"], "manufacturer": [""], "density": ["A"]}
    ok = validate_manifest(pd.DataFrame({**base, "report": [None], "report_source": ["free-text"], "lesion_x": [""]}))
    assert ok.loc[0, "report"] == "" and pd.isna(ok.loc[0, "lesion_x"])
    with pytest.raises(ManifestError) as e:
        validate_manifest(pd.DataFrame({**base, "report": ["SECRET TEXT"], "report_source": ["pacs"],
                                        "lesion_r": [-3]}))
    assert [(p[1]) for p in e.value.problems] == ["report_source", "lesion_r"] and "SECRET" not in str(e.value)
    assert list(without_report_text(ok)) == [c for c in ok.columns if c != "report"]
