"""The direct preference optimisation family: pure functions of sequence log-probs, and an enum.

Losses (h is the reference-normalised log-ratio difference, see ``log_ratio_difference``):

- ``dpo``     −log σ(β h)                                   Rafailov et al. 2023, eq. 7
- ``cdpo``    −(1−ε) log σ(β h) − ε log σ(−β h)             Mitchell 2023, conservative DPO
- ``robust``  [−(1−ε) log σ(β h) + ε log σ(−β h)] / (1−2ε)  Chowdhury et al. 2024, rDPO
- ``ipo``     (h − 1/(2β))²                                 Azar et al. 2023, eq. 17
- ``hinge``   max(0, 1 − β h)                               Zhao et al. 2023, SLiC-HF calibration loss
- ``simpo``   −log σ(β (ā_c − ā_r) − γ), ā = log π / |y|    Meng et al. 2024, eq. 6 (no reference)
- ``orpo``    −ā_c − λ log σ(log odds_c − log odds_r)       Hong et al. 2024, eqs. 6–7 (no reference)
- ``kto``     λ_y − v(x, y), unpaired, reference point z0   Ethayarajh et al. 2024, §4.1

plus the optional NLL term of RPO, α·(−log π(y_c|x) / |y_c|) (Pang et al. 2024, §2), added to any
paired loss but ORPO (which has its own).

Inputs are per-sequence *summed* log-probs of the response tokens, shape (B,), from the policy and,
where a loss needs it, the reference; SimPO and ORPO also need the response token counts (B,) to form
the per-token averages ā. IPO is applied to summed log-probs as in the paper (TRL averages per token
for IPO; pass averaged log-probs to get that behaviour).

Reduction: every function returns the loss of each example, shape (B,), never a mean (the same
convention as ``losses.preference``): the loop sums over a micro-batch and divides by the number of
pairs in the optimizer step (``losses.reductions.token_normalised``). Metrics are batch means as floats.

Implicit rewards β·(log π − log π_ref) (DPO §5) are reported for reference-based losses; SimPO
reports its own reward β·ā; accuracy counts equal rewards as ½ (chance).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F

from tuneloop.losses.preference import fp32_or_wider
from tuneloop.metrics.preference import pair_accuracy


@dataclass
class PairLogps:
    """Sequence log-probs of a batch of preference pairs. Every tensor is (B,)."""

    policy_chosen: torch.Tensor  # (B,) Σ log π(y_c,t | x, y_c,<t) over the chosen response tokens
    policy_rejected: torch.Tensor  # (B,) the same for the rejected response
    reference_chosen: torch.Tensor | None = None  # (B,) under the reference model; None if reference-free
    reference_rejected: torch.Tensor | None = None  # (B,)
    chosen_tokens: torch.Tensor | None = None  # (B,) number of chosen response tokens (SimPO, ORPO, RPO)
    rejected_tokens: torch.Tensor | None = None  # (B,) number of rejected response tokens


@dataclass
class UnpairedLogps:
    """Sequence log-probs of a batch of unpaired examples for KTO. Tensors are (B,)."""

    policy: torch.Tensor  # (B,) Σ log π(y|x) over the response tokens
    reference: torch.Tensor  # (B,) Σ log π_ref(y|x)
    desirable: torch.Tensor  # (B,) bool: True for a desirable example, False for an undesirable one
    reference_point: torch.Tensor  # () z0 from ``kto_reference_point``, detached


@dataclass(frozen=True)
class DPOParams:
    """Hyperparameters of the DPO family; each field applies only to the losses it names."""

    beta: float = 0.1
    """β: KL strength of dpo/cdpo/robust/ipo/hinge/kto (DPO eq. 7; IPO's τ)."""
    label_smoothing: float = 0.0
    """ε: assumed label-flip rate of cdpo and robust (0 ≤ ε < ½)."""
    simpo_beta: float = 2.0
    """β of SimPO (scales per-token average log-probs; the paper uses 2.0–2.5)."""
    simpo_gamma: float = 0.5
    """γ: SimPO's target reward margin."""
    orpo_lambda: float = 0.1
    """λ: weight of ORPO's odds-ratio term against its NLL term."""
    kto_desirable_weight: float = 1.0
    """λ_D of KTO."""
    kto_undesirable_weight: float = 1.0
    """λ_U of KTO."""
    rpo_alpha: float = 0.0
    """α: weight of the chosen NLL term added to a paired loss (RPO); 0 = off."""


def log_ratio_difference(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                         reference_chosen: torch.Tensor, reference_rejected: torch.Tensor) -> torch.Tensor:
    """h = [log π(y_c) − log π_ref(y_c)] − [log π(y_r) − log π_ref(y_r)], all (B,) → (B,), fp32 or wider."""
    chosen_ratio = fp32_or_wider(policy_chosen) - fp32_or_wider(reference_chosen)
    rejected_ratio = fp32_or_wider(policy_rejected) - fp32_or_wider(reference_rejected)
    return chosen_ratio - rejected_ratio


def _pair_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, policy_chosen: torch.Tensor,
                  policy_rejected: torch.Tensor) -> dict[str, float]:
    chosen_rewards, rejected_rewards = chosen_rewards.detach().float(), rejected_rewards.detach().float()
    margin = chosen_rewards - rejected_rewards
    return {
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/margin": margin.mean().item(),
        "rewards/accuracy": pair_accuracy(margin).mean().item(),
        "logps/chosen": policy_chosen.detach().float().mean().item(),
        "logps/rejected": policy_rejected.detach().float().mean().item(),
        "pairs": float(margin.numel()),
    }


