"""Metrics against scikit-learn on random data (ties included) and against hand-computed cases."""

import json
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from mammolens.evaluation import metrics as M

SEEDS = range(12)


def _random(seed, n=200, k=4, ties=False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += rng.uniform(0, 2)
    if ties:  # coarse scores: many exact ties within and across classes
        logits = np.round(logits, 0)
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    if ties:
        p = np.round(p, 1)
    return y, p


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [False, True])
def test_roc_auc_ovr_matches_sklearn(seed, ties):
    y, p = _random(seed, ties=ties)
    ours = M.roc_auc_ovr(y, p)
    ref = [skm.roc_auc_score(y == k, p[:, k]) for k in range(p.shape[1])]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
    assert M.macro_auc(y, p) == pytest.approx(np.mean(ref), abs=1e-12)


def test_roc_auc_ovr_macro_matches_sklearn_multiclass():
    y, p = _random(3, n=500)
    p = p / p.sum(1, keepdims=True)
    assert M.macro_auc(y, p) == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-12)


def test_binary_auc_hand_computed_with_ties():
    # positives 0.8, 0.5; negatives 0.5, 0.2: pairs (0.8>0.5)=1, (0.8>0.2)=1, (0.5=0.5)=0.5, (0.5>0.2)=1 -> 3.5/4
    assert M.binary_auc([1, 1, 0, 0], [0.8, 0.5, 0.5, 0.2]) == pytest.approx(0.875)
    assert M.binary_auc([1, 0], [0.3, 0.3]) == pytest.approx(0.5)
    assert M.binary_auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(0.0)


def test_roc_auc_ovr_absent_class_is_nan_with_warning():
    y = np.array([0, 1, 0, 1])
    p = np.full((4, 3), 1 / 3)
    p[:, 0] = [0.6, 0.2, 0.5, 0.1]
    with pytest.warns(RuntimeWarning, match="class"):
        aucs = M.roc_auc_ovr(y, p, class_names=["A", "B", "C"])
    assert aucs[0] == pytest.approx(1.0)
    assert np.isnan(aucs[2])
    with pytest.warns(RuntimeWarning):
        only = M.roc_auc_ovr(np.zeros(3, int), np.full((3, 2), 0.5))
    assert np.isnan(only).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.isnan(M.macro_auc(np.zeros(3, int), np.full((3, 2), 0.5)))


def test_rankdata_matches_scipy():
    from scipy.stats import rankdata

    x = np.random.default_rng(0).integers(0, 5, 50).astype(float)
    np.testing.assert_allclose(M.rankdata(x), rankdata(x))


@pytest.mark.parametrize("seed", SEEDS)
def test_accuracy_balanced_confusion_prf_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y, yp = rng.integers(0, 4, 150), rng.integers(0, 4, 150)
    assert M.accuracy(y, yp) == pytest.approx(skm.accuracy_score(y, yp))
    assert M.balanced_accuracy(y, yp) == pytest.approx(skm.balanced_accuracy_score(y, yp))
    np.testing.assert_array_equal(M.confusion_matrix(y, yp, 4), skm.confusion_matrix(y, yp, labels=range(4)))
    prf = M.precision_recall_f1(y, yp, 4)
    ref = skm.precision_recall_fscore_support(y, yp, labels=range(4), zero_division=0)
    for ours, theirs in zip((prf["precision"], prf["recall"], prf["f1"], prf["support"]), ref):
        np.testing.assert_allclose(ours, theirs, atol=1e-12)


def test_precision_zero_division_is_zero():
    prf = M.precision_recall_f1([0, 0, 1], [0, 0, 0], 3)
    np.testing.assert_allclose(prf["precision"], [2 / 3, 0, 0])
    np.testing.assert_allclose(prf["recall"], [1, 0, 0])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("weights", [None, "linear", "quadratic"])
def test_cohen_kappa_matches_sklearn(seed, weights):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, 120)
    yp = np.clip(y + rng.integers(-1, 2, 120), 0, 3)
    ours = M.cohen_kappa(y, yp, weights, num_classes=4)
    assert ours == pytest.approx(skm.cohen_kappa_score(y, yp, weights=weights, labels=range(4)), abs=1e-12)


