"""Reductions shared by every stage: how a summed loss becomes the number ``backward()`` sees."""

from __future__ import annotations

import torch


def token_normalised(loss_sum: torch.Tensor, global_count: float, world_size: int) -> torch.Tensor:
    """Scale a micro-batch's summed loss so that gradients add up to the global per-token mean.

    An optimizer step sees M micro-batches on each of W processes. Data-parallel training averages
    gradients over the W processes, so each micro-batch contributes ``loss_sum * W / global_count``,
    where ``global_count`` is the number of trained tokens (or other units) in the whole step, over all
    micro-batches and processes. Summed over micro-batches and averaged over processes this is exactly
    Σ loss / global_count: accumulation 1×8 equals 8×1, and 2 processes equal 1.
    """
    assert global_count > 0, f"an optimizer step must train at least one token, got global_count={global_count}"
    assert world_size >= 1, f"world_size must be ≥ 1, got {world_size}"
    return loss_sum * (world_size / global_count)
