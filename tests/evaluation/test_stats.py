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


# ------------------------------------------------------------------ clustered DeLong / McNemar
from mammolens.evaluation.stats import clustered_delong_covariance  # noqa: E402


def _obuchowski_direct(y, scores, groups):
    """Obuchowski (1997) written out with explicit loops over clusters and the O(M N) kernel."""
    y = np.asarray(y).astype(bool)
    scores = np.atleast_2d(scores)
    ids = list(dict.fromkeys(groups))
    g = np.asarray(groups)
    n_c, m_tot, n_tot = len(ids), y.sum(), (~y).sum()
    d10, d01, aucs = [], [], []
    for s in scores:
        psi = (s[y][:, None] > s[~y][None, :]) + 0.5 * (s[y][:, None] == s[~y][None, :])
        auc = psi.mean()
        v10, v01 = psi.sum(1) / n_tot, psi.sum(0) / m_tot
        d10.append([v10[g[y] == c].sum() - (g[y] == c).sum() * auc for c in ids])
        d01.append([v01[g[~y] == c].sum() - (g[~y] == c).sum() * auc for c in ids])
        aucs.append(auc)
    d10, d01 = np.array(d10), np.array(d01)
    f = n_c / (n_c - 1)
    s10, s01, s11 = f * d10 @ d10.T / m_tot, f * d01 @ d01.T / n_tot, f * d10 @ d01.T
    return np.array(aucs), s10 / m_tot + s01 / n_tot + (s11 + s11.T) / (m_tot * n_tot)


def test_clustered_delong_hand_checked_small_case():
    # patients P1: (pos 0.9, neg 0.3), P2: (pos 0.6), P3: (neg 0.7, neg 0.2)
    y = np.array([1, 0, 1, 0, 0])
    s = np.array([0.9, 0.3, 0.6, 0.7, 0.2])
    g = np.array(["P1", "P1", "P2", "P3", "P3"])
    aucs, cov = clustered_delong_covariance(y, s, g)
    # psi: 0.9 beats all 3 negatives, 0.6 beats 0.3 and 0.2 -> AUC 5/6
    assert aucs[0] == pytest.approx(5 / 6)
    # v10 = [1, 2/3]; v01 (negatives 0.3, 0.7, 0.2) = [1, 1/2, 1]
    # D10 = [1 - 5/6, 2/3 - 5/6, 0] = [1/6, -1/6, 0]; D01 = [1 - 5/6, 0, 3/2 - 10/6] = [1/6, 0, -1/6]
    f = 3 / 2
    s10 = f * (1 / 36 + 1 / 36) / 2
    s01 = f * (1 / 36 + 1 / 36) / 3
    s11 = f * (1 / 36)
    assert cov[0, 0] == pytest.approx(s10 / 2 + s01 / 3 + 2 * s11 / 6)


@pytest.mark.parametrize("seed", range(4))
def test_clustered_delong_matches_direct_formula(seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, 30)
    g = np.repeat(np.arange(30), sizes)
    y = rng.integers(0, 2, g.size)
    a = y + rng.normal(0, 1, 30)[g] + rng.normal(0, 1, g.size)
    b = np.round(0.5 * a + rng.normal(0, 1, g.size), 1)  # ties
    aucs, cov = clustered_delong_covariance(y, np.vstack([a, b]), g)
    ref_aucs, ref_cov = _obuchowski_direct(y, np.vstack([a, b]), g)
    np.testing.assert_allclose(aucs, ref_aucs, atol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, atol=1e-12)


def test_clustered_tests_reduce_to_classic_with_one_image_per_patient():
    rng = np.random.default_rng(3)
    n = 70
    y = rng.integers(0, 2, n)
    a, b = y + rng.normal(0, 1, n), y + rng.normal(0, 1.2, n)
    m, nn = y.sum(), n - y.sum()
    _, dl = delong_covariance(y, np.vstack([a, b]))
    _, cl = clustered_delong_covariance(y, np.vstack([a, b]), np.arange(n))
    # Obuchowski's singletons: S10 uses I/((I-1) M) instead of DeLong's 1/(M-1); no S11 term
    ratio_pos, ratio_neg = n * (m - 1) / ((n - 1) * m), n * (nn - 1) / ((n - 1) * nn)
    assert ratio_pos == pytest.approx(1, abs=0.03) and ratio_neg == pytest.approx(1, abs=0.03)
    assert cl[0, 0] == pytest.approx(dl[0, 0], rel=0.03)
    # the auto choice uses the classic tests and says so
    r = delong_test(y, a, b, groups=np.arange(n))
    assert r["method"] == "DeLong" and r["p"] == pytest.approx(delong_test(y, a, b)["p"], rel=1e-12)
    ca, cb = (a > 0.5) == y, (b > 0.5) == y
    mc = mcnemar_test(ca, cb, groups=np.arange(n))
    assert mc == mcnemar_test(ca, cb)
    # Durkalski's statistic with singleton clusters, (sum d_i)^2 / sum d_i^2, is (b - c)^2 / (b + c)
    d = ca.astype(int) - cb.astype(int)
    plain = mcnemar_test(ca, cb, exact=False, correction=False)
    assert d.sum() ** 2 / (d**2).sum() == pytest.approx(plain["statistic"])


