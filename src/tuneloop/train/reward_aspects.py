"""The reward stage's aspect heads: which output is which, their loss, held-out evaluation and the
statistics the model folder records (``RewardModelInfo.heads``, ``aspect_stats``, ``head_reference``).

With ``data.scores`` the reward model has one head per aspect (and, when ``data.train`` judgments are
trained too, a ``preference`` head first, learned by the pairwise loss). Aspect heads output the
standardised mean score, (mean − μ_a) / σ_a (``data.scores.AspectScaling``); their value on the
aspect's own scale is μ_a + σ_a · output.

Held-out evaluation of the aspects (``aspect_report``): per-aspect Pearson and Spearman correlation
with the mean human scores of held-out responses, and the pairwise accuracy the weighted scores imply
(``model.aspect_weights``) on held-out pairs derived from the human scores (two responses to one
prompt whose weighted mean score differs by at least ``eval_score_gap``) and, when judgments are
trained too, on the held-out judged pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tuneloop.batches import ComparisonBatch
from tuneloop.data.scores import AspectScaling
from tuneloop.losses.aspects import AspectLoss, aspect_loss
from tuneloop.metrics.aspects import aspect_correlations, implied_accuracy, score_gap_pairs
from tuneloop.metrics.preference import pairwise_accuracy
from tuneloop.rewards.aspects import head_moments, weight_vector
from tuneloop.train.reward_data import Comparison

PREFERENCE_HEAD = "preference"  # the head the pairwise (Bradley–Terry) loss trains next to the aspect heads


@dataclass(frozen=True)
class HeadLayout:
    """The model's outputs: a single scalar (``names`` empty), or named heads."""

    names: list[str]  # (H,) head names in output order; [] for the classic one-head reward model
    preference: int | None  # column of the preference head; None when no judgments are trained
    aspects: list[int]  # (A,) columns of the aspect heads, in ``AspectScaling.names`` order

    @classmethod
    def build(cls, has_judgments: bool, aspects: list[str]) -> HeadLayout:
        if not aspects:
            return cls([], 0 if has_judgments else None, [])
        names = ([PREFERENCE_HEAD] if has_judgments else []) + list(aspects)
        first = len(names) - len(aspects)
        return cls(names, 0 if has_judgments else None, list(range(first, len(names))))

    @property
    def num_heads(self) -> int:
        return max(len(self.names), 1)

    def judged(self, outputs: torch.Tensor) -> torch.Tensor:
        """(R,) the rewards the pairwise and ranking losses read: the output itself, or the preference head."""
        return outputs if not self.names else outputs[:, self.preference]


def aspect_loss_sum(outputs: torch.Tensor, batch: ComparisonBatch, kind: AspectLoss | str, layout: HeadLayout,
                    scaling: AspectScaling) -> tuple[torch.Tensor, dict[str, float]]:
    """Σ weight · aspect loss over the scored responses of a micro-batch (``losses.aspects``), from the
    outputs (R, H) of all its rows. Metrics are sums: ``aspect_se`` (squared error in standardised
    units) over ``aspect_cells`` scored (response, aspect) cells."""
    rows = batch.score_rows.to(outputs.device)
    if not rows.numel():
        return outputs.new_zeros(()), {"aspect_se": 0.0, "aspect_cells": 0.0}
    predicted = outputs[rows][:, layout.aspects]  # (S, A)
    mask = batch.score_mask.to(outputs.device)
    f = torch.float32
    targets = {"target": batch.score_target.to(outputs.device), "votes": batch.score_votes.to(outputs.device),
               "low": torch.tensor(scaling.low), "high": torch.tensor(scaling.high),
               "mean": torch.tensor(scaling.mean, dtype=f), "std": torch.tensor(scaling.std, dtype=f)}
    losses, _ = aspect_loss(kind, predicted, mask, targets)
    total = (batch.score_weight.to(outputs.device) * losses).sum()
    squared = ((predicted.detach().float() - targets["target"]).pow(2) * mask).sum().item()
    return total, {"aspect_se": squared, "aspect_cells": float(mask.sum().item())}


