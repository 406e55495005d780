"""What a judgment may say, checked against its item. Pure functions: no store, no web.

Every value is checked for its JSON type before it is used (a list where an id belongs, a float id
such as ``83.0``, mixed types in a ranking are errors naming the field, never a crash).

A pairwise answer names candidates by id (never by screen side)::

  {"outcome": "win", "winner": 17, "strength": "better"}      # strength: one of STRENGTHS
  {"outcome": "tie"}   {"outcome": "both_bad"}

A ranking answer is an ordered partition of the item's candidate ids into tie groups, best first::

  {"ranking": [[17], [15, 18], [16]], "none_acceptable": false}

A rating answer scores the item's one response on every aspect of the project::

  {"scores": {"17": {"quality": 4, "relevance": 5, "safety": 5}}}

Pairwise and ranking answers may add ``"scores"`` too (any aspects, any of the item's candidates),
``"ratings": {"17": 6, ...}`` (1–7 Likert, per response) and ``"flags": {"17": ["hallucination"], ...}``
(names from the store's configured flags).
"""

from __future__ import annotations

from typing import Any

from tuneloop.feedback.aspects import Aspect

# Llama 2's four preference strengths (Touvron et al. 2023, §3.2.1) and the margins they give the reward
# model's ranking loss (their Table 28, "margin large": 3, 2, 1, 0).
STRENGTHS = {"significantly": 3.0, "better": 2.0, "slightly": 1.0, "negligibly": 0.0}
OUTCOMES = ("win", "tie", "both_bad")
KINDS = ("pairwise", "ranking", "rating")
RATING_RANGE = (1, 7)
_SHOWN_CHARS = 40  # how much of a wrong value an error message repeats


class AnswerError(ValueError):
    """The answer does not fit the item; ``field`` names the offending field (also the message's prefix)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def _shown(value: Any) -> str:
    """A wrong value as an error message repeats it: its type and at most a few characters."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else f"{type(value).__name__} {text[:_SHOWN_CHARS]}…"


def _is_id(value: Any) -> bool:
    """A candidate id is a JSON integer: not a bool, not a float such as 83.0."""
    return type(value) is int


def validate_answer(kind: str, candidate_ids: list[int], answer: Any, flag_names: list[str],
                    aspects: list[Aspect] | None = None) -> dict:
    """Return a normalised copy of ``answer`` or raise AnswerError."""
    aspects = aspects or []
    if not isinstance(answer, dict):
        raise AnswerError("answer", f"expected an object, got {type(answer).__name__}")
    own = {"pairwise": {"outcome", "winner", "strength"}, "ranking": {"ranking", "none_acceptable"},
           "rating": set()}[kind]
    allowed = own | {"scores", "flags"} | ({"ratings"} if kind != "rating" else set())
    unknown = sorted(str(k) for k in set(answer) - allowed)
    if unknown:
        raise AnswerError("answer", f"unknown field(s) {_shown(unknown)} for a {kind} item")
    out = {"pairwise": _pairwise, "ranking": _ranking, "rating": lambda ids, a: {}}[kind](candidate_ids, answer)
    if kind != "rating":
        out["ratings"] = _ratings(candidate_ids, _object(answer, "ratings"))
    out["flags"] = _flags(candidate_ids, _object(answer, "flags"), flag_names)
    scores = _scores(candidate_ids, _object(answer, "scores"), aspects)
    if kind == "rating":
        (cid,) = candidate_ids
        missing = [a.name for a in aspects if a.name not in scores.get(str(cid), {})]
        if missing:
            raise AnswerError(f"answer.scores.{cid}", f"score every aspect; missing {', '.join(missing)}")
    if scores or kind == "rating":
        out["scores"] = scores
    return out


def _object(answer: dict, key: str) -> dict:
    value = answer.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise AnswerError(f"answer.{key}", f"expected an object keyed by candidate id, got {type(value).__name__}")
    return value


