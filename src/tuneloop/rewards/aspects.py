"""Multi-aspect reward models behind the reward protocol: every aspect's score, a weighted combination
of them, and an optional floor on one aspect.

A reward-model folder trained on aspect scores (``tuneloop reward --data.scores scores.jsonl``) has one
head per aspect (and a ``preference`` head when pairs were trained too). Spec strings, wherever a
reward spec goes (``--reward``, the RL and eval configs, ``load_reward``)::

    runs/reward-…/model                                                the folder's default combination
    'runs/reward-…/model?weights=quality:1,relevance:0.5,safety:1'     a weighted combination
    'runs/reward-…/model?weights=relevance:1&floor=safety:3&penalty=5' … with a floor on one aspect

or the same as a mapping (Python or YAML)::

    {"model": "runs/reward-…/model", "weights": {"quality": 1, "safety": 1}, "floor": {"safety": 3}, "penalty": 5}

Head values: an aspect on its own scale (the mean human score it predicts, e.g. 1–5); ``preference`` as
the classic normalised reward. The score is::

    c     = Σ_h w_h · v_h
    score = (c − w·μ) / √(wᵀ Σ w)  − penalty · [v_floor < floor]      (normalise=True, the default)
    score =  c                     − penalty · [v_floor < floor]      (normalise=False)

where μ and Σ are the mean and covariance of the head values on the reference set of policy samples
(``tuneloop_reward.json`` ``head_reference``): the combination has mean 0 and std 1 there for any
weights, as a one-head model's normalised reward does (Ziegler et al. 2019), so RL settings carry over.
The floor compares the aspect's predicted score on its own scale; the penalty is in the units of the
score (reference standard deviations when normalised), ``PENALTY`` by default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tuneloop.rewards.base import Prompt

PENALTY = 5.0  # subtracted below the floor: five reference standard deviations of a normalised score
SPEC_KEYS = ("weights", "floor", "penalty")


@dataclass(frozen=True)
class AspectSpec:
    """What to score with a multi-aspect reward model."""

    folder: str  # the reward-model folder
    weights: dict[str, float] | None  # head → weight; None: the folder's default (``aspect_weights``)
    floor: tuple[str, float] | None  # (aspect, lowest acceptable score on its scale); None: no floor
    penalty: float = PENALTY  # subtracted from the score of a response below the floor


def split_spec(text: str) -> tuple[str, str | None]:
    """(folder, query or None) of ``folder?query``."""
    folder, sep, query = text.partition("?")
    return folder, (query if sep else None)


def _number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: expected a finite number, got {text!r}")
    return value


def _pairs(text: str, where: str) -> dict[str, float]:
    out = {}
    for item in text.split(","):
        name, sep, value = item.strip().partition(":")
        if not sep or not name.strip():
            raise ValueError(f"{where}: expected name:number entries separated by commas, got {item!r}")
        if name.strip() in out:
            raise ValueError(f"{where}: '{name.strip()}' is given twice")
        out[name.strip()] = _number(value.strip(), f"{where} '{name.strip()}'")
    return out


def parse_aspect_query(folder: str, query: str | None) -> AspectSpec:
    """An ``AspectSpec`` from ``weights=a:1,b:0.5&floor=c:3&penalty=5`` (each key optional)."""
    found: dict[str, str] = {}
    for part in (query or "").split("&"):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or key not in SPEC_KEYS:
            raise ValueError(f"reward spec {folder}?{query}: unknown part {part!r}; expected "
                             "weights=aspect:w,…, floor=aspect:score, penalty=number joined by '&'")
        if key in found:
            raise ValueError(f"reward spec {folder}?{query}: '{key}' is given twice")
        found[key] = value
    weights = _pairs(found["weights"], "weights") if "weights" in found else None
    floor = _pairs(found["floor"], "floor") if "floor" in found else None
    penalty = _number(found["penalty"], "penalty") if "penalty" in found else None
    return _spec(folder, weights, floor, penalty)


def aspect_spec_from_mapping(mapping: Mapping[str, Any]) -> AspectSpec:
    """An ``AspectSpec`` from ``{"model", "weights"?, "floor"?, "penalty"?}``."""
    unknown = sorted(set(mapping) - {"model", *SPEC_KEYS})
    if "model" not in mapping or unknown:
        raise ValueError(f"an aspect reward mapping is {{'model': folder, 'weights'?: {{aspect: w}}, 'floor'?: "
                         f"{{aspect: score}}, 'penalty'?: number}}; got keys {sorted(mapping)}")
    numbers = {}
    for key in ("weights", "floor"):
        value = mapping.get(key)
        if value is not None and (not isinstance(value, Mapping) or not value):
            raise ValueError(f"{key}: expected a non-empty mapping {{aspect: number}}, got {value!r}")
        numbers[key] = None if value is None else {str(k): _number(str(v), f"{key} '{k}'") for k, v in value.items()}
    penalty = mapping.get("penalty")
    return _spec(str(mapping["model"]), numbers["weights"], numbers["floor"],
                 None if penalty is None else _number(str(penalty), "penalty"))


def _spec(folder: str, weights: dict[str, float] | None, floor: dict[str, float] | None,
          penalty: float | None) -> AspectSpec:
    if floor is not None and len(floor) != 1:
        raise ValueError(f"floor: one aspect and its lowest acceptable score (e.g. safety:3), got {floor}")
    if penalty is not None and floor is None:
        raise ValueError("penalty applies below a floor; give floor=aspect:score too")
    if penalty is not None and penalty < 0:
        raise ValueError(f"penalty must be ≥ 0 (it is subtracted), got {penalty}")
    return AspectSpec(folder, weights, next(iter(floor.items())) if floor else None,
                      PENALTY if penalty is None else penalty)


def weight_vector(heads: list[str], weights: Mapping[str, float]) -> torch.Tensor:
    """(H,) fp64 weights in head order; a weight for a name that is not a head is an error."""
    unknown = sorted(set(weights) - set(heads))
    if unknown:
        raise ValueError(f"weights name {unknown}, which the reward model does not score; its heads are "
                         f"{', '.join(heads)}")
    if not any(weights.values()):
        raise ValueError(f"at least one weight must be non-zero, got {dict(weights)}")
    return torch.tensor([float(weights.get(h, 0.0)) for h in heads], dtype=torch.float64)


def combination_moments(weights: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> tuple[float, float]:
    """Mean w·μ and standard deviation √(wᵀΣw) of the combination Σ_h w_h v_h when the head values v
    have mean μ (H,) and covariance Σ (H, H); the std is 1 when the combination is constant (< 1e-8)."""
    w, mu, sigma = weights.double(), mean.double(), cov.double()
    assert w.shape == mu.shape and sigma.shape == (w.numel(), w.numel()), (
        f"expected (H,) weights and mean and an (H, H) covariance, got {tuple(w.shape)}, {tuple(mu.shape)}, "
        f"{tuple(sigma.shape)}")
    variance = float(w @ sigma @ w)
    std = math.sqrt(variance) if variance > 1e-16 else 1.0
    return float(w @ mu), std


def head_moments(values: torch.Tensor) -> dict[str, list]:
    """{"mean": (H,), "cov": (H, H)} (population covariance) of head values (N, H): what
    ``tuneloop_reward.json`` records as ``head_reference``."""
    v = values.double()
    centred = v - v.mean(dim=0)
    return {"mean": v.mean(dim=0).tolist(), "cov": (centred.T @ centred / max(v.shape[0], 1)).tolist()}


def floor_penalty(values: torch.Tensor, floor: float, penalty: float) -> torch.Tensor:
    """(B,) ``penalty`` where the aspect's score ``values`` (B,) is below ``floor``, else 0."""
    return (values < floor).to(torch.float32) * penalty


