"""Bootstrap, DeLong and McNemar against published worked examples and direct implementations."""

import math

import numpy as np
import pytest

from mammolens.evaluation.metrics import binary_auc, macro_auc
from mammolens.evaluation.stats import (
    bootstrap_ci,
    bootstrap_indices,
    delong_ci,
    delong_covariance,
    delong_test,
    mcnemar_test,
    metrics_with_ci,
)


# ------------------------------------------------------------------------------------------ DeLong
def _delong_direct(y, scores):
    """DeLong, DeLong & Clarke-Pearson (1988), eqs. for the structural components, O(m*n).

    psi(X, Y) = 1 if X > Y, 1/2 if X = Y, 0 otherwise; V10(X_i) = mean_j psi(X_i, Y_j),
    V01(Y_j) = mean_i psi(X_i, Y_j); S10, S01 their (co)variances; S = S10/m + S01/n.
    """
    y = np.asarray(y).astype(bool)
    scores = np.atleast_2d(scores)
    v10, v01, aucs = [], [], []
    for s in scores:
        x, z = s[y], s[~y]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])  # [m, n]
        v10.append(psi.mean(1))
        v01.append(psi.mean(0))
        aucs.append(psi.mean())
    s10 = np.atleast_2d(np.cov(np.array(v10)))
    s01 = np.atleast_2d(np.cov(np.array(v01)))
    return np.array(aucs), s10 / y.sum() + s01 / (~y).sum()


@pytest.mark.parametrize("seed", range(6))
def test_delong_covariance_matches_direct_structural_components(seed):
    rng = np.random.default_rng(seed)
    n = 80
    y = rng.integers(0, 2, n)
    a = y + rng.normal(0, 1.0, n)
    b = np.round(0.5 * a + rng.normal(0, 1.0, n), 1)  # correlated with a, with ties
    aucs, cov = delong_covariance(y, np.vstack([a, b]))
    ref_aucs, ref_cov = _delong_direct(y, np.vstack([a, b]))
    np.testing.assert_allclose(aucs, ref_aucs, atol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, atol=1e-12)


def test_delong_ci_hanley_mcneil_1982_ct_ratings():
    """Hanley & McNeil (1982), Radiology 143:29-36, Table 1: CT ratings (1-5) of 58 normal and 51
    abnormal patients. Published trapezoidal AUC 0.893 with standard error 0.032 (their exponential
    approximation); the DeLong SE of the same data must be close to it and equal the direct formula."""
    neg = np.repeat([1, 2, 3, 4, 5], [33, 6, 6, 11, 2])
    pos = np.repeat([1, 2, 3, 4, 5], [3, 2, 2, 11, 33])
    y = np.r_[np.zeros(neg.size), np.ones(pos.size)]
    s = np.r_[neg, pos].astype(float)
    res = delong_ci(y, s)
    assert res["auc"] == pytest.approx(0.893, abs=5e-4)
    assert res["se"] == pytest.approx(0.032, abs=0.003)
    _, cov = _delong_direct(y, s)
    assert res["se"] == pytest.approx(math.sqrt(cov[0, 0]), rel=1e-12)
    assert res["lo"] < res["auc"] < res["hi"] <= 1.0
    assert res["hi"] - res["lo"] == pytest.approx(2 * 1.959964 * res["se"], rel=1e-5)


def test_delong_test_identical_scores_gives_p_one():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    s = rng.normal(size=50)
    r = delong_test(y, s, s)
    assert r["diff"] == 0.0 and r["p"] == 1.0 and r["z"] == 0.0


def test_delong_test_detects_a_better_score_and_agrees_with_bootstrap():
    rng = np.random.default_rng(1)
    n = 400
    y = rng.integers(0, 2, n)
    good = y * 1.5 + rng.normal(size=n)
    weak = y * 0.5 + rng.normal(size=n) + 0.3 * good
    r = delong_test(y, good, weak)
    assert r["auc_a"] == pytest.approx(binary_auc(y, good))
    assert r["auc_b"] == pytest.approx(binary_auc(y, weak))
    assert r["diff"] > 0 and r["p"] < 1e-4
    assert r["z"] == pytest.approx(r["diff"] / math.sqrt(r["var"]))
    assert r["p"] == pytest.approx(math.erfc(abs(r["z"]) / math.sqrt(2)))
    # paired bootstrap variance of the AUC difference agrees with DeLong's variance
    diffs = [binary_auc(y[i], good[i]) - binary_auc(y[i], weak[i]) for i in bootstrap_indices(n, None, 600, seed=3)]
    assert np.var(diffs) == pytest.approx(r["var"], rel=0.25)
    # swapping the arguments flips the sign, not the p-value
    r2 = delong_test(y, weak, good)
    assert r2["diff"] == pytest.approx(-r["diff"]) and r2["p"] == pytest.approx(r["p"])


def test_delong_requires_two_of_each_class():
    with pytest.raises(ValueError, match="positives"):
        delong_ci([1, 0, 0], [0.2, 0.1, 0.3])


# ------------------------------------------------------------------------------------------ McNemar
def test_mcnemar_agresti_presidential_approval():
    """Agresti, Categorical Data Analysis (2nd ed., Sec. 10.1.1): approval of the President's
    performance in two surveys, 1600 people, table [[794, 150], [86, 570]]: z^2 = 17.36 without the
    continuity correction (p < 0.001); 16.82 with it."""
    plain = mcnemar_test(b=150, c=86, exact=False, correction=False)
    corrected = mcnemar_test(b=150, c=86)
    assert plain["statistic"] == pytest.approx(17.36, abs=0.005)
    assert corrected["statistic"] == pytest.approx(16.82, abs=0.005)
    assert corrected["method"].startswith("chi-square")
    from scipy.stats import chi2

    assert plain["p"] == pytest.approx(chi2.sf(4096 / 236, 1), rel=1e-9)
    assert corrected["p"] == pytest.approx(chi2.sf(3969 / 236, 1), rel=1e-9)


