"""Evaluation statistics and over-optimisation fits: values worked out by hand in each docstring."""

from __future__ import annotations

import math

import pytest
import torch
from handvalues import assert_near

from tuneloop.evaluate.overoptimization import (
    GaoForm,
    best_of_n_choice,
    best_of_n_curve,
    best_of_n_expectation,
    best_of_n_kl,
    fit_gao,
)
from tuneloop.evaluate.stats import bootstrap_interval, distinct_n, pairwise_outcomes, repetition_n, sequence_kl

T = torch.tensor


def test_sequence_kl_k1_k3_per_sequence_and_per_token():
    """Sequence 1: log π = [−1, −2], log π_ref = [−1.5, −1] → log r = [−0.5, 1].
    k1 = −log r = [0.5, −1], sum −0.5.
    k3 = (e^−0.5 − 1 + 0.5) + (e^1 − 1 − 1) = 0.1065307 + 0.7182818 = 0.8248125.
    Sequence 2: one token, identical log-probs → 0 and 0.
    Per token (3 tokens): k1 = −0.5 / 3 = −0.1666667, k3 = 0.8248125 / 3 = 0.2749375."""
    kl = sequence_kl([T([-1.0, -2.0]), T([-0.7])], [T([-1.5, -1.0]), T([-0.7])])
    assert_near(kl.k1_sequence, [-0.5, 0.0])
    assert_near(kl.k3_sequence, [0.8248125, 0.0])
    assert_near(kl.k1_token, -0.1666667)
    assert_near(kl.k3_token, 0.2749375)
    assert kl.tokens == 3


def test_sequence_kl_of_identical_policies_is_zero_and_k3_never_negative():
    lp = [torch.randn(5), torch.randn(2)]
    same = sequence_kl(lp, [x.clone() for x in lp])
    assert_near([same.k1_token, same.k3_token], [0.0, 0.0])
    other = sequence_kl(lp, [torch.randn(5), torch.randn(2)])
    assert min(other.k3_sequence) >= 0


def test_sequence_kl_rejects_mismatched_lengths():
    with pytest.raises(AssertionError, match="shapes differ"):
        sequence_kl([T([-1.0, -2.0])], [T([-1.0])])


def test_bootstrap_of_two_values_spans_both():
    """Values {0, 1}: a resampled mean is 0, ½ or 1 with probability ¼, ½, ¼, so the 2.5% and 97.5%
    quantiles of 4,000 resamples are 0 and 1; the estimate is the sample mean ½."""
    ci = bootstrap_interval([0.0, 1.0], resamples=4000, seed=3)
    assert (ci.estimate, ci.low, ci.high, ci.samples) == (0.5, 0.0, 1.0, 2)


def test_bootstrap_limiting_cases_and_determinism():
    """Constant values: every resample has the same mean. No values: NaN. Same seed: same interval."""
    ci = bootstrap_interval([2.0, 2.0, 2.0])
    assert (ci.estimate, ci.low, ci.high) == (2.0, 2.0, 2.0)
    assert math.isnan(bootstrap_interval([]).estimate)
    values = [0.1, 0.5, 0.2, 0.9, 0.4]
    assert bootstrap_interval(values, seed=7) == bootstrap_interval(values, seed=7)
    narrow, wide = bootstrap_interval(values, confidence=0.5), bootstrap_interval(values, confidence=0.99)
    assert wide.low <= narrow.low <= narrow.estimate <= narrow.high <= wide.high


def test_bootstrap_custom_statistic():
    """The median of [1, 2, 10] is 2 (the mean would be 13/3)."""
    ci = bootstrap_interval([1.0, 2.0, 10.0], statistic=lambda rows: __import__("numpy").median(rows, axis=1))
    assert ci.estimate == 2.0 and ci.low >= 1.0 and ci.high <= 10.0


def test_pairwise_outcomes_ties_count_half():
    """a − b = [−1, 0, 2] → [0, ½, 1]; with tolerance 1.5 the first is a tie too."""
    assert pairwise_outcomes([1, 2, 3], [2, 2, 1]) == [0.0, 0.5, 1.0]
    assert pairwise_outcomes([1, 2, 3], [2, 2, 1], tie_tolerance=1.5) == [0.5, 0.5, 1.0]


def test_distinct_and_repetition():
    """["a b a b", "a b c"]: bigrams ab, ba, ab, ab, bc → 3 distinct of 5 = 0.6; unigrams 3 of 7.
    "a b a b": bigrams ab, ba, ab → 1 − 2/3 = 1/3 repeated; a one-word text has no bigram → 0."""
    assert_near(distinct_n(["a b a b", "A b c"], 2), 0.6)
    assert_near(distinct_n(["a b a b", "a b c"], 1), 3 / 7)
    assert_near(repetition_n("a b a b", 2), 1 / 3)
    assert repetition_n("a", 2) == 0.0 and math.isnan(distinct_n(["a"], 2))


