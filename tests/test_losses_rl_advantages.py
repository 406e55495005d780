"""RL advantage estimators and whitening: hand-computed values, limiting cases, errors.

Shared GAE example (one row, three response tokens, all counted): rewards r = [0, 0, 1], values
V = [0.5, 0.2, 0.4].
Shared group example (one prompt, K = 4): returns R = [1, 2, 3, 6]; mean 3, deviations [−2, −1, 0, 3],
Σ dev² = 14, Bessel variance 14/3, std 2.1602469.
"""

from __future__ import annotations

import pytest
import torch
from handvalues import assert_near

from tuneloop.losses.rl_advantages import (
    AdvantageEstimator,
    AdvantageInputs,
    AdvantageParams,
    compute_advantages,
    discounted_returns,
    gae,
    grpo_scores,
    group_centred_scores,
    leave_one_out_scores,
    masked_moments,
    masked_whiten,
)

T = torch.tensor
R = T([[0.0, 0.0, 1.0]])
V = T([[0.5, 0.2, 0.4]])
ONES = torch.ones(1, 3)


def test_gae_hand_value():
    """γ = 1, λ = 0.5. δ_2 = 1 − 0.4 = 0.6; δ_1 = 0.4 − 0.2 = 0.2; δ_0 = 0.2 − 0.5 = −0.3.
    A_2 = 0.6; A_1 = 0.2 + 0.5·0.6 = 0.5; A_0 = −0.3 + 0.5·0.5 = −0.05. Returns A + V = [0.45, 0.7, 1.0]."""
    adv, ret = gae(R, V, ONES, gamma=1.0, lam=0.5)
    assert_near(adv, [[-0.05, 0.5, 0.6]])
    assert_near(ret, [[0.45, 0.7, 1.0]])


def test_gae_lambda_one_is_discounted_return_minus_value():
    """γ = 0.9, λ = 1: G = [0.81, 0.9, 1]; G − V = [0.31, 0.7, 0.6] (by hand), and equal to
    discounted_returns − V on random data."""
    adv, _ = gae(R, V, ONES, gamma=0.9, lam=1.0)
    assert_near(adv, [[0.31, 0.7, 0.6]])
    assert_near(discounted_returns(R, ONES, 0.9), [[0.81, 0.9, 1.0]])
    g = torch.Generator().manual_seed(0)
    r, v = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    mask = T([[1] * 6, [1] * 4 + [0] * 2, [1] * 1 + [0] * 5, [1] * 5 + [0]]).float()
    adv, ret = gae(r, v, mask, gamma=0.95, lam=1.0)
    assert_near(adv, discounted_returns(r, mask, 0.95) - v * mask)
    assert_near(ret, discounted_returns(r, mask, 0.95))


def test_gae_lambda_zero_is_td_error():
    """λ = 0: A_t = δ_t = [−0.3, 0.2, 0.6] (γ = 1)."""
    assert_near(gae(R, V, ONES, gamma=1.0, lam=0.0)[0], [[-0.3, 0.2, 0.6]])


def test_gae_ignores_padding_after_the_response():
    """A padded column (mask 0) with garbage reward/value changes nothing: same as the unpadded example."""
    adv, ret = gae(T([[0.0, 0.0, 1.0, 7.0]]), T([[0.5, 0.2, 0.4, 9.0]]), T([[1.0, 1, 1, 0]]), 1.0, 0.5)
    assert_near(adv, [[-0.05, 0.5, 0.6, 0.0]])
    assert_near(ret, [[0.45, 0.7, 1.0, 0.0]])


def test_grpo_dr_grpo_rloo_hand_values():
    """grpo: dev / std = [−2, −1, 0, 3] / 2.1602469 = [−0.9258201, −0.4629100, 0, 1.3887301].
    dr_grpo: dev = [−2, −1, 0, 3]. rloo: R_i − (12 − R_i)/3 = [1 − 11/3, 2 − 10/3, 3 − 3, 6 − 2]
    = [−2.6666667, −1.3333333, 0, 4]."""
    returns = T([1.0, 2.0, 3.0, 6.0])
    assert_near(grpo_scores(returns, 4, std_eps=0.0), [-0.9258201, -0.4629100, 0.0, 1.3887301])
    assert_near(group_centred_scores(returns, 4), [-2.0, -1.0, 0.0, 3.0])
    assert_near(leave_one_out_scores(returns, 4), [-8 / 3, -4 / 3, 0.0, 4.0])


def test_rloo_baseline_is_the_mean_of_the_others_and_groups_are_separate():
    """Two groups of K = 3: [1, 2, 6] → baselines [4, 3.5, 1.5] → [−3, −1.5, 4.5]; [0, 0, 3] → [1.5, 1.5, 0]
    → [−1.5, −1.5, 3]. Also RLOO = K/(K−1) · (R − mean) (here 3/2 · [−2, −1, 3] = [−3, −1.5, 4.5])."""
    assert_near(leave_one_out_scores(T([1.0, 2.0, 6.0, 0.0, 0.0, 3.0]), 3),
                [-3.0, -1.5, 4.5, -1.5, -1.5, 3.0])