def test_clustered_mcnemar_hand_checked():
    # patient 1: b=3 (A right, B wrong), patient 2: c=1, patient 3: b=1, c=1
    ca = np.array([1, 1, 1, 0, 1, 0], bool)
    cb = np.array([0, 0, 0, 1, 0, 1], bool)
    g = np.array([1, 1, 1, 2, 3, 3])
    r = mcnemar_test(ca, cb, groups=g)
    # d_i = [3, -1, 0]: X^2 = 2^2 / (9 + 1) = 0.4
    assert r["method"].startswith("clustered McNemar") and r["statistic"] == pytest.approx(0.4)
    assert r["p"] == pytest.approx(math.erfc(math.sqrt(0.2)))
    assert (r["b"], r["c"]) == (4, 2)
    with pytest.raises(ValueError, match="paired correctness"):
        mcnemar_test(b=3, c=1, groups=g)


def _simulate(rng, n_sets, effect=0.0, n_patients=60):
    """Datasets of 60 patients x 2-4 images; a patient random effect in the label and in each model's
    score (models err together on a patient); model A's separation is raised by ``effect``."""
    for _ in range(n_sets):
        sizes = rng.integers(2, 5, n_patients)
        g = np.repeat(np.arange(n_patients), sizes)
        y = (rng.normal(0, 1, n_patients)[g] + 0.5 * rng.normal(0, 1, g.size) > 0).astype(int)
        shared = rng.normal(0, 1, n_patients)[g]
        sa = (1.0 + effect) * y + shared + rng.normal(0, 1.0, n_patients)[g] + 0.5 * rng.normal(0, 1, g.size)
        sb = 1.0 * y + shared + rng.normal(0, 1.0, n_patients)[g] + 0.5 * rng.normal(0, 1, g.size)
        yield y, sa, sb, g


def _rejection_rates(n_sets, effect, seed):
    rng = np.random.default_rng(seed)
    rej = {"delong": 0, "delong_clustered": 0, "mcnemar": 0, "mcnemar_clustered": 0}
    for y, sa, sb, g in _simulate(rng, n_sets, effect):
        ca, cb = (sa > 0.5) == y, (sb > 0.5) == y
        rej["delong"] += delong_test(y, sa, sb)["p"] < 0.05
        rej["delong_clustered"] += delong_test(y, sa, sb, groups=g)["p"] < 0.05
        rej["mcnemar"] += mcnemar_test(ca, cb)["p"] < 0.05
        rej["mcnemar_clustered"] += mcnemar_test(ca, cb, groups=g)["p"] < 0.05
    return {k: v / n_sets for k, v in rej.items()}


def test_clustered_tests_keep_type_one_error_with_several_images_per_patient():
    """Two equally good models, 200 simulated datasets: the patient-clustered tests reject at about alpha;
    the image-level ones (printed for the record) reject far too often."""
    rates = _rejection_rates(200, effect=0.0, seed=0)
    print("type-I error at alpha 0.05:", rates)
    assert 0.03 <= rates["delong_clustered"] <= 0.08
    assert 0.03 <= rates["mcnemar_clustered"] <= 0.08
    assert rates["delong"] > 0.1 and rates["mcnemar"] > 0.1


def test_clustered_tests_have_power_against_a_better_model():
    rates = _rejection_rates(200, effect=1.0, seed=1)
    print("power at effect 1.0:", rates)
    assert rates["delong_clustered"] > 0.5


def test_paired_bootstrap_difference_ci_and_old_import_path():
    from mammolens import study
    from mammolens.evaluation.stats import paired_bootstrap

    assert study.paired_bootstrap is paired_bootstrap  # moved from study.py, still importable there
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    good = np.eye(2)[y] * 0.8 + 0.1  # right on every row
    bad = np.full((200, 2), 0.5)
    groups = np.repeat(np.arange(100), 2)
    acc = lambda t, p: float(np.mean(p.argmax(1) == t))  # noqa: E731
    r = paired_bootstrap(acc, y, good, good, groups, n_boot=50)
    assert r["diff"] == 0.0 and r["lo"] == 0.0 and r["hi"] == 0.0 and r["p"] == 1.0 and r["n_valid"] == 50
    r = paired_bootstrap(acc, y, good, bad, groups, n_boot=50)
    assert r["diff"] == pytest.approx(1 - np.mean(y == 0)) and r["lo"] > 0 and r["p"] == pytest.approx(2 / 51)
