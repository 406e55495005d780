"""Rewards from Python callables: ``fn(response) -> float`` or ``fn(prompt, response) -> float``.

A callable with two or more required positional parameters receives the prompt (as the caller gave
it: a string or a message list) and the response; otherwise only the response. Spec strings name one
as ``package.module:function`` or ``path/to/file.py:function``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from tuneloop.rewards.base import Prompt, as_scores, check_batch
from tuneloop.rewards.gold import GOLD_PREFIX, GOLD_SCORERS


def _wants_prompt(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                  and p.default is p.empty]
    return len(positional) >= 2


class CallableReward:
    def __init__(self, fn: Callable, name: str | None = None):
        if not callable(fn):
            raise ValueError(f"a callable reward needs a function, got {type(fn).__name__}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        self.wants_prompt = _wants_prompt(fn)

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
        check_batch(prompts, responses)
        if self.wants_prompt:
            values = [self.fn(p, r) for p, r in zip(prompts, responses)]
        else:
            values = [self.fn(r) for r in responses]
        return as_scores(values, f"function {self.name}")


def load_text_scorer(spec: str) -> Callable[[str], float]:
    """A text → float scorer from a spec: a gold scorer (``vader``, ``readability``, or ``gold:vader``)
    or a ``module:function`` / ``file.py:function``. The simulated rater panel judges with it."""
    name = spec.removeprefix(GOLD_PREFIX)
    if name in GOLD_SCORERS:
        return GOLD_SCORERS[name]
    if spec.startswith(GOLD_PREFIX) or ":" not in spec:
        raise ValueError(f"a scorer is a gold scorer ({', '.join(sorted(GOLD_SCORERS))}) or "
                         f"'module:function' / 'file.py:function', got {spec!r}")
    return load_function(spec)


def load_function(spec: str) -> Callable:
    """The function named by ``module:function`` or ``file.py:function``; errors say what is wrong."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr.isidentifier():
        raise ValueError(f"a function reward is written 'package.module:function' or 'file.py:function', got {spec!r}")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise FileNotFoundError(f"reward function file not found: {path}")
        module_spec = importlib.util.spec_from_file_location(f"tuneloop_user_reward_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            raise ValueError(f"cannot import the reward module {target!r}: {err}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"{target} has no function {attr!r}")
    return fn
