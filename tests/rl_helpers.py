"""Programmatic rewards and small configs for the RL tests (loaded by path as file.py:function)."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve()


def e_share(text: str) -> float:
    """Share of the response's characters that are the letter 'e' (0 for an empty response)."""
    return text.count("e") / len(text) if text else 0.0


def spec(name: str) -> str:
    return f"{HERE}:{name}"


def constant(text: str) -> float:
    """The same score for every response: a group estimator gets no signal from it."""
    return 0.5
