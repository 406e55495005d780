"""Masked cross-entropy and token-count normalisation, checked against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from tuneloop.losses.reductions import token_normalised
from tuneloop.losses.sft import masked_nll_sum


def test_masked_nll_sum_by_hand():
    """Three positions, vocabulary of 3.

    position 0: logits (0, 0, 0), target 0 → p = 1/3, −log p = log 3 = 1.0986123
    position 1: logits (log 2, 0, 0), target 0 → p = 2 / (2 + 1 + 1) = 1/2, −log p = log 2 = 0.6931472
    position 2: masked out (its huge loss must not count)
    sum = 1.7917595, trained tokens = 2
    """
    logits = torch.tensor([[0.0, 0.0, 0.0], [math.log(2), 0.0, 0.0], [-50.0, 50.0, 0.0]])
    targets = torch.tensor([0, 0, 0])
    mask = torch.tensor([1.0, 1.0, 0.0])
    loss, metrics = masked_nll_sum(logits, targets, mask)
    assert loss.item() == pytest.approx(1.7917595, abs=1e-6)
    assert metrics["trained_tokens"] == 2


def test_masked_nll_sum_accepts_batched_shapes():
    """Same numbers laid out as (B=1, T=3, V=3)."""
    logits = torch.tensor([[[0.0, 0.0, 0.0], [math.log(2), 0.0, 0.0], [-50.0, 50.0, 0.0]]])
    loss, _ = masked_nll_sum(logits, torch.zeros(1, 3, dtype=torch.long), torch.tensor([[1.0, 1.0, 0.0]]))
    assert loss.item() == pytest.approx(1.7917595, abs=1e-6)


def test_token_normalised_by_hand():
    """Micro-batch sums 3.0 (5 tokens) and 1.0 (3 tokens): the step mean is 4 / 8 = 0.5.

    One process: contributions 3/8 = 0.375 and 1/8 = 0.125, adding to 0.5.
    Two processes (gradients are averaged over 2): each contribution is doubled, 3·2/8 = 0.75.
    """
    parts = [token_normalised(torch.tensor(s), 8, 1).item() for s in (3.0, 1.0)]
    assert parts == pytest.approx([0.375, 0.125], abs=1e-7)
    assert token_normalised(torch.tensor(3.0), 8, 2).item() == pytest.approx(0.75, abs=1e-7)
    with pytest.raises(AssertionError, match="global_count=0"):
        token_normalised(torch.tensor(1.0), 0, 1)


def test_shape_mismatch_is_reported():
    with pytest.raises(AssertionError, match="shape mismatch"):
        masked_nll_sum(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long), torch.zeros(3))
