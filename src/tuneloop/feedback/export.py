"""Exports the reward model and DPO read as they are, plus the raw judgments and a manifest.

``export_all(store, out_dir)`` writes, atomically (the folder is complete or absent):

- ``pairs.jsonl``    ``{"prompt", "prompt_messages", "chosen", "rejected", "margin"?, "tie"?, "votes",
                       "p_chosen"?, "prompt_id", "group_id"}`` — one per candidate pair (aggregated) or
                       per judgment (``aggregate="none"``). Margin comes from the Llama 2 strength.
- ``rankings.jsonl`` ``{"prompt", "prompt_messages", "completions", "ranking": [[best...], ...],
                       "group_id", "none_acceptable"}`` from K-way items.
- ``scores.jsonl``   ``{"prompt", "prompt_messages", "response", "prompt_id", "candidate_id", "scores":
                       {aspect: mean}, "votes": {aspect: [scores]}, "adjusted"?: {aspect: mean}}`` — one per
                       response with aspect scores; ``adjusted`` (``adjust_raters``) first takes out each
                       annotator's offset and scale (agreement.rater_offset_scale).
- ``score_pairs.jsonl`` (``pairs_from_scores``) preference pairs derived from the scores: for two
                       responses to the same prompt whose weighted mean score differs by ≥ ``min_gap``,
                       the higher is chosen and the gap is the margin.
- ``judgments.jsonl`` every judgment ever written (corrections and superseded rows included) with
                       all metadata.
- ``manifest.json``  counts, filters, agreement, sha256 of each file, schema version, time.

Pair aggregation: ``none`` | ``majority`` | ``soft``; ranking aggregation: ``none`` |
``bradley_terry`` | ``ranked_pairs``. "Both bad" and "none acceptable" answers are left out of pairs
and rankings unless ``include_unacceptable``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from sqlalchemy import select

from tuneloop.atomic import atomic_dir, atomic_write_text, jsonl_text
from tuneloop.feedback import schema as S
from tuneloop.feedback.aggregate import (
    bradley_terry,
    groups_from_scores,
    majority_pair,
    ranked_pairs,
    soft_pair,
)
from tuneloop.feedback.agreement import adjust_score, rater_offset_scale
from tuneloop.feedback.answers import STRENGTHS, pair_label
from tuneloop.feedback.quality import agreement_summary, load, pair_units, ranking_summary, score_units
from tuneloop.feedback.store import Store, opened

PAIR_AGGREGATES = ("none", "majority", "soft")
RANKING_AGGREGATES = ("none", "bradley_terry", "ranked_pairs")


def _context(store: Store):
    judgments, items, names = load(store)
    with store.read() as conn:
        texts = dict(conn.execute(select(S.candidates.c.id, S.candidates.c.text)).all())
        prompts = {r["prompt_id"]: dict(r) for r in conn.execute(
            select(S.prompts.c.prompt_id, S.prompts.c.prompt, S.prompts.c.messages)).mappings()}
    return judgments, items, names, texts, prompts


def _usable(j: dict, items: dict, include_unacceptable: bool) -> bool:
    if j["is_repeat"] or items[j["item_id"]]["is_gold"]:
        return False
    if include_unacceptable:
        return True
    return j["answer"].get("outcome") != "both_bad" and not j["answer"].get("none_acceptable")


def pair_records(store: Store, aggregate: str = "majority", include_rankings: bool = False,
                 include_unacceptable: bool = False) -> list[dict]:
    """Preference pairs; ``include_rankings`` also expands K-way rankings into their pairs."""
    if aggregate not in PAIR_AGGREGATES:
        raise ValueError(f"pair aggregation must be one of {', '.join(PAIR_AGGREGATES)}, got {aggregate!r}")
    judgments, items, _names, texts, prompts = _context(store)
    votes: dict[tuple, list[tuple[str, float | None]]] = defaultdict(list)
    for j in judgments:
        if not _usable(j, items, include_unacceptable) or (j["kind"] == "ranking" and not include_rankings):
            continue
        item = items[j["item_id"]]
        strength = j["answer"].get("strength")
        for lo, hi in itertools.combinations(sorted(item["candidate_ids"]), 2):
            label = pair_label(j["answer"], j["kind"], lo, hi)
            if label in ("lo", "hi", "tie"):
                votes[(item["prompt_id"], lo, hi)].append((label, STRENGTHS[strength] if strength else None))
    out = []
    for (prompt_id, lo, hi), unit in sorted(votes.items()):
        labels = [lab for lab, _ in unit]
        if aggregate == "none":
            decided = [(lab, [m]) for lab, m in unit]
        elif aggregate == "majority":
            label = majority_pair(labels)
            decided = [(label, [m for lab, m in unit if lab == label])]
        else:
            p_lo = soft_pair(labels)
            decided = [("lo" if p_lo >= 0.5 else "hi", [m for lab, m in unit if lab == ("lo" if p_lo >= 0.5 else "hi")])]
        for label, margins in decided:
            record = _pair(prompts[prompt_id], texts, lo, hi, label, len(unit))
            margins = [m for m in margins if m is not None]
            if margins and label != "tie":
                record["margin"] = statistics.fmean(margins)
            if aggregate == "soft":
                record["p_chosen"] = p_lo if label == "lo" else 1 - p_lo
            out.append(record)
    return out


def _pair(prompt: dict, texts: dict, lo: int, hi: int, label: str, votes: int) -> dict:
    chosen, rejected = (lo, hi) if label in ("lo", "tie") else (hi, lo)
    record = {"prompt": prompt["prompt"], "prompt_messages": prompt["messages"], "chosen": texts[chosen],
              "rejected": texts[rejected], "votes": votes, "prompt_id": prompt["prompt_id"],
              "group_id": f"{prompt['prompt_id']}:{lo}-{hi}"}
    if label == "tie":
        record["tie"] = True
    return record


def ranking_records(store: Store, aggregate: str = "none", include_unacceptable: bool = False) -> list[dict]:
    if aggregate not in RANKING_AGGREGATES:
        raise ValueError(f"ranking aggregation must be one of {', '.join(RANKING_AGGREGATES)}, got {aggregate!r}")
    judgments, items, _names, texts, prompts = _context(store)
    per_item: dict[int, list[dict]] = defaultdict(list)
    for j in judgments:
        if j["kind"] == "ranking" and _usable(j, items, include_unacceptable):
            per_item[j["item_id"]].append(j)
    out = []
    for item_id in sorted(per_item):
        item, js = items[item_id], per_item[item_id]
        ids = sorted(item["candidate_ids"])
        position = {cid: i for i, cid in enumerate(ids)}
        base = {"prompt": prompts[item["prompt_id"]]["prompt"], "prompt_messages": prompts[item["prompt_id"]]["messages"],
                "completions": [texts[c] for c in ids], "group_id": f"{item['prompt_id']}:item-{item_id}"}
        if aggregate == "none":
            for j in js:
                out.append({**base, "ranking": [[position[c] for c in g] for g in j["answer"]["ranking"]],
                            "none_acceptable": j["answer"]["none_acceptable"], "votes": 1})
            continue
        wins: dict[tuple[int, int], float] = defaultdict(float)
        for j in js:
            for a, b in itertools.permutations(ids, 2):
                if pair_label(j["answer"], "ranking", min(a, b), max(a, b)) == ("lo" if a < b else "hi"):
                    wins[(a, b)] += 1
        if aggregate == "bradley_terry":
            groups = groups_from_scores(bradley_terry(ids, wins), tol=1e-6)
        else:
            groups = ranked_pairs(ids, wins)
        out.append({**base, "ranking": [sorted(position[c] for c in g) for g in groups],
                    "none_acceptable": sum(j["answer"]["none_acceptable"] for j in js) * 2 > len(js),
                    "votes": len(js)})
    return out


def score_records(store: Store, adjust_raters: bool = False) -> list[dict]:
    """One record per response with aspect scores: per-aspect mean and votes (and rater-adjusted means)."""
    judgments, items, _names, texts, prompts = _context(store)
    units = score_units(judgments, items)
    with store.read() as conn:
        prompt_of = dict(conn.execute(select(S.candidates.c.id, S.candidates.c.prompt_id)).all())
    raters = {aspect: rater_offset_scale(per_unit) for aspect, per_unit in units.items()}
    by_candidate: dict[int, dict[str, dict[int, int]]] = defaultdict(dict)
    for aspect, per_unit in units.items():
        for cid, votes in per_unit.items():
            by_candidate[cid][aspect] = votes
    out = []
    for cid in sorted(by_candidate):
        prompt = prompts[prompt_of[cid]]
        aspects = by_candidate[cid]
        record = {"prompt": prompt["prompt"], "prompt_messages": prompt["messages"], "response": texts[cid],
                  "prompt_id": prompt["prompt_id"], "candidate_id": cid,
                  "scores": {a: statistics.fmean(v.values()) for a, v in sorted(aspects.items())},
                  "votes": {a: [v[u] for u in sorted(v)] for a, v in sorted(aspects.items())}}
        if adjust_raters:
            record["adjusted"] = {a: statistics.fmean(adjust_score(score, raters[a][u]) if u in raters[a] else score
                                                      for u, score in v.items()) for a, v in sorted(aspects.items())}
        out.append(record)
    return out


def pairs_from_scores(records: list[dict], weights: dict[str, float] | None = None, min_gap: float = 0.5,
                      use_adjusted: bool = False) -> list[dict]:
    """Preference pairs from ``score_records``: per prompt, every two responses whose weighted mean
    score (weights over aspects; default every aspect 1) differs by at least ``min_gap``."""
    if min_gap < 0:
        raise ValueError(f"min_gap must be ≥ 0, got {min_gap}")
    key = "adjusted" if use_adjusted else "scores"
    by_prompt: dict[str, list[tuple[float, dict]]] = defaultdict(list)
    for r in records:
        if key not in r:
            raise ValueError("use_adjusted needs score records written with adjust_raters=True")
        w = weights or {a: 1.0 for a in r[key]}
        unknown = sorted(set(w) - set(r[key]))
        if unknown:
            continue  # this response was not scored on every weighted aspect
        total = sum(w.values())
        if total <= 0:
            raise ValueError(f"aspect weights must add up to more than 0, got {w}")
        by_prompt[r["prompt_id"]].append((sum(w[a] * r[key][a] for a in w) / total, r))
    out = []
    for prompt_id in sorted(by_prompt):
        for (sa, a), (sb, b) in itertools.combinations(by_prompt[prompt_id], 2):
            if abs(sa - sb) < min_gap or sa == sb:
                continue
            (hi_s, hi), (lo_s, lo) = ((sa, a), (sb, b)) if sa > sb else ((sb, b), (sa, a))
            first, second = sorted((a["candidate_id"], b["candidate_id"]))
            out.append({"prompt": hi["prompt"], "prompt_messages": hi["prompt_messages"], "chosen": hi["response"],
                        "rejected": lo["response"], "margin": hi_s - lo_s, "prompt_id": prompt_id,
                        "group_id": f"{prompt_id}:{first}-{second}", "source": "scores"})
    return out


def judgment_records(store: Store) -> list[dict]:
    """Every judgment row with its metadata, oldest first; ``superseded_by`` marks corrected ones."""
    with store.read() as conn:
        rows = [dict(r) for r in conn.execute(select(S.judgments).order_by(S.judgments.c.submitted_at,
                                                                            S.judgments.c.id)).mappings()]
        names = dict(conn.execute(select(S.users.c.id, S.users.c.name)).all())
        items = {r["id"]: dict(r) for r in conn.execute(select(S.items.c.id, S.items.c.prompt_id,
                                                               S.items.c.candidate_ids)).mappings()}
    superseded_by = {r["supersedes"]: r["id"] for r in rows if r["supersedes"]}
    for r in rows:
        r["annotator"] = names.get(r.pop("user_id"))
        r["prompt_id"] = items[r["item_id"]]["prompt_id"]
        r["candidate_ids"] = items[r["item_id"]]["candidate_ids"]
        r["superseded_by"] = superseded_by.get(r["id"])
    return rows


def _jsonl(records: list[dict]) -> str:
    return jsonl_text(records, sort_keys=True)


def export_text(store: Store, what: str, aggregate: str = "majority") -> tuple[str, str]:
    """One export as text, for the admin page's download links."""
    if what == "pairs.jsonl":
        return _jsonl(pair_records(store, aggregate=aggregate)), "application/x-ndjson"
    if what == "rankings.jsonl":
        return _jsonl(ranking_records(store, aggregate="none" if aggregate == "majority" else aggregate)), \
            "application/x-ndjson"
    if what == "judgments.jsonl":
        return _jsonl(judgment_records(store)), "application/x-ndjson"
    if what == "scores.jsonl":
        return _jsonl(score_records(store, adjust_raters=True)), "application/x-ndjson"
    raise ValueError(f"unknown export {what!r}; expected pairs.jsonl, rankings.jsonl, judgments.jsonl or scores.jsonl")


