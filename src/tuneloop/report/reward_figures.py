"""The figures of a reward model's held-out evaluation (``rewards.evaluation.write_report`` metrics).

``reliability.png`` (calibration of σ(r_c − r_r)), ``accuracy_by_length.png`` (accuracy per bucket of
mean response length), ``scores.png`` (chosen vs rejected score histograms) and
``reward_vs_length.png`` (length bias). The reward stage passes ``draw`` to ``write_report``, so
``rewards/`` computes numbers and never imports the plotting.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from tuneloop.report import plots
from tuneloop.rewards.evaluation import ScoredPairs


def draw(folder: Path, metrics: dict, pairs: ScoredPairs, scores: torch.Tensor, lengths: torch.Tensor
         ) -> dict[str, Path]:
    """Write the figures that ``metrics`` has data for into ``folder``; return {name: path}."""
    figures = {}
    if "reliability" in metrics:
        rel = metrics["reliability"]
        figures["reliability"] = plots.reliability_diagram(
            rel["mean_predicted"], rel["mean_observed"], rel["count"], folder / "reliability.png",
            f"Calibration of σ(r_c − r_r), ECE {metrics['ece']:.3f}", "predicted P(chosen ≻ rejected)")
    buckets = metrics.get("accuracy_by_length") or []
    if buckets:
        labels = [_bucket_label(b) for b in buckets]
        figures["accuracy_by_length"] = plots.bar_chart(
            labels, [b.get("accuracy", float("nan")) for b in buckets], folder / "accuracy_by_length.png",
            "Held-out accuracy by mean response length (tokens)", "accuracy",
            annotations=[f"n={int(b['pairs'])}" for b in buckets], reference=0.5, reference_label="chance")
    strict = ~pairs.tie
    figures["scores"] = plots.histograms({"chosen": pairs.chosen[strict].tolist(),
                                          "rejected": pairs.rejected[strict].tolist()},
                                         folder / "scores.png", "Held-out rewards", "reward (raw)")
    if scores.numel() >= 2:
        figures["reward_vs_length"] = plots.scatter(
            lengths.tolist(), scores.tolist(), folder / "reward_vs_length.png",
            f"Reward vs length (Spearman {metrics.get('length_spearman', float('nan')):.2f})",
            "response tokens", "reward (raw)")
    return figures


def _bucket_label(bucket: dict) -> str:
    low, high = bucket["low"], bucket["high"]
    if math.isinf(low):
        return f"< {high:g}"
    if math.isinf(high):
        return f"≥ {low:g}"
    return f"{low:g}–{high:g}"
