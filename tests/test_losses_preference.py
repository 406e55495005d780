"""Reward-model losses and preference metrics: hand-computed values, limiting cases, gradients.

Constants used below (σ(x) = 1 / (1 + e^−x)):
    −log σ(1) = log(1 + e^−1) = 0.3132617      −log σ(−1) = log(1 + e) = 1.3132617
    −log σ(2) = log(1 + e^−2) = 0.1269280      −log σ(0) = log 2 = 0.6931472
    σ(−1) = 0.2689414
"""

from __future__ import annotations

import math

import pytest
import torch
from handvalues import assert_near

from tuneloop.losses.preference import (
    bradley_terry_loss,
    per_prompt_weights,
    plackett_luce_loss,
    ranking_pairwise_loss,
    reward_centering_penalty,
)
from tuneloop.metrics.preference import (
    accuracy_by_length_bucket,
    accuracy_by_length_difference,
    average_ranks,
    expected_calibration_error,
    length_correlation,
    pair_accuracy,
    pairwise_accuracy,
    pearson,
    reliability_bins,
    spearman,
)

NLS1, NLS_M1, NLS2, LOG2 = 0.3132617, 1.3132617, 0.1269280, 0.6931472
T = torch.tensor


# --- Bradley–Terry ---------------------------------------------------------------------------

def test_bradley_terry_hand_values():
    """r_c = (2, 0), r_r = (1, 1): d = (1, −1), loss = (−log σ(1), −log σ(−1)) = (0.3132617, 1.3132617).
    Accuracy: one right, one wrong → 0.5."""
    loss, metrics = bradley_terry_loss(T([2.0, 0.0]), T([1.0, 1.0]))
    assert_near(loss, [NLS1, NLS_M1])
    assert metrics["accuracy"] == 0.5 and metrics["pairs"] == 2.0


def test_bradley_terry_gradient():
    """d/dr_c of −log σ(r_c − r_r) = −(1 − σ(d)) = −σ(−d); at d = 1 that is −0.2689414, and +0.2689414
    for r_r."""
    chosen, rejected = T([1.5], requires_grad=True), T([0.5], requires_grad=True)
    loss, _ = bradley_terry_loss(chosen, rejected)
    loss.sum().backward()
    assert_near(chosen.grad, [-0.2689414])
    assert_near(rejected.grad, [0.2689414])


def test_margin_hand_value_and_zero_margin_is_plain_bt():
    """r_c = 3, r_r = 1, m = 1: −log σ(3 − 1 − 1) = −log σ(1) = 0.3132617. A zero margin changes nothing."""
    loss, _ = bradley_terry_loss(T([3.0]), T([1.0]), margin=T([1.0]))
    assert_near(loss, [NLS1])
    chosen, rejected = torch.randn(7), torch.randn(7)
    plain, _ = bradley_terry_loss(chosen, rejected)
    zero, _ = bradley_terry_loss(chosen, rejected, margin=torch.zeros(7))
    assert_near(zero, plain, tol=0)


def test_tie_soft_label():
    """Tie at d = 0: −½ log σ(0) − ½ log σ(0) = log 2 = 0.6931472. Tie at d = 1:
    ½ (0.3132617 + 1.3132617) = 0.8132617 (its margin 5 is ignored). A strict pair 3 vs 1 with margin 1:
    −log σ(1) = 0.3132617. Ties are not in the accuracy.
    Gradient of the tie loss in r_c is σ(d) − ½: 0 at d = 0."""
    chosen = T([0.0, 1.0, 3.0], requires_grad=True)
    loss, metrics = bradley_terry_loss(chosen, T([0.0, 0.0, 1.0]), margin=T([0.0, 5.0, 1.0]),
                                       tie=T([True, True, False]))
    assert_near(loss, [LOG2, 0.8132617, NLS1])
    assert metrics["tie_pairs"] == 2.0 and metrics["accuracy"] == 1.0
    loss[0].backward()
    assert_near(chosen.grad[0], 0.0)


def test_bradley_terry_stable_at_large_differences():
    """d = −200: −log σ(−200) = 200 + log(1 + e^−200) = 200 to fp32 precision; d = +200 gives ~0, not NaN."""
    loss, _ = bradley_terry_loss(T([0.0, 200.0]), T([200.0, 0.0]))
    assert_near(loss, [200.0, 0.0])


