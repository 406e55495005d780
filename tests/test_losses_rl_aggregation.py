"""Loss aggregation modes of the RL stage (losses.reductions.aggregate_loss) and their exactness under
accumulation and ranks through the one normalisation, token_normalised.

Example: per-token loss rows [1, 2, 3] (3 tokens) and [4, pad] (1 token).
token_mean: (1 + 2 + 3 + 4) / 4 = 2.5. seq_mean_token_mean: (6/3 + 4/1) / 2 = 3.
seq_mean_token_sum_norm with C = 4: (6/4 + 4/4) / 2 = 1.25.
"""

from __future__ import annotations

import pytest
import torch
from handvalues import assert_near

from tuneloop.losses.reductions import LossAggregation, aggregate_loss, token_normalised

T = torch.tensor
LOSS, MASK = T([[1.0, 2.0, 3.0], [4.0, 99.0, 99.0]]), T([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


@pytest.mark.parametrize(("mode", "constant", "expected"), [
    ("token_mean", None, 2.5), ("seq_mean_token_mean", None, 3.0), ("seq_mean_token_sum_norm", 4.0, 1.25)])
def test_aggregation_hand_values(mode, constant, expected):
    total, units = aggregate_loss(LOSS, MASK, mode, constant)
    assert_near(total / units, expected)


def test_aggregation_units():
    assert aggregate_loss(LOSS, MASK, "token_mean")[1] == 4
    assert aggregate_loss(LOSS, MASK, "seq_mean_token_mean")[1] == 2


def test_constant_only_for_its_mode():
    with pytest.raises(AssertionError, match="constant"):
        aggregate_loss(LOSS, MASK, "token_mean", 4.0)
    with pytest.raises(AssertionError, match="constant"):
        aggregate_loss(LOSS, MASK, "seq_mean_token_sum_norm")


@pytest.mark.parametrize("mode", list(LossAggregation))
def test_split_over_micro_batches_and_ranks_equals_whole(mode):
    """Rows split into 2 ranks × 2 micro-batches: Σ token_normalised(sum_i, global units, W = 2) averaged over
    the 2 ranks (DDP's gradient mean) equals the whole batch's aggregate."""
    g = torch.Generator().manual_seed(0)
    loss, mask = torch.rand(8, 5, generator=g), (torch.rand(8, 5, generator=g) > 0.4).float()
    mask[:, 0] = 1.0
    constant = 5.0 if mode is LossAggregation.SEQ_MEAN_TOKEN_SUM_NORM else None
    whole_sum, whole_units = aggregate_loss(loss, mask, mode, constant)
    shards = [aggregate_loss(loss[i:i + 2], mask[i:i + 2], mode, constant) for i in range(0, 8, 2)]
    global_units = sum(u for _, u in shards)
    per_rank = [sum(token_normalised(s, global_units, 2) for s, _ in shards[r * 2:(r + 1) * 2]) for r in range(2)]
    assert_near(sum(per_rank) / 2, whole_sum / whole_units)
