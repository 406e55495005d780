"""Held-out evaluation of a reward model's scores: the numbers, written to ``report.json``.

Input: the scores of held-out judged pairs (``ScoredPairs``) and of every held-out response. Output
(``write_report``): ``report.json`` with accuracy (ties apart), calibration (reliability bins, ECE),
accuracy by response length and length bias. The metrics come from ``tuneloop.metrics.preference``;
see there for how ties and calibration are counted. Figures are drawn by the function the caller
passes as ``figures`` (the reward stage passes ``tuneloop.report.reward_figures.draw``): this module
computes numbers and imports no plotting.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tuneloop.atomic import atomic_write_text
from tuneloop.metrics import preference as pm

NUM_BINS = 10
LENGTH_BUCKETS = 4  # accuracy by length: quantile buckets of the pair's mean response length


@dataclass
class ScoredPairs:
    """P held-out judged pairs with their rewards (raw scale) and response lengths in RM tokens."""

    chosen: torch.Tensor  # (P,) reward of the preferred response (of either one for a tie)
    rejected: torch.Tensor  # (P,) reward of the other response
    tie: torch.Tensor  # (P,) bool: judged equally good
    chosen_len: torch.Tensor  # (P,) response tokens
    rejected_len: torch.Tensor  # (P,)


def length_edges(lengths: torch.Tensor, buckets: int = LENGTH_BUCKETS) -> list[float]:
    """Increasing inner bucket edges at the quantiles of ``lengths`` (duplicates dropped)."""
    if lengths.numel() < 2:
        return []
    qs = torch.quantile(lengths.double(), torch.linspace(0, 1, buckets + 1, dtype=torch.float64)[1:-1])
    edges: list[float] = []
    for q in qs.tolist():
        q = float(round(q))
        if not edges or q > edges[-1]:
            edges.append(q)
    return edges


def pair_metrics(pairs: ScoredPairs, tie_threshold: float) -> dict:
    """Accuracy (ties apart), calibration, accuracy by length and by length difference."""
    out = pm.pairwise_accuracy(pairs.chosen, pairs.rejected, tie=pairs.tie, tie_threshold=tie_threshold)
    if pairs.chosen.numel() == 0:
        return out
    bins = pm.reliability_bins(pairs.chosen, pairs.rejected, num_bins=NUM_BINS, tie=pairs.tie)
    out["ece"] = pm.expected_calibration_error(bins)
    out["reliability"] = {"edges": bins.edges, "count": bins.count, "mean_predicted": bins.mean_predicted,
                          "mean_observed": bins.mean_observed}
    strict = ~pairs.tie
    if strict.any():
        c, r = pairs.chosen[strict], pairs.rejected[strict]
        cl, rl = pairs.chosen_len[strict].double(), pairs.rejected_len[strict].double()
        mean_len = (cl + rl) / 2
        out["accuracy_by_length"] = pm.accuracy_by_length_bucket(c, r, mean_len, length_edges(mean_len))
        out["accuracy_by_length_difference"] = pm.accuracy_by_length_difference(c, r, cl, rl)
    return out


def response_metrics(scores: torch.Tensor, lengths: torch.Tensor) -> dict:
    """Score distribution and its correlation with response length (length bias)."""
    s = scores.double()
    out = {"responses": int(s.numel()), "score_mean": s.mean().item(),
           "score_std": s.std(unbiased=False).item() if s.numel() > 1 else 0.0,
           "score_min": s.min().item(), "score_max": s.max().item()}
    if s.numel() >= 2:
        out.update(pm.length_correlation(scores, lengths))
    return out


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


FigureWriter = Callable[[Path, dict, "ScoredPairs", torch.Tensor, torch.Tensor], dict[str, Path]]


def write_report(folder: Path, pairs: ScoredPairs, scores: torch.Tensor, lengths: torch.Tensor,
                 tie_threshold: float, extra: dict | None = None, figures: FigureWriter | None = None) -> dict:
    """Compute every held-out metric and write report.json into ``folder``; return the metrics.

    ``figures(folder, metrics, pairs, scores, lengths) -> {name: path}`` draws the figures (none when
    None); their file names are recorded under ``metrics["figures"]``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    metrics = {**(extra or {}), **pair_metrics(pairs, tie_threshold), **response_metrics(scores, lengths)}
    drawn = figures(folder, metrics, pairs, scores, lengths) if figures is not None else {}
    metrics["figures"] = {name: path.name for name, path in drawn.items()}
    atomic_write_text(folder / "report.json", json.dumps(_json_safe(metrics), indent=2) + "\n")
    return metrics
