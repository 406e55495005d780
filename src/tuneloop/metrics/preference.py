"""Evaluation of preference scores: accuracy, calibration and length bias. Pure tensor functions.

- ``pair_accuracy``: 1 where r_c > r_r, ½ where r_c = r_r (no information: chance), 0 otherwise.
- ``pairwise_accuracy``: held-out accuracy with ties counted *separately*. A tie judgment has no
  right order, so it is never folded into the accuracy; instead the report gives how close the model
  put the two scores (mean |d|, and the share with |d| below a threshold the caller chooses, since a
  reward scale has no natural unit).
- ``reliability_bins`` / ``expected_calibration_error``: calibration of the BT probability
  P(chosen ≻ rejected) = σ(r_c − r_r). Every strict pair enters twice, as (σ(d), 1) and (σ(−d), 0),
  so the curve is symmetric and the outcomes are not all 1 (a one-sided curve would score a model
  that predicts 1 always as perfect); a tie enters as (σ(d), ½) and (σ(−d), ½). Equal-width bins.
- ``pearson`` / ``spearman`` / ``length_correlation``: correlation of reward with response length
  (length bias; Singhal et al. 2023).
- ``accuracy_by_length_difference``: accuracy split by whether the chosen response is the longer one;
  ``accuracy_by_length_bucket``: accuracy per bucket of response length.

Shapes: B pairs; for correlations, N scored responses.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch


def pair_accuracy(diff: torch.Tensor) -> torch.Tensor:
    """Per-pair correctness of d = r_c − r_r: 1 if d > 0, ½ if d = 0, 0 if d < 0. (B,) → (B,) fp32."""
    return (diff > 0).float() + 0.5 * (diff == 0).float()


def pairwise_accuracy(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, *,
                      tie: torch.Tensor | None = None, tie_threshold: float | None = None) -> dict[str, float]:
    """Held-out pairwise accuracy; tie judgments reported on their own.

    Args:
        chosen_rewards: (B,), rejected_rewards: (B,) rewards of the two responses of each pair.
        tie: (B,) bool, True where the judgment was a tie.
        tie_threshold: if given, a tie pair "agrees" when |r_c − r_r| < tie_threshold.
    Returns:
        ``accuracy`` over strict pairs (absent when there are none), ``pairs``, ``tie_pairs``, and for
        ties ``tie_mean_abs_diff`` and, with a threshold, ``tie_agreement``.
    """
    diff = chosen_rewards.detach().float() - rejected_rewards.detach().float()
    tie = torch.zeros_like(diff, dtype=torch.bool) if tie is None else tie.to(torch.bool)
    strict = diff[~tie]
    out = {"pairs": float(strict.numel()), "tie_pairs": float(tie.sum().item())}
    if strict.numel():
        out["accuracy"] = pair_accuracy(strict).mean().item()
    if tie.any():
        tied = diff[tie].abs()
        out["tie_mean_abs_diff"] = tied.mean().item()
        if tie_threshold is not None:
            out["tie_agreement"] = (tied < tie_threshold).float().mean().item()
    return out


@dataclass
class ReliabilityBins:
    """A reliability curve: per equal-width bin of predicted probability."""

    edges: list[float]  # (num_bins + 1,) bin edges from 0 to 1
    count: list[int]  # (num_bins,) predictions in the bin
    mean_predicted: list[float]  # (num_bins,) mean σ(d) in the bin (nan when empty)
    mean_observed: list[float]  # (num_bins,) mean outcome in the bin (nan when empty)


def _symmetric_predictions(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                           tie: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    diff = chosen_rewards.detach().double() - rejected_rewards.detach().double()
    outcome = torch.ones_like(diff)
    if tie is not None:
        outcome = torch.where(tie.to(torch.bool), 0.5, 1.0).to(diff.dtype)
    return torch.cat([torch.sigmoid(diff), torch.sigmoid(-diff)]), torch.cat([outcome, 1.0 - outcome])


def reliability_bins(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, *, num_bins: int = 10,
                     tie: torch.Tensor | None = None) -> ReliabilityBins:
    """Reliability curve of σ(r_c − r_r) with each pair counted in both orientations (module doc).

    Args:
        chosen_rewards: (B,), rejected_rewards: (B,); tie: (B,) bool or None.
        num_bins: number of equal-width bins on [0, 1]; a prediction of exactly 1 goes in the last bin.
    """
    assert num_bins >= 1, f"num_bins must be ≥ 1, got {num_bins}"
    predicted, observed = _symmetric_predictions(chosen_rewards, rejected_rewards, tie)
    index = (predicted * num_bins).long().clamp(max=num_bins - 1)
    count = torch.bincount(index, minlength=num_bins)
    sum_predicted = torch.bincount(index, weights=predicted, minlength=num_bins)
    sum_observed = torch.bincount(index, weights=observed, minlength=num_bins)
    nonzero = count.clamp(min=1).double()
    empty = count == 0
    mean_predicted = torch.where(empty, float("nan"), sum_predicted / nonzero)
    mean_observed = torch.where(empty, float("nan"), sum_observed / nonzero)
    return ReliabilityBins(edges=[i / num_bins for i in range(num_bins + 1)], count=count.tolist(),
                           mean_predicted=mean_predicted.tolist(), mean_observed=mean_observed.tolist())


def expected_calibration_error(bins: ReliabilityBins) -> float:
    """ECE = Σ_b (n_b / n) · |observed_b − predicted_b| over non-empty bins (Naeini et al. 2015)."""
    total = sum(bins.count)
    assert total > 0, "no predictions to calibrate"
    return sum(n / total * abs(o - p) for n, o, p in zip(bins.count, bins.mean_observed, bins.mean_predicted) if n)


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation of two (N,) tensors (computed in fp64); nan if either is constant."""
    assert x.shape == y.shape and x.dim() == 1 and x.numel() >= 2, (
        f"expected two (N,) tensors with N ≥ 2, got {tuple(x.shape)} and {tuple(y.shape)}")
    xc = x.detach().double() - x.detach().double().mean()
    yc = y.detach().double() - y.detach().double().mean()
    denominator = (xc.pow(2).sum() * yc.pow(2).sum()).sqrt()
    return float("nan") if denominator == 0 else (xc * yc).sum().div(denominator).item()


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of an (N,) tensor, tied values sharing the mean of their ranks. (N,) fp64."""
    _, inverse, counts = torch.unique(x.detach(), sorted=True, return_inverse=True, return_counts=True)
    last_rank = counts.cumsum(0).double()  # rank of the last member of each distinct value
    mean_rank = last_rank - (counts.double() - 1) / 2
    return mean_rank[inverse]


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation: Pearson correlation of the average ranks (ties share ranks)."""
    return pearson(average_ranks(x), average_ranks(y))


