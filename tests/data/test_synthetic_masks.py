"""The synthetic cohort's exact lesion masks (``lesion_mask``, ``lesion_mask_kind``)."""

import numpy as np

from mammolens.data.manifest import read_manifest
from mammolens.data.synthetic import make_cohort, render_breast
from mammolens.evaluation.localization import lesion_mask_from_row


def test_render_breast_mask_does_not_change_the_image_and_follows_laterality():
    for lat in ("L", "R"):
        a, xyr_a = render_breast(np.random.default_rng(3), (96, 80), lat, "CC", 0.3, "malignant")
        b, xyr_b, mask = render_breast(np.random.default_rng(3), (96, 80), lat, "CC", 0.3, "malignant",
                                       return_mask=True)
        assert np.array_equal(a, b) and xyr_a == xyr_b
        x, y, r = xyr_b
        assert mask[int(round(y)), int(round(x))]  # the centre is inside, on the flipped side too
        assert 0.5 * np.pi * r**2 < mask.sum() < 4 * np.pi * r**2
    _, _, empty = render_breast(np.random.default_rng(3), (96, 80), "L", "CC", 0.3, "normal", return_mask=True)
    assert not empty.any()


def test_make_cohort_writes_exact_masks_named_in_the_manifest(tmp_path):
    make_cohort(tmp_path, n_patients=4, image_size=(96, 80), dbt_frames=2, lesion_prob=0.6)
    df = read_manifest(tmp_path / "manifest.parquet")
    lesion = df["pathology"] != "normal"
    assert lesion.any() and (~lesion).any()
    assert (df.loc[lesion, "lesion_mask_kind"] == "exact").all() and (df.loc[~lesion, "lesion_mask"] == "").all()
    for r in df[lesion].to_dict("records"):
        m = lesion_mask_from_row(r, (96, 80))  # resolved against the manifest's folder
        assert m[int(round(r["lesion_y"])), int(round(r["lesion_x"]))]


def test_make_cohort_without_masks_has_no_mask_columns(tmp_path):
    df = make_cohort(tmp_path, n_patients=2, image_size=(64, 48), modalities=("DM",), lesion_masks=False)
    assert "lesion_mask" not in df.columns and not (tmp_path / "masks").exists()