def test_reward_centering_penalty():
    """η = 0.01, r_c = 1, r_r = 2: 0.01 · (1 + 2)² = 0.09; r_c = −1, r_r = 1: 0."""
    penalty, metrics = reward_centering_penalty(T([1.0, -1.0]), T([2.0, 1.0]), 0.01)
    assert_near(penalty, [0.09, 0.0])
    assert_near(metrics["rewards/center"], 0.75)  # ((1+2)/2 + 0)/2


# --- per-prompt weighting and rankings -------------------------------------------------------

def test_per_prompt_weights_hand_values():
    """Prompt 7 has three pairs (weights ⅓ each), prompt 2 one pair (weight 1); weights per prompt sum to 1."""
    assert_near(per_prompt_weights(T([7, 7, 2, 7])), [1 / 3, 1 / 3, 1.0, 1 / 3])


def test_per_prompt_weighted_mean_hand_value_and_distinct_prompts_limit():
    """Losses (1, 2, 4, 6) of prompts (7, 7, 2, 7): weights (⅓, ⅓, 1, ⅓), Σ w·loss = (1 + 2 + 6)/3 + 4 = 7,
    over 2 prompts: 3.5 (the plain mean would be 13/4 = 3.25). Limit: with distinct prompts every
    weight is 1 and the weighted mean is the plain mean."""
    weights = per_prompt_weights(T([7, 7, 2, 7]))
    assert_near((weights * T([1.0, 2.0, 4.0, 6.0])).sum() / 2, 3.5)
    loss = torch.rand(5)
    assert_near((per_prompt_weights(T([4, 1, 3, 0, 2])) * loss).sum() / 5, loss.mean())


def test_ranking_pairwise_loss_hand_value():
    """Rewards (2, 1, 0) ranked 0 > 1 > 2: pairs d = 1, 2, 1 → (2·0.3132617 + 0.1269280) / 3 = 0.2511505.
    A second ranking with a padded third candidate (−1) has one pair, d = 1 → 0.3132617."""
    loss, metrics = ranking_pairwise_loss(T([[2.0, 1.0, 0.0], [1.0, 0.0, 99.0]]), T([[0, 1, 2], [0, 1, -1]]))
    assert_near(loss, [0.2511505, NLS1])
    assert metrics["pairs"] == 4.0 and metrics["accuracy"] == 1.0


def test_ranking_pairwise_loss_ties():
    """Rewards (1, 1, 0), groups (0, 0, 1): ordered pairs (0,2) and (1,2), d = 1 → 0.3132617. With tie
    pairs the tie (0,1) at d = 0 adds log 2: (2·0.3132617 + 0.6931472) / 3 = 0.4398902."""
    rewards, groups = T([[1.0, 1.0, 0.0]]), T([[0, 0, 1]])
    assert_near(ranking_pairwise_loss(rewards, groups)[0], [NLS1])
    assert_near(ranking_pairwise_loss(rewards, groups, include_tie_pairs=True)[0], [0.4398902])


def test_ranking_pairwise_equals_weighted_flat_pairs():
    """Fast path vs naive path: the per-ranking pair mean equals per-prompt-weighted BT on the flat pairs."""
    torch.manual_seed(0)
    rewards = torch.randn(2, 4)
    groups = T([[2, 0, 1, 3], [1, 0, 1, -1]])
    fast, _ = ranking_pairwise_loss(rewards, groups)
    chosen, rejected, prompt = [], [], []
    for n in range(2):
        for i in range(4):
            for j in range(4):
                if groups[n, i] >= 0 and groups[n, j] >= 0 and groups[n, i] < groups[n, j]:
                    chosen.append(rewards[n, i]), rejected.append(rewards[n, j]), prompt.append(n)
    flat, _ = bradley_terry_loss(torch.stack(chosen), torch.stack(rejected))
    weights = per_prompt_weights(T(prompt))
    naive = torch.zeros(2).index_add(0, T(prompt), weights * flat)
    assert_near(fast, naive)


