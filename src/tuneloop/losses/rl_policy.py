"""Policy and value losses of the RL stage: pure per-token functions, and an enum.

Policy losses (``PolicyLoss``; each returns a per-token loss (B, A) to be reduced with
``losses.reductions.aggregate_loss``, and metrics), with ρ_t = π(y_t)/π_old(y_t) and advantage Â_t:

- ``ppo_clip``    max(−Â ρ, −Â clip(ρ, 1 − ε_low, 1 + ε_high)) (Schulman et al. 2017, eq. 7; separate
                  ε_low/ε_high is DAPO's clip-higher, Yu et al. 2025 §3.1); with a dual clip c > 1,
                  min(that, −c Â) where Â < 0 (Ye et al. 2020, eq. 5).
- ``vanilla_pg``  −Â log π(y_t): A2C's policy gradient (Mnih et al. 2016), one pass, no ratio, no clip.
- ``gspo``        the PPO clip on the length-normalised sequence ratio s = exp(mean_t log ρ_t) (Zheng et
                  al. 2025, GSPO eq. 7), in its token form s_t = sg(s)·π(y_t)/sg(π(y_t)) (eq. 13): the
                  value at every token is s, the gradient of token t is s·∇log π(y_t).
- ``cispo``       −sg(clip(ρ, 1 − ε_low, 1 + ε_high))·Â·log π(y_t) (MiniMax-M1, Chen et al. 2025, eq. 4):
                  the IS weight is clipped and stopped, so no token's gradient is dropped.

Value loss: ½ max((V − R)², (V_old + clip(V − V_old, −ε_v, ε_v) − R)²) (Huang et al. detail 'clipped
value loss'); ``value_clip`` None gives ½ (V − R)².

Shapes: B sequences, A response tokens, ``mask`` (B, A) 1 on response tokens. Metrics are masked means
over this batch's tokens as floats, plus ``tokens``, the count they are means over.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import torch


@dataclass
class PolicyLossInputs:
    logps: torch.Tensor  # (B, A) log π(y_t) under the policy being trained (with gradient)
    old_logps: torch.Tensor  # (B, A) log π_old(y_t) of the policy that sampled the batch, no gradient
    advantages: torch.Tensor  # (B, A) Â_t, no gradient
    mask: torch.Tensor  # (B, A) 1 on response tokens


@dataclass(frozen=True)
class PolicyLossParams:
    clip_low: float = 0.2
    """ε_low: the ratio is clipped below at 1 − ε_low (ppo_clip, gspo, cispo)."""
    clip_high: float = 0.2
    """ε_high: clipped above at 1 + ε_high; > ε_low is DAPO's clip-higher (0.28 in the paper)."""
    dual_clip: float | None = None
    """c > 1: ppo_clip's loss on negative advantages is capped at −c·Â (Ye et al. 2020); None: off."""


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    return float((x.detach().float() * mask).sum() / mask.sum().clamp(min=1))


def _ratio_metrics(log_ratio: torch.Tensor, mask: torch.Tensor, clipped: torch.Tensor) -> dict[str, float]:
    m = mask.bool()
    ratio = log_ratio.detach().exp()[m]
    return {
        "policy/clipfrac": _masked_mean(clipped.float(), mask),
        # ½ E[(log ρ)²] (Huang et al.'s 'approxkl'); k2 of KL(π_old ‖ π)
        "policy/approxkl": _masked_mean(0.5 * log_ratio.square(), mask),
        "policy/ratio_mean": float(ratio.mean()) if ratio.numel() else 1.0,
        "policy/ratio_min": float(ratio.min()) if ratio.numel() else 1.0,
        "policy/ratio_max": float(ratio.max()) if ratio.numel() else 1.0,
        "tokens": float(mask.sum()),
    }


def _clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, p: PolicyLossParams
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - p.clip_low, 1.0 + p.clip_high)
    return torch.maximum(unclipped, clipped), clipped > unclipped


def ppo_clip_loss(x: PolicyLossInputs, p: PolicyLossParams) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped surrogate per token (eq. 7), clip-higher and optional dual clip. (B, A) → (B, A)."""
    log_ratio = x.logps.float() - x.old_logps.float()
    loss, clipped = _clipped_surrogate(log_ratio.exp(), x.advantages, p)
    metrics = _ratio_metrics(log_ratio, x.mask, clipped)
    if p.dual_clip is not None:
        assert p.dual_clip > 1.0, f"dual_clip c must be > 1, got {p.dual_clip}"
        capped = torch.minimum(loss, -p.dual_clip * x.advantages)
        dual = (x.advantages < 0) & (capped < loss)
        loss = torch.where(x.advantages < 0, capped, loss)
        metrics["policy/dual_clipfrac"] = _masked_mean(dual.float(), x.mask)
    return loss * x.mask, metrics


def vanilla_pg_loss(x: PolicyLossInputs, p: PolicyLossParams) -> tuple[torch.Tensor, dict[str, float]]:
    """A2C's policy gradient −Â·log π(y_t). (B, A) → (B, A). ``old_logps`` only feeds the metrics."""
    log_ratio = x.logps.detach().float() - x.old_logps.float()
    never_clipped = torch.zeros_like(x.mask).bool()
    return -x.advantages * x.logps.float() * x.mask, _ratio_metrics(log_ratio, x.mask, never_clipped)


