"""Shared vocabulary: density classes, views, lateralities, modalities, sample keys."""

DENSITY_CLASSES = ("A", "B", "C", "D")
"""BI-RADS breast composition (5th edition): A almost entirely fatty, B scattered fibroglandular,
C heterogeneously dense, D extremely dense."""

DENSITY_DESCRIPTIONS = {
    "A": "almost entirely fatty",
    "B": "scattered areas of fibroglandular density",
    "C": "heterogeneously dense",
    "D": "extremely dense",
}

LATERALITIES = ("L", "R")
VIEWS = ("CC", "MLO", "ML", "LM", "XCCL", "XCCM", "FB", "SIO", "AT", "OTHER")
MODALITIES = ("DM", "s2D", "DBT")
"""DM full-field digital mammography, s2D synthesized 2D, DBT digital breast tomosynthesis."""

MANIFEST_REQUIRED = (
    "image_path",
    "patient_id",
    "study_id",
    "laterality",
    "view",
    "modality",
    "manufacturer",
    "density",
)
MANIFEST_OPTIONAL = ("age", "race", "site", "split", "frame", "fold")

# Keys of the sample dict returned by mammolens datasets.
KEY_IMAGE = "image"
KEY_LABEL = "label"
KEY_INDEX = "index"
KEY_MODALITY = "modality"

SUBGROUP_COLUMNS = ("modality", "manufacturer", "view", "laterality", "age_band", "race", "site")
