"""Advantage estimators of the RL stage: pure functions of rewards, values and masks, and an enum.

Estimators (``AdvantageEstimator``; each returns ``(advantages, returns, metrics)``):

- ``gae``       GAE(γ, λ) with a critic (Schulman et al. 2016, eq. 16); returns = A + V are the value
                targets. PPO and A2C.
- ``grpo``      (R_i − mean_g R) / (std_g R + ε) per group of K samples of one prompt (Shao et al. 2024,
                DeepSeekMath §4.1.2, outcome supervision); std with Bessel's correction.
- ``dr_grpo``   R_i − mean_g R: no division by the std (Liu et al. 2025, Dr. GRPO §3.1); its constant
                length normaliser is ``LossAggregation.SEQ_MEAN_TOKEN_SUM_NORM``.
- ``rloo``      R_i − mean_{j≠i} R_j, the leave-one-out baseline (Ahmadian et al. 2024, eq. 6).
- ``reinforce_pp``  per-token discounted returns of the KL-shaped rewards, normalised over the whole
                global batch (Hu 2025, REINFORCE++ §3); the normalisation is done by the loop with
                ``masked_whiten`` over moments gathered from every rank (``whitens_batch``).
- ``reinforce_pp_baseline``  the same after subtracting each group's mean score (Hu 2025, §3.2).

Shapes: B sequences (B = N·K: N prompts, K samples each, a prompt's samples in consecutive rows), A
response tokens (each row's response starts at column 0; ``mask`` is 1 on its tokens). Rewards enter as
``scores`` (B,), the sequence-level score of the reward, and ``non_score`` (B, A), the per-token
non-score reward (−β·KL when the KL is in the reward, zeros when it is a loss term). R, the return of
an outcome estimator, is score + Σ_t non_score_t.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import torch

from tuneloop.losses.rl_rewards import token_rewards


@dataclass
class AdvantageInputs:
    """What every estimator reads. Shapes as in the module docstring."""

    scores: torch.Tensor  # (B,) sequence score of the reward (after normalisation/clipping/penalties)
    non_score: torch.Tensor  # (B, A) per-token non-score reward (−β·KL_t) or zeros
    mask: torch.Tensor  # (B, A) 1 on response tokens
    values: torch.Tensor | None = None  # (B, A) critic values V(s_t) at the sampled tokens; gae only
    group_size: int = 1  # K samples per prompt (consecutive rows)


@dataclass(frozen=True)
class AdvantageParams:
    gamma: float = 1.0
    """γ: discount (1.0 in RLHF, Huang et al. detail 'γ = 1')."""
    lam: float = 0.95
    """λ of GAE."""
    std_eps: float = 1e-6
    """ε added to the group std of grpo (a group of equal rewards gets advantage 0)."""


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = Σ_{s ≥ t} γ^{s−t} r_s over the response; rewards (B, A), mask (B, A) → (B, A), 0 off-mask."""
    rewards = rewards * mask
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
    return returns * mask


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eqs. 11–16).

    δ_t = r_t + γ V_{t+1} − V_t (V after the last response token is 0: the episode ends there),
    A_t = Σ_l (γλ)^l δ_{t+l}. λ = 1 gives the discounted return minus the value; λ = 0 gives δ_t.
    rewards, values, mask: (B, A). Returns (advantages, returns = A + V), both (B, A), 0 off-mask.
    """
    assert rewards.shape == values.shape == mask.shape, (
        f"rewards {tuple(rewards.shape)}, values {tuple(values.shape)}, mask {tuple(mask.shape)} differ")
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    length = rewards.shape[1]
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def _groups(x: torch.Tensor, group_size: int, name: str) -> torch.Tensor:
    if group_size < 2:
        raise ValueError(f"the '{name}' estimator compares the K samples of one prompt; it needs K ≥ 2, got "
                         f"K={group_size} (set rollout.samples_per_prompt ≥ 2)")
    assert x.numel() % group_size == 0, f"{x.numel()} sequences do not split into groups of K={group_size}"
    return x.view(-1, group_size)


def grpo_scores(returns: torch.Tensor, group_size: int, std_eps: float) -> torch.Tensor:
    """(R − mean_g R) / (std_g R + ε), std with Bessel's correction. returns (B,) → (B,)."""
    groups = _groups(returns, group_size, "grpo")
    centred = groups - groups.mean(dim=1, keepdim=True)
    return (centred / (groups.std(dim=1, keepdim=True) + std_eps)).reshape(-1)


def group_centred_scores(returns: torch.Tensor, group_size: int, name: str = "dr_grpo") -> torch.Tensor:
    """R − mean_g R (Dr. GRPO; the group-mean baseline of REINFORCE++-baseline). (B,) → (B,)."""
    groups = _groups(returns, group_size, name)
    return (groups - groups.mean(dim=1, keepdim=True)).reshape(-1)


def leave_one_out_scores(returns: torch.Tensor, group_size: int) -> torch.Tensor:
    """R_i − (Σ_g R − R_i)/(K − 1): each sample's baseline is the mean of the others. (B,) → (B,)."""
    groups = _groups(returns, group_size, "rloo")
    others_mean = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)
    return (groups - others_mean).reshape(-1)


def _outcome(x: AdvantageInputs) -> torch.Tensor:
    return x.scores + (x.non_score * x.mask).sum(dim=-1)


