"""Held-out data, one rule for every stage: whole prompts go to eval, a seeded share of them.

Every unit a stage trains on (an SFT document, a preference pair, a ranking, a KTO example) carries
``group``, a hash of its prompt (``data.preferences.prompt_key``); ``split_by_prompt`` holds out a
share of the distinct groups, so no prompt is in both splits, and the same data and seed always give
the same split. ``EVAL_FRACTION`` is the default share of every stage's ``data.eval_fraction``, and
``check_eval_fraction`` its one validation.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol, TypeVar

EVAL_FRACTION = 0.05  # default share of the distinct prompts held out when a stage has no eval file


class _Grouped(Protocol):
    group: str


T = TypeVar("T", bound=_Grouped)


def check_eval_fraction(value: float) -> None:
    """``data.eval_fraction`` must be in [0, 1): 0 holds nothing out, 1 would leave nothing to train on."""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"data.eval_fraction must be in [0, 1), got {value}")


def split_by_prompt(items: Sequence[T], eval_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """(train, eval) with no prompt in both: a share ``eval_fraction`` of the distinct prompts goes to eval.

    The prompts are sorted, shuffled with ``random.Random(seed)``, and the first
    round(eval_fraction × prompts) (at least 1 and at most all but 1, when 0 < eval_fraction < 1) are
    held out. Items keep their input order inside each split. The same items and seed give the same split.
    """
    assert 0.0 <= eval_fraction <= 1.0, f"eval_fraction must be in [0, 1], got {eval_fraction}"
    prompts = sorted({item.group for item in items})
    random.Random(seed).shuffle(prompts)
    held_out = round(eval_fraction * len(prompts))
    if 0.0 < eval_fraction < 1.0 and len(prompts) >= 2:
        held_out = min(max(held_out, 1), len(prompts) - 1)
    eval_prompts = set(prompts[:held_out])
    train = [item for item in items if item.group not in eval_prompts]
    evaluation = [item for item in items if item.group in eval_prompts]
    return train, evaluation
