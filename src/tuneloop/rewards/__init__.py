"""One reward interface: ``load_reward(spec).score(prompts, responses) -> torch.Tensor (B,)``.

Specs:
  a folder with ``tuneloop_reward.json``   a trained reward model (``tuneloop reward``), normalised scores
  ``folder?weights=quality:1,safety:1&floor=safety:3``  a multi-aspect reward model: a weighted
                                           combination of its aspects, optional floor (``rewards.aspects``);
                                           also as a mapping ``{"model": folder, "weights": {...}, ...}``
  ``vader`` / ``readability`` (or ``gold:…``) a gold scorer (``rewards.gold``)
  ``package.module:function`` / ``file.py:function``  a Python callable, text → float
  ``http://…`` / ``https://…``             an HTTP endpoint (``rewards.http``)
  a list of ``{"spec": …, "weight": w}`` or ``(spec, w)``  a weighted mix
  a ``Reward`` object or a plain callable  used as is / wrapped

RL stages call ``check_reward_model(folder)`` first: it refuses a reward model whose recorded
held-out accuracy is not above chance unless ``allow_weak``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneloop.rewards.aspects import AspectReward, load_aspect_reward, parse_aspect_query, split_spec
from tuneloop.rewards.base import Reward, WeightedMix
from tuneloop.rewards.functions import CallableReward, load_function, load_text_scorer
from tuneloop.rewards.gate import WeakRewardModelError, check_reward_model
from tuneloop.rewards.gold import GOLD_PREFIX, GOLD_SCORERS
from tuneloop.rewards.http import HttpReward, RewardServiceError


def load_reward(spec: Any, *, normalise: bool = True) -> Reward:
    """A ``Reward`` from a spec (see the module docstring); errors say which spec is wrong and why."""
    if isinstance(spec, Reward):
        return spec
    if isinstance(spec, (list, tuple)):
        if len(spec) == 2 and _is_number(spec[1]) and not isinstance(spec[0], (list, tuple, dict)):
            spec = [spec]  # one (spec, weight) pair
        return WeightedMix([_component(item, normalise) for item in spec])
    if callable(spec):
        return CallableReward(spec)
    if isinstance(spec, dict) and "model" in spec:
        return load_aspect_reward(spec, normalise=normalise)
    if not isinstance(spec, (str, Path)):
        raise ValueError(f"cannot make a reward from {type(spec).__name__} {spec!r}")
    text = str(spec)
    name = text.removeprefix(GOLD_PREFIX)
    if name in GOLD_SCORERS:
        return CallableReward(GOLD_SCORERS[name], name=f"gold:{name}")
    if text.startswith(GOLD_PREFIX):
        raise ValueError(f"unknown gold scorer {name!r}; known: {', '.join(sorted(GOLD_SCORERS))}")
    if text.startswith(("http://", "https://")):
        return HttpReward(text)
    folder, query = split_spec(text)
    if query is not None and Path(folder).is_dir():
        return load_aspect_reward(text, normalise=normalise)
    if Path(text).is_dir():
        from tuneloop.rewards.model import RewardModelScorer

        scorer = RewardModelScorer(text, normalise=normalise)
        return AspectReward(scorer, parse_aspect_query(text, None), normalise) if scorer.info.heads else scorer
    if ":" in text:
        return CallableReward(load_function(text), name=text)
    raise FileNotFoundError(f"reward {text!r} is not a reward-model folder, a gold scorer "
                            f"({', '.join(sorted(GOLD_SCORERS))}), a module:function or an http(s) URL")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _component(item: Any, normalise: bool) -> tuple[Reward, float]:
    if isinstance(item, dict):
        unknown = set(item) - {"spec", "weight"}
        if "spec" not in item or unknown:
            raise ValueError(f"a reward mix entry is {{'spec': ..., 'weight': ...}}, got {item!r}")
        spec, weight = item["spec"], item.get("weight", 1.0)
    elif isinstance(item, (list, tuple)) and len(item) == 2:
        spec, weight = item
    else:
        spec, weight = item, 1.0
    if not _is_number(weight):
        raise ValueError(f"a reward mix weight must be a number, got {weight!r}")
    return load_reward(spec, normalise=normalise), float(weight)


__all__ = [
    "GOLD_SCORERS",
    "AspectReward",
    "CallableReward",
    "HttpReward",
    "Reward",
    "RewardServiceError",
    "WeakRewardModelError",
    "WeightedMix",
    "check_reward_model",
    "load_reward",
    "load_text_scorer",
]
