"""Dense metrics against brute-force computations, sklearn and torchmetrics; the tile geometry."""

import numpy as np
import pytest

from mammolens.evaluation import dense


def _brute_seg(t, p):
    t, p = t.ravel().astype(bool), p.ravel().astype(bool)
    tp = sum(a and b for a, b in zip(t, p))
    fp = sum((not a) and b for a, b in zip(t, p))
    fn = sum(a and not b for a, b in zip(t, p))
    tn = sum((not a) and not b for a, b in zip(t, p))
    return tp, fp, fn, tn


def test_segmentation_scores_match_brute_force_and_sklearn():
    from sklearn.metrics import f1_score, jaccard_score, recall_score

    rng = np.random.default_rng(0)
    for _ in range(20):
        t, p = rng.random((9, 7)) < 0.3, rng.random((9, 7)) < 0.4
        s = dense.segmentation_scores(t, p)
        tp, fp, fn, tn = _brute_seg(t, p)
        assert s["dice"] == pytest.approx(f1_score(t.ravel(), p.ravel()))
        assert s["iou"] == pytest.approx(jaccard_score(t.ravel(), p.ravel()))
        assert s["sensitivity"] == pytest.approx(recall_score(t.ravel(), p.ravel()))
        assert s["specificity"] == pytest.approx(tn / (tn + fp))
    empty = np.zeros((4, 4), bool)
    s = dense.segmentation_scores(empty, empty)
    assert s["dice"] == 1.0 and np.isnan(s["sensitivity"]) and s["specificity"] == 1.0
    with pytest.raises(ValueError, match="same shape"):
        dense.segmentation_scores(empty, np.zeros((3, 4), bool))


def _brute_froc_curve(gt, dets):
    """For every distinct score: (false positives per image, sensitivity), recomputed from scratch."""
    scores = sorted({d[4] for ds in dets for d in ds}, reverse=True)
    n_les = sum(len(g) for g in gt)
    out = []
    for t in scores:
        found, fp = set(), 0
        for i, (g, ds) in enumerate(zip(gt, dets)):
            for d in ds:
                if d[4] < t:
                    continue
                cx, cy = (d[0] + d[2]) / 2, (d[1] + d[3]) / 2
                hit = [j for j, b in enumerate(g) if b[0] <= cx < b[2] and b[1] <= cy < b[3]]
                found |= {(i, j) for j in hit}
                fp += not hit
        out.append((fp / len(gt), len(found) / n_les))
    return out


def _random_case(rng, n_img=6, ties=False):
    gt, dets = [], []
    for _ in range(n_img):
        g = []
        for _ in range(rng.integers(0, 3)):
            x, y = rng.uniform(0, 40, 2)
            g.append((x, y, x + rng.uniform(4, 12), y + rng.uniform(4, 12)))
        d = []
        for _ in range(rng.integers(0, 6)):
            if g and rng.random() < 0.5:  # near a lesion
                b = g[rng.integers(len(g))]
                x, y = b[0] + rng.normal(0, 2), b[1] + rng.normal(0, 2)
                w, h = b[2] - b[0] + rng.normal(0, 2), b[3] - b[1] + rng.normal(0, 2)
            else:
                x, y, w, h = *rng.uniform(0, 40, 2), *rng.uniform(4, 12, 2)
            score = float(rng.integers(0, 4)) if ties else float(rng.random())
            d.append((x, y, x + abs(w) + 1, y + abs(h) + 1, score))
        gt.append(g)
        dets.append(d)
    return gt, dets


def test_froc_matches_brute_force_and_is_order_free_under_ties():
    rng = np.random.default_rng(1)
    for trial in range(30):
        gt, dets = _random_case(rng, ties=trial % 2 == 0)
        if not sum(len(g) for g in gt):
            continue
        res = dense.froc(gt, dets)
        fps, sens = res["curve"]
        brute = np.asarray(_brute_froc_curve(gt, dets))
        assert np.allclose(np.c_[fps[1:], sens[1:]], brute)
        shuffled = [list(np.asarray(d).reshape(-1, 5)[rng.permutation(len(d))]) for d in dets]
        assert dense.froc(gt, shuffled)["sensitivity"] == res["sensitivity"]
        for f, s in zip(res["fppi"], res["sensitivity"]):
            assert s == max([0.0] + [b for a, b in _brute_froc_curve(gt, dets) if a <= f])


