"""Localization metrics against independent implementations (scikit-learn, brute force)."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, jaccard_score

from mammolens.evaluation.localization import (
    circle_mask,
    dice,
    froc,
    has_lesion_columns,
    hit_at_distance,
    iou,
    lesion_mask_from_row,
    localization_scores,
    map_to_mask,
    mean_with_ci,
    paired_tests,
    pointing_game,
)


@pytest.mark.parametrize("seed", range(5))
def test_dice_iou_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    t, p = rng.random((20, 30)) < 0.3, rng.random((20, 30)) < 0.4
    assert dice(t, p) == pytest.approx(f1_score(t.ravel(), p.ravel()))
    assert iou(t, p) == pytest.approx(jaccard_score(t.ravel(), p.ravel()))


def test_dice_iou_empty_and_shape_error():
    z = np.zeros((4, 4), bool)
    assert dice(z, z) == 1.0 and iou(z, z) == 1.0
    with pytest.raises(ValueError, match="same shape"):
        dice(z, np.zeros((3, 4), bool))


def test_pointing_game_and_hit_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(20):
        m = rng.random((16, 16))
        t = circle_mask((16, 16), rng.uniform(0, 16), rng.uniform(0, 16), 3)
        r, c = divmod(int(np.argmax(m)), 16)
        assert pointing_game(t, m) == float(t[r, c])
        best = min(np.hypot(rr - r, cc - c) for rr, cc in zip(*np.nonzero(t))) if t.any() else np.inf
        assert hit_at_distance(t, m, 4.0) == float(best <= 4.0)


def test_pointing_game_respects_breast_region():
    m = np.zeros((8, 8)); m[0, 0] = 1.0; m[5, 5] = 0.5  # peak outside the breast
    t = np.zeros((8, 8), bool); t[5, 5] = True
    breast = np.zeros((8, 8), bool); breast[3:, 3:] = True
    assert pointing_game(t, m) == 0.0 and pointing_game(t, m, breast) == 1.0


def _brute_otsu(v):
    best, thr = -1, None
    for cut in np.unique(v)[:-1]:
        a, b = v[v <= cut], v[v > cut]
        s = a.size * b.size * (a.mean() - b.mean()) ** 2
        if s > best:
            best, thr = s, cut
    return thr


def test_map_to_mask_otsu_topk_fixed_inside_breast():
    rng = np.random.default_rng(0)
    m = np.concatenate([rng.normal(0.2, 0.02, 300), rng.normal(0.8, 0.02, 100)]).clip(0, 1).reshape(20, 20)
    mask = map_to_mask(m, "otsu")
    assert np.array_equal(mask, m > _brute_otsu(m.ravel()))  # bimodal: the same split as brute force
    breast = np.zeros((20, 20), bool); breast[:, :10] = True
    top = map_to_mask(m, "topk", top_percent=10, breast=breast)
    assert top.sum() == 20 and not top[:, 10:].any()
    assert top[breast].sum() == 20 and m[top].min() >= np.sort(m[breast])[-20]
    assert np.array_equal(map_to_mask(m, "fixed", value=0.5), m >= 0.5)
    with pytest.raises(ValueError, match="unknown threshold"):
        map_to_mask(m, "mean")


def test_froc_brute_force():
    masks = [circle_mask((10, 10), 5, 5, 1), np.zeros((10, 10), bool), circle_mask((10, 10), 2, 2, 1)]
    peaks = [[(5, 5, 0.9), (0, 0, 0.3)], [(4, 4, 0.8)], [(9, 9, 0.7), (2, 2, 0.2)]]
    out = froc(masks, peaks, fppi=(0, 1 / 3, 1, 2))
    # sorted: 0.9 TP(img0), 0.8 FP, 0.7 FP, 0.3 FP, 0.2 TP(img2)
    assert out["sensitivity"] == [0.5, 0.5, 1.0, 1.0]


def test_lesion_mask_from_row_circle_box_none():
    m = lesion_mask_from_row(pd.Series({"lesion_x": 3.0, "lesion_y": 2.0, "lesion_r": 1.0}), (6, 8))
    assert m.sum() == 5 and m[2, 3] and m[1, 3] and m[2, 4] and not m[1, 4]
    b = lesion_mask_from_row({"lesion_x0": 1, "lesion_y0": 2, "lesion_x1": 3, "lesion_y1": 2}, (5, 5))
    assert b.sum() == 3 and b[2, 1:4].all()
    assert lesion_mask_from_row({"lesion_x": np.nan, "lesion_y": 1, "lesion_r": 1}, (5, 5)) is None
    assert has_lesion_columns(["a", "lesion_x", "lesion_y", "lesion_r"]) and not has_lesion_columns(["lesion_x"])


def test_localization_scores_perfect_map():
    t = circle_mask((32, 32), 10, 20, 4)
    s = localization_scores(t, t.astype(float), method="fixed", value=0.5)
    assert s == {"dice": 1.0, "iou": 1.0, "pointing_game": 1.0, "hit": 1.0}


def test_mean_ci_and_paired_tests():
    from scipy import stats

    v = np.array([0.0, 1.0, 1.0, 0.5, np.nan])
    ci = mean_with_ci(v, groups=["a", "a", "b", "c", "d"], n_boot=200)
    assert ci["estimate"] == pytest.approx(0.625) and ci["n"] == 4 and ci["lo"] <= 0.625 <= ci["hi"]
    a, b = np.array([0.9, 0.8, 0.7, 0.95, 0.6]), np.array([0.1, 0.3, 0.2, 0.4, 0.5])
    p = paired_tests(a, b)
    assert p["mean_diff"] == pytest.approx(0.49)
    assert p["t_p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert np.isnan(paired_tests(a, a)["t_p"])


def test_froc_with_tied_scores_does_not_depend_on_the_order():
    """Issue 22: a false positive listed before a tied true positive used to read a lower sensitivity."""
    m = np.zeros((4, 4), bool)
    m[0, 0] = True
    masks = [m, np.zeros((4, 4), bool)]
    fp_first = [[(0, 0, 0.5)], [(3, 3, 0.5)]]
    a = froc(masks, fp_first, fppi=(0.0, 0.5))
    b = froc(masks[::-1], fp_first[::-1], fppi=(0.0, 0.5))
    # the tie is one threshold with 1 TP and 0.5 FP per image: nothing is found at 0 FP per image
    assert a["sensitivity"] == b["sensitivity"] == [0.0, 1.0]


def test_lesion_mask_is_the_union_of_every_lesion():
    """Issue 22: films with several lesions used only the first one's circle."""
    from mammolens.evaluation.localization import lesion_mask_from_row

    row = {"lesion_x": 5.0, "lesion_y": 5.0, "lesion_r": 2.0, "lesion_circles": "5 5 2; 15 15 2"}
    m = lesion_mask_from_row(row, (20, 20))
    assert m[5, 5] and m[15, 15]
    assert not lesion_mask_from_row({**row, "lesion_circles": ""}, (20, 20))[15, 15]


def test_paired_tests_cluster_by_patient():
    """Issue 22: the paired test counted images, not patients: ten copies of one patient's images made a
    tiny p-value out of one patient."""
    from mammolens.evaluation.localization import paired_tests

    a = np.array([1.0] * 10 + [0.0, 0.2])
    b = np.array([0.0] * 10 + [0.1, 0.1])
    groups = np.array(["p1"] * 10 + ["p2", "p3"])
    per_image = paired_tests(a, b)
    per_patient = paired_tests(a, b, groups=groups)
    assert per_image["n"] == 12 and per_patient["n"] == 3 and per_patient["n_images"] == 12
    assert per_patient["mean_diff"] == pytest.approx((1.0 - 0.1 + 0.1) / 3)
    assert per_patient["t_p"] > per_image["t_p"]