def export_pairs(store: Store | str | Path, out_path: str | Path, aggregate: str = "majority",
                 include_rankings: bool = True) -> int:
    """Write preference pairs (the RM / DPO input) to one JSONL file atomically; returns how many."""
    with opened(store, create=False) as db:
        records = pair_records(db, aggregate=aggregate, include_rankings=include_rankings)
    atomic_write_text(out_path, _jsonl(records))
    return len(records)


def export_all(store: Store | str | Path, out_dir: str | Path, pair_aggregate: str = "majority",
               ranking_aggregate: str = "none", include_rankings_in_pairs: bool = False,
               include_unacceptable: bool = False, replace: bool = False, adjust_raters: bool = False,
               score_pairs: dict[str, float] | None = None, score_pair_min_gap: float = 0.5) -> dict[str, Any]:
    """Write pairs, rankings, scores, raw judgments and the manifest into ``out_dir``; returns the manifest.

    ``score_pairs``: aspect weights ({} = every aspect 1) to also write ``score_pairs.jsonl``."""
    if Path(out_dir).exists() and not replace:
        raise FileExistsError(f"{out_dir} already exists; choose a new folder or pass replace=True (--replace)")
    with opened(store, create=False) as db:
        files, manifest = _export_contents(db, pair_aggregate, ranking_aggregate, include_rankings_in_pairs,
                                           include_unacceptable, adjust_raters, score_pairs, score_pair_min_gap)
    with atomic_dir(out_dir, replace=replace) as tmp:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # a temporary folder is private; the export is not
        for name, body in files.items():
            (tmp / name).write_text(body, encoding="utf-8")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