def test_froc_perfect_and_hopeless_detectors():
    gt = [[(0, 0, 10, 10)], [], [(20, 20, 30, 30)]]
    perfect = [[(1, 1, 9, 9, 0.9)], [], [(21, 21, 29, 29, 0.8)]]
    assert dense.froc(gt, perfect)["sensitivity"] == [1.0] * 7
    wrong = [[(50, 50, 60, 60, 0.9)], [(0, 0, 5, 5, 0.9)], []]
    assert dense.froc(gt, wrong)["mean_sensitivity"] == 0.0


def test_average_precision_matches_torchmetrics_without_ties():
    rng = np.random.default_rng(2)
    checked = 0
    for _ in range(25):
        gt, dets = _random_case(rng)
        if not sum(len(g) for g in gt):
            continue
        ours = dense.average_precision(gt, dets)
        ref = dense.map50_torchmetrics(gt, dets)
        assert ours == pytest.approx(ref, abs=1e-6), (gt, dets)
        checked += 1
    assert checked >= 15


def test_average_precision_hand_case_and_ties_are_order_free():
    gt = [[(0, 0, 10, 10)], [(0, 0, 10, 10)]]
    # one hit at 0.9, a false positive at 0.8, the second hit at 0.7: P/R = (1, .5), (.5, .5), (.67, 1)
    dets = [[(0, 0, 10, 10, 0.9), (30, 30, 40, 40, 0.8)], [(0, 0, 10, 10, 0.7)]]
    expect = (51 * 1.0 + 50 * (2 / 3)) / 101
    assert dense.average_precision(gt, dets) == pytest.approx(expect)
    tied = [[(0, 0, 10, 10, 0.5), (30, 30, 40, 40, 0.5)], [(0, 0, 10, 10, 0.5)]]
    flipped = [[(30, 30, 40, 40, 0.5), (0, 0, 10, 10, 0.5)], [(0, 0, 10, 10, 0.5)]]
    assert dense.average_precision(gt, tied) == dense.average_precision(gt, flipped) == pytest.approx(2 / 3)


def test_mask_to_tile_inverts_to_original():
    from mammolens.transforms.breast import to_original

    row = {"bbox": "10,90,0,60", "flipped": True, "orig_h": 100, "orig_w": 70}
    info = dense.row_geometry(row, 32)  # the cache index's columns
    assert info["letterbox"] == (0, 32, 24)
    full = np.zeros((100, 70), bool)
    full[40:60, 10:30] = True
    tile = dense.mask_to_tile(full, info)
    assert tile.shape == (32, 32) and tile.any()
    back = to_original(tile.astype(np.float32), info) >= 0.5
    assert dense.segmentation_scores(full, back)["dice"] > 0.85
    assert dense.lesion_box(tile) is not None and dense.lesion_box(np.zeros((3, 3))) is None


def test_mask_on_original_draws_on_the_display_geometry():
    row = {"bbox": "10,90,0,60", "flipped": False, "orig_h": 100, "orig_w": 70}
    info = dense.row_geometry(row, 32)
    prob = np.zeros((32, 32), np.float32)
    prob[8:16, 4:12] = 1.0
    display = np.full((50, 35), 100, np.uint8)  # a half-size display copy
    rgb = dense.mask_on_original(display, prob, info, weak=True)
    assert rgb.shape[0] == 50 and rgb.shape[1] >= 35 and rgb.dtype == np.uint8
    coloured = np.abs(rgb[:, :35].astype(int) - 100).sum(-1) > 30
    ys, xs = np.nonzero(coloured)
    # tile rows 8-16 of an 80-row crop starting at row 10 → original rows 30-50 → display rows 15-25
    assert 13 <= ys.min() and ys.max() <= 27 and xs.max() < 20