def test_gao_best_of_n_fit_recovers_alpha_beta():
    """α = 1, β = 0.5: R(1) = 1·(1 − 0.5) = 0.5, R(2) = 2·(1 − 1) = 0; peak at α / 2β = 1."""
    fit = fit_gao([1.0, 2.0], [0.5, 0.0], GaoForm.BEST_OF_N)
    assert_near([fit.alpha, fit.beta, fit.residual], [1.0, 0.5, 0.0])
    assert_near(fit.peak(), 1.0)
    assert_near(fit.predict([0.0, 1.0]), [0.0, 0.5])


def test_gao_rl_fit_recovers_alpha_beta():
    """α = 1, β = 0.5: R(1) = 1·(1 − 0) = 1, R(e) = e·(1 − 0.5) = 1.3591409; the peak solves
    α − β(log d + 1) = 0 → d = e^(α/β − 1) = e = 2.7182818. R(0) = 0 (d log d → 0)."""
    fit = fit_gao([0.0, 1.0, math.e], [0.0, 1.0, 1.3591409], GaoForm.RL)
    assert_near([fit.alpha, fit.beta], [1.0, 0.5])
    assert_near(fit.peak(), 2.7182818)


def test_gao_peak_only_where_the_fit_rises_then_falls():
    """Best-of-n with α = −0.2, β = 0.1 falls from the start: the formula α/2β = −1 is no peak. RL with
    β = −0.1 never turns down."""
    from tuneloop.evaluate.overoptimization import GaoFit

    assert GaoFit(GaoForm.BEST_OF_N, -0.2, 0.1, 0.0).peak() is None
    assert GaoFit(GaoForm.RL, 1.0, -0.1, 0.0).peak() is None
    # e^(α/β − 1): the RL form rises first
    assert_near(GaoFit(GaoForm.RL, -0.1, 0.1, 0.0).peak(), math.exp(-2))


def test_gao_fit_needs_two_points_away_from_the_start():
    with pytest.raises(ValueError, match="at least 2 points"):
        fit_gao([0.0, 1.0], [0.0, 0.3], GaoForm.RL)


def test_best_of_n_kl():
    """log n − (n − 1)/n: n = 1 → 0; n = 2 → 0.6931472 − 0.5 = 0.1931472; n = 4 → 1.3862944 − 0.75."""
    assert_near([best_of_n_kl(1), best_of_n_kl(2), best_of_n_kl(4)], [0.0, 0.1931472, 0.6362944])


def test_best_of_n_expectation_over_all_subsets():
    """K = 3, proxy [0.2, 0.9, 0.5], gold [1, 2, 3]. n = 2, subsets {0,1} → #1 (gold 2, proxy 0.9),
    {0,2} → #2 (3, 0.5), {1,2} → #1 (2, 0.9): gold 7/3 = 2.3333333, proxy 2.3/3 = 0.7666667.
    n = 1: plain means, gold 2, proxy 1.6/3 = 0.5333333. n = 3: the best by proxy, gold 2, proxy 0.9."""
    proxy, gold = T([[0.2, 0.9, 0.5]]), T([[1.0, 2.0, 3.0]])
    assert_near(best_of_n_expectation(proxy, gold, 2), (0.7666667, 2.3333333))
    assert_near(best_of_n_expectation(proxy, gold, 1), (0.5333333, 2.0))
    assert_near(best_of_n_expectation(proxy, gold, 3), (0.9, 2.0))
    points = best_of_n_curve(proxy.repeat(2, 1), gold.repeat(2, 1), ns=[1, 2])
    assert [p["n"] for p in points] == [1, 2] and points[1]["gold"] == pytest.approx(7 / 3)


def test_best_of_n_choice_looks_at_the_first_n():
    proxy = T([[0.2, 0.9, 0.5], [0.7, 0.1, 0.8]])
    assert best_of_n_choice(proxy, 1).tolist() == [0, 0]
    assert best_of_n_choice(proxy, 3).tolist() == [1, 2]


def test_weighted_bootstrap_is_a_per_token_mean():
    """Per-sequence means [1, 4] over 3 and 1 tokens: per token (3·1 + 1·4) / 4 = 1.75 (not 2.5)."""
    ci = bootstrap_interval([1.0, 4.0], weights=[3.0, 1.0])
    assert ci.estimate == 1.75 and 1.0 <= ci.low <= ci.high <= 4.0