def on_scale(outputs: torch.Tensor, layout: HeadLayout, scaling: AspectScaling) -> torch.Tensor:
    """(N, A) aspect heads' outputs (N, H) put on each aspect's own scale, μ_a + σ_a · f."""
    f = outputs[:, layout.aspects].double()
    return torch.tensor(scaling.mean, dtype=torch.float64) + torch.tensor(scaling.std, dtype=torch.float64) * f


def _human(units: list[Comparison], names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, A) mean human scores of scored units (nan where not scored) and the (N, A) bool mask."""
    human = torch.full((len(units), len(names)), float("nan"), dtype=torch.float64)
    for i, u in enumerate(units):
        for a, name in enumerate(names):
            if name in u.score.human:
                human[i, a] = u.score.human[name]
    return human, ~torch.isnan(human)


def aspect_report(units: list[Comparison], outputs: list[torch.Tensor], layout: HeadLayout,
                  scaling: AspectScaling, weights: dict[str, float], min_gap: float) -> dict:
    """Held-out aspect metrics (see the module docstring) from each unit's outputs (K, H)."""
    w = weight_vector(scaling.names, weights)
    report: dict = {"weights": dict(weights), "score_pair_min_gap": min_gap}
    scored = [(u, o) for u, o in zip(units, outputs) if u.is_scored]
    if scored:
        predicted = on_scale(torch.cat([o for _, o in scored]), layout, scaling)  # (S, A)
        human, mask = _human([u for u, _ in scored], scaling.names)
        report["per_aspect"] = aspect_correlations(predicted, human, mask, scaling.names)
        # a response without every weighted aspect makes no pair (nan propagates through the weighted mean)
        weighted_human = torch.where(mask | (w == 0), human.nan_to_num(0.0), float("nan")) @ w / w.abs().sum()
        better, worse = score_gap_pairs([u.group for u, _ in scored], weighted_human, min_gap)
        report["score_pairs"] = implied_accuracy(predicted @ w, better, worse)
    judged = [(u, o) for u, o in zip(units, outputs) if not u.is_scored]
    if judged:
        chosen, rejected = [], []
        for u, o in judged:
            combined = on_scale(o, layout, scaling) @ w
            for i, j, tie in u.ordered_pairs(include_ties=False):
                chosen.append(combined[i])
                rejected.append(combined[j])
        report["judged_pairs"] = pairwise_accuracy(torch.stack(chosen), torch.stack(rejected)) if chosen else {}
    return report


def implied_gate_accuracy(report: dict) -> tuple[float | None, int]:
    """(accuracy, pairs) the RL gate reads for a multi-aspect model's default combination: on held-out
    judged pairs when there are some, else on the held-out pairs implied by the scores."""
    for key in ("judged_pairs", "score_pairs"):
        found = report.get(key) or {}
        if found.get("pairs"):
            return found.get("accuracy"), int(found["pairs"])
    return None, 0


def head_values(outputs: torch.Tensor, layout: HeadLayout, scaling: AspectScaling, gain: float, bias: float
                ) -> torch.Tensor:
    """(N, H) values of every head as ``rewards.aspects.AspectReward`` reads them: aspects on their
    scale, the preference head normalised (gain · raw + bias)."""
    values = outputs.double().clone()
    values[:, layout.aspects] = on_scale(outputs, layout, scaling)
    if layout.preference is not None:
        values[:, layout.preference] = gain * values[:, layout.preference] + bias
    return values


def reference_moments(outputs: torch.Tensor, layout: HeadLayout, scaling: AspectScaling, gain: float,
                      bias: float) -> dict[str, list]:
    """``head_reference`` of the model folder: mean and covariance of the head values of the reference set."""
    return head_moments(head_values(outputs, layout, scaling, gain, bias))


def flat_summary(report: dict) -> dict[str, float]:
    """The headline aspect numbers as flat keys (``quality/pearson``, ``score_pairs/accuracy``) for
    summary.json and the log."""
    out = {}
    for name, m in report.get("per_aspect", {}).items():
        out[f"{name}/pearson"], out[f"{name}/spearman"] = m["pearson"], m["spearman"]
    for key in ("score_pairs", "judged_pairs"):
        if "accuracy" in report.get(key, {}):
            out[f"{key}/accuracy"] = report[key]["accuracy"]
            out[f"{key}/pairs"] = report[key]["pairs"]
    return out