def test_cohen_kappa_wikipedia_worked_example():
    """Wikipedia 'Cohen's kappa', worked example: 50 proposals, Yes/Yes 20, Yes/No 5, No/Yes 10, No/No 15.

    p_o = 0.7, p_e = 0.5, kappa = 0.4.
    """
    a = [1] * 20 + [1] * 5 + [0] * 10 + [0] * 15
    b = [1] * 20 + [0] * 5 + [1] * 10 + [0] * 15
    assert M.cohen_kappa(a, b) == pytest.approx(0.4)


def test_cohen_kappa_weighted_hand_computed():
    # 3x3 table O = [[2,1,0],[0,2,1],[1,0,3]], N = 10; row sums r = 3,3,4; column sums c = 3,3,4.
    # E_ij = r_i c_j / N.  linear W = |i-j|: sum W*O = 1+1+2 = 4;
    #   sum W*E = [3(3*1+4*2) + 3(3*1+4*1) + 4(3*2+3*1)] / 10 = 9.0  -> kappa = 1 - 4/9
    # quadratic W = (i-j)^2: sum W*O = 1+1+4 = 6;
    #   sum W*E = [3(3+4*4) + 3(3+4) + 4(3*4+3)] / 10 = 13.8        -> kappa = 1 - 6/13.8
    o = np.array([[2, 1, 0], [0, 2, 1], [1, 0, 3]])
    y = np.repeat(np.repeat(np.arange(3), 3), o.ravel())
    yp = np.repeat(np.tile(np.arange(3), 3), o.ravel())
    assert M.cohen_kappa(y, yp, "linear") == pytest.approx(1 - 4 / 9)
    assert M.cohen_kappa(y, yp, "quadratic") == pytest.approx(1 - 6 / 13.8)
    with pytest.raises(ValueError, match="weights"):
        M.cohen_kappa(y, yp, "cubic")


def test_expected_calibration_error_hand_computed():
    # 4 samples, 2 bins: confidences 0.9, 0.8 (bin (0.5,1]) right/wrong; 0.3 and 0.4 ... with K=2
    # top-label conf = max prob: 0.9 (right), 0.8 (wrong), 0.6 (right), 0.7 (right) -> all in bin 2
    # acc = 3/4, conf = 0.75 -> ECE 0. Move one to bin 1 is impossible for K=2 (max >= 0.5), so use 10 bins:
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.7, 0.3]])
    y = np.array([0, 1, 1, 0])
    assert M.expected_calibration_error(y, p, n_bins=2) == pytest.approx(0.0)
    # 10 bins: (0.8,0.9]: 0.9 right -> |1-0.9| ; (0.7,0.8]: 0.8 wrong -> |0-0.8|;
    # (0.5,0.6]: 0.6 right -> 0.4; (0.6,0.7]: 0.7 right -> 0.3  -> mean = (0.1+0.8+0.4+0.3)/4
    assert M.expected_calibration_error(y, p, n_bins=10) == pytest.approx(0.4)


def test_expected_calibration_error_classwise_hand_computed():
    p = np.array([[0.9, 0.1], [0.2, 0.8]])
    y = np.array([0, 0])
    # 1 bin: class 0 -> |mean(1,1) - mean(0.9,0.2)| = 0.45 ; class 1 -> |0 - 0.45| = 0.45
    assert M.expected_calibration_error(y, p, n_bins=1, classwise=True) == pytest.approx(0.45)


def test_brier_score_matches_sklearn_binary_and_hand():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 100)
    q = rng.uniform(size=100)
    p = np.stack([1 - q, q], 1)
    # sklearn's binary Brier is mean (q - y)^2; the multi-class sum over both columns is twice that
    assert M.brier_score(y, p) == pytest.approx(2 * skm.brier_score_loss(y, q))
    assert M.brier_score([0], [[1.0, 0.0, 0.0]]) == 0.0
    assert M.brier_score([2], [[1.0, 0.0, 0.0]]) == pytest.approx(2.0)


