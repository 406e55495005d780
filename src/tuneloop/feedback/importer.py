"""Import a candidates file (the output of ``tuneloop sample``) into the label store.

Each record becomes a prompt, its K candidates, and work items: in ``pairwise`` mode one item per
candidate pair (all C(K,2) pairs, or ``pairs_per_prompt`` of them drawn with the seed); in
``ranking`` mode one item holding all K; in ``rating`` mode one item per candidate, scored on every
aspect of the project (aspects.py). A record may carry ``"gold_ranking": [[best indices], ...]``;
imported with ``gold=True`` its items become gold items with a known answer. Importing the same file
again adds nothing (prompts are keyed by ``prompt_id``). Every record is validated before anything is
written; a bad one raises DataError naming the file, line and field.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select

from tuneloop.data.loading import Record, read_records
from tuneloop.feedback import schema as S
from tuneloop.feedback.store import Store, opened

MODES = ("pairwise", "ranking", "rating")
FINISH_REASONS = ("eos", "length", "stop")
MAX_TEXT_CHARS = 200_000


@dataclass
class Candidates:
    prompt_id: str
    prompt: str
    messages: list[dict]
    completions: list[str]
    tokens: list[int | None]
    finish_reasons: list[str | None]
    provenance: dict
    gold_ranking: list[list[int]] | None
    source: str


def _string(record: Record, value: Any, field: str, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise record.error(f"expected a string, got {type(value).__name__}", field)
    if not allow_empty and not value.strip():
        raise record.error("is empty", field)
    if len(value) > MAX_TEXT_CHARS:
        raise record.error(f"is {len(value)} characters long; the limit is {MAX_TEXT_CHARS}", field)
    return value


def _list(record: Record, data: dict, field: str, k: int | None) -> list:
    value = data.get(field)
    if not isinstance(value, list):
        raise record.error(f"expected a list, got {type(value).__name__}", field)
    if k is not None and len(value) != k:
        raise record.error(f"has {len(value)} entries but 'completions' has {k}", field)
    return value


def parse_candidates(record: Record, gold: bool = False) -> Candidates:
    """Validate one candidates record (see ``tuneloop.sample``)."""
    data = record.data
    for key in ("prompt_id", "prompt", "completions", "provenance"):
        if key not in data:
            raise record.error("missing (is this the output of `tuneloop sample`?)", key)
    prompt_id = _string(record, data["prompt_id"], "prompt_id")
    if len(prompt_id) > 64:
        raise record.error("longer than 64 characters", "prompt_id")
    prompt = _string(record, data["prompt"], "prompt")
    messages = data.get("messages", [{"role": "user", "content": prompt}])
    if not isinstance(messages, list) or not messages:
        raise record.error("expected a non-empty list of messages", "messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise record.error("expected {'role': system|user|assistant, 'content': ...}", f"messages[{i}]")
        _string(record, m.get("content"), f"messages[{i}].content", allow_empty=True)
    completions = _list(record, data, "completions", None)
    if len(completions) < 2:
        raise record.error(f"needs at least 2 candidates to compare, got {len(completions)}", "completions")
    completions = [_string(record, c, f"completions[{i}]", allow_empty=True) for i, c in enumerate(completions)]
    k = len(completions)
    tokens = _list(record, data, "completion_tokens", k) if "completion_tokens" in data else [None] * k
    for i, t in enumerate(tokens):
        if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t < 0):
            raise record.error(f"expected a token count ≥ 0, got {t!r}", f"completion_tokens[{i}]")
    reasons = _list(record, data, "finish_reasons", k) if "finish_reasons" in data else [None] * k
    for i, r in enumerate(reasons):
        if r is not None and r not in FINISH_REASONS:
            raise record.error(f"expected one of {', '.join(FINISH_REASONS)}, got {r!r}", f"finish_reasons[{i}]")
    if not isinstance(data["provenance"], dict):
        raise record.error("expected an object (model, model_hash, sampling, seed, ...)", "provenance")
    gold_ranking = None
    if gold:
        if "gold_ranking" not in data:
            raise record.error("missing: a gold item needs its known answer as [[best indices], ...]", "gold_ranking")
        gold_ranking = data["gold_ranking"]
        flat = [i for g in gold_ranking for i in g] if isinstance(gold_ranking, list) and all(
            isinstance(g, list) for g in gold_ranking) else None
        if flat is None or sorted(flat) != list(range(k)):
            raise record.error(f"must place each index 0..{k - 1} exactly once in tie groups", "gold_ranking")
    return Candidates(prompt_id, prompt, messages, completions, tokens, reasons, data["provenance"], gold_ranking,
                      f"{record.path}:{record.line}")


def import_candidates(store: Store | str | Path, path: str | Path, mode: str = "pairwise",
                      pairs_per_prompt: int | None = None, gold: bool = False, seed: int = 0) -> dict[str, int]:
    """Import a candidates file; returns counts {"prompts", "items", "skipped"}.

    ``store`` is a Store or a location (SQLite path or PostgreSQL URL; created if missing).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if pairs_per_prompt is not None and pairs_per_prompt < 1:
        raise ValueError(f"pairs_per_prompt must be ≥ 1, got {pairs_per_prompt}")
    if mode == "rating" and gold:
        raise ValueError("gold items are pairwise or ranking items (a rating item has no single right answer)")
    with opened(store) as db:
        parsed = [parse_candidates(r, gold) for r in read_records(path)]  # validate everything first
        rng = random.Random(seed)
        counts = {"prompts": 0, "items": 0, "skipped": 0}
        with db.write() as conn:
            for cand in parsed:
                existing = conn.execute(select(S.candidates.c.text).where(S.candidates.c.prompt_id == cand.prompt_id)
                                        .order_by(S.candidates.c.idx)).scalars().all()
                if existing:
                    if list(existing) != cand.completions:
                        raise ValueError(f"{cand.source}: prompt_id {cand.prompt_id} is already in the db with "
                                         "different completions; give the new candidates their own prompt ids")
                    counts["skipped"] += 1
                    continue
                counts["items"] += _insert(conn, cand, mode, pairs_per_prompt, rng)
                counts["prompts"] += 1
        return counts


