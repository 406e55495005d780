"""DPO-family losses: hand-computed values, limiting cases, gradients and the enum dispatch.

Shared example (unless a test says otherwise), β = 0.5:
    log π(y_c) = −1, log π(y_r) = −3, log π_ref(y_c) = log π_ref(y_r) = −2
    h = (−1 − (−2)) − (−3 − (−2)) = 1 − (−1) = 2,  β h = 1
Constants: −log σ(1) = 0.3132617, −log σ(−1) = 1.3132617, σ(−1) = 0.2689414, σ(0.5) = 0.6224593,
−log σ(3) = log(1 + e^−3) = 0.0485874.
"""

from __future__ import annotations

import math

import pytest
import torch
from handvalues import assert_near

from tuneloop.losses.dpo import (
    DPOLoss,
    DPOParams,
    PairLogps,
    UnpairedLogps,
    conservative_dpo_loss,
    dpo_family_loss,
    dpo_loss,
    hinge_loss,
    ipo_loss,
    kto_loss,
    kto_reference_point,
    orpo_loss,
    robust_dpo_loss,
    simpo_loss,
)

T = torch.tensor
NLS1, NLS_M1 = 0.3132617, 1.3132617


def example():
    return T([-1.0]), T([-3.0]), T([-2.0]), T([-2.0])


def random_logps(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(-5 * torch.rand(n, generator=g) for _ in range(4))


def test_dpo_hand_value_and_metrics():
    """β h = 1 → −log σ(1) = 0.3132617. Implicit rewards β(log π − log π_ref): chosen 0.5·1 = 0.5,
    rejected 0.5·(−1) = −0.5, margin 1, accuracy 1."""
    loss, metrics = dpo_loss(*example(), beta=0.5)
    assert_near(loss, [NLS1])
    assert metrics["rewards/chosen"] == 0.5 and metrics["rewards/rejected"] == -0.5
    assert metrics["rewards/margin"] == 1.0 and metrics["rewards/accuracy"] == 1.0
    assert metrics["logps/chosen"] == -1.0 and metrics["logps/rejected"] == -3.0


def test_dpo_gradient():
    """∂/∂ log π(y_c) of −log σ(β h) = −β σ(−β h) = −0.5 · 0.2689414 = −0.1344707; +0.1344707 for y_r."""
    pc, pr = T([-1.0], requires_grad=True), T([-3.0], requires_grad=True)
    dpo_loss(pc, pr, T([-2.0]), T([-2.0]), beta=0.5)[0].sum().backward()
    assert_near(pc.grad, [-0.1344707])
    assert_near(pr.grad, [0.1344707])


def test_policy_equal_to_reference_gives_log2_and_chance_accuracy():
    """At initialisation π = π_ref: h = 0, loss = log 2, rewards 0, accuracy ½ (equal counts ½)."""
    lp = T([-4.0, -7.0])
    loss, metrics = dpo_loss(lp, lp.flip(0), lp, lp.flip(0), beta=0.1)
    assert_near(loss, [math.log(2)] * 2)
    assert metrics["rewards/accuracy"] == 0.5


def test_conservative_dpo_hand_value_and_limit():
    """ε = 0.1: 0.9 · 0.3132617 + 0.1 · 1.3132617 = 0.4132617. ε = 0 is DPO exactly."""
    assert_near(conservative_dpo_loss(*example(), beta=0.5, label_smoothing=0.1)[0], [0.4132617])
    logps = random_logps()
    assert_near(conservative_dpo_loss(*logps, beta=0.3, label_smoothing=0.0)[0], dpo_loss(*logps, beta=0.3)[0], tol=0)


def test_robust_dpo_hand_value_limit_and_unbiasedness():
    """ε = 0.1: (0.9 · 0.3132617 − 0.1 · 1.3132617) / 0.8 = 0.1506094 / 0.8 = 0.1882617. ε = 0 is DPO.
    Unbiased under flips (Chowdhury et al.): (1−ε) L(h) + ε L(−h) = −log σ(β h) = 0.3132617."""
    assert_near(robust_dpo_loss(*example(), beta=0.5, label_smoothing=0.1)[0], [0.1882617])
    logps = random_logps()
    assert_near(robust_dpo_loss(*logps, beta=0.3, label_smoothing=0.0)[0], dpo_loss(*logps, beta=0.3)[0],
                tol=0)
    pc, pr, rc, rr = example()
    flipped = robust_dpo_loss(pr, pc, rr, rc, beta=0.5, label_smoothing=0.1)[0]
    clean = robust_dpo_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=0.1)[0]
    assert_near(0.9 * clean + 0.1 * flipped, [NLS1])


def test_ipo_hand_values_and_minimum():
    """β = 0.5: target 1/(2β) = 1. h = 2 → (2 − 1)² = 1. h = 1 → 0. Gradient in log π(y_c) is
    2(h − 1) = 2 at h = 2."""
    pc = T([-1.0], requires_grad=True)
    loss, _ = ipo_loss(pc, T([-3.0]), T([-2.0]), T([-2.0]), beta=0.5)
    assert_near(loss, [1.0])
    loss.sum().backward()
    assert_near(pc.grad, [2.0])
    assert_near(ipo_loss(T([-1.0]), T([-2.0]), T([-2.0]), T([-2.0]), beta=0.5)[0], [0.0])  # h = 1


