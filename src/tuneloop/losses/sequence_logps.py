"""Sequence log-probabilities from logits: the input of every DPO-family loss. Pure tensor functions.

log π(y|x) = Σ_t log π(y_t | x, y_<t) over the response tokens (Rafailov et al. 2023, eq. 7 uses the
sum, not a per-token mean). Several sequences may share one row (padding-free and shared-prompt
layouts), so the sum is taken by sequence index rather than by row.

Shapes: N scored positions, V vocabulary, S sequences.
"""

from __future__ import annotations

import torch


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] at every position, in fp32 or wider. (..., V), (...) → (...)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    # logit[target] − logsumexp(logits) is log_softmax at one index without a second (..., V) tensor.
    return picked - torch.logsumexp(logits, dim=-1)


def sum_by_sequence(values: torch.Tensor, sequence_index: torch.Tensor, num_sequences: int) -> torch.Tensor:
    """Σ values per sequence: (N,), (N,) long in [0, S) → (S,); a sequence with no value sums to 0."""
    assert values.shape == sequence_index.shape and values.dim() == 1, (
        f"expected two (N,) tensors, got values {tuple(values.shape)}, "
        f"sequence_index {tuple(sequence_index.shape)}")
    out = torch.zeros(num_sequences, dtype=values.dtype, device=values.device)
    return out.index_add(0, sequence_index, values)
