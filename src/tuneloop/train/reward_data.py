"""Reward-model training data: judgments validated and rendered into ``Comparison`` units.

A unit is what one prompt's judgment contributes, scored in one go:

- a preference pair (``{"prompt", "chosen", "rejected", "margin"?, "tie"?}``, the HH-RLHF transcript
  form, or the labelling app's ``pairs.jsonl``): K = 2 candidates, rank groups [0, 1] ([0, 0] for a tie);
- a ranking (``{"prompt", "completions", "ranking"}``, the labelling app's ``rankings.jsonl``): K
  candidates scored once each, all their pairs (or the Plackett–Luce likelihood) in one loss term
  (InstructGPT §3.5);
- a scored response (the labelling app's ``scores.jsonl``, ``data.scores``): K = 1 row and its
  per-aspect mean scores (and votes), learned by the aspect heads (``losses.aspects``).

A labelling-app export folder (``tuneloop label export``: manifest.json, pairs.jsonl, rankings.jsonl)
can be given instead of a file: both files are read. Per-prompt weighting: every unit of a prompt
gets weight 1 / (units of that prompt), so a prompt that was judged many times counts as one element. Validation errors name file, line and field
(``DataError``) and happen before any run folder is created.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from tuneloop.batches import ComparisonBatch
from tuneloop.data import DataError, load_records
from tuneloop.data.formats import prompt_messages
from tuneloop.data.preferences import is_ranking, preference_pair, ranking
from tuneloop.data.scores import AspectScaling, ScoreRecord, load_score_records
from tuneloop.models.reward import Encoded, Renderer


@dataclass
class Comparison:
    """One training/evaluation unit: K candidates of one prompt and their judged order."""

    rows: list[Encoded]  # (K,) rendered (prompt, candidate); a pair is [chosen, rejected]
    rank_groups: list[int]  # (K,) tie group of each candidate, 0 = best; [0, 1] pair, [0, 0] tie
    margin: float  # how much better chosen is (pairs only; 0 otherwise)
    group: str  # hash of the prompt (per-prompt weighting and the train/eval split)
    source: str  # "file:line"
    weight: float = 1.0  # per-prompt weight, set over the whole training set
    score: ScoreRecord | None = None  # a scored response's aspect scores (K = 1); None for a judgment

    @property
    def is_pair(self) -> bool:
        return len(self.rows) == 2

    @property
    def is_scored(self) -> bool:
        return self.score is not None

    def ordered_pairs(self, include_ties: bool = True) -> list[tuple[int, int, bool]]:
        """(better, worse, tie) candidate indices of every pair the judgment orders (and tie pairs)."""
        k = len(self.rows)
        out = [(i, j, False) for i in range(k) for j in range(k) if self.rank_groups[i] < self.rank_groups[j]]
        if include_ties:
            out += [(i, j, True) for i in range(k) for j in range(i + 1, k) if self.rank_groups[i] == self.rank_groups[j]]
        return out


EXPORT_FILES = ("pairs.jsonl", "rankings.jsonl")  # what `tuneloop label export` writes beside manifest.json


def judgment_records(path: str) -> list:
    """Records of a judgments file, or of a labelling-app export folder (its pairs.jsonl and
    rankings.jsonl, either of which may be empty)."""
    folder = Path(path)
    if not (folder.is_dir() and (folder / "manifest.json").is_file()):
        return load_records(path)
    files = [folder / name for name in EXPORT_FILES if (folder / name).is_file() and (folder / name).stat().st_size]
    if not files:
        raise DataError(path, f"the export folder holds no judgments (its {' and '.join(EXPORT_FILES)} are empty)")
    return [record for f in files for record in load_records(f)]


def load_comparisons(path: str, renderer: Renderer) -> list[Comparison]:
    """Validate every record of ``path`` (pairs and rankings may be mixed) and render it."""
    out = []
    for record in judgment_records(path):
        if is_ranking(record):
            r = ranking(record)
            rows = [renderer.encode(r.prompt, c) for c in r.completions]
            out.append(Comparison(rows, r.rank_groups(), 0.0, r.group, r.source))
        else:
            p = preference_pair(record)
            rows = [renderer.encode(p.prompt, p.chosen), renderer.encode(p.prompt, p.rejected)]
            out.append(Comparison(rows, [0, 0] if p.tie else [0, 1], p.margin, p.group, p.source))
    return out


def load_scored_units(path: str, renderer: Renderer, field: str, aspects: list[str] | None,
                      needs_votes: bool = False) -> list[Comparison]:
    """Validate and render every record of a scores file (``data.scores``): one unit per response.
    ``needs_votes`` (the ordinal loss): each aspect a record has a mean for must have its votes too."""
    out = []
    for r in load_score_records(path, field, aspects):
        missing = [name for name in r.target if name not in r.votes]
        if needs_votes and missing:
            file, _, line = r.source.rpartition(":")
            raise DataError(file, "the ordinal loss learns from the individual votes; this record has none for "
                            f"'{missing[0]}'", line=int(line), field=f"votes.{missing[0]}")
        row = renderer.encode(r.prompt, r.response)
        out.append(Comparison([row], [0], 0.0, r.group, r.source, score=r))
    return out


def set_prompt_weights(units: list[Comparison], per_prompt: bool) -> None:
    """weight = 1 / (units of the same kind and prompt) when ``per_prompt``, else 1 (InstructGPT §3.5):
    a prompt's judgments weigh one element together, and so do its scored responses."""
    counts = Counter((u.is_scored, u.group) for u in units)
    for u in units:
        u.weight = 1.0 / counts[(u.is_scored, u.group)] if per_prompt else 1.0