def _export_contents(store: Store, pair_aggregate: str, ranking_aggregate: str, include_rankings_in_pairs: bool,
                     include_unacceptable: bool, adjust_raters: bool = False, score_pairs: dict | None = None,
                     score_pair_min_gap: float = 0.5) -> tuple[dict[str, str], dict[str, Any]]:
    """The export's files (name → JSONL text) and its manifest."""
    scores = score_records(store, adjust_raters=adjust_raters)
    files = {
        "pairs.jsonl": _jsonl(pair_records(store, pair_aggregate, include_rankings_in_pairs, include_unacceptable)),
        "rankings.jsonl": _jsonl(ranking_records(store, ranking_aggregate, include_unacceptable)),
        "scores.jsonl": _jsonl(scores),
        "judgments.jsonl": _jsonl(judgment_records(store)),
    }
    if score_pairs is not None:
        files["score_pairs.jsonl"] = _jsonl(pairs_from_scores(scores, score_pairs or None, score_pair_min_gap,
                                                              use_adjusted=adjust_raters))
    judgments, items, _names = load(store)
    units = pair_units(judgments, items)
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "store": str(store.location),
        "schema_version": store.schema_version(),
        "filters": {"pair_aggregate": pair_aggregate, "ranking_aggregate": ranking_aggregate,
                    "include_rankings_in_pairs": include_rankings_in_pairs,
                    "include_unacceptable": include_unacceptable, "adjust_raters": adjust_raters,
                    "score_pairs": score_pairs, "score_pair_min_gap": score_pair_min_gap,
                    "excluded": ["gold items", "repeats",
                                                                                 "superseded judgments"]},
        "counts": {name: body.count("\n") for name, body in files.items()} | store.counts(),
        "agreement": {"pairwise": agreement_summary(units), "rankings": ranking_summary(judgments, items)},
        "sha256": {name: hashlib.sha256(body.encode()).hexdigest() for name, body in files.items()},
    }
    return files, manifest
