"""Aspect-score losses: hand-computed values, gradients, limiting cases and the enum dispatch.

Constants: softplus(−½) = log(1 + e^−½) = 0.4740770, softplus(½) = log(1 + e^½) = 0.9740770,
softplus(−1½) = 0.2014133, softplus(−2½) = 0.0788897, softplus(−3½) = 0.0297504.
"""

from __future__ import annotations

import pytest
import torch
from handvalues import assert_near

from tuneloop.losses.aspects import AspectLoss, aspect_loss, aspect_ordinal_loss, aspect_regression_loss
from tuneloop.losses.preference import bradley_terry_loss

T = torch.tensor


def test_regression_hand_value_masks_unscored_aspects():
    """Row 0 scored on both aspects: ((1 − 0)² + (0 − 0)²) / 2 = 0.5. Row 1 scored on the first only:
    (2 − 0)² / 1 = 4 (its second target, nan, is not read). mse over the 3 cells: (1 + 0 + 4) / 3."""
    predicted = T([[1.0, 0.0], [2.0, 5.0]])
    target = T([[0.0, 0.0], [0.0, float("nan")]])
    mask = T([[True, True], [True, False]])
    loss, metrics = aspect_regression_loss(predicted, target, mask)
    assert_near(loss, [0.5, 4.0])
    assert_near(metrics["mse"], 5 / 3)
    assert metrics["cells"] == 3


def test_regression_gradient_and_nan_target_does_not_leak():
    """∂/∂f of Σ_a m (f − t)² / Σ_a m is 2 (f − t) / Σ_a m: row 0, aspect 0: 2·1/2 = 1; unscored cells 0."""
    predicted = T([[1.0, 0.0], [2.0, 5.0]], requires_grad=True)
    target = T([[0.0, 0.0], [0.0, float("nan")]])
    aspect_regression_loss(predicted, target, T([[1, 1], [1, 0]]))[0].sum().backward()
    assert_near(predicted.grad, [[1.0, 0.0], [4.0, 0.0]])


def test_regression_is_zero_at_the_target():
    t = torch.randn(4, 3)
    loss, _ = aspect_regression_loss(t, t, torch.ones(4, 3))
    assert_near(loss, torch.zeros(4), tol=0)


def test_a_response_scored_on_no_aspect_is_refused():
    with pytest.raises(AssertionError, match="at least one scored aspect"):
        aspect_regression_loss(torch.zeros(2, 2), torch.zeros(2, 2), T([[1, 0], [0, 0]]))


def _scale(low=1, high=3, mean=0.0, std=1.0, aspects=1):
    return {"low": T([low] * aspects), "high": T([high] * aspects), "mean": T([mean] * aspects),
            "std": T([std] * aspects)}


def test_ordinal_hand_value_on_a_three_point_scale():
    """Scale 1–3, thresholds 1.5 and 2.5; g = 2. Vote 2: softplus(1.5 − 2) + softplus(2 − 2.5)
    = 2·0.4740770 = 0.9481540. Vote 3: softplus(1.5 − 2) + softplus(2.5 − 2) = 0.4740770 + 0.9740770
    = 1.4481540. Their mean: 1.1981540. Mean |g − vote| = (0 + 1) / 2 = 0.5."""
    loss, metrics = aspect_ordinal_loss(T([[2.0]]), T([[[2, 3]]]), T([[True]]), **_scale())
    assert_near(loss, [1.1981540])
    assert_near(metrics["mean_abs_error"], 0.5)


def test_ordinal_reads_the_head_through_the_standardisation_and_ignores_padding():
    """f = 0.5 with mean 1, std 2 is g = 2, as above; a −1 pad vote changes nothing. A second aspect
    on 1–5 with g = 1 and vote 1: Σ_{k=1..4} softplus(1 − (k + ½)) = softplus(−½) + softplus(−1½)
    + softplus(−2½) + softplus(−3½) = 0.4740770 + 0.2014133 + 0.0788897 + 0.0297504 = 0.7841304.
    The row's loss is the mean over its two aspects: (1.1981540 + 0.7841304) / 2 = 0.9911422."""
    scale = {"low": T([1, 1]), "high": T([3, 5]), "mean": T([1.0, 1.0]), "std": T([2.0, 1.0])}
    votes = T([[[2, 3, -1], [1, -1, -1]]])
    loss, _ = aspect_ordinal_loss(T([[0.5, 0.0]]), votes, T([[True, True]]), **scale)
    assert_near(loss, [0.9911422])


def test_ordinal_on_two_levels_is_the_logistic_loss_of_bradley_terry():
    """A 0–1 scale has one threshold, ½: a vote of 1 costs softplus(½ − g) = −log σ(g − ½), which is the
    Bradley–Terry loss of a 'chosen' reward g against a 'rejected' reward ½; a vote of 0 the reverse."""
    g = T([-1.0, 0.3, 2.0])
    ones, _ = aspect_ordinal_loss(g.unsqueeze(1), T([[[1]], [[1]], [[1]]]), torch.ones(3, 1), **_scale(0, 1))
    zeros, _ = aspect_ordinal_loss(g.unsqueeze(1), T([[[0]], [[0]], [[0]]]), torch.ones(3, 1), **_scale(0, 1))
    assert_near(ones, bradley_terry_loss(g, torch.full((3,), 0.5))[0])
    assert_near(zeros, bradley_terry_loss(torch.full((3,), 0.5), g)[0])


def test_ordinal_gradient_points_towards_the_vote():
    """Vote 3 on 1–3 with g = 2: ∂ℓ/∂g = −σ(1.5 − 2) − σ(2.5 − 2) = −(0.3775407 + 0.6224593) = −1.0."""
    f = T([[2.0]], requires_grad=True)
    aspect_ordinal_loss(f, T([[[3]]]), T([[True]]), **_scale())[0].sum().backward()
    assert_near(f.grad, [[-1.0]])


def test_enum_dispatch_matches_the_functions():
    predicted, target, mask = torch.randn(3, 2), torch.randn(3, 2), torch.ones(3, 2)
    votes = T([[[1, 2], [3, -1]], [[2, 2], [1, 3]], [[3, 3], [2, -1]]])
    targets = {"target": target, "votes": votes, **_scale(aspects=2)}
    assert_near(aspect_loss("regression", predicted, mask, targets)[0], aspect_regression_loss(predicted, target, mask)[0],
          tol=0)
    assert_near(aspect_loss(AspectLoss.ORDINAL, predicted, mask, targets)[0],
          aspect_ordinal_loss(predicted, votes, mask, **_scale(aspects=2))[0], tol=0)
    assert AspectLoss.ORDINAL.needs_votes and not AspectLoss.REGRESSION.needs_votes
    with pytest.raises(ValueError):
        aspect_loss("huber", predicted, mask, targets)
