"""The one reward protocol every consumer (RL stages, the demo, ``tuneloop eval``) calls.

``score(prompts, responses) -> torch.Tensor`` of shape (B,), fp32 on the CPU: one reward per
(prompt, response). A prompt is a string (one user turn) or a list of ``{"role", "content"}``
messages ending on a user turn; a response is the reply text. Scorers render the text themselves
(a reward model with its own tokenizer and template), so the policy's tokenizer never leaks in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

from tuneloop.data.formats import Message

Prompt = str | list[Message]


@runtime_checkable
class Reward(Protocol):
    name: str

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
        """Rewards (B,) fp32 for B (prompt, response) pairs."""
        ...


def as_messages(prompt: Prompt) -> list[Message]:
    """A prompt as a message list: a string becomes one user turn."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt or not all(isinstance(m, dict) and "role" in m and "content" in m
                                                              for m in prompt):
        raise ValueError(f"a prompt must be a string or a non-empty list of {{'role', 'content'}} messages, "
                         f"got {str(prompt)[:80]!r}")
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def check_batch(prompts: Sequence[Prompt], responses: Sequence[str]) -> None:
    if len(prompts) != len(responses):
        raise ValueError(f"score() needs one prompt per response, got {len(prompts)} prompts and "
                         f"{len(responses)} responses")
    for i, r in enumerate(responses):
        if not isinstance(r, str):
            raise ValueError(f"response {i} must be a string, got {type(r).__name__}")


def as_scores(values: Sequence[float], source: str) -> torch.Tensor:
    """Validated (B,) fp32 tensor; a non-number or non-finite value is an error naming ``source``."""
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"reward {source} gave {v!r} for item {i}; expected a finite number")
        out.append(float(v))
    return torch.tensor(out, dtype=torch.float32)


class WeightedMix:
    """Σ_i w_i · reward_i(prompt, response) over several rewards."""

    def __init__(self, components: Sequence[tuple[Reward, float]]):
        if not components:
            raise ValueError("a reward mix needs at least one component")
        self.components = list(components)
        self.name = " + ".join(f"{w:g}·{r.name}" for r, w in self.components)

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
        check_batch(prompts, responses)
        total = torch.zeros(len(responses), dtype=torch.float32)
        for reward, weight in self.components:
            total += weight * reward.score(prompts, responses)
        return total

    def parts(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> dict[str, torch.Tensor]:
        """Each component's unweighted rewards, for logging what the mix is made of."""
        return {reward.name: reward.score(prompts, responses) for reward, _ in self.components}
