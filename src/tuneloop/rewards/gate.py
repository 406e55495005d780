"""The sanity gate RL stages pass a reward model through before optimising a policy against it.

An RM whose recorded held-out accuracy is not above chance would turn RL into optimising noise;
``check_reward_model`` refuses it unless told to go on anyway (``allow_weak``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the models package is imported when a reward model is checked, not with rewards/
    from tuneloop.models.reward import RewardModelInfo


class WeakRewardModelError(ValueError):
    """The reward model's recorded held-out accuracy is missing or not above chance."""


def check_reward_model(path: str | Path, allow_weak: bool = False) -> RewardModelInfo:
    """The model's info if its held-out accuracy is above chance; otherwise raise (or, with
    ``allow_weak``, print a warning and return it). A multi-aspect model records the accuracy of its
    default aspect combination on held-out pairs (judged, else implied by the scores)."""
    from tuneloop.models.reward import RewardModelInfo
    from tuneloop.rewards.aspects import split_spec

    path = split_spec(str(path))[0]  # a multi-aspect spec 'folder?weights=…' gates its folder
    info = RewardModelInfo.load(path)
    problem = None
    if info.eval_accuracy is None or info.eval_pairs == 0:
        problem = "has no recorded held-out accuracy (it was trained without held-out pairs)"
    elif info.eval_accuracy <= info.chance_accuracy:
        problem = (f"has held-out accuracy {info.eval_accuracy:.3f} on {info.eval_pairs} pairs, not above "
                   f"chance ({info.chance_accuracy:g})")
    if problem is None:
        return info
    message = f"reward model {path} {problem}"
    if not allow_weak:
        raise WeakRewardModelError(f"{message}; optimising a policy against it would chase noise. Retrain it with "
                                   "more or cleaner judgments, or set allow_weak to go on anyway")
    print(f"[tuneloop] warning: {message}; going on because allow_weak is set")
    return info