def test_hinge_hand_values():
    """β = 0.5: max(0, 1 − 0.5 h) for h = 2, 0, −2 → 0, 1, 2."""
    loss, _ = hinge_loss(T([-1.0, -2.0, -3.0]), T([-3.0, -2.0, -1.0]), T([-2.0] * 3), T([-2.0] * 3), beta=0.5)
    assert_near(loss, [0.0, 1.0, 2.0])


def test_simpo_hand_value():
    """log π(y_c) = −4 over 4 tokens → ā_c = −1; log π(y_r) = −9 over 3 tokens → ā_r = −3. β = 2, γ = 1:
    2·(−1) − 2·(−3) − 1 = 3 → −log σ(3) = 0.0485874. Implicit rewards β ā: −2 and −6."""
    loss, metrics = simpo_loss(T([-4.0]), T([-9.0]), T([4]), T([3]), beta=2.0, gamma=1.0)
    assert_near(loss, [0.0485874])
    assert metrics["rewards/chosen"] == -2.0 and metrics["rewards/rejected"] == -6.0


def test_orpo_hand_value():
    """Chosen: 2 tokens, each log 0.5 → ā_c = log 0.5, odds 1, log odds 0. Rejected: 3 tokens of log 0.2
    → odds 0.2/0.8 = 0.25, log odds −1.3862944. L_OR = −log σ(1.3862944) = log(1 + 0.25) = 0.2231436.
    L_SFT = −log 0.5 = 0.6931472. λ = 0.1: 0.6931472 + 0.0223144 = 0.7154615."""
    loss, metrics = orpo_loss(T([2 * math.log(0.5)]), T([3 * math.log(0.2)]), T([2]), T([3]), orpo_lambda=0.1)
    assert_near(loss, [0.7154615])
    assert_near(metrics["orpo/log_odds_ratio"], 1.3862944)
    assert_near(metrics["orpo/nll"], 0.6931472)


def test_orpo_lambda_zero_is_sft_nll():
    """λ = 0 leaves the chosen per-token NLL: −(−6)/3 = 2."""
    assert_near(orpo_loss(T([-6.0]), T([-1.0]), T([3]), T([1]), orpo_lambda=0.0)[0], [2.0])


def test_kto_hand_values():
    """β = 1, z0 = 0.5, λ_D = 1, λ_U = 2. Desirable, r = −1 − (−2) = 1: 1 − σ(1 − 0.5) = 1 − 0.6224593 =
    0.3775407. Undesirable, r = −1 − (−0.5) = −0.5: 2·(1 − σ(0.5 − (−0.5))) = 2·0.2689414 = 0.5378828."""
    loss, metrics = kto_loss(T([-1.0, -1.0]), T([-2.0, -0.5]), T([True, False]), 0.5, beta=1.0,
                             desirable_weight=1.0, undesirable_weight=2.0)
    assert_near(loss, [0.3775407, 0.5378828])
    assert metrics["rewards/desirable"] == 1.0 and metrics["rewards/undesirable"] == -0.5


def test_kto_reference_point_is_clamped_mean_without_gradient():
    """mean(log π − log π_ref): (1 + 1)/2 = 1; (1 − 3)/2 = −1 → clamped to 0; no gradient flows."""
    policy = T([-1.0, -1.0], requires_grad=True)
    z0 = kto_reference_point(policy, T([-2.0, -2.0]))
    assert_near(z0, 1.0)
    assert not z0.requires_grad
    assert_near(kto_reference_point(T([-1.0, -3.0]), T([-2.0, 0.0])), 0.0)


def test_rpo_adds_token_averaged_nll():
    """DPO 0.3132617 + α·(−log π(y_c)/|y_c|) with α = 1, log π(y_c) = −1 over 2 tokens: + 0.5 = 0.8132617."""
    pc, pr, rc, rr = example()
    logps = PairLogps(pc, pr, rc, rr, chosen_tokens=T([2]), rejected_tokens=T([5]))
    loss, metrics = dpo_family_loss("dpo", logps, DPOParams(beta=0.5, rpo_alpha=1.0))
    assert_near(loss, [0.8132617])
    assert metrics["rpo/nll"] == 0.5