def length_correlation(rewards: torch.Tensor, lengths: torch.Tensor) -> dict[str, float]:
    """Correlation of reward with response length (tokens or characters), both (N,)."""
    return {"length_pearson": pearson(rewards, lengths.double()),
            "length_spearman": spearman(rewards, lengths.double())}


def accuracy_by_length_difference(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                                  chosen_lengths: torch.Tensor, rejected_lengths: torch.Tensor
                                  ) -> dict[str, float]:
    """Accuracy when the chosen response is longer / shorter / as long as the rejected one.

    A reward model that merely prefers length is right on "chosen_longer" and wrong on
    "chosen_shorter". All inputs (B,) for strict (non-tie) pairs. Keys are absent for empty buckets.
    """
    correct = pair_accuracy(chosen_rewards.detach().float() - rejected_rewards.detach().float())
    longer = chosen_lengths - rejected_lengths
    out: dict[str, float] = {}
    for name, mask in (("chosen_longer", longer > 0), ("chosen_shorter", longer < 0), ("same_length", longer == 0)):
        out[f"{name}/pairs"] = float(mask.sum().item())
        if mask.any():
            out[f"{name}/accuracy"] = correct[mask].mean().item()
    return out


def accuracy_by_length_bucket(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                              pair_lengths: torch.Tensor, edges: list[float]) -> list[dict[str, float]]:
    """Accuracy of strict pairs in buckets of a per-pair length (e.g. the mean of the two responses).

    Args:
        chosen_rewards: (B,), rejected_rewards: (B,), pair_lengths: (B,).
        edges: increasing bucket edges e_0 < … < e_{E−1}; bucket b holds e_{b−1} ≤ length < e_b, with
            (−inf, e_0) first and [e_{E−1}, inf) last: E + 1 buckets.
    Returns:
        One dict per bucket: ``low``, ``high``, ``pairs`` and, for a non-empty bucket, ``accuracy``.
    """
    assert all(a < b for a, b in itertools.pairwise(edges)), f"edges must increase, got {edges}"
    correct = pair_accuracy(chosen_rewards.detach().float() - rejected_rewards.detach().float())
    index = torch.bucketize(pair_lengths.detach().double(), torch.tensor(edges, dtype=torch.float64), right=True)
    bounds = [float("-inf"), *map(float, edges), float("inf")]
    out = []
    for b in range(len(edges) + 1):
        mask = index == b
        bucket = {"low": bounds[b], "high": bounds[b + 1], "pairs": float(mask.sum().item())}
        if mask.any():
            bucket["accuracy"] = correct[mask].mean().item()
        out.append(bucket)
    return out
