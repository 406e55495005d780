"""Held-out evaluation of aspect scores: pure tensor functions.

- ``aspect_correlations``: per aspect, Pearson and Spearman correlation of the predicted scores with the
  mean human scores, over the responses scored on that aspect.
- ``score_gap_pairs``: the preference pairs that mean human scores imply — two responses to the same
  prompt whose (weighted) mean score differs by at least a gap, the higher one preferred (the rule of
  ``tuneloop label export --pairs-from-scores``).
- ``implied_accuracy``: how often predicted (weighted) scores order those pairs as people did.

Shapes: N responses, A aspects.
"""

from __future__ import annotations

import torch

from tuneloop.metrics.preference import pairwise_accuracy, pearson, spearman


def aspect_correlations(predicted: torch.Tensor, human: torch.Tensor, mask: torch.Tensor, names: list[str]
                        ) -> dict[str, dict[str, float]]:
    """{aspect: {"pearson", "spearman", "responses", "rmse"}} over the responses scored on each aspect.

    Args:
        predicted: (N, A) predicted scores on each aspect's scale.
        human: (N, A) mean human scores; ignored where ``mask`` is False.
        mask: (N, A) bool, True where the response was scored on the aspect.
        names: (A,) aspect names.
    A correlation is nan when fewer than 2 responses are scored or either side is constant.
    """
    assert predicted.shape == human.shape == mask.shape and predicted.dim() == 2 and predicted.shape[1] == len(names), (
        f"expected (N, A) predicted, human and mask with A = {len(names)}, got {tuple(predicted.shape)}, "
        f"{tuple(human.shape)}, {tuple(mask.shape)}")
    out = {}
    for a, name in enumerate(names):
        keep = mask[:, a].bool()
        p, h = predicted[keep, a].double(), human[keep, a].double()
        enough = p.numel() >= 2
        out[name] = {"pearson": pearson(p, h) if enough else float("nan"),
                     "spearman": spearman(p, h) if enough else float("nan"),
                     "responses": int(p.numel()),
                     "rmse": (p - h).pow(2).mean().sqrt().item() if p.numel() else float("nan")}
    return out


def score_gap_pairs(groups: list[str], human: torch.Tensor, min_gap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(better, worse) index tensors (P,) of every pair of responses to one prompt whose human score
    differs by at least ``min_gap`` (and by more than 0); ``human`` is (N,), nan where not scored
    (such responses make no pair). Pairs are listed by prompt in first-seen order, then by index."""
    assert human.dim() == 1 and human.numel() == len(groups), (
        f"expected (N,) human scores for {len(groups)} responses, got {tuple(human.shape)}")
    assert min_gap >= 0, f"min_gap must be ≥ 0, got {min_gap}"
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        if not torch.isnan(human[i]):
            by_group.setdefault(g, []).append(i)
    better, worse = [], []
    for members in by_group.values():
        for x, i in enumerate(members):
            for j in members[x + 1:]:
                gap = (human[i] - human[j]).item()
                if abs(gap) >= min_gap and gap != 0:
                    better.append(i if gap > 0 else j)
                    worse.append(j if gap > 0 else i)
    return torch.tensor(better, dtype=torch.long), torch.tensor(worse, dtype=torch.long)


def implied_accuracy(predicted: torch.Tensor, better: torch.Tensor, worse: torch.Tensor) -> dict[str, float]:
    """``accuracy`` (equal predictions count ½; absent without pairs) and ``pairs`` of predicted (N,)
    scores on the pairs (better, worse)."""
    return pairwise_accuracy(predicted[better], predicted[worse])
