"""Aspect-score data: one record per (prompt, response) with people's scores per aspect.

The form ``tuneloop label export`` writes as ``scores.jsonl``::

    {"prompt": "...", "prompt_messages": [...]?, "response": "...",
     "scores": {"quality": 4.33, "relevance": 3.0, ...},          # mean human score per aspect
     "votes": {"quality": [4, 5, 4], ...}?,                        # the individual integer scores
     "adjusted": {"quality": 4.1, ...}?}                           # rater-adjusted means (--adjust-raters)

``prompt`` and ``response`` follow the preference-data rules (``data.preferences``): text or message
lists, the export's ``prompt_messages`` (the whole conversation) over its ``prompt``. A response may be
scored on some aspects only. Extra keys are ignored. The labelling-app export folder may be given
instead of the file (its ``scores.jsonl`` is read). Errors name the file, the line and the field
(``scores.quality``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from tuneloop.data import DataError, load_records
from tuneloop.data.formats import Message, show_value
from tuneloop.data.loading import Record
from tuneloop.data.preferences import _record_prompt, _response, prompt_key  # the one prompt/reply reader

SCORE_FIELDS = ("scores", "adjusted")  # which per-aspect means a model may learn from
SCORES_FILE = "scores.jsonl"  # what `tuneloop label export` writes beside manifest.json


@dataclass(frozen=True)
class ScoreRecord:
    """One response with its per-aspect scores."""

    prompt: list[Message]  # the conversation up to the reply; ends on a user turn
    response: list[Message]  # the reply: assistant turns only
    target: dict[str, float]  # per aspect: the mean the model learns (``scores`` or ``adjusted``)
    human: dict[str, float]  # per aspect: the plain mean human score (``scores``), what evaluation compares to
    votes: dict[str, list[int]]  # per aspect: the individual integer scores ({} when the record has none)
    group: str  # hash of the prompt (per-prompt weighting and the train/eval split)
    source: str  # "file:line"


def _aspect_numbers(record: Record, key: str, aspects: list[str] | None) -> dict[str, float]:
    value = record.data.get(key)
    if not isinstance(value, dict) or not value:
        raise record.error(f"expected an object {{aspect: mean score}} with at least one aspect, got {show_value(value)}",
                           key)
    out = {}
    for name, number in value.items():
        if aspects is not None and name not in aspects:
            continue
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
            raise record.error(f"expected a finite number, got {show_value(number)}", f"{key}.{name}")
        out[name] = float(number)
    return out


def _votes(record: Record, aspects: list[str] | None) -> dict[str, list[int]]:
    value = record.data.get("votes")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise record.error(f"expected an object {{aspect: [integer scores]}}, got {show_value(value)}", "votes")
    out = {}
    for name, scores in value.items():
        if aspects is not None and name not in aspects:
            continue
        if not isinstance(scores, list) or not scores or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in scores):
            raise record.error(f"expected a non-empty list of integer scores ≥ 0, got {show_value(scores)}",
                               f"votes.{name}")
        out[name] = list(scores)
    return out


def score_record(record: Record, field: str = "scores", aspects: list[str] | None = None) -> ScoreRecord:
    """Validate one scores record; ``field`` is what the model learns (``scores`` or ``adjusted``),
    ``aspects`` the aspects kept (None: every aspect in the record)."""
    assert field in SCORE_FIELDS, f"field must be one of {SCORE_FIELDS}, got {field!r}"
    for key in ("prompt", "response", field):
        if key not in record.data and not (key == "prompt" and "prompt_messages" in record.data):
            hint = " (export with --adjust-raters to have it)" if key == "adjusted" else ""
            raise record.error(f"missing; a scores record is {{'prompt', 'response', 'scores', 'votes'?}}{hint}", key)
    prompt = _record_prompt(record)
    response = _response(record, record.data["response"], "response")
    target = _aspect_numbers(record, field, aspects)
    human = _aspect_numbers(record, "scores", aspects) if field != "scores" else target
    if not target:
        raise record.error(f"scores none of the trained aspects ({', '.join(aspects or [])})", field)
    votes = _votes(record, aspects)
    return ScoreRecord(prompt, response, target, human, votes, prompt_key(prompt),
                       f"{record.path}:{record.line}")


def scores_path(path: str | Path) -> Path:
    """The scores file itself, or the ``scores.jsonl`` of a labelling-app export folder."""
    folder = Path(path)
    if folder.is_dir() and (folder / "manifest.json").is_file():
        return folder / SCORES_FILE
    return folder


def load_score_records(path: str | Path, field: str = "scores", aspects: list[str] | None = None
                       ) -> list[ScoreRecord]:
    """Every record of a scores file (or export folder), validated; raises DataError."""
    source = scores_path(path)
    if source.is_file() and source.stat().st_size == 0:
        raise DataError(str(source), "the scores file is empty (export with `tuneloop label export` after rating items)")
    return [score_record(record, field, aspects) for record in load_records(source)]


def aspect_names(records: list[ScoreRecord]) -> list[str]:
    """Every aspect some record is scored on, sorted."""
    return sorted({name for r in records for name in r.target})


@dataclass(frozen=True)
class AspectScaling:
    """The aspects a model learns, in head order, and how their scores are standardised: a head's output
    f is the score (mean − μ_a) / σ_a, so the score on the aspect's scale is μ_a + σ_a · f."""

    names: list[str]  # (A,) aspect names, in head order
    mean: list[float]  # (A,) μ_a: mean training target
    std: list[float]  # (A,) σ_a: population std of the training targets (1 when they are constant)
    low: list[int]  # (A,) lowest vote seen (the ordinal loss's scale); the lowest mean when there are no votes
    high: list[int]  # (A,) highest vote seen; the highest mean, rounded up, when there are no votes

    @classmethod
    def fit(cls, records: list[ScoreRecord], names: list[str]) -> AspectScaling:
        mean, std, low, high = [], [], [], []
        for name in names:
            values = [r.target[name] for r in records if name in r.target]
            if not values:
                raise ValueError(f"no training record is scored on aspect '{name}'")
            mu = sum(values) / len(values)
            sd = math.sqrt(sum((v - mu) ** 2 for v in values) / len(values))
            votes = [v for r in records for v in r.votes.get(name, [])] or [math.floor(min(values)), math.ceil(max(values))]
            mean.append(mu)
            std.append(sd if sd > 1e-8 else 1.0)
            low.append(min(votes))
            high.append(max(votes))
        return cls(list(names), mean, std, low, high)

    def as_dict(self) -> dict[str, dict[str, float]]:
        """{aspect: {"mean", "std", "low", "high"}}, as the model folder records it."""
        return {n: {"mean": m, "std": s, "low": lo, "high": hi}
                for n, m, s, lo, hi in zip(self.names, self.mean, self.std, self.low, self.high)}

    @classmethod
    def from_dict(cls, stats: dict[str, dict[str, float]]) -> AspectScaling:
        names = list(stats)
        return cls(names, *([stats[n][key] for n in names] for key in ("mean", "std", "low", "high")))
