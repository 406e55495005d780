"""What a judgment may say, checked against its item. Pure functions: no store, no web.

A pairwise answer names candidates by id (never by screen side)::

  {"outcome": "win", "winner": 17, "strength": "better"}      # strength: one of STRENGTHS
  {"outcome": "tie"}   {"outcome": "both_bad"}

A ranking answer is an ordered partition of the item's candidate ids into tie groups, best first::

  {"ranking": [[17], [15, 18], [16]], "none_acceptable": false}

Either may add ``"ratings": {"17": 6, ...}`` (1–7 Likert, per response) and
``"flags": {"17": ["hallucination"], ...}`` (names from the store's configured flags).
"""

from __future__ import annotations

from typing import Any

# Llama 2's four preference strengths (Touvron et al. 2023, §3.2.1) and the margins they give the reward
# model's ranking loss (their Table 28, "margin large": 3, 2, 1, 0).
STRENGTHS = {"significantly": 3.0, "better": 2.0, "slightly": 1.0, "negligibly": 0.0}
OUTCOMES = ("win", "tie", "both_bad")
RATING_RANGE = (1, 7)


class AnswerError(ValueError):
    """The answer does not fit the item; the message names the offending field."""


def validate_answer(kind: str, candidate_ids: list[int], answer: dict[str, Any], flag_names: list[str]) -> dict:
    """Return a normalised copy of ``answer`` or raise AnswerError."""
    if not isinstance(answer, dict):
        raise AnswerError("answer: expected an object")
    allowed = {"ratings", "flags"} | ({"outcome", "winner", "strength"} if kind == "pairwise"
                                      else {"ranking", "none_acceptable"})
    unknown = sorted(set(answer) - allowed)
    if unknown:
        raise AnswerError(f"answer: unknown field(s) {unknown} for a {kind} item")
    out = _pairwise(candidate_ids, answer) if kind == "pairwise" else _ranking(candidate_ids, answer)
    out["ratings"] = _ratings(candidate_ids, answer.get("ratings") or {})
    out["flags"] = _flags(candidate_ids, answer.get("flags") or {}, flag_names)
    return out


def _pairwise(candidate_ids: list[int], answer: dict) -> dict:
    outcome = answer.get("outcome")
    if outcome not in OUTCOMES:
        raise AnswerError(f"answer.outcome: expected one of {', '.join(OUTCOMES)}, got {outcome!r}")
    if outcome != "win":
        if answer.get("winner") is not None:
            raise AnswerError(f"answer.winner: must be empty when the outcome is {outcome!r}")
        return {"outcome": outcome, "winner": None, "strength": None}
    winner = answer.get("winner")
    if winner not in candidate_ids or isinstance(winner, bool):
        raise AnswerError(f"answer.winner: expected one of the item's candidates {candidate_ids}, got {winner!r}")
    strength = answer.get("strength") or "better"
    if strength not in STRENGTHS:
        raise AnswerError(f"answer.strength: expected one of {', '.join(STRENGTHS)}, got {strength!r}")
    return {"outcome": "win", "winner": winner, "strength": strength}


def _ranking(candidate_ids: list[int], answer: dict) -> dict:
    ranking = answer.get("ranking")
    if not isinstance(ranking, list) or not all(isinstance(g, list) and g for g in ranking):
        raise AnswerError("answer.ranking: expected a list of non-empty lists of candidate ids, best first")
    flat = [c for group in ranking for c in group]
    if sorted(flat) != sorted(candidate_ids) or any(isinstance(c, bool) for c in flat):
        raise AnswerError(f"answer.ranking: must place each of the candidates {candidate_ids} exactly once, "
                          f"got {ranking}")
    none_ok = answer.get("none_acceptable", False)
    if not isinstance(none_ok, bool):
        raise AnswerError("answer.none_acceptable: expected true or false")
    return {"ranking": [sorted(g) for g in ranking], "none_acceptable": none_ok}


def _ratings(candidate_ids: list[int], ratings: Any) -> dict[str, int]:
    if not isinstance(ratings, dict):
        raise AnswerError("answer.ratings: expected an object {candidate id: 1–7}")
    out = {}
    for key, value in ratings.items():
        if str(key) not in {str(c) for c in candidate_ids}:
            raise AnswerError(f"answer.ratings: {key!r} is not one of the item's candidates {candidate_ids}")
        lo, hi = RATING_RANGE
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise AnswerError(f"answer.ratings.{key}: expected an integer {lo}–{hi}, got {value!r}")
        out[str(key)] = value
    return out


def _flags(candidate_ids: list[int], flags: Any, flag_names: list[str]) -> dict[str, list[str]]:
    if not isinstance(flags, dict):
        raise AnswerError("answer.flags: expected an object {candidate id: [flag names]}")
    out = {}
    for key, names in flags.items():
        if str(key) not in {str(c) for c in candidate_ids}:
            raise AnswerError(f"answer.flags: {key!r} is not one of the item's candidates {candidate_ids}")
        if not isinstance(names, list) or any(n not in flag_names for n in names):
            raise AnswerError(f"answer.flags.{key}: expected a list of {', '.join(flag_names)}, got {names!r}")
        if names:
            out[str(key)] = sorted(set(names))
    return out


def pair_label(answer: dict, kind: str, lo: int, hi: int) -> str | None:
    """The label a judgment gives the candidate pair (lo < hi): "lo", "hi", "tie", "both_bad" or None.

    Labels are by candidate id, not screen side, so agreement is measured on what was preferred.
    """
    if kind == "pairwise":
        if answer["outcome"] != "win":
            return answer["outcome"]
        return "lo" if answer["winner"] == lo else "hi" if answer["winner"] == hi else None
    rank = {c: r for r, group in enumerate(answer["ranking"]) for c in group}
    if lo not in rank or hi not in rank:
        return None
    return "tie" if rank[lo] == rank[hi] else "lo" if rank[lo] < rank[hi] else "hi"