def _pairwise(candidate_ids: list[int], answer: dict) -> dict:
    outcome = answer.get("outcome")
    if not isinstance(outcome, str) or outcome not in OUTCOMES:
        raise AnswerError("answer.outcome", f"expected one of {', '.join(OUTCOMES)}, got {_shown(outcome)}")
    if outcome != "win":
        if answer.get("winner") is not None:
            raise AnswerError("answer.winner", f"must be empty when the outcome is {outcome!r}")
        return {"outcome": outcome, "winner": None, "strength": None}
    winner = answer.get("winner")
    if not _is_id(winner) or winner not in candidate_ids:
        raise AnswerError("answer.winner", f"expected one of the item's candidate ids {candidate_ids}, "
                                           f"got {_shown(winner)}")
    strength = answer.get("strength") or "better"
    if not isinstance(strength, str) or strength not in STRENGTHS:
        raise AnswerError("answer.strength", f"expected one of {', '.join(STRENGTHS)}, got {_shown(strength)}")
    return {"outcome": "win", "winner": winner, "strength": strength}


def _ranking(candidate_ids: list[int], answer: dict) -> dict:
    ranking = answer.get("ranking")
    if not isinstance(ranking, list) or not all(isinstance(g, list) and g and all(_is_id(c) for c in g)
                                                for g in ranking):
        raise AnswerError("answer.ranking", "expected a list of non-empty lists of candidate ids (integers), "
                                            "best first")
    flat = [c for group in ranking for c in group]
    if sorted(flat) != sorted(candidate_ids):
        raise AnswerError("answer.ranking", f"must place each of the candidates {candidate_ids} exactly once")
    none_ok = answer.get("none_acceptable", False)
    if not isinstance(none_ok, bool):
        raise AnswerError("answer.none_acceptable", "expected true or false")
    return {"ranking": [sorted(g) for g in ranking], "none_acceptable": none_ok}


def _candidate_key(candidate_ids: list[int], key: str, field: str) -> str:
    if key not in {str(c) for c in candidate_ids}:
        raise AnswerError(field, f"{_shown(key)} is not one of the item's candidates {candidate_ids}")
    return key


def _integer_in(value: Any, lo: int, hi: int, field: str) -> int:
    if not _is_id(value) or not lo <= value <= hi:
        raise AnswerError(field, f"expected an integer {lo}–{hi}, got {_shown(value)}")
    return value


def _ratings(candidate_ids: list[int], ratings: dict) -> dict[str, int]:
    lo, hi = RATING_RANGE
    return {_candidate_key(candidate_ids, key, "answer.ratings"): _integer_in(value, lo, hi, f"answer.ratings.{key}")
            for key, value in ratings.items()}


def _flags(candidate_ids: list[int], flags: dict, flag_names: list[str]) -> dict[str, list[str]]:
    out = {}
    for key, names in flags.items():
        _candidate_key(candidate_ids, key, "answer.flags")
        if not isinstance(names, list) or not all(isinstance(n, str) and n in flag_names for n in names):
            raise AnswerError(f"answer.flags.{key}", f"expected a list of {', '.join(flag_names)}, got {_shown(names)}")
        if names:
            out[key] = sorted(set(names))
    return out


def _scores(candidate_ids: list[int], scores: dict, aspects: list[Aspect]) -> dict[str, dict[str, int]]:
    by_name = {a.name: a for a in aspects}
    out = {}
    for key, per_aspect in scores.items():
        _candidate_key(candidate_ids, key, "answer.scores")
        if not isinstance(per_aspect, dict):
            raise AnswerError(f"answer.scores.{key}", f"expected an object {{aspect: score}}, got {_shown(per_aspect)}")
        clean = {}
        for name, value in per_aspect.items():
            if name not in by_name:
                raise AnswerError(f"answer.scores.{key}", f"{_shown(name)} is not an aspect of this project "
                                                          f"({', '.join(by_name) or 'none defined'})")
            lo, hi = by_name[name].scale
            clean[name] = _integer_in(value, lo, hi, f"answer.scores.{key}.{name}")
        if clean:
            out[key] = clean
    return out


def pair_label(answer: dict, kind: str, lo: int, hi: int) -> str | None:
    """The label a judgment gives the candidate pair (lo < hi): "lo", "hi", "tie", "both_bad" or None.

    Labels are by candidate id, not screen side, so agreement is measured on what was preferred.
    Rating judgments compare nothing (None).
    """
    if kind == "pairwise":
        if answer["outcome"] != "win":
            return answer["outcome"]
        return "lo" if answer["winner"] == lo else "hi" if answer["winner"] == hi else None
    if kind != "ranking":
        return None
    rank = {c: r for r, group in enumerate(answer["ranking"]) for c in group}
    if lo not in rank or hi not in rank:
        return None
    return "tie" if rank[lo] == rank[hi] else "lo" if rank[lo] < rank[hi] else "hi"
