"""RL policy and value losses: hand-computed values and gradients, clip-higher, dual clip, GSPO, CISPO,
the A2C equivalence, and the sampler/trainer guard.

Shared PPO example: four tokens of one row, advantages Â = [1, 1, −1, −1], ratios ρ = [1.5, 0.5, 1.5, 0.5]
(log ρ = ±ln 1.5, ln 0.5 set through old log-probs; log π = 0 here, so ∂ρ/∂log π = ρ).
"""

from __future__ import annotations

import math

import pytest
import torch
from handvalues import assert_near

from tuneloop.losses.reductions import aggregate_loss
from tuneloop.losses.rl_policy import (
    PolicyLoss,
    PolicyLossInputs,
    PolicyLossParams,
    explained_variance,
    logprob_mismatch,
    policy_loss,
    truncated_is_weights,
    value_loss,
)

T = torch.tensor
LN15, LN05 = math.log(1.5), math.log(0.5)


def ppo_example():
    logps = torch.zeros(1, 4, requires_grad=True)
    old = -T([[LN15, LN05, LN15, LN05]])
    return logps, PolicyLossInputs(logps, old, T([[1.0, 1.0, -1.0, -1.0]]), torch.ones(1, 4))


def test_ppo_clip_symmetric_hand_values_and_gradient():
    """ε = 0.2. Token 0: max(−1.5, −1.2) = −1.2 (clipped, gradient 0). Token 1: max(−0.5, −0.8) = −0.5
    (gradient −Â ρ = −0.5). Token 2: max(1.5, 1.2) = 1.5 (gradient +1.5). Token 3: max(0.5, 0.8) = 0.8
    (clipped, gradient 0). clipfrac 2/4 = 0.5."""
    logps, x = ppo_example()
    loss, metrics = policy_loss("ppo_clip", x, PolicyLossParams(clip_low=0.2, clip_high=0.2))
    assert_near(loss, [[-1.2, -0.5, 1.5, 0.8]])
    loss.sum().backward()
    assert_near(logps.grad, [[0.0, -0.5, 1.5, 0.0]])
    assert metrics["policy/clipfrac"] == 0.5
    assert_near(metrics["policy/ratio_max"], 1.5)
    assert_near(metrics["policy/ratio_min"], 0.5)
    assert_near(metrics["policy/approxkl"], 0.5 * (2 * LN15 ** 2 + 2 * LN05 ** 2) / 4)


def test_ppo_clip_higher():
    """DAPO: ε_low = 0.2, ε_high = 0.28. Token 0 is capped at −1.28 instead of −1.2; token 3 (below 1 − ε_low)
    still 0.8."""
    _, x = ppo_example()
    loss, _ = policy_loss("ppo_clip", x, PolicyLossParams(clip_low=0.2, clip_high=0.28))
    assert_near(loss, [[-1.28, -0.5, 1.5, 0.8]])


def test_ppo_dual_clip():
    """c = 3, Â = −1, ρ = 4: max(4, 1.2) = 4, capped at −c Â = 3 (gradient 0). ρ = 1.5 (loss 1.5 < 3) and
    positive advantages are untouched."""
    logps = torch.zeros(1, 3, requires_grad=True)
    x = PolicyLossInputs(logps, -T([[math.log(4.0), LN15, math.log(4.0)]]), T([[-1.0, -1.0, 1.0]]), torch.ones(1, 3))
    loss, metrics = policy_loss("ppo_clip", x, PolicyLossParams(dual_clip=3.0))
    assert_near(loss, [[3.0, 1.5, -1.2]])
    loss.sum().backward()
    assert_near(logps.grad, [[0.0, 1.5, 0.0]])
    assert_near(metrics["policy/dual_clipfrac"], 1 / 3)
    with pytest.raises(ValueError, match="dual_clip"):
        policy_loss("cispo", x, PolicyLossParams(dual_clip=3.0))