def _implicit_reward_metrics(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta):
    chosen_rewards = beta * (policy_chosen.detach().float() - reference_chosen.detach().float())
    rejected_rewards = beta * (policy_rejected.detach().float() - reference_rejected.detach().float())
    return _pair_metrics(chosen_rewards, rejected_rewards, policy_chosen, policy_rejected)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
             reference_rejected: torch.Tensor, *, beta: float) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO (Rafailov et al. 2023, eq. 7): −log σ(β h). Inputs (B,) summed log-probs; returns (B,)."""
    h = log_ratio_difference(policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    loss = -F.logsigmoid(beta * h)
    return loss, _implicit_reward_metrics(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta)


def conservative_dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                          reference_chosen: torch.Tensor, reference_rejected: torch.Tensor, *, beta: float,
                          label_smoothing: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Conservative DPO (Mitchell 2023): −(1−ε) log σ(β h) − ε log σ(−β h).

    The DPO loss against a soft label 1−ε (labels flipped with probability ε); ε = 0 is DPO. Its
    minimum is not at h → ∞, so it stops pushing once σ(β h) = 1 − ε. Inputs (B,); returns (B,).
    """
    assert 0.0 <= label_smoothing <= 0.5, f"label_smoothing ε must be in [0, 0.5], got {label_smoothing}"
    h = log_ratio_difference(policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    loss = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    return loss, _implicit_reward_metrics(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta)


def robust_dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
                    reference_rejected: torch.Tensor, *, beta: float, label_smoothing: float
                    ) -> tuple[torch.Tensor, dict[str, float]]:
    """Robust DPO (Chowdhury et al. 2024 (rDPO)): [(1−ε) ℓ(β h) − ε ℓ(−β h)] / (1 − 2ε), ℓ(z) = −log σ(z).

    An unbiased estimate of the clean-label DPO loss when labels are flipped with rate ε; ε = 0 is
    DPO. It can be negative. Inputs (B,); returns (B,).
    """
    assert 0.0 <= label_smoothing < 0.5, f"robust DPO needs 0 ≤ ε < 0.5, got {label_smoothing}"
    h = log_ratio_difference(policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    eps = label_smoothing
    loss = (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)
    return loss, _implicit_reward_metrics(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta)


def ipo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
             reference_rejected: torch.Tensor, *, beta: float) -> tuple[torch.Tensor, dict[str, float]]:
    """IPO (Azar et al. 2023, eq. 17 with τ = β): (h − 1/(2β))². Zero at h = 1/(2β). (B,) → (B,)."""
    assert beta > 0, f"IPO needs β > 0, got {beta}"
    h = log_ratio_difference(policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    loss = (h - 1 / (2 * beta)).pow(2)
    return loss, _implicit_reward_metrics(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta)


def hinge_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
               reference_rejected: torch.Tensor, *, beta: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Hinge / SLiC: max(0, 1 − β h).

    SLiC-HF's calibration loss max(0, δ − log π(y_c) + log π(y_r)) (Zhao et al. 2023, §3) applied
    to reference-normalised log-ratios with δ = 1/β, scaled by β (the form in the DPO paper's
    appendix and TRL's "hinge"). Inputs (B,); returns (B,).
    """
    h = log_ratio_difference(policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    loss = torch.relu(1 - beta * h)
    return loss, _implicit_reward_metrics(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta)


def _per_token(logps: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    assert bool((tokens > 0).all()), f"every response needs at least one token, got counts {tokens.tolist()}"
    return fp32_or_wider(logps) / fp32_or_wider(tokens)


def simpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, chosen_tokens: torch.Tensor,
               rejected_tokens: torch.Tensor, *, beta: float, gamma: float) -> tuple[torch.Tensor, dict[str, float]]:
    """SimPO (Meng et al. 2024, eq. 6): −log σ(β/|y_c| log π(y_c) − β/|y_r| log π(y_r) − γ).

    Reference-free: the implicit reward is β times the per-token average log-prob (eq. 4), and γ is
    the target reward margin. Inputs (B,) summed log-probs and token counts; returns (B,).
    """
    chosen_rewards = beta * _per_token(policy_chosen, chosen_tokens)
    rejected_rewards = beta * _per_token(policy_rejected, rejected_tokens)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
    return loss, _pair_metrics(chosen_rewards, rejected_rewards, policy_chosen, policy_rejected)


def _log_odds(mean_logp: torch.Tensor) -> torch.Tensor:
    # log[p / (1 − p)] with log p = ā < 0: ā − log(1 − e^ā); expm1 keeps precision when ā → 0.
    return mean_logp - torch.log(-torch.expm1(mean_logp))


def orpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, chosen_tokens: torch.Tensor,
              rejected_tokens: torch.Tensor, *, orpo_lambda: float) -> tuple[torch.Tensor, dict[str, float]]:
    """ORPO (Hong et al. 2024, eq. 6): L_SFT + λ·L_OR, no reference model.

    With ā = log π(y|x)/|y| the per-token average log-prob and odds(y) = e^ā / (1 − e^ā) (eq. 3)::

        L_SFT = −ā_c                                        (the chosen response's per-token NLL)
        L_OR  = −log σ(log odds(y_c) − log odds(y_r))       (eq. 7)

    Inputs (B,) summed log-probs and token counts; returns (B,). L_SFT here is per-example
    token-averaged (the paper's mean over examples of per-sequence means).
    """
    mean_chosen = _per_token(policy_chosen, chosen_tokens)
    mean_rejected = _per_token(policy_rejected, rejected_tokens)
    log_odds_ratio = _log_odds(mean_chosen) - _log_odds(mean_rejected)
    odds_ratio_loss = -F.logsigmoid(log_odds_ratio)
    loss = -mean_chosen + orpo_lambda * odds_ratio_loss
    metrics = _pair_metrics(orpo_lambda * mean_chosen, orpo_lambda * mean_rejected, policy_chosen, policy_rejected)
    metrics["orpo/log_odds_ratio"] = log_odds_ratio.detach().mean().item()
    metrics["orpo/nll"] = (-mean_chosen).detach().mean().item()
    return loss, metrics


def nll_term(policy_chosen: torch.Tensor, chosen_tokens: torch.Tensor) -> torch.Tensor:
    """RPO's NLL term −log π(y_c|x)/|y_c| per example (Pang et al. 2024, §2). (B,) → (B,)."""
    return -_per_token(policy_chosen, chosen_tokens)


def kto_reference_point(policy_mismatched: torch.Tensor, reference_mismatched: torch.Tensor) -> torch.Tensor:
    """KTO's reference point z0 = max(0, mean(log π(y'|x) − log π_ref(y'|x))), detached (§4.1).

    A biased estimate of KL(π‖π_ref) from responses y' paired with *other* prompts x in the batch
    (mismatched pairs), clamped at 0; no gradient flows through it. With several processes,
    average the per-process means before clamping and pass the result as the reference point.

    Args:
        policy_mismatched: (B',) summed log-probs of mismatched (x, y') under the policy.
        reference_mismatched: (B',) the same under the reference.
    Returns:
        () fp32.
    """
    return (policy_mismatched.detach().float() - reference_mismatched.detach().float()).mean().clamp(min=0)


def kto_loss(policy: torch.Tensor, reference: torch.Tensor, desirable: torch.Tensor,
             reference_point: torch.Tensor | float, *, beta: float, desirable_weight: float,
             undesirable_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """KTO (Ethayarajh et al. 2024, §4.1): λ_y − v(x, y) per example.

    With r = log π(y|x) − log π_ref(y|x) and z0 the reference point::

        v = λ_D σ(β (r − z0))   for a desirable y,     v = λ_U σ(β (z0 − r))   for an undesirable y.

    Args:
        policy: (B,) summed log-probs under the policy; reference: (B,) under the reference.
        desirable: (B,) bool.
        reference_point: () or a number, z0 from ``kto_reference_point`` (no gradient).
    Returns:
        (loss (B,), metrics).
    """
    desirable = desirable.to(torch.bool)
    log_ratio = fp32_or_wider(policy) - fp32_or_wider(reference)
    z0 = torch.as_tensor(reference_point, dtype=log_ratio.dtype, device=log_ratio.device).detach()
    signed = torch.where(desirable, log_ratio - z0, z0 - log_ratio)
    weight = torch.where(desirable, desirable_weight, undesirable_weight).to(log_ratio.dtype)
    loss = weight * (1 - torch.sigmoid(beta * signed))
    rewards = beta * log_ratio.detach()
    metrics = {"kto/reference_point": float(z0), "examples": float(log_ratio.numel()),
               "desirable": float(desirable.sum().item())}
    for name, mask in (("desirable", desirable), ("undesirable", ~desirable)):
        if mask.any():
            metrics[f"rewards/{name}"] = rewards[mask].mean().item()
            metrics[f"logps/{name}"] = policy.detach().float()[mask].mean().item()
    return loss, metrics


class DPOLoss(str, Enum):
    """The DPO-family loss a run optimises; ``loss_function`` maps each to its pure function."""

    DPO = "dpo"
    CDPO = "cdpo"
    ROBUST = "robust"
    IPO = "ipo"
    HINGE = "hinge"
    SIMPO = "simpo"
    ORPO = "orpo"
    KTO = "kto"

    @property
    def is_paired(self) -> bool:
        """True for losses on (chosen, rejected) pairs; KTO takes unpaired examples."""
        return self is not DPOLoss.KTO

    @property
    def needs_reference(self) -> bool:
        """True when reference log-probs must be computed (and can be cached before training)."""
        return self not in (DPOLoss.SIMPO, DPOLoss.ORPO)


def _reference(x: PairLogps, kind: DPOLoss) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    assert x.reference_chosen is not None and x.reference_rejected is not None, (
        f"loss '{kind.value}' needs reference log-probs; PairLogps.reference_chosen/rejected are None")
    return x.policy_chosen, x.policy_rejected, x.reference_chosen, x.reference_rejected


def _tokens(x: PairLogps, kind: DPOLoss) -> tuple[torch.Tensor, torch.Tensor]:
    assert x.chosen_tokens is not None and x.rejected_tokens is not None, (
        f"loss '{kind.value}' needs response token counts; PairLogps.chosen_tokens/rejected_tokens are None")
    return x.chosen_tokens, x.rejected_tokens


_PAIRED: dict[DPOLoss, Callable[[PairLogps, DPOParams], tuple[torch.Tensor, dict[str, float]]]] = {
    DPOLoss.DPO: lambda x, p: dpo_loss(*_reference(x, DPOLoss.DPO), beta=p.beta),
    DPOLoss.CDPO: lambda x, p: conservative_dpo_loss(*_reference(x, DPOLoss.CDPO), beta=p.beta,
                                                     label_smoothing=p.label_smoothing),
    DPOLoss.ROBUST: lambda x, p: robust_dpo_loss(*_reference(x, DPOLoss.ROBUST), beta=p.beta,
                                                 label_smoothing=p.label_smoothing),
    DPOLoss.IPO: lambda x, p: ipo_loss(*_reference(x, DPOLoss.IPO), beta=p.beta),
    DPOLoss.HINGE: lambda x, p: hinge_loss(*_reference(x, DPOLoss.HINGE), beta=p.beta),
    DPOLoss.SIMPO: lambda x, p: simpo_loss(x.policy_chosen, x.policy_rejected, *_tokens(x, DPOLoss.SIMPO),
                                           beta=p.simpo_beta, gamma=p.simpo_gamma),
    DPOLoss.ORPO: lambda x, p: orpo_loss(x.policy_chosen, x.policy_rejected, *_tokens(x, DPOLoss.ORPO),
                                         orpo_lambda=p.orpo_lambda),
}


def _check_params(kind: DPOLoss, params: DPOParams) -> None:
    # A setting the chosen loss would silently ignore is an error, not a no-op.
    if params.label_smoothing and kind not in (DPOLoss.CDPO, DPOLoss.ROBUST):
        raise ValueError(f"label_smoothing={params.label_smoothing} only applies to 'cdpo' and 'robust', "
                         f"not '{kind.value}'")
    if params.rpo_alpha and kind in (DPOLoss.ORPO, DPOLoss.KTO):
        raise ValueError(f"rpo_alpha={params.rpo_alpha} adds an NLL term to a paired loss; '{kind.value}' "
                         f"{'already has its own' if kind is DPOLoss.ORPO else 'is unpaired'}")


def dpo_family_loss(kind: DPOLoss | str, logps: PairLogps | UnpairedLogps, params: DPOParams
                    ) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-example loss (B,) and metrics of the DPO-family loss ``kind``, plus RPO's NLL if α > 0.

    Args:
        kind: a ``DPOLoss`` or its string value ("dpo", "ipo", ...).
        logps: ``PairLogps`` for paired losses, ``UnpairedLogps`` for KTO.
        params: hyperparameters. ``label_smoothing`` and ``rpo_alpha`` set where they do not apply are
            a ValueError; the other fields are simply unused by losses that do not name them.
    """
    kind = DPOLoss(kind)
    _check_params(kind, params)
    if kind is DPOLoss.KTO:
        assert isinstance(logps, UnpairedLogps), f"'kto' takes UnpairedLogps, got {type(logps).__name__}"
        return kto_loss(logps.policy, logps.reference, logps.desirable, logps.reference_point, beta=params.beta,
                        desirable_weight=params.kto_desirable_weight,
                        undesirable_weight=params.kto_undesirable_weight)
    assert isinstance(logps, PairLogps), f"'{kind.value}' takes PairLogps, got {type(logps).__name__}"
    loss, metrics = _PAIRED[kind](logps, params)
    if params.rpo_alpha:
        chosen_tokens, _ = _tokens(logps, kind)
        nll = nll_term(logps.policy_chosen, chosen_tokens)
        loss = loss + params.rpo_alpha * nll
        metrics["rpo/nll"] = nll.detach().mean().item()
    return loss, metrics
