"""Data and database helpers for the labelling-app tests (a module of its own, so that processes the
tests spawn import it by a name no other conftest shadows)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

WORDS = {
    "pos": ["wonderful", "moving", "brilliant", "delightful", "charming", "great", "superb", "funny", "warm"],
    "neg": ["dull", "awful", "boring", "terrible", "clumsy", "bad", "tedious", "weak", "ugly"],
    "neu": ["long", "quiet", "French", "old", "recent", "familiar", "busy", "plain", "modern"],
}
SUBJECTS = ["heist", "romance", "western", "war drama", "cartoon", "documentary", "thriller", "musical"]
_DB_COUNTER = [0]


def review(rng: random.Random) -> str:
    mood = rng.choice(["pos", "neg", "neu", "pos", "neg"])
    words = rng.sample(WORDS[mood], 2) + rng.sample(WORDS["neu"], 1)
    return f"A {words[2]} {rng.choice(SUBJECTS)}: {words[0]} and {words[1]}."


def candidates_record(i: int, k: int, rng: random.Random, texts: list[str] | None = None) -> dict:
    completions = texts or [review(rng) for _ in range(k)]
    prompt = f"Write a short review of movie number {i}."
    return {"prompt_id": f"p-{i:012x}", "prompt": prompt, "messages": [{"role": "user", "content": prompt}],
            "completions": completions, "completion_tokens": [len(c.split()) for c in completions],
            "finish_reasons": ["eos"] * (len(completions) - 1) + ["length"],
            "provenance": {"model": "tiny", "model_hash": "0" * 64,
                           "sampling": {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 64},
                           "seed": 0, "tuneloop_version": "0.1.0", "created": "2025-01-01T00:00:00Z"}}


def write_candidates(path: Path, n_prompts: int, k: int = 2, seed: int = 0, start: int = 0,
                     gold: bool = False) -> Path:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(start, start + n_prompts):
            record = candidates_record(i, k, rng)
            if gold:
                record["gold_ranking"] = [[j] for j in range(k)]
            f.write(json.dumps(record) + "\n")
    return path


def new_pg_database(base_url: str) -> str:
    import psycopg

    _DB_COUNTER[0] += 1
    name = f"t{os.getpid()}_{_DB_COUNTER[0]}"
    with psycopg.connect(base_url + "/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"{base_url}/{name}"
