"""Reward-model losses on aspect scores (people score each response on quality, relevance, safety …):
pure functions of tensors and an enum.

A multi-aspect reward model has one scalar head per aspect; each head learns the mean human score of
its aspect (HelpSteer2-style attribute regression, Wang et al. 2024; the "evaluators score each output"
recipe of the classic RLHF papers). Variants (``AspectLoss``):

- ``regression``: squared error between the head and the standardised mean score,
  ℓ_b = Σ_a m_ba (f_ba − t_ba)² / Σ_a m_ba — the mean over the aspects the response was scored on.
  The caller standardises targets per aspect, t = (mean score − μ_a) / σ_a over the training set, so
  every aspect weighs the same whatever its scale and spread, and a fresh head (output ≈ 0) starts at
  the mean.
- ``ordinal``: the all-threshold logistic loss of Rennie & Srebro 2005 ("Loss functions for preference
  levels", §3.2) on each integer vote y of a scale lo…hi, with the thresholds fixed between the levels,
  θ_k = k + ½ (k = lo … hi − 1), and the head read on the scale, g = μ_a + σ_a·f:
  ℓ(g, y) = Σ_{k < y} softplus(θ_k − g) + Σ_{k ≥ y} softplus(g − θ_k),
  averaged over the response's votes and then over its scored aspects. Every threshold a prediction is
  on the wrong side of costs more the further it is; it learns from the votes themselves (how they
  spread), not only their mean.

Reduction: per response (B,), never a mean, the convention of ``losses.preference``; the reward stage
sums weight·loss over a micro-batch and divides by the step's total weight. When pairs are trained
too, the stage adds ``pairwise_weight`` × the Bradley–Terry loss of ``losses.preference`` on a
separate ``preference`` head.

Shapes: B responses, A aspects, V votes per (response, aspect) (padded).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

import torch
import torch.nn.functional as F

from tuneloop.losses.preference import fp32_or_wider


def _check_mask(predicted: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    assert predicted.dim() == 2 and mask.shape == predicted.shape, (
        f"expected predicted and mask of the same (B, A) shape, got {tuple(predicted.shape)} and {tuple(mask.shape)}")
    scored = mask.bool()
    assert scored.any(dim=1).all(), "every response needs at least one scored aspect (a row of mask is all 0)"
    return scored


def aspect_regression_loss(predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
                           ) -> tuple[torch.Tensor, dict[str, float]]:
    """Squared error per response, averaged over its scored aspects.

    Args:
        predicted: (B, A) the aspect heads' outputs (standardised units).
        target: (B, A) standardised mean human scores; ignored where ``mask`` is 0.
        mask: (B, A) 1 where the response was scored on the aspect; every row has at least one 1.
    Returns:
        (loss, metrics): loss (B,) = Σ_a m (f − t)² / Σ_a m, fp32 (fp64 for fp64 inputs); metrics holds
        the mean squared error over all scored (response, aspect) cells, ``mse``, and their count, ``cells``.
    """
    assert target.shape == predicted.shape, f"target {tuple(target.shape)} must match predicted {tuple(predicted.shape)}"
    scored = _check_mask(predicted, mask)
    f = fp32_or_wider(predicted)
    weight = scored.to(f.dtype)
    # t is zeroed where not scored, so a nan placeholder there cannot leak into the loss or its gradient
    t = torch.where(scored, fp32_or_wider(target).to(f.dtype), torch.zeros_like(f))
    squared = (f - t).pow(2) * weight  # (B, A)
    loss = squared.sum(dim=1) / weight.sum(dim=1)
    cells = weight.sum()
    return loss, {"mse": (squared.detach().sum() / cells).item(), "cells": cells.item()}


def aspect_ordinal_loss(predicted: torch.Tensor, votes: torch.Tensor, mask: torch.Tensor, *,
                        low: torch.Tensor, high: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
                        ) -> tuple[torch.Tensor, dict[str, float]]:
    """All-threshold logistic loss (Rennie & Srebro 2005) of integer votes, per response.

    Args:
        predicted: (B, A) the aspect heads' outputs (standardised units); on the scale g = mean + std·f.
        votes: (B, A, V) integer votes on each aspect's scale; −1 pads (fewer than V votes).
        mask: (B, A) 1 where the response was scored on the aspect (it has at least one vote there).
        low, high: (A,) lowest and highest score of each aspect's scale (thresholds lie between them).
        mean, std: (A,) the standardisation of each aspect (the head's output is (score − mean) / std).
    Returns:
        (loss, metrics): loss (B,): for each scored aspect the mean over its votes of
        Σ_{lo ≤ k < y} softplus(k + ½ − g) + Σ_{y ≤ k < hi} softplus(g − k − ½), then the mean over the
        scored aspects; metrics: ``mean_abs_error`` of g against the votes, over all votes.
    """
    scored = _check_mask(predicted, mask)
    assert votes.dim() == 3 and votes.shape[:2] == predicted.shape, (
        f"votes must be (B, A, V) with (B, A) = {tuple(predicted.shape)}, got {tuple(votes.shape)}")
    f = fp32_or_wider(predicted)
    low, high = low.to(f.device).long(), high.to(f.device).long()
    assert (low < high).all(), f"every scale needs low < high, got low {low.tolist()} and high {high.tolist()}"
    g = mean.to(f) + std.to(f) * f  # (B, A) on the scale
    real = (votes >= 0) & scored.unsqueeze(-1)  # (B, A, V)
    assert (real.any(dim=2) | ~scored).all(), "a scored (response, aspect) needs at least one vote"
    levels = torch.arange(int(low.min()), int(high.max()), device=f.device)  # every k with some scale's lo ≤ k < hi
    thresholds = levels.to(f.dtype) + 0.5  # (L,)
    inside = (levels >= low.unsqueeze(-1)) & (levels < high.unsqueeze(-1))  # (A, L): θ_k belongs to the aspect's scale
    below = levels.view(1, 1, 1, -1) < votes.unsqueeze(-1)  # (B, A, V, L): θ_k below the vote, g should exceed it
    gap = g.unsqueeze(-1).unsqueeze(-1) - thresholds  # (B, A, 1, L): g − θ_k
    per_threshold = torch.where(below, F.softplus(-gap), F.softplus(gap)) * inside.view(1, inside.shape[0], 1, -1)
    per_vote = per_threshold.sum(dim=-1) * real  # (B, A, V)
    votes_per_cell = real.sum(dim=2).clamp(min=1)  # (B, A)
    per_cell = per_vote.sum(dim=2) / votes_per_cell  # (B, A); 0 where not scored
    weight = scored.to(f.dtype)
    loss = (per_cell * weight).sum(dim=1) / weight.sum(dim=1)
    error = ((g.unsqueeze(-1) - votes.to(f.dtype)).abs() * real).sum() / real.sum()
    return loss, {"mean_abs_error": error.detach().item(), "votes": float(real.sum().item())}


class AspectLoss(str, Enum):
    """How the aspect heads learn from scores (config key ``loss.aspects``)."""

    REGRESSION = "regression"
    ORDINAL = "ordinal"

    @property
    def needs_votes(self) -> bool:
        """True when the loss reads the individual integer votes, not only their mean."""
        return self is AspectLoss.ORDINAL


AspectTargets = dict[str, torch.Tensor]  # "target" (B, A), "votes" (B, A, V), "low", "high", "mean", "std" (A,)

_LOSSES: dict[AspectLoss, Callable[[torch.Tensor, torch.Tensor, AspectTargets], tuple[torch.Tensor, dict]]] = {
    AspectLoss.REGRESSION: lambda f, m, t: aspect_regression_loss(f, t["target"], m),
    AspectLoss.ORDINAL: lambda f, m, t: aspect_ordinal_loss(f, t["votes"], m, low=t["low"], high=t["high"],
                                                            mean=t["mean"], std=t["std"]),
}


def aspect_loss(kind: AspectLoss | str, predicted: torch.Tensor, mask: torch.Tensor, targets: AspectTargets
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-response loss (B,) and metrics of the aspect loss ``kind`` (see ``AspectLoss``)."""
    return _LOSSES[AspectLoss(kind)](predicted, mask, targets)