def _insert(conn, cand: Candidates, mode: str, pairs_per_prompt: int | None, rng: random.Random) -> int:
    conn.execute(insert(S.prompts).values(prompt_id=cand.prompt_id, prompt=cand.prompt, messages=cand.messages,
                                          provenance=cand.provenance, source=cand.source))
    ids = []
    for idx, (textv, tok, reason) in enumerate(zip(cand.completions, cand.tokens, cand.finish_reasons)):
        ids.append(conn.execute(insert(S.candidates).values(prompt_id=cand.prompt_id, idx=idx, text=textv,
                                                            tokens=tok, finish_reason=reason)).inserted_primary_key[0])
    rank_of = {i: r for r, g in enumerate(cand.gold_ranking or []) for i in g}
    if mode == "rating":  # one item per response, scored on every aspect
        units = [([cid], None) for cid in ids]
    elif mode == "ranking":
        groups = [[ids[i] for i in sorted(g)] for g in cand.gold_ranking] if cand.gold_ranking else None
        units = [(ids, {"ranking": groups} if groups else None)]
    else:
        pairs = list(itertools.combinations(range(len(ids)), 2))
        if pairs_per_prompt is not None and pairs_per_prompt < len(pairs):
            pairs = sorted(rng.sample(pairs, pairs_per_prompt))
        units = []
        for a, b in pairs:
            gold_answer = None
            if cand.gold_ranking is not None:
                if rank_of[a] == rank_of[b]:
                    continue  # a tied gold pair has no right answer to check against
                gold_answer = {"winner": ids[a] if rank_of[a] < rank_of[b] else ids[b]}
            units.append(([ids[a], ids[b]], gold_answer))
    for cids, gold_answer in units:
        conn.execute(insert(S.items).values(prompt_id=cand.prompt_id, kind=mode, candidate_ids=list(cids),
                                            is_gold=cand.gold_ranking is not None, gold_answer=gold_answer,
                                            n_done=0, shuffle_key=rng.randrange(2**31)))
    return len(units)