def test_ppo_at_ratio_one_has_the_a2c_gradient():
    """One epoch, one mini-batch: the policy that trains is the one that sampled, ρ = 1, so
    ∇ max(−Â ρ, −Â clip(ρ)) = −Â ∇log π = ∇ vanilla_pg. Random data, token-mean aggregation."""
    g = torch.Generator().manual_seed(0)
    lp = -torch.rand(3, 5, generator=g)
    adv, mask = torch.randn(3, 5, generator=g), T([[1.0] * 5, [1.0] * 3 + [0.0] * 2, [1.0] * 4 + [0.0]])
    grads = {}
    for kind in ("ppo_clip", "vanilla_pg"):
        logps = lp.clone().requires_grad_(True)
        loss, _ = policy_loss(kind, PolicyLossInputs(logps, lp.clone(), adv, mask), PolicyLossParams())
        total, units = aggregate_loss(loss, mask, "token_mean")
        (total / units).backward()
        grads[kind] = logps.grad
    assert_near(grads["ppo_clip"], grads["vanilla_pg"], tol=1e-6)
    assert grads["vanilla_pg"].abs().sum() > 0


def test_vanilla_pg_hand_value():
    """−Â log π: Â = [2, −1], log π = [−0.5, −2] → [1, −2]; gradient −Â = [−2, 1]."""
    logps = T([[-0.5, -2.0]], requires_grad=True)
    loss, _ = policy_loss("vanilla_pg", PolicyLossInputs(logps, logps.detach(), T([[2.0, -1.0]]), torch.ones(1, 2)),
                          PolicyLossParams())
    assert_near(loss, [[1.0, -2.0]])
    loss.sum().backward()
    assert_near(logps.grad, [[-2.0, 1.0]])


def test_gspo_sequence_ratio_value_and_gradient():
    """Row with log ρ = [0.3, 0.1]: s = exp(0.2) = 1.2214028 at both tokens. Â = −1, ε = 0.2:
    max(1.2214028, 1.2) = 1.2214028 (not clipped), gradient per token −Â s = 1.2214028.
    Â = +1: max(−1.2214028, −1.2) = −1.2 (clipped, gradient 0)."""
    for adv, expected, grad in ((-1.0, 1.2214028, 1.2214028), (1.0, -1.2, 0.0)):
        logps = torch.zeros(1, 2, requires_grad=True)
        x = PolicyLossInputs(logps, T([[-0.3, -0.1]]), torch.full((1, 2), adv), torch.ones(1, 2))
        loss, metrics = policy_loss("gspo", x, PolicyLossParams())
        assert_near(loss, [[expected, expected]])
        loss.sum().backward()
        assert_near(logps.grad, [[grad, grad]])
        assert_near(metrics["policy/ratio_mean"], 1.2214028)


def test_gspo_padding_does_not_change_the_sequence_ratio():
    """Row [0.3, 0.1, pad 5.0]: the mean is over the two counted tokens, s = exp(0.2) still."""
    logps = torch.zeros(1, 3, requires_grad=True)
    x = PolicyLossInputs(logps, T([[-0.3, -0.1, -5.0]]), torch.full((1, 3), -1.0), T([[1.0, 1.0, 0.0]]))
    assert_near(policy_loss("gspo", x, PolicyLossParams())[0], [[1.2214028, 1.2214028, 0.0]])


def test_cispo_clipped_stopped_weight():
    """ε_low = 0.2, ε_high = 0.28; log π = −0.5. Token 0: ρ = 1.5 → w = 1.28, Â = 1: loss −1.28·(−0.5) = 0.64,
    gradient −1.28. Token 1: ρ = 0.5 → w = 0.8, Â = −1: loss 0.8·(−0.5) = −0.4, gradient +0.8. Token 2: ρ = 1,
    w = 1, Â = 2: loss 1, gradient −2. Unlike ppo_clip, clipped tokens keep a gradient."""
    logps = torch.full((1, 3), -0.5, requires_grad=True)
    old = T([[-0.5 - LN15, -0.5 - LN05, -0.5]])
    x = PolicyLossInputs(logps, old, T([[1.0, -1.0, 2.0]]), torch.ones(1, 3))
    loss, metrics = policy_loss("cispo", x, PolicyLossParams(clip_low=0.2, clip_high=0.28))
    assert_near(loss, [[0.64, -0.4, 1.0]])
    loss.sum().backward()
    assert_near(logps.grad, [[-1.28, 0.8, -2.0]])
    assert_near(metrics["policy/clipfrac"], 2 / 3)


