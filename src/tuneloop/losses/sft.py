"""Supervised fine-tuning loss: masked next-token cross-entropy.

Returned as a *sum* over trained tokens together with their count, so the caller can normalise by
the global number of trained tokens in an optimizer step (see ``losses.reductions``). That makes a
batch split into micro-batches (gradient accumulation) or across processes give the same gradient as
the whole batch at once, which a per-micro-batch mean does not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_nll_sum(logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum of −log p(target) over positions where ``loss_mask`` is 1.

    Args:
        logits: (N, V) or (B, T, V) unnormalised scores.
        targets: (N,) or (B, T) token ids to predict.
        loss_mask: (N,) or (B, T) 1.0 where the position is trained, 0.0 elsewhere (may be fractional
            weights).
    Returns:
        (loss_sum, metrics) where loss_sum is a 0-dim tensor and metrics has ``trained_tokens``.
    """
    assert logits.shape[:-1] == targets.shape == loss_mask.shape, (
        f"shape mismatch: logits {tuple(logits.shape)}, targets {tuple(targets.shape)}, mask {tuple(loss_mask.shape)}")
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="none")
    weights = loss_mask.reshape(-1).to(nll.dtype)
    loss_sum = (nll * weights).sum()
    return loss_sum, {"trained_tokens": float(weights.sum().item())}