def test_binary_metrics_dense_split_hand_computed():
    # classes A B C D; p(dense) = p_C + p_D
    p = np.array(
        [
            [0.1, 0.1, 0.4, 0.4],  # D, dense 0.8 -> TP
            [0.4, 0.3, 0.2, 0.1],  # C, dense 0.3 -> FN
            [0.1, 0.2, 0.3, 0.4],  # A, dense 0.7 -> FP
            [0.7, 0.2, 0.1, 0.0],  # B, dense 0.1 -> TN
            [0.5, 0.4, 0.1, 0.0],  # A, dense 0.1 -> TN
        ]
    )
    y = np.array([3, 2, 0, 1, 0])
    b = M.binary_metrics(y, p, positive=[2, 3])
    assert (b["tp"], b["fn"], b["fp"], b["tn"]) == (1, 1, 1, 2)
    assert b["sensitivity"] == pytest.approx(0.5)
    assert b["specificity"] == pytest.approx(2 / 3)
    assert b["ppv"] == pytest.approx(0.5)
    assert b["npv"] == pytest.approx(2 / 3)
    assert b["auc"] == pytest.approx(skm.roc_auc_score([1, 1, 0, 0, 0], p[:, 2:].sum(1)))


def test_roc_curve_matches_sklearn():
    y, p = _random(5, ties=True)
    fpr, tpr, thr = M.roc_curve(y == 1, p[:, 1])
    f2, t2, _ = skm.roc_curve(y == 1, p[:, 1], drop_intermediate=False)
    np.testing.assert_allclose(fpr, f2)
    np.testing.assert_allclose(tpr, t2)
    assert np.trapezoid(tpr, fpr) == pytest.approx(skm.roc_auc_score(y == 1, p[:, 1]))


def test_compute_metrics_bundle_is_json_and_consistent():
    y, p = _random(1, n=300)
    m = M.compute_metrics(y, p, ["A", "B", "C", "D"])
    text = json.dumps(m)
    assert json.loads(text)["n"] == 300
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, p.argmax(1)))
    assert m["auc_per_class"]["C"] == pytest.approx(skm.roc_auc_score(y == 2, p[:, 2]))
    assert m["dense"]["classes"] == ["C", "D"]
    assert np.sum(m["confusion_matrix"]) == 300
    assert m["kappa_quadratic"] == pytest.approx(skm.cohen_kappa_score(y, p.argmax(1), weights="quadratic"))
    assert m["scalars"]["dense/auc"] == pytest.approx(skm.roc_auc_score(y >= 2, p[:, 2:].sum(1)))


def test_compute_metrics_rejects_bad_labels():
    with pytest.raises(ValueError, match="unlabelled"):
        M.compute_metrics([0, -1], np.full((2, 2), 0.5), ["A", "B"])
    with pytest.raises(ValueError, match="class names"):
        M.compute_metrics([0, 1], np.full((2, 2), 0.5), ["A", "B", "C"])


def test_rankdata_ranks_each_row_of_a_2d_array():
    """DeLong ranks [M, n] score rows with the same function (stats has no rank helper of its own)."""
    from scipy.stats import rankdata

    from mammolens.evaluation import stats

    x = np.random.default_rng(1).integers(0, 4, (3, 20)).astype(float)  # ties on purpose
    np.testing.assert_allclose(M.rankdata(x), rankdata(x, axis=-1))
    assert not hasattr(stats, "_midrank")


def test_check_labels_and_probs_are_public_and_name_the_problem():
    np.testing.assert_array_equal(M.check_labels([0.0, 2.0]), [0, 2])
    assert M.check_labels([0.0, 2.0]).dtype == np.int64
    with pytest.raises(ValueError, match="integer class indices"):
        M.check_labels([0.5, 1.0])
    with pytest.raises(ValueError, match="1-D"):
        M.check_labels([[0, 1]])
    y = M.check_labels([0, 1, -1])
    with pytest.raises(ValueError, match="drop unlabelled rows"):
        M.check_probs(y, np.full((3, 2), 0.5))
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        M.check_probs(y, np.full((2, 2), 0.5))
    assert M.dense_indices(["A", "B", "C", "D"], ["C", "D"]) == [2, 3]


def test_val_metrics_scalars_and_old_import_path():
    from mammolens.evaluation.metrics import macro_auc, val_metrics

    y = np.array([0, 1, 2, 2])
    p = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    m = val_metrics(y, p, ["a", "b", "c"])
    assert m["val_accuracy"] == 0.75 and m["val_recall_c"] == 0.5 and m["val_recall_a"] == 1.0
    assert m["val_balanced_accuracy"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert m["val_nll"] == pytest.approx(-np.mean(np.log([0.7, 0.7, 0.7, 0.1])))
    assert m["val_macro_auc"] == macro_auc(y, p)
    assert val_metrics(np.zeros(0, int), np.zeros((0, 3)), ["a", "b", "c"]) == {}
    from mammolens.train.loop import val_metrics as old

    assert old is val_metrics