def load_reference(path: str, renderer: Renderer) -> list[Encoded]:
    """Responses to normalise on: a candidates file (``{"prompt"|"messages", "completions": [...]}``, the
    output of ``tuneloop sample``), or a pairs/rankings file (every response in it)."""
    rows: list[Encoded] = []
    for record in load_records(path):
        data = record.data
        if "completions" in data and "ranking" not in data:
            prompt = prompt_messages(record)
            completions = data["completions"]
            if not isinstance(completions, list) or not completions:
                raise record.error("expected a non-empty list of completion texts", "completions")
            for i, text in enumerate(completions):
                if not isinstance(text, str):
                    raise record.error(f"expected a string, got {type(text).__name__}", f"completions[{i}]")
                rows.append(renderer.encode(prompt, [{"role": "assistant", "content": text}]))
        elif is_ranking(record):
            r = ranking(record)
            rows += [renderer.encode(r.prompt, c) for c in r.completions]
        else:
            p = preference_pair(record)
            rows += [renderer.encode(p.prompt, p.chosen), renderer.encode(p.prompt, p.rejected)]
    if len(rows) < 2:
        raise DataError(path, f"a normalisation reference set needs at least 2 responses, found {len(rows)}")
    return rows


def _better(unit: Comparison) -> int:
    """0 or 1: which of a pair unit's two rows is the chosen one (a 2-way ranking may list it second)."""
    return int(unit.rank_groups[1] < unit.rank_groups[0])


def make_batch(units: list[Comparison], scaling: AspectScaling | None = None) -> ComparisonBatch:
    """One micro-batch; ``scaling`` (the aspects and their standardisation) is needed when any unit is scored."""
    rows: list[Encoded] = []
    pairs, ranks, scored = [], [], []
    for u in units:
        start = len(rows)
        rows += u.rows
        (scored if u.is_scored else pairs if u.is_pair else ranks).append((start, u))
    assert scaling is not None or not scored, "scored responses need the aspect scaling to build their targets"
    width = max((len(u.rows) for _, u in ranks), default=0)
    rank_index = torch.full((len(ranks), width), -1, dtype=torch.long)
    rank_groups = torch.full((len(ranks), width), -1, dtype=torch.long)
    for q, (start, u) in enumerate(ranks):
        rank_index[q, :len(u.rows)] = torch.arange(start, start + len(u.rows))
        rank_groups[q, :len(u.rows)] = torch.tensor(u.rank_groups)
    return ComparisonBatch(
        rows=rows,
        pair_chosen=torch.tensor([s + _better(u) for s, u in pairs], dtype=torch.long),
        pair_rejected=torch.tensor([s + 1 - _better(u) for s, u in pairs], dtype=torch.long),
        pair_margin=torch.tensor([u.margin for _, u in pairs], dtype=torch.float32),
        pair_tie=torch.tensor([u.rank_groups[0] == u.rank_groups[1] for _, u in pairs], dtype=torch.bool),
        pair_weight=torch.tensor([u.weight for _, u in pairs], dtype=torch.float32),
        rank_index=rank_index, rank_groups=rank_groups,
        rank_weight=torch.tensor([u.weight for _, u in ranks], dtype=torch.float32),
        **_score_tensors(scored, scaling),
        weight_sum=float(sum(u.weight for u in units)),
    )


def _score_tensors(scored: list[tuple[int, Comparison]], scaling: AspectScaling | None) -> dict[str, torch.Tensor]:
    """The ``score_*`` fields of a ComparisonBatch: targets standardised with ``scaling``, votes padded with −1."""
    names = scaling.names if scaling is not None else []
    width = max((len(u.score.votes.get(n, [])) for _, u in scored for n in names), default=0)
    target = torch.zeros(len(scored), len(names), dtype=torch.float32)
    mask = torch.zeros(len(scored), len(names), dtype=torch.bool)
    votes = torch.full((len(scored), len(names), width), -1, dtype=torch.long)
    for s, (_, u) in enumerate(scored):
        for a, name in enumerate(names):
            if name in u.score.target:
                target[s, a] = (u.score.target[name] - scaling.mean[a]) / scaling.std[a]
                mask[s, a] = True
            cast = u.score.votes.get(name, [])
            votes[s, a, :len(cast)] = torch.tensor(cast, dtype=torch.long)
    return {"score_rows": torch.tensor([start for start, _ in scored], dtype=torch.long), "score_target": target,
            "score_mask": mask, "score_votes": votes,
            "score_weight": torch.tensor([u.weight for _, u in scored], dtype=torch.float32)}