def test_clipped_value_loss_hand_values():
    """V_old = 0.5, R = 2, ε_v = 0.2. V = 1.0: clipped V 0.7; ½ max(1, 1.69) = 0.845 (clipped, gradient 0).
    V = 0.6: within range, ½·1.96 = 0.98, gradient V − R = −1.4. V = 0.0: clipped V 0.3; ½ max(4, 2.89) = 2
    (unclipped, gradient −2). Unclipped value loss at V = 1.0: ½·1 = 0.5."""
    values = T([[1.0, 0.6, 0.0]], requires_grad=True)
    loss, metrics = value_loss(values, torch.full((1, 3), 0.5), torch.full((1, 3), 2.0), torch.ones(1, 3), 0.2)
    assert_near(loss, [[0.845, 0.98, 2.0]])
    loss.sum().backward()
    assert_near(values.grad, [[0.0, -1.4, -2.0]])
    assert_near(metrics["val/clipfrac"], 1 / 3)
    assert_near(value_loss(T([[1.0]]), T([[0.5]]), T([[2.0]]), torch.ones(1, 1), None)[0], [[0.5]])


def test_explained_variance():
    """R = [1, 2, 3]; V = R → 1. V = [2, 2, 2] → Var[R − V] = Var[R] → 0. V = [1, 2, 4]: R − V = [0, 0, −1],
    population variance 2/9; Var[R] = 2/3 → 1 − 1/3 = 0.6666667."""
    r, m = T([[1.0, 2.0, 3.0]]), torch.ones(1, 3)
    assert_near(explained_variance(r, r, m), 1.0)
    assert_near(explained_variance(torch.full((1, 3), 2.0), r, m), 0.0)
    assert_near(explained_variance(T([[1.0, 2.0, 4.0]]), r, m), 2 / 3)


def test_truncated_is_weights_and_mismatch_guard():
    """π_old/π_sampler = e^{0.5} = 1.6487213 and e^{−0.5} = 0.6065307; cap 1.5 → [1.5, 0.6065307].
    Guard on counted tokens: |Δ| mean 0.5, max 0.5; ratio min 0.6065307, max 1.6487213,
    mean (1.6487213 + 0.6065307)/2 = 1.1276260."""
    train, sampler, mask = T([[-1.0, -2.0, 9.0]]), T([[-1.5, -1.5, 0.0]]), T([[1.0, 1.0, 0.0]])
    assert_near(truncated_is_weights(train, sampler, cap=1.5)[:, :2], [[1.5, 0.6065307]])
    guard = logprob_mismatch(train, sampler, mask)
    assert_near(guard["sampling/sampling_logp_difference/mean"], 0.5)
    assert_near(guard["sampling/sampling_logp_difference/max"], 0.5)
    assert_near(guard["sampling/importance_ratio/min"], 0.6065307)
    assert_near(guard["sampling/importance_ratio/max"], 1.6487213)
    assert_near(guard["sampling/importance_ratio/mean"], 1.1276260)


def test_every_policy_loss_is_zero_off_mask():
    logps = torch.zeros(1, 2, requires_grad=True)
    x = PolicyLossInputs(logps, T([[-0.1, 3.0]]), T([[1.0, 9.0]]), T([[1.0, 0.0]]))
    for kind in PolicyLoss:
        assert policy_loss(kind, x, PolicyLossParams())[0][0, 1].item() == 0.0
