"""Multi-aspect rewards without a model: the spec syntax, the combination's normalisation, the floor,
and the held-out aspect metrics, each worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from handvalues import assert_near

from tuneloop.metrics.aspects import aspect_correlations, implied_accuracy, score_gap_pairs
from tuneloop.rewards.aspects import (
    PENALTY,
    AspectSpec,
    aspect_spec_from_mapping,
    combination_moments,
    floor_penalty,
    head_moments,
    parse_aspect_query,
    split_spec,
    weight_vector,
)

T = torch.tensor


def test_query_and_mapping_give_the_same_spec():
    text = "runs/rm/model?weights=quality:1,relevance:0.5,safety:1&floor=safety:3&penalty=2"
    folder, query = split_spec(text)
    parsed = parse_aspect_query(folder, query)
    assert parsed == AspectSpec("runs/rm/model", {"quality": 1.0, "relevance": 0.5, "safety": 1.0}, ("safety", 3.0), 2.0)
    mapping = aspect_spec_from_mapping({"model": "runs/rm/model", "weights": {"quality": 1, "relevance": 0.5,
                                                                              "safety": 1}, "floor": {"safety": 3},
                                        "penalty": 2})
    assert mapping == parsed
    assert split_spec("runs/rm/model") == ("runs/rm/model", None)
    plain = parse_aspect_query("m", None)
    assert plain.weights is None and plain.floor is None and plain.penalty == PENALTY
    assert parse_aspect_query("m", "floor=safety:2.5").floor == ("safety", 2.5)


@pytest.mark.parametrize("query, message", [
    ("weight=quality:1", "unknown part 'weight=quality:1'"),
    ("weights=quality", "expected name:number entries"),
    ("weights=quality:high", "weights 'quality': expected a number"),
    ("weights=quality:1,quality:2", "'quality' is given twice"),
    ("weights=a:1&weights=b:1", "'weights' is given twice"),
    ("floor=safety:3,quality:2", "floor: one aspect"),
    ("penalty=3", "penalty applies below a floor"),
    ("floor=safety:3&penalty=-1", "penalty must be ≥ 0"),
    ("weights=quality:nan", "expected a finite number"),
])
def test_bad_queries_say_what_is_wrong(query, message):
    with pytest.raises(ValueError, match=message):
        parse_aspect_query("runs/rm/model", query)


def test_bad_mappings_say_what_is_wrong():
    with pytest.raises(ValueError, match="got keys"):
        aspect_spec_from_mapping({"weights": {"quality": 1}})
    with pytest.raises(ValueError, match="weights: expected a non-empty mapping"):
        aspect_spec_from_mapping({"model": "m", "weights": []})


def test_weight_vector_orders_by_head_and_refuses_unknown_names():
    assert_near(weight_vector(["preference", "quality", "safety"], {"safety": 2, "quality": 0.5}),
                [0.0, 0.5, 2.0])
    with pytest.raises(ValueError, match=r"\['humour'\].*preference, quality"):
        weight_vector(["preference", "quality"], {"humour": 1})
    with pytest.raises(ValueError, match="non-zero"):
        weight_vector(["quality"], {"quality": 0})


def test_combination_moments_by_hand():
    """w = (1, 2), μ = (1, 3), Σ = [[1, ½], [½, 4]]: mean w·μ = 1 + 6 = 7;
    wᵀΣw = 1·1·1 + 2·(1·2·½) + 2·2·4 = 1 + 2 + 16 = 19, std √19 = 4.3588989."""
    mean, std = combination_moments(T([1.0, 2.0]), T([1.0, 3.0]), T([[1.0, 0.5], [0.5, 4.0]]))
    assert mean == 7.0
    assert_near(std, 4.3588989)
    assert combination_moments(T([1.0]), T([2.0]), T([[0.0]])) == (2.0, 1.0)  # constant: no scaling


def test_head_moments_and_normalised_combination_on_the_reference():
    """Values (1, 2) and (3, 6): mean (2, 4); population covariance [[1, 2], [2, 4]]. Any combination
    standardised with combination_moments has mean 0 and std 1 on those same values."""
    values = T([[1.0, 2.0], [3.0, 6.0], [2.0, 4.0], [2.0, 4.0]])
    moments = head_moments(values[:2])
    assert_near(moments["mean"], [2.0, 4.0])
    assert_near(moments["cov"], [[1.0, 2.0], [2.0, 4.0]])
    torch.manual_seed(0)
    values = torch.randn(50, 3) * T([1.0, 2.0, 0.5]) + T([3.0, 1.0, 4.0])
    moments = head_moments(values)
    w = T([1.0, 0.5, -2.0], dtype=torch.float64)
    mean, std = combination_moments(w, T(moments["mean"], dtype=torch.float64), T(moments["cov"], dtype=torch.float64))
    z = (values.double() @ w - mean) / std
    assert abs(z.mean().item()) < 1e-9 and abs(z.std(unbiased=False).item() - 1) < 1e-9


def test_floor_penalty_by_hand():
    """Floor 3, penalty 5: scores 2.9 and 1 are below (−5 each), 3 and 4.2 are not."""
    assert_near(floor_penalty(T([2.9, 3.0, 4.2, 1.0]), 3.0, 5.0), [5.0, 0.0, 0.0, 5.0])


def test_aspect_correlations_by_hand():
    """Aspect a: predicted (1, 2, 3) vs human (2, 4, 7): deviations (−1, 0, 1) and (−7/3, −1/3, 8/3);
    Pearson = (7/3 + 8/3) / √(2 · (49 + 1 + 64)/9) = 5 / √(228/9) = 0.9933993; Spearman 1 (same order);
    rmse √((1 + 4 + 16)/3) = √7. Aspect b: only the first two responses are scored, predicted (3, 1)
    vs human (1, 2): Pearson −1, Spearman −1."""
    predicted = T([[1.0, 3.0], [2.0, 1.0], [3.0, 0.0]])
    human = T([[2.0, 1.0], [4.0, 2.0], [7.0, float("nan")]])
    mask = T([[True, True], [True, True], [True, False]])
    out = aspect_correlations(predicted, human, mask, ["a", "b"])
    assert_near(out["a"]["pearson"], 0.9933993)
    assert_near(out["a"]["spearman"], 1.0)
    assert_near(out["a"]["rmse"], math.sqrt(7))
    assert out["a"]["responses"] == 3 and out["b"]["responses"] == 2
    assert_near(out["b"]["pearson"], -1.0)
    assert_near(out["b"]["spearman"], -1.0)


def test_score_gap_pairs_and_implied_accuracy_by_hand():
    """Prompt p: human (4, 3.8, 2) → pairs with gap ≥ 0.5: (0 ≻ 2) and (1 ≻ 2); (0, 1) differ by 0.2.
    Prompt q: (1, nan, 5) → (2 ≻ 0) only (nan makes no pair). Predicted (3, 1, 2, 0, 9, 1):
    0 ≻ 2: 3 > 2 right; 1 ≻ 2: 1 < 2 wrong; 5 ≻ 3: 1 > 0 right → accuracy 2/3 over 3 pairs."""
    groups = ["p", "p", "p", "q", "q", "q"]
    human = T([4.0, 3.8, 2.0, 1.0, float("nan"), 5.0])
    better, worse = score_gap_pairs(groups, human, 0.5)
    assert better.tolist() == [0, 1, 5] and worse.tolist() == [2, 2, 3]
    out = implied_accuracy(T([3.0, 1.0, 2.0, 0.0, 9.0, 1.0]), better, worse)
    assert_near(out["accuracy"], 2 / 3)
    assert out["pairs"] == 3
    assert score_gap_pairs(groups, human, 0.1)[0].numel() == 4  # (0, 1) differs by 0.2 ≥ 0.1