class AspectReward:
    """A multi-aspect reward model: ``score`` gives the combination, ``score_aspects`` every head."""

    def __init__(self, scorer, spec: AspectSpec, normalise: bool = True):
        info = scorer.info
        if not info.heads:
            raise ValueError(f"{spec.folder} has one scalar head, not aspects; drop the '?…' part of the spec")
        self.scorer, self.spec, self.normalise, self.heads = scorer, spec, normalise, list(info.heads)
        weights = spec.weights if spec.weights is not None else info.aspect_weights
        self.weights = weight_vector(self.heads, weights)
        if spec.floor is not None and spec.floor[0] not in info.aspect_stats:
            raise ValueError(f"floor: '{spec.floor[0]}' is not an aspect of {spec.folder} "
                             f"({', '.join(info.aspect_stats)})")
        self.offset, self.scale = 0.0, 1.0
        if normalise:
            ref = info.head_reference
            self.offset, self.scale = combination_moments(self.weights, torch.tensor(ref["mean"], dtype=torch.float64),
                                                          torch.tensor(ref["cov"], dtype=torch.float64))
        terms = "+".join(f"{w:g}·{h}" for h, w in zip(self.heads, self.weights.tolist()) if w)
        floor = f", {spec.floor[0]}≥{spec.floor[1]:g} else −{spec.penalty:g}" if spec.floor else ""
        self.name = f"rm:{spec.folder}[{terms}{floor}]"

    def head_values(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
        """(B, H) fp32: each aspect on its scale, ``preference`` as a normalised reward."""
        info = self.scorer.info
        raw = self.scorer.outputs(prompts, responses).reshape(len(responses), len(self.heads))
        columns = []
        for h, name in enumerate(self.heads):
            stats = info.aspect_stats.get(name)
            columns.append(info.normalise(raw[:, h]) if stats is None else stats["mean"] + stats["std"] * raw[:, h])
        return torch.stack(columns, dim=1) if columns else raw

    def score_aspects(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> dict[str, torch.Tensor]:
        """{head: (B,)} — every aspect's predicted score on its scale (and ``preference``)."""
        values = self.head_values(prompts, responses)
        return {name: values[:, h] for h, name in enumerate(self.heads)}

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
        values = self.head_values(prompts, responses).double()
        combined = ((values @ self.weights - self.offset) / self.scale).float()
        if self.spec.floor is not None:
            aspect, floor = self.spec.floor
            combined = combined - floor_penalty(values[:, self.heads.index(aspect)], floor, self.spec.penalty)
        return combined

    def parts(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> dict[str, torch.Tensor]:
        """Each head's value, for logging what the combination is made of."""
        return self.score_aspects(prompts, responses)


def load_aspect_reward(spec: str | Path | Mapping[str, Any], normalise: bool = True) -> AspectReward:
    """An ``AspectReward`` from a ``folder?query`` string or a mapping (see the module docstring)."""
    from tuneloop.rewards.model import RewardModelScorer

    parsed = aspect_spec_from_mapping(spec) if isinstance(spec, Mapping) else parse_aspect_query(*split_spec(str(spec)))
    if not Path(parsed.folder).is_dir():
        raise FileNotFoundError(f"reward model folder not found: {parsed.folder}")
    return AspectReward(RewardModelScorer(parsed.folder, normalise=normalise), parsed, normalise)