def test_mcnemar_exact_for_small_discordant_counts():
    # b=1, c=9: two-sided exact p = 2 * P(X <= 1), X ~ Bin(10, 1/2) = 2 * 11/1024
    r = mcnemar_test(b=1, c=9)
    assert r["method"] == "exact binomial"
    assert r["p"] == pytest.approx(22 / 1024)
    from scipy.stats import binomtest

    assert r["p"] == pytest.approx(binomtest(1, 10, 0.5).pvalue)
    assert mcnemar_test(b=5, c=5)["p"] == pytest.approx(1.0)


def test_mcnemar_from_paired_correctness():
    a = np.array([1, 1, 1, 0, 0, 1], bool)
    b = np.array([1, 0, 0, 1, 0, 1], bool)
    r = mcnemar_test(a, b)
    assert (r["b"], r["c"]) == (2, 1)
    assert mcnemar_test(a, a)["p"] == 1.0


# ----------------------------------------------------------------------------------------- bootstrap
def _probs(seed, n, k=4, signal=1.5):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += signal
    p = np.exp(logits)
    return y, p / p.sum(1, keepdims=True)


def test_bootstrap_indices_take_whole_groups():
    groups = np.array(["p1", "p1", "p2", "p3", "p3", "p3"])
    for idx in bootstrap_indices(6, groups, n_boot=50, seed=0):
        picked = groups[idx]
        for g, size in (("p1", 2), ("p2", 1), ("p3", 3)):
            assert (picked == g).sum() % size == 0  # each draw of a patient brings all its images
        assert len(set(np.unique(picked))) <= 3


def test_bootstrap_ci_contains_estimate_and_is_deterministic():
    y, p = _probs(0, 300)
    r = bootstrap_ci(macro_auc, y, p, n_boot=200, seed=1)
    assert r["lo"] <= r["estimate"] <= r["hi"]
    assert r["estimate"] == pytest.approx(macro_auc(y, p))
    assert r["n_valid"] == 200
    assert bootstrap_ci(macro_auc, y, p, n_boot=200, seed=1)["lo"] == r["lo"]


def test_bootstrap_ci_narrows_with_n():
    y1, p1 = _probs(0, 100)
    y2, p2 = _probs(0, 2000)
    w1 = bootstrap_ci(macro_auc, y1, p1, n_boot=200)
    w2 = bootstrap_ci(macro_auc, y2, p2, n_boot=200)
    assert (w2["hi"] - w2["lo"]) < 0.5 * (w1["hi"] - w1["lo"])


def test_bootstrap_ci_patient_resampling_wider_than_image_resampling():
    # every patient has 4 identical images: image resampling pretends there are 4x more independent data
    y0, p0 = _probs(2, 100)
    y, p = np.repeat(y0, 4), np.repeat(p0, 4, axis=0)
    groups = np.repeat(np.arange(100), 4)
    by_image = bootstrap_ci(macro_auc, y, p, None, n_boot=300, seed=0)
    by_patient = bootstrap_ci(macro_auc, y, p, groups, n_boot=300, seed=0)
    w_img = by_image["hi"] - by_image["lo"]
    w_pat = by_patient["hi"] - by_patient["lo"]
    assert w_pat > 1.5 * w_img  # ~ sqrt(4) = 2 in theory


def test_bootstrap_ci_skips_undefined_replicates():
    y = np.array([0] * 30 + [1])  # a single positive: absent from ~37% of replicates
    s = np.random.default_rng(0).uniform(size=31)
    r = bootstrap_ci(binary_auc, y, s, n_boot=300)
    assert 100 < r["n_valid"] < 300


def test_bootstrap_ci_array_and_dict_metrics():
    y, p = _probs(4, 200)
    arr = bootstrap_ci(lambda yy, pp: np.array([macro_auc(yy, pp), np.mean(pp.argmax(1) == yy)]), y, p, n_boot=100)
    assert arr["lo"].shape == (2,) and np.all(arr["lo"] <= arr["estimate"]) and np.all(arr["estimate"] <= arr["hi"])


def test_metrics_with_ci_keys_and_patient_groups():
    y, p = _probs(5, 400)
    groups = np.arange(400) // 2
    ci = metrics_with_ci(y, p, ["A", "B", "C", "D"], groups=groups, n_boot=100, seed=0)
    for key in ("accuracy", "auc_macro", "kappa_quadratic", "auc/A", "dense/sensitivity", "ece", "brier"):
        c = ci[key]
        assert c["lo"] <= c["estimate"] <= c["hi"], key
        assert c["n_valid"] == 100
    assert ci["accuracy"]["estimate"] == pytest.approx(np.mean(p.argmax(1) == y))


def test_bootstrap_speed_macro_auc_5000_images():
    import time

    y, p = _probs(0, 5000)
    groups = np.arange(5000) // 4
    t = time.perf_counter()
    bootstrap_ci(macro_auc, y, p, groups, n_boot=1000)
    assert time.perf_counter() - t < 20  # ~2 s on 2 CPU cores