def test_plackett_luce_k2_equals_bradley_terry():
    """K = 2 without ties: −[r1 − log(e^r1 + e^r2)] − 0 = −log σ(r1 − r2), for any rewards."""
    rewards = torch.randn(6, 2)
    pl, _ = plackett_luce_loss(rewards, torch.tensor([[0, 1]] * 3 + [[1, 0]] * 3))
    swapped = torch.cat([rewards[:3], rewards[3:].flip(1)])
    bt, _ = bradley_terry_loss(swapped[:, 0], swapped[:, 1])
    assert_near(pl, bt)
    assert_near(plackett_luce_loss(T([[1.0, 0.0]]), T([[0, 1]]))[0], [NLS1])


def test_plackett_luce_hand_values():
    """K = 3, rewards (2, 1, 0) ranked 0 > 1 > 2:
        −(2 − log(e² + e + 1)) − (1 − log(e + 1)) − 0 = (2.4076060 − 2) + (1.3132617 − 1) = 0.7208677.
    Two-way tie (0, 0) in one group: each member −(0 − log 2) → 2 log 2 = 1.3862944.
    Tie on top, rewards (1, 1, 0), groups (0, 0, 1): 2·(log(2e + 1) − 1) = 2·0.8619948 = 1.7239896.
    Padding (−1) drops a candidate: (1, 0, pad) = −log σ(1) = 0.3132617."""
    loss, _ = plackett_luce_loss(T([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.0, 7.0]]),
                                 T([[0, 1, 2], [0, 0, -1], [0, 0, 1], [0, 1, -1]]))
    assert_near(loss, [0.7208677, 2 * LOG2, 1.7239896, NLS1])


def test_padding_values_never_leak():
    """A padded candidate may hold any value (here inf): both ranking losses still give −log σ(1) = 0.3132617."""
    rewards, groups = T([[1.0, 0.0, float("inf")]]), T([[0, 1, -1]])
    assert_near(plackett_luce_loss(rewards, groups)[0], [NLS1])
    assert_near(ranking_pairwise_loss(rewards, groups, include_tie_pairs=True)[0], [NLS1])


def test_plackett_luce_gradient_hand_value_and_gradcheck():
    """∂/∂r_0 of the K = 3 loss above: −(1 − e²/(e² + e + 1)) = −0.3347590. gradcheck (fp64) covers ties
    and padding, including finite gradients on padded candidates."""
    rewards = T([[2.0, 1.0, 0.0]], requires_grad=True)
    plackett_luce_loss(rewards, T([[0, 1, 2]]))[0].sum().backward()
    assert_near(rewards.grad[0, 0], -0.3347590)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    groups = T([[0, 1, 1, 2], [1, 0, -1, -1], [0, 0, 0, 1]])
    assert torch.autograd.gradcheck(lambda r: plackett_luce_loss(r, groups)[0].double(), (x,))
    assert torch.autograd.gradcheck(lambda r: ranking_pairwise_loss(r, groups, include_tie_pairs=True)[0].double(),
                                    (x,))


# --- metrics ---------------------------------------------------------------------------------

def test_pair_accuracy_counts_equal_as_half():
    assert_near(pair_accuracy(T([1.0, 0.0, -1.0])), [1.0, 0.5, 0.0])


def test_pairwise_accuracy_ties_separate():
    """Strict pairs d = (1, −1) → accuracy 0.5. Tie pairs |d| = (0, 0.5): mean 0.25; below 0.1: half."""
    out = pairwise_accuracy(T([1.0, 0.0, 2.0, 0.5]), T([0.0, 1.0, 2.0, 0.0]), tie=T([False, False, True, True]),
                            tie_threshold=0.1)
    assert out == {"pairs": 2.0, "tie_pairs": 2.0, "accuracy": 0.5, "tie_mean_abs_diff": 0.25,
                   "tie_agreement": 0.5}