def test_grpo_group_of_equal_rewards_has_zero_advantage():
    assert_near(grpo_scores(T([0.7, 0.7, 0.7, 0.7]), 4, std_eps=1e-6), [0.0] * 4)


@pytest.mark.parametrize("kind", [k for k in AdvantageEstimator if k.needs_groups])
def test_group_estimators_refuse_k_of_one(kind):
    x = AdvantageInputs(scores=T([1.0, 2.0]), non_score=torch.zeros(2, 2), mask=torch.ones(2, 2), group_size=1)
    with pytest.raises(ValueError, match="needs K ≥ 2, got K=1"):
        compute_advantages(kind, x, AdvantageParams())


def test_outcome_estimators_broadcast_the_kl_shaped_return_over_response_tokens():
    """Two samples of one prompt, scores [1, 0]; non-score −β·KL per token: row 0 [−0.1, −0.1] (2 tokens),
    row 1 [−0.2, 0 (pad)]. Returns R = [0.8, −0.2]; dr_grpo: mean 0.3 → [0.5, −0.5] on counted tokens."""
    x = AdvantageInputs(scores=T([1.0, 0.0]), non_score=T([[-0.1, -0.1], [-0.2, 5.0]]),
                        mask=T([[1.0, 1.0], [1.0, 0.0]]), group_size=2)
    adv, ret, _ = compute_advantages("dr_grpo", x, AdvantageParams())
    assert_near(adv, [[0.5, 0.5], [-0.5, 0.0]])
    assert_near(ret, adv)


def test_gae_estimator_places_score_on_the_last_token():
    """Score 1 on token 2 of the shared example, non-score 0: same as gae(R, V) with γ = 1, λ = 0.5."""
    x = AdvantageInputs(scores=T([1.0]), non_score=torch.zeros(1, 3), mask=ONES, values=V)
    adv, ret, _ = compute_advantages("gae", x, AdvantageParams(gamma=1.0, lam=0.5))
    assert_near(adv, [[-0.05, 0.5, 0.6]])
    assert_near(ret, [[0.45, 0.7, 1.0]])


def test_reinforce_pp_returns_and_baseline():
    """γ = 1. Rows (K = 2): scores [2, 0]; non-score [[−0.5, −0.5], [−1, 0]], row 1 has one token.
    reinforce_pp: per-token rewards [[−0.5, 1.5], [−1, 0]] → returns [[1, 1.5], [−1, 0]].
    reinforce_pp_baseline: scores − group mean 1 → [1, −1]; rewards [[−0.5, 0.5], [−2, 0]] →
    returns [[0, 0.5], [−2, 0]]. Both are whitened later by the loop (whitens_batch)."""
    x = AdvantageInputs(scores=T([2.0, 0.0]), non_score=T([[-0.5, -0.5], [-1.0, 0.0]]),
                        mask=T([[1.0, 1.0], [1.0, 0.0]]), group_size=2)
    assert_near(compute_advantages("reinforce_pp", x, AdvantageParams(gamma=1.0))[0],
                [[1.0, 1.5], [-1.0, 0.0]])
    assert_near(compute_advantages("reinforce_pp_baseline", x, AdvantageParams(gamma=1.0))[0], [[0.0, 0.5], [-2.0, 0.0]])
    assert AdvantageEstimator.REINFORCE_PP.whitens_batch and not AdvantageEstimator.GRPO.whitens_batch


def test_masked_whiten_hand_value_and_keep_mean():
    """x = [1, 2, 3] counted, 100 masked: mean 2, Bessel variance (1 + 0 + 1)/2 = 1 → [−1, 0, 1, 0];
    keep_mean adds 2 back on counted entries → [1, 2, 3, 0]."""
    x, mask = T([[1.0, 2.0, 3.0, 100.0]]), T([[1.0, 1.0, 1.0, 0.0]])
    assert_near(masked_whiten(x, mask), [[-1.0, 0.0, 1.0, 0.0]])
    assert_near(masked_whiten(x, mask, keep_mean=True), [[1.0, 2.0, 3.0, 0.0]])


def test_masked_whiten_with_moments_of_two_halves_equals_whole():
    """Moments summed over two shards (two ranks) whiten each shard exactly as the whole batch."""
    g = torch.Generator().manual_seed(1)
    x, mask = torch.randn(4, 5, generator=g), (torch.rand(4, 5, generator=g) > 0.3).float()
    whole = masked_whiten(x, mask)
    moments = masked_moments(x[:2], mask[:2]) + masked_moments(x[2:], mask[2:])
    assert_near(torch.cat([masked_whiten(x[:2], mask[:2], moments), masked_whiten(x[2:], mask[2:], moments)]), whole)