def _broadcast(per_sequence: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return per_sequence[:, None] * mask


Result = tuple[torch.Tensor, torch.Tensor, dict[str, float]]


def _gae(x: AdvantageInputs, p: AdvantageParams) -> Result:
    assert x.values is not None, "the 'gae' estimator needs critic values; AdvantageInputs.values is None"
    advantages, returns = gae(token_rewards(x.scores, x.non_score, x.mask), x.values, x.mask, p.gamma, p.lam)
    return advantages, returns, {}


def _outcome_estimator(baseline: Callable[[torch.Tensor, AdvantageInputs, AdvantageParams], torch.Tensor]):
    def estimate(x: AdvantageInputs, p: AdvantageParams) -> Result:
        advantages = _broadcast(baseline(_outcome(x), x, p), x.mask)
        return advantages, advantages, {}
    return estimate


def _reinforce_pp(x: AdvantageInputs, p: AdvantageParams, scores: torch.Tensor) -> Result:
    returns = discounted_returns(token_rewards(scores, x.non_score, x.mask), x.mask, p.gamma)
    return returns, returns, {}


class AdvantageEstimator(str, Enum):
    GAE = "gae"
    GRPO = "grpo"
    DR_GRPO = "dr_grpo"
    RLOO = "rloo"
    REINFORCE_PP = "reinforce_pp"
    REINFORCE_PP_BASELINE = "reinforce_pp_baseline"

    @property
    def needs_critic(self) -> bool:
        return self is AdvantageEstimator.GAE

    @property
    def needs_groups(self) -> bool:
        """True for estimators that compare the K samples of one prompt (K ≥ 2)."""
        return self in (AdvantageEstimator.GRPO, AdvantageEstimator.DR_GRPO, AdvantageEstimator.RLOO,
                        AdvantageEstimator.REINFORCE_PP_BASELINE)

    @property
    def whitens_batch(self) -> bool:
        """True where the estimator's definition normalises advantages over the global batch."""
        return self in (AdvantageEstimator.REINFORCE_PP, AdvantageEstimator.REINFORCE_PP_BASELINE)


_ESTIMATORS: dict[AdvantageEstimator, Callable[[AdvantageInputs, AdvantageParams], Result]] = {
    AdvantageEstimator.GAE: _gae,
    AdvantageEstimator.GRPO: _outcome_estimator(lambda r, x, p: grpo_scores(r, x.group_size, p.std_eps)),
    AdvantageEstimator.DR_GRPO: _outcome_estimator(lambda r, x, p: group_centred_scores(r, x.group_size)),
    AdvantageEstimator.RLOO: _outcome_estimator(lambda r, x, p: leave_one_out_scores(r, x.group_size)),
    AdvantageEstimator.REINFORCE_PP: lambda x, p: _reinforce_pp(x, p, x.scores),
    AdvantageEstimator.REINFORCE_PP_BASELINE: lambda x, p: _reinforce_pp(
        x, p, group_centred_scores(x.scores, x.group_size, "reinforce_pp_baseline")),
}


def compute_advantages(kind: AdvantageEstimator | str, inputs: AdvantageInputs, params: AdvantageParams
                       ) -> Result:
    """(advantages (B, A), returns (B, A), metrics) of estimator ``kind``.

    ``returns`` are the critic's targets for ``gae`` and equal the advantages otherwise. Estimators with
    ``whitens_batch`` return un-normalised advantages: the loop whitens them over the global batch.
    """
    kind = AdvantageEstimator(kind)
    assert inputs.scores.dim() == 1 and inputs.non_score.shape == inputs.mask.shape, (
        f"scores must be (B,) and non_score/mask (B, A); got {tuple(inputs.scores.shape)}, "
        f"{tuple(inputs.non_score.shape)}, {tuple(inputs.mask.shape)}")
    advantages, returns, metrics = _ESTIMATORS[kind](inputs, params)
    m = inputs.mask.bool()
    counted = advantages[m]
    metrics = {**metrics, "advantages/mean": counted.mean().item(),
               "advantages/std": counted.std().item() if counted.numel() > 1 else 0.0}
    return advantages, returns, metrics


def masked_moments(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(3,) fp64 [Σ x, Σ x², n] over the mask: sums that add across micro-batches and ranks (all-reduce)."""
    m = mask.to(torch.float64)
    x = x.to(torch.float64) * m
    return torch.stack([x.sum(), (x * x).sum(), m.sum()])


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, moments: torch.Tensor | None = None, *,
                  keep_mean: bool = False, eps: float = 1e-8) -> torch.Tensor:
    """(x − μ) / sqrt(σ² + ε) over the masked entries, σ² with Bessel's correction; 0 off-mask.

    Args:
        x, mask: (B, A) (any equal shapes).
        moments: (3,) from ``masked_moments`` summed over the whole global batch; None: this x only.
        keep_mean: add μ back after scaling (rescale only; used for rewards, Huang et al. detail 'reward
            whitening' keeps the mean so that the sign of a reward is not changed by centring).
    """
    if moments is None:
        moments = masked_moments(x, mask)
    total, total_sq, n = moments.tolist()
    assert n >= 2, f"whitening needs at least 2 counted values, got {n:g}"
    mean = total / n
    var = max(total_sq - n * mean * mean, 0.0) / (n - 1)
    out = (x - mean) * (var + eps) ** -0.5
    if keep_mean:
        out = out + mean
    return out * mask