def test_reliability_and_ece_hand_values():
    """d = log 3 gives σ(d) = 0.75 exactly. One pair: (0.75, outcome 1) in bin [0.7, 0.8) and (0.25, 0) in
    bin [0.2, 0.3): ECE = ½·0.25 + ½·0.25 = 0.25.
    Three pairs at d = log 3 and one at −log 3: bin 7 holds three outcomes 1 and one 0 at 0.75 → observed
    0.75, calibrated; likewise bin 2 → ECE 0."""
    d = math.log(3.0)
    bins = reliability_bins(T([d]), T([0.0]), num_bins=10)
    assert bins.count == [0, 0, 1, 0, 0, 0, 0, 1, 0, 0]
    assert_near(bins.mean_predicted[7], 0.75)
    assert_near(bins.mean_observed[7], 1.0)
    assert_near(expected_calibration_error(bins), 0.25)
    calibrated = reliability_bins(T([d, d, d, -d]), torch.zeros(4), num_bins=10)
    assert_near(calibrated.mean_observed[7], 0.75)
    assert_near(expected_calibration_error(calibrated), 0.0)


def test_reliability_tie_outcome_is_half():
    """A tie at d = 0: both orientations predict 0.5 and observe 0.5 → ECE 0; a strict pair at d = 0
    observes 1 and 0 in the same bin → also 0.5, ECE 0."""
    for tie in (T([True]), None):
        assert expected_calibration_error(reliability_bins(T([0.0]), T([0.0]), tie=tie)) == 0.0


def test_pearson_and_spearman_hand_values():
    """x = (1, 2, 3), y = (2, 4, 7): centred x (−1, 0, 1), y (−7/3, −1/3, 8/3); Σxy = 5, Σx² = 2,
    Σy² = 114/9 → r = 5 / √(228/9) = 0.9933993; ranks equal → Spearman 1.
    Ties: x = (1, 2, 2, 3) has ranks (1, 2.5, 2.5, 4); against y ranks (1, 2, 3, 4): 4.5 / √(4.5·5) = 0.9486833."""
    assert_near(pearson(T([1.0, 2.0, 3.0]), T([2.0, 4.0, 7.0])), 0.9933993)
    assert_near(spearman(T([1.0, 2.0, 3.0]), T([2.0, 4.0, 7.0])), 1.0)
    assert_near(average_ranks(T([1.0, 2.0, 2.0, 3.0])), [1.0, 2.5, 2.5, 4.0])
    assert_near(spearman(T([1.0, 2.0, 2.0, 3.0]), T([10.0, 20.0, 30.0, 40.0])), 0.9486833)
    assert math.isnan(pearson(T([1.0, 1.0]), T([1.0, 2.0])))
    out = length_correlation(T([3.0, 1.0, 2.0]), T([30, 10, 20]))
    assert_near(out["length_pearson"], 1.0)
    assert_near(out["length_spearman"], 1.0)


def test_accuracy_by_length_difference():
    """A pure length-preferring scorer: right when chosen is longer, wrong when shorter."""
    chosen_len, rejected_len = T([10, 5, 7]), T([5, 10, 7])
    out = accuracy_by_length_difference(chosen_len.float(), rejected_len.float(), chosen_len, rejected_len)
    assert out["chosen_longer/accuracy"] == 1.0 and out["chosen_shorter/accuracy"] == 0.0
    assert out["same_length/accuracy"] == 0.5 and out["same_length/pairs"] == 1.0


def test_accuracy_by_length_bucket():
    """Edges (10, 20): lengths 5 → bucket 0, 15 and 12 → bucket 1, 25 → bucket 2, 20 → bucket 2 (left-closed).
    Bucket 1 holds one right (d = 1) and one wrong (d = −1) pair → 0.5."""
    out = accuracy_by_length_bucket(T([1.0, 1.0, 0.0, 1.0, 0.0]), T([0.0, 0.0, 1.0, 0.0, 1.0]),
                                    T([5, 15, 12, 25, 20]), [10, 20])
    assert [b["pairs"] for b in out] == [1.0, 2.0, 2.0]
    assert [b.get("accuracy") for b in out] == [1.0, 0.5, 0.5]
    assert out[0]["low"] == float("-inf") and out[1]["low"] == 10.0 and out[2]["high"] == float("inf")


def test_shape_errors_name_the_shapes():
    with pytest.raises(AssertionError, match=r"\(3,\) and \(2,\)"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(2))
    with pytest.raises(AssertionError, match="same \\(N, K\\)"):
        plackett_luce_loss(torch.zeros(2, 3), torch.zeros(2, 2, dtype=torch.long))
