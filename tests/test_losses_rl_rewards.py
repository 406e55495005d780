"""KL estimators, KL-shaped token rewards, score normalisation/clipping and the KL controller.

KL example: log π − log π_ref = ℓ = [0.5, −1]. k1 = [0.5, −1]; k2 = ℓ²/2 = [0.125, 0.5];
k3 = e^{−ℓ} − 1 + ℓ = [0.6065307 − 0.5, 2.7182818 − 2] = [0.1065307, 0.7182818].
"""

from __future__ import annotations

import torch
from handvalues import assert_near

from tuneloop.losses.rl_rewards import (
    KLController,
    RunningMoments,
    clip_scores,
    kl_estimates,
    kl_per_token,
    last_token_index,
    normalise_scores,
    penalise_missing_eos,
    token_rewards,
)

T = torch.tensor


def test_k1_k2_k3_hand_values():
    est = kl_estimates(T([[-1.0, -2.0]]), T([[-1.5, -1.0]]))
    assert_near(est["k1"], [[0.5, -1.0]])
    assert_near(est["k2"], [[0.125, 0.5]])
    assert_near(est["k3"], [[0.1065307, 0.7182818]])


def test_kl_estimators_are_zero_when_policy_equals_reference():
    lp = T([[-0.3, -2.0, -5.0]])
    for value in kl_estimates(lp, lp).values():
        assert_near(value, torch.zeros(1, 3), tol=0)


def test_k3_gradient():
    """∂k3/∂log π = 1 − e^{−ℓ}: at ℓ = 0.5, 1 − 0.6065307 = 0.3934693; at ℓ = −1, 1 − e = −1.7182818."""
    lp = T([[-1.0, -2.0]], requires_grad=True)
    kl_estimates(lp, T([[-1.5, -1.0]]))["k3"].sum().backward()
    assert_near(lp.grad, [[0.3934693, -1.7182818]])


def test_kl_per_token_masks_and_logs_all_three_as_response_sums():
    """Row 0: ℓ = [0.5, −1] both counted; row 1: ℓ = [0.5, pad]. k2 used: [[0.125, 0.5], [0.125, 0]].
    Response sums: k1 [−0.5, 0.5] → mean 0; k2 [0.625, 0.125] → 0.375; k3 [0.8248125, 0.1065307] → 0.4656716."""
    kl, metrics = kl_per_token("k2", T([[-1.0, -2.0], [-1.0, 0.0]]), T([[-1.5, -1.0], [-1.5, 3.0]]),
                               T([[1.0, 1.0], [1.0, 0.0]]))
    assert_near(kl, [[0.125, 0.5], [0.125, 0.0]])
    assert_near(metrics["kl/k1"], 0.0)
    assert_near(metrics["kl/k2"], 0.375)
    assert_near(metrics["kl/k3"], 0.4656716)


def test_token_rewards_put_the_score_on_the_last_response_token():
    """Responses of 3 and 1 tokens (right padding): score 2 at column 2 of row 0, −1 at column 0 of row 1;
    the non-score −0.1 per counted token, 0 on padding."""
    mask = T([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert last_token_index(mask).tolist() == [2, 0]
    rewards = token_rewards(T([2.0, -1.0]), torch.full((2, 3), -0.1), mask)
    assert_near(rewards, [[-0.1, -0.1, 1.9], [-1.1, 0.0, 0.0]])


def test_missing_eos_penalty_and_clipping():
    assert_near(penalise_missing_eos(T([0.5, 2.0]), T([True, False]), -1.0), [0.5, -1.0])
    assert_near(penalise_missing_eos(T([0.5, 2.0]), T([True, False]), None), [0.5, 2.0])
    assert_near(clip_scores(T([-7.0, 0.3, 9.0]), 5.0), [-5.0, 0.3, 5.0])


def test_running_moments_hand_value_and_split_invariance():
    """Batch [1, 3] then [5]: all three seen → mean 3, population variance (4 + 0 + 4)/3 = 2.6666667.
    Normalising 5 gives (5 − 3)/sqrt(8/3) = 1.2247449; clipped at 1 → 1."""
    moments = RunningMoments().update(T([1.0, 3.0])).update(T([5.0]))
    assert_near(moments.mean, 3.0)
    assert_near(moments.var, 8 / 3)
    assert moments.count == 3
    assert_near(normalise_scores(T([5.0]), moments, clip=None), [1.2247449])
    assert_near(normalise_scores(T([5.0]), moments, clip=1.0), [1.0])
    x = torch.randn(10, generator=torch.Generator().manual_seed(0))
    a, b = RunningMoments().update(x), RunningMoments().update(x[:3]).update(x[3:7]).update(x[7:])
    assert_near([a.mean, a.var], [b.mean, b.var])


def test_adaptive_kl_controller_hand_values():
    """β = 0.1, target 6, horizon 10000, n = 512. KL 9: e = clip(0.5) = 0.2 → β·(1 + 0.2·0.0512) = 0.101024.
    KL 3: e = clip(−0.5) = −0.2 → 0.098976. KL 6.6: e = 0.1 → 0.100512. Fixed (no target): unchanged."""
    ctl = KLController(coef=0.1, target=6.0, horizon=10000)
    assert_near(ctl.update(9.0, 512).coef, 0.101024)
    assert_near(ctl.update(3.0, 512).coef, 0.098976)
    assert_near(ctl.update(6.6, 512).coef, 0.100512)
    assert KLController(coef=0.1).update(100.0, 512).coef == 0.1
    assert ctl.update(9.0, 512).target == 6.0  # the state carries its settings
