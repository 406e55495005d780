"""Agreement and aggregation statistics against values worked out by hand (in each docstring)."""

import math

import pytest

from tuneloop.feedback.aggregate import (
    bradley_terry,
    groups_from_scores,
    majority_pair,
    ranked_pairs,
    soft_pair,
)
from tuneloop.feedback.agreement import (
    Metric,
    adjust_score,
    average_ranks,
    cohen_kappa,
    fleiss_kappa,
    kendall_tau_b,
    kendall_w,
    krippendorff_alpha,
    krippendorff_alpha_nominal,
    rater_offset_scale,
    raw_agreement,
    wilson_interval,
)
from tuneloop.feedback.panel import calibrate_sigma, expected_agreement

Y, N = "yes", "no"


def test_raw_agreement():
    """Unit [a, a, b]: ordered pairs 3·2 = 6, agreeing a–a twice → 2. Unit [a, a]: 2 of 2. Pooled 4/8 = 0.5.
    A unit with one label is skipped."""
    assert raw_agreement([["a", "a", "b"], ["a", "a"], ["b"]]) == pytest.approx(0.5, abs=1e-12)
    assert raw_agreement([["a"], []]) is None


def test_cohen_kappa():
    """Contingency: both yes 4, A-yes/B-no 2, A-no/B-yes 1, both no 3 (n = 10).
    p_o = 7/10 = 0.7; A says yes 6/10, B 5/10 → p_e = 0.6·0.5 + 0.4·0.5 = 0.5; κ = (0.7 − 0.5)/0.5 = 0.4."""
    a = [Y, Y, Y, Y, Y, Y, N, N, N, N]
    b = [Y, Y, Y, Y, N, N, Y, N, N, N]
    assert cohen_kappa(a, b) == pytest.approx(0.4, abs=1e-12)


def test_cohen_kappa_undefined_without_variation():
    """Both raters always say yes: p_e = 1 and κ = 0/0 → undefined (None), not 0 or NaN."""
    assert cohen_kappa([Y, Y, Y], [Y, Y, Y]) is None


def test_fleiss_kappa():
    """Units [a,a,a], [a,a,b], [b,b,b], m = 3.
    P_i = (Σ n² − m)/(m(m−1)): (9−3)/6 = 1, (4+1−3)/6 = 1/3, 1 → P̄ = 7/9.
    p_a = 5/9, p_b = 4/9 → P̄_e = 25/81 + 16/81 = 41/81. κ = (63/81 − 41/81)/(40/81) = 22/40 = 0.55."""
    assert fleiss_kappa([["a", "a", "a"], ["a", "a", "b"], ["b", "b", "b"]]) == pytest.approx(0.55, abs=1e-12)


def test_fleiss_kappa_rejects_unequal_units_and_is_undefined_without_variation():
    with pytest.raises(ValueError, match="same number"):
        fleiss_kappa([["a", "b"], ["a", "b", "b"]])
    assert fleiss_kappa([["a", "a"], ["a", "a"]]) is None


def test_krippendorff_alpha_nominal():
    """Same units as Fleiss. Coincidences (÷ m−1 = 2): [a,a,a] o_aa += 3; [a,a,b] o_aa += 1, o_ab += 1,
    o_ba += 1; [b,b,b] o_bb += 3. n_a = 5, n_b = 4, n = 9. D_o = 2/9; D_e = 2·5·4/(9·8) = 5/9.
    α = 1 − (2/9)/(5/9) = 0.6."""
    assert krippendorff_alpha_nominal([["a", "a", "a"], ["a", "a", "b"], ["b", "b", "b"]]) == pytest.approx(0.6, abs=1e-12)


def test_krippendorff_alpha_with_missing_labels():
    """Units [a,a] (m=2), [a,b,b] (m=3), [b] (unpairable, ignored).
    [a,a]: o_aa += 2·1/1 = 2. [a,b,b]: o_ab += 1·2/2 = 1, o_ba += 1, o_bb += 2·1/2 = 1.
    n_a = 3, n_b = 2, n = 5. D_o = 2/5; D_e = 2·3·2/(5·4) = 3/5. α = 1 − (2/5)/(3/5) = 1/3."""
    assert krippendorff_alpha_nominal([["a", "a"], ["a", "b", "b"], ["b"]]) == pytest.approx(1 / 3, abs=1e-12)
    assert krippendorff_alpha_nominal([["a", "a"], ["a", "a"]]) is None


def test_average_ranks():
    """Groups [[x], [y, z], [w]]: x = 1, y and z share positions 2–3 → 2.5, w = 4."""
    assert average_ranks([["x"], ["y", "z"], ["w"]]) == {"x": 1, "y": 2.5, "z": 2.5, "w": 4}


def test_kendall_w_without_ties():
    """Ranks [1,2,3], [1,3,2], [2,1,3]: column sums R = 4, 6, 8, mean 6, S = 4 + 0 + 4 = 8.
    W = 12·8 / (3²·(3³ − 3)) = 96/216 = 4/9."""
    assert kendall_w([[1, 2, 3], [1, 3, 2], [2, 1, 3]]) == pytest.approx(4 / 9, abs=1e-12)
    assert kendall_w([[1, 2, 3], [1, 2, 3]]) == pytest.approx(1.0, abs=1e-12)


