"""Reductions shared by every stage: how a summed loss becomes the number ``backward()`` sees."""

from __future__ import annotations

from enum import Enum

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


class LossAggregation(str, Enum):
    """How a per-token loss (B, A) becomes the summed loss of a micro-batch and the units it is summed over.

    Every mode returns ``(loss_sum, units)``; the loop divides by the global number of units of the
    optimizer step with ``token_normalised``, so accumulation and several processes stay exact.

    - ``token_mean``: Σ_b Σ_t ℓ_bt / Σ mask (every token weighs the same; DAPO §3.3).
    - ``seq_mean_token_mean``: (1/B) Σ_b (Σ_t ℓ_bt / |y_b|) (each sequence weighs the same; GRPO eq. 3).
    - ``seq_mean_token_sum_norm``: (1/B) Σ_b Σ_t ℓ_bt / C with a constant C, e.g. the maximum response
      length (Dr. GRPO, Liu et al. 2025, §3.1: no length bias from dividing by |y_b|).
    """

    TOKEN_MEAN = "token_mean"
    SEQ_MEAN_TOKEN_MEAN = "seq_mean_token_mean"
    SEQ_MEAN_TOKEN_SUM_NORM = "seq_mean_token_sum_norm"


def aggregate_loss(loss: torch.Tensor, mask: torch.Tensor, mode: LossAggregation | str,
                   constant: float | None = None) -> tuple[torch.Tensor, float]:
    """(loss_sum, units) of a per-token loss under ``mode`` (see ``LossAggregation``).

    Args:
        loss: (B, A) per-token loss; values at masked-out positions are ignored.
        mask: (B, A) 1 on response tokens that count.
        mode: the aggregation.
        constant: C of ``seq_mean_token_sum_norm`` (required there, refused elsewhere).
    Returns:
        loss_sum: () Σ over this micro-batch of the per-unit loss; units: tokens (``token_mean``) or
        sequences with at least one counted token (the sequence modes).
    """
    mode = LossAggregation(mode)
    assert loss.shape == mask.shape, f"loss {tuple(loss.shape)} and mask {tuple(mask.shape)} differ"
    assert (constant is not None) == (mode is LossAggregation.SEQ_MEAN_TOKEN_SUM_NORM), (
        f"constant={constant} is the normaliser of 'seq_mean_token_sum_norm' only; mode is '{mode.value}'")
    mask = mask.to(loss.dtype)
    per_seq_sum = (loss * mask).sum(dim=-1)
    tokens = mask.sum(dim=-1)
    if mode is LossAggregation.TOKEN_MEAN:
        return per_seq_sum.sum(), float(tokens.sum().item())
    has_tokens = tokens > 0
    if mode is LossAggregation.SEQ_MEAN_TOKEN_MEAN:
        per_seq = per_seq_sum / tokens.clamp(min=1)
    else:
        assert constant > 0, f"the seq_mean_token_sum_norm constant must be > 0, got {constant}"
        per_seq = per_seq_sum / constant
    return (per_seq * has_tokens).sum(), float(has_tokens.sum().item())