def gspo_loss(x: PolicyLossInputs, p: PolicyLossParams) -> tuple[torch.Tensor, dict[str, float]]:
    """GSPO-token (eq. 13): the clipped surrogate on s_t = sg(s)·exp(log π_t − sg(log π_t)). (B, A) → (B, A).

    Aggregate with ``seq_mean_token_mean`` to get GSPO's sequence-level objective (eq. 5).
    """
    logps = x.logps.float()
    log_ratio = (logps - x.old_logps.float()) * x.mask
    seq_log_ratio = log_ratio.sum(-1) / x.mask.sum(-1).clamp(min=1)  # (B,) log s_i
    token_ratio = torch.exp(seq_log_ratio.detach()[:, None] + logps - logps.detach())
    loss, clipped = _clipped_surrogate(token_ratio, x.advantages, p)
    metrics = _ratio_metrics(seq_log_ratio[:, None].expand_as(log_ratio), x.mask, clipped)
    return loss * x.mask, metrics


def cispo_loss(x: PolicyLossInputs, p: PolicyLossParams) -> tuple[torch.Tensor, dict[str, float]]:
    """CISPO (eq. 4): −sg(clip(ρ_t, 1 − ε_low, 1 + ε_high))·Â_t·log π(y_t). (B, A) → (B, A)."""
    logps = x.logps.float()
    log_ratio = logps.detach() - x.old_logps.float()
    ratio = log_ratio.exp()
    weight = ratio.clamp(1.0 - p.clip_low, 1.0 + p.clip_high)
    loss = -weight * x.advantages * logps
    return loss * x.mask, _ratio_metrics(log_ratio, x.mask, weight != ratio)


class PolicyLoss(str, Enum):
    PPO_CLIP = "ppo_clip"
    VANILLA_PG = "vanilla_pg"
    GSPO = "gspo"
    CISPO = "cispo"


PolicyLossFn = Callable[[PolicyLossInputs, PolicyLossParams], tuple[torch.Tensor, dict[str, float]]]
_POLICY_LOSSES: dict[PolicyLoss, PolicyLossFn] = {
    PolicyLoss.PPO_CLIP: ppo_clip_loss,
    PolicyLoss.VANILLA_PG: vanilla_pg_loss,
    PolicyLoss.GSPO: gspo_loss,
    PolicyLoss.CISPO: cispo_loss,
}


def policy_loss(kind: PolicyLoss | str, inputs: PolicyLossInputs, params: PolicyLossParams
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-token loss (B, A) (0 off-mask) and metrics of the policy loss ``kind``."""
    kind = PolicyLoss(kind)
    if params.dual_clip is not None and kind is not PolicyLoss.PPO_CLIP:
        raise ValueError(f"dual_clip={params.dual_clip} applies to 'ppo_clip' only, not '{kind.value}'")
    shapes = {tuple(t.shape) for t in (inputs.logps, inputs.old_logps, inputs.advantages, inputs.mask)}
    assert len(shapes) == 1, f"logps, old_logps, advantages and mask must share one (B, A) shape; got {shapes}"
    return _POLICY_LOSSES[kind](inputs, params)


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               value_clip: float | None) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped value loss per token (see the module docstring). All (B, A) → (B, A), 0 off-mask."""
    values = values.float()
    unclipped = (values - returns).square()
    if value_clip is None:
        loss, clipped = 0.5 * unclipped, torch.zeros_like(mask).bool()
    else:
        assert value_clip > 0, f"value_clip must be > 0, got {value_clip}"
        clipped_values = old_values + (values - old_values).clamp(-value_clip, value_clip)
        clipped_error = (clipped_values - returns).square()
        loss, clipped = 0.5 * torch.maximum(unclipped, clipped_error), clipped_error > unclipped
    return loss * mask, {"val/clipfrac": _masked_mean(clipped.float(), mask),
                         "val/vpred": _masked_mean(values, mask), "tokens": float(mask.sum())}


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 − Var[R − V] / Var[R] over the masked tokens (1: perfect critic, 0: no better than a constant)."""
    m = mask.bool()
    r, v = returns[m].double(), values[m].double()
    var_r = r.var(unbiased=False)
    if var_r == 0:
        return float("nan")
    return float(1.0 - (r - v).var(unbiased=False) / var_r)


def truncated_is_weights(old_logps: torch.Tensor, sampling_logps: torch.Tensor, cap: float) -> torch.Tensor:
    """min(π_old(y_t)/π_sampler(y_t), C), no gradient: the truncated importance-sampling correction for a
    sampler whose probabilities differ from the trainer's (Yao et al. 2025, 'TIS'). (B, A) → (B, A);
    multiply the per-token policy loss by it."""
    assert cap >= 1.0, f"the truncated IS cap C must be ≥ 1, got {cap}"
    return (old_logps.float() - sampling_logps.float()).exp().clamp(max=cap).detach()


def logprob_mismatch(train_logps: torch.Tensor, sampling_logps: torch.Tensor, mask: torch.Tensor
                     ) -> dict[str, float]:
    """The guard on sampler vs trainer log-probs of the same tokens: |Δ log π| mean and max, and the
    importance ratio π_train/π_sampler min/mean/max over the masked tokens. (B, A) inputs."""
    m = mask.bool()
    diff = (train_logps.detach().float() - sampling_logps.float())[m]
    if diff.numel() == 0:
        return {}
    ratio = diff.exp()
    return {
        "sampling/sampling_logp_difference/mean": float(diff.abs().mean()),
        "sampling/sampling_logp_difference/max": float(diff.abs().max()),
        "sampling/importance_ratio/min": float(ratio.min()),
        "sampling/importance_ratio/mean": float(ratio.mean()),
        "sampling/importance_ratio/max": float(ratio.max()),
    }