def test_kendall_w_with_ties():
    """Ranks [1,2,3] and [1.5,1.5,3]: R = 2.5, 3.5, 6, mean 4, S = 2.25 + 0.25 + 4 = 6.5.
    Tie term for rater 2: 2³ − 2 = 6. W = 12·6.5 / (2²·24 − 2·6) = 78/84 = 13/14."""
    assert kendall_w([[1, 2, 3], [1.5, 1.5, 3]]) == pytest.approx(13 / 14, abs=1e-12)
    assert kendall_w([[2, 2], [1.5, 1.5]]) is None  # everyone ties everything: undefined


def test_kendall_tau_b():
    """x = [1,2,3,4], y = [1,3,2,4]: of 6 pairs only (2,3) is discordant → τ = (5 − 1)/6 = 2/3.
    x = [1,2,2,3], y = [1,2,3,3]: C = 4, D = 0, one pair tied in x, one in y →
    τ_b = 4 / √((6 − 1)(6 − 1)) = 0.8."""
    assert kendall_tau_b([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(2 / 3, abs=1e-12)
    assert kendall_tau_b([1, 2, 2, 3], [1, 2, 3, 3]) == pytest.approx(0.8, abs=1e-12)
    assert kendall_tau_b([1, 1], [1, 2]) is None


def test_wilson_interval():
    """8/10, z = 1.96: p = 0.8, z² = 3.8416, d = 1 + z²/n = 1.38416.
    centre = (0.8 + 3.8416/20)/d = 0.99208/1.38416 = 0.7167379;
    half = 1.96·√(0.016 + 3.8416/400)/d = 1.96·0.1600125/1.38416 = 0.2265811 → [0.4901568, 0.9433191].
    0/10: centre = half = 0.19208/1.38416 = 0.1387701 → [0, 0.2775402]."""
    lo, hi = wilson_interval(8, 10, z=1.96)
    assert lo == pytest.approx(0.4901568, abs=1e-6) and hi == pytest.approx(0.9433191, abs=1e-6)
    lo, hi = wilson_interval(0, 10, z=1.96)
    assert lo == 0.0 and hi == pytest.approx(0.2775402, abs=1e-6)
    assert wilson_interval(0, 0) is None


def test_majority_and_soft_pair():
    """[lo, lo, hi] → lo. [lo, hi] → a tie of votes → "tie". Soft: [lo, hi, tie] → (1 + ½)/3 = 0.5;
    [lo, lo, hi] → 2/3."""
    assert majority_pair(["lo", "lo", "hi"]) == "lo"
    assert majority_pair(["lo", "hi"]) == "tie"
    assert majority_pair(["both_bad"]) is None
    assert soft_pair(["lo", "hi", "tie"]) == pytest.approx(0.5, abs=1e-12)
    assert soft_pair(["lo", "lo", "hi"]) == pytest.approx(2 / 3, abs=1e-12)


def test_ranked_pairs_breaks_a_cycle_at_its_weakest_link():
    """a beats b by 4 (5–1), b beats c by 2 (4–2), c beats a by 1 (3–2): a cycle. Locking strongest
    first: a>b, b>c; c>a would close the cycle and is skipped → a, b, c."""
    wins = {("a", "b"): 5, ("b", "a"): 1, ("b", "c"): 4, ("c", "b"): 2, ("c", "a"): 3, ("a", "c"): 2}
    assert ranked_pairs(["a", "b", "c"], wins) == [["a"], ["b"], ["c"]]
    assert ranked_pairs(["a", "b"], {("a", "b"): 1, ("b", "a"): 1}) == [["a", "b"]]


def test_bradley_terry_two_objects():
    """Two objects, a beat b 3 times and lost once, no prior: the MLE has p_a/p_b = 3/1, so
    θ_a − θ_b = ln 3 and, centred, θ_a = ln(3)/2 ≈ 0.5493061."""
    scores = bradley_terry(["a", "b"], {("a", "b"): 3, ("b", "a"): 1}, prior=0.0)
    assert scores["a"] == pytest.approx(math.log(3) / 2, abs=1e-6)
    assert scores["b"] == pytest.approx(-math.log(3) / 2, abs=1e-6)
    assert groups_from_scores({"a": 1.0, "b": 1.0, "c": 0.0}) == [["a", "b"], ["c"]]


def test_expected_agreement_of_two_noisy_raters():
    """σ = 1, Δ = √2: p = Φ(Δ/(σ√2)) = Φ(1) = 0.8413447; p² + (1 − p)² = 0.7078610 + 0.0251715 = 0.7330325.
    Δ = 0 gives 0.5 whatever σ."""
    assert expected_agreement([math.sqrt(2)], 1.0) == pytest.approx(0.7330325, abs=1e-6)
    assert expected_agreement([0.0], 0.3) == pytest.approx(0.5, abs=1e-12)
    sigma = calibrate_sigma([0.1, 0.5, -0.3, 1.0], 0.75)
    assert expected_agreement([0.1, 0.5, -0.3, 1.0], sigma) == pytest.approx(0.75, abs=1e-6)


# -- scores: Krippendorff's α for interval and ordinal data, rater offset and scale -------------------------


def test_krippendorff_alpha_interval_ordinal_nominal_by_hand():
    """Units [1, 2], [2, 3], [3, 3] (two raters each). Coincidences: o12 = o21 = o23 = o32 = 1, o33 = 2;
    n_1 = 1, n_2 = 2, n_3 = 3, n = 6.

    interval δ² = (c − k)²: D_o = (1 + 1 + 1 + 1) / 6 = 2/3; D_e = 2(1·2·1 + 1·3·4 + 2·3·1) / 30 = 40/30;
      α = 1 − (2/3) / (4/3) = 0.5.
    ordinal δ²(c, k) = (Σ_{g=c..k} n_g − (n_c + n_k)/2)²: δ²12 = (3 − 1.5)² = 2.25, δ²23 = (5 − 2.5)² = 6.25,
      δ²13 = (6 − 2)² = 16; D_o = 2(2.25 + 6.25) / 6 = 17/6; D_e = 2(1·2·2.25 + 1·3·16 + 2·3·6.25) / 30 = 6;
      α = 1 − 17/36 = 19/36.
    nominal: D_o = 4/6; D_e = 2(2 + 3 + 6) / 30 = 22/30; α = 1 − 120/132 = 1/11.
    """
    units = [[1, 2], [2, 3], [3, 3]]
    assert krippendorff_alpha(units, Metric.INTERVAL) == pytest.approx(0.5, abs=1e-12)
    assert krippendorff_alpha(units, Metric.ORDINAL) == pytest.approx(19 / 36, abs=1e-12)
    assert krippendorff_alpha(units, Metric.NOMINAL) == pytest.approx(1 / 11, abs=1e-12)


def test_krippendorff_alpha_matches_krippendorffs_published_example():
    """Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", §C–E: 4 observers, 12 units,
    missing values; published α: nominal 0.743, ordinal 0.815, interval 0.849."""
    n = None
    rows = [[1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n], [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3],
            [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n], [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n]]
    units = [[x for x in column if x is not None] for column in zip(*rows)]
    assert round(krippendorff_alpha(units, Metric.NOMINAL), 3) == 0.743
    assert round(krippendorff_alpha(units, Metric.ORDINAL), 3) == 0.815
    assert round(krippendorff_alpha(units, Metric.INTERVAL), 3) == 0.849


def test_krippendorff_alpha_limiting_cases():
    assert krippendorff_alpha([[4, 4], [2, 2, 2], [5, 5]], Metric.INTERVAL) == 1.0  # perfect agreement
    assert krippendorff_alpha([[3, 3], [3, 3]], Metric.ORDINAL) is None  # no variation: undefined
    assert krippendorff_alpha([[1], [2]], Metric.INTERVAL) is None  # nothing pairable
    # with two values only, ordinal and interval distances are proportional: the same α as nominal
    units = [[1, 2], [1, 1], [2, 2], [2, 1], [1, 1]]
    assert krippendorff_alpha(units, Metric.INTERVAL) == pytest.approx(krippendorff_alpha(units), abs=1e-12)
    assert krippendorff_alpha(units, Metric.ORDINAL) == pytest.approx(krippendorff_alpha(units), abs=1e-12)


def test_rater_offset_and_scale_by_hand():
    """Units {a: 5, b: 3}, {a: 4, b: 2}, {a: 5, b: 3}. a: mean 14/3; pooled mean 22/6 = 11/3 → offset +1;
    b: mean 8/3 → offset −1. σ_a² = (1/9 + 4/9 + 1/9)/3 = 2/9; σ_pool² = (16 + 4 + 1 + 25 + 16 + 4)/9/6 = 11/9;
    scale = √(2/11) for both. Adjusted: a's 5 → 11/3 + (5 − 14/3)/√(2/11) = 11/3 + (1/3)·√(11/2)."""
    stats = rater_offset_scale({1: {"a": 5, "b": 3}, 2: {"a": 4, "b": 2}, 3: {"a": 5, "b": 3}, 4: {"a": 1}})
    assert stats["a"]["offset"] == pytest.approx(1.0, abs=1e-12) and stats["b"]["offset"] == pytest.approx(-1.0)
    assert stats["a"]["scale"] == pytest.approx((2 / 11) ** 0.5, abs=1e-12) and stats["a"]["n"] == 3  # unit 4 alone
    assert adjust_score(5, stats["a"]) == pytest.approx(11 / 3 + (5.5 ** 0.5) / 3, abs=1e-12)
    flat = rater_offset_scale({1: {"a": 3, "b": 3}})  # no spread: scale undefined, adjustment = offset only
    assert flat["a"]["scale"] is None and adjust_score(3, flat["a"]) == 3.0