def test_every_enum_member_dispatches_to_its_function():
    """The enum path gives exactly what the named pure function gives, for every loss."""
    pc, pr, rc, rr = random_logps()
    tokens_c, tokens_r = torch.arange(1, 9), torch.arange(8, 0, -1)
    pairs = PairLogps(pc, pr, rc, rr, tokens_c, tokens_r)
    p = DPOParams(beta=0.3, label_smoothing=0.2, simpo_beta=2.5, simpo_gamma=0.7, orpo_lambda=0.2)
    plain = DPOParams(beta=0.3, simpo_beta=2.5, simpo_gamma=0.7, orpo_lambda=0.2)
    expected = {
        DPOLoss.DPO: (dpo_loss(pc, pr, rc, rr, beta=0.3), plain),
        DPOLoss.CDPO: (conservative_dpo_loss(pc, pr, rc, rr, beta=0.3, label_smoothing=0.2), p),
        DPOLoss.ROBUST: (robust_dpo_loss(pc, pr, rc, rr, beta=0.3, label_smoothing=0.2), p),
        DPOLoss.IPO: (ipo_loss(pc, pr, rc, rr, beta=0.3), plain),
        DPOLoss.HINGE: (hinge_loss(pc, pr, rc, rr, beta=0.3), plain),
        DPOLoss.SIMPO: (simpo_loss(pc, pr, tokens_c, tokens_r, beta=2.5, gamma=0.7), plain),
        DPOLoss.ORPO: (orpo_loss(pc, pr, tokens_c, tokens_r, orpo_lambda=0.2), plain),
    }
    assert set(expected) | {DPOLoss.KTO} == set(DPOLoss)
    for kind, ((want, _), params) in expected.items():
        assert_near(dpo_family_loss(kind.value, pairs, params)[0], want, tol=0)
    desirable = torch.arange(8) % 2 == 0
    unpaired = UnpairedLogps(pc, rc, desirable, kto_reference_point(pr, rr))
    # Unequal λ_D, λ_U: a dispatch that dropped or swapped them would not give the same losses.
    weighted = DPOParams(beta=0.3, kto_desirable_weight=1.5, kto_undesirable_weight=0.5)
    want = kto_loss(pc, rc, desirable, kto_reference_point(pr, rr), beta=0.3, desirable_weight=1.5,
                    undesirable_weight=0.5)[0]
    assert_near(dpo_family_loss(DPOLoss.KTO, unpaired, weighted)[0], want, tol=0)


def test_enum_properties():
    assert not DPOLoss.SIMPO.needs_reference and not DPOLoss.ORPO.needs_reference and DPOLoss.KTO.needs_reference
    assert DPOLoss("ipo") is DPOLoss.IPO and not DPOLoss.KTO.is_paired and DPOLoss.DPO.is_paired


def test_dispatch_refuses_settings_it_would_ignore_and_missing_inputs():
    pc, pr, rc, rr = example()
    with pytest.raises(ValueError, match="label_smoothing=0.1 only applies to 'cdpo' and 'robust'"):
        dpo_family_loss("dpo", PairLogps(pc, pr, rc, rr), DPOParams(label_smoothing=0.1))
    with pytest.raises(ValueError, match="already has its own"):
        dpo_family_loss("orpo", PairLogps(pc, pr), DPOParams(rpo_alpha=1.0))
    with pytest.raises(AssertionError, match="'ipo' needs reference log-probs"):
        dpo_family_loss("ipo", PairLogps(pc, pr), DPOParams())
    with pytest.raises(AssertionError, match="'simpo' needs response token counts"):
        dpo_family_loss("simpo", PairLogps(pc, pr), DPOParams())
    with pytest.raises(AssertionError, match="'kto' takes UnpairedLogps"):
        dpo_family_loss("kto", PairLogps(pc, pr, rc, rr), DPOParams())
    with pytest.raises(ValueError):
        dpo_family_loss("sigmoid", PairLogps(pc, pr, rc, rr), DPOParams())
    with pytest.raises(AssertionError, match="robust DPO needs 0 ≤ ε < 0.5"):
        robust_dpo_loss(pc, pr, rc, rr, beta=0.1, label_smoothing=0.5)


def test_per_example_losses_compose_into_batch_mean():
    """The convention: losses are per example; the batch mean of two halves equals the mean of the whole."""
    logps = random_logps(n=6, seed=3)
    whole = dpo_loss(*logps, beta=0.2)[0]
    halves = [dpo_loss(*(x[s] for x in logps), beta=0.2)[0] for s in (slice(0, 3), slice(3, 6))]
    assert_near((halves[0].sum() + halves[1].sum()) / 6, whole.mean())


def test_gradcheck_family_in_fp64():
    """Analytic vs numerical gradients for the smooth losses (fp64 inputs stay fp64)."""
    x = tuple(-3 * torch.rand(4, dtype=torch.float64) for _ in range(4))
    tokens = torch.tensor([3, 4, 5, 6])
    funcs = [
        lambda pc, pr: dpo_loss(pc, pr, x[2], x[3], beta=0.4)[0],
        lambda pc, pr: robust_dpo_loss(pc, pr, x[2], x[3], beta=0.4, label_smoothing=0.2)[0],
        lambda pc, pr: ipo_loss(pc, pr, x[2], x[3], beta=0.4)[0],
        lambda pc, pr: simpo_loss(pc, pr, tokens, tokens, beta=2.0, gamma=0.5)[0],
        lambda pc, pr: orpo_loss(pc, pr, tokens, tokens, orpo_lambda=0.3)[0],
    ]
    for f in funcs:
        inputs = (x[0].clone().requires_grad_(), x[1].clone().requires_grad_())
        assert torch.autograd.gradcheck(f, inputs)
