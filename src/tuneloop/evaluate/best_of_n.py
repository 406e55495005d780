"""Best-of-n selection over a candidates file (``tuneloop sample --best-of N --reward SPEC``).

Each prompt's candidates are split, in order, into groups of n; of each group the one the reward scores
highest is kept (the first of equal maxima, ``overoptimization.best_of_n_choice``). The record keeps its
format (the labelling app and ``eval`` read it as any candidates file) and gains
``best_of_n: {"n", "reward", "scores": [[n scores] per kept candidate], "chosen": [index in its group]}``.
Best-of-n's KL to the sampling policy is log n − (n − 1)/n (``overoptimization.best_of_n_kl``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tuneloop.atomic import atomic_write_jsonl
from tuneloop.evaluate.overoptimization import best_of_n_choice, best_of_n_kl

PER_CANDIDATE = ("completions", "completion_tokens", "finish_reasons")


def select_best_of_n(records: list[dict], reward, n: int) -> list[dict]:
    """Records whose per-candidate lists hold the best of each group of ``n`` by ``reward``."""
    assert n >= 1, f"n must be ≥ 1, got {n}"
    out = []
    for record in records:
        texts = record["completions"]
        if len(texts) % n:
            raise ValueError(f"prompt {record.get('prompt_id', '?')}: {len(texts)} candidates do not split into "
                             f"groups of {n}")
        prompt = record.get("messages") or record["prompt"]
        scores = reward.score([prompt] * len(texts), texts).view(-1, n)  # (groups, n)
        chosen = best_of_n_choice(scores, n)  # (groups,)
        keep = (torch.arange(scores.shape[0]) * n + chosen).tolist()
        selected = {**record, **{key: [record[key][i] for i in keep] for key in PER_CANDIDATE if key in record}}
        selected["best_of_n"] = {"n": n, "reward": reward.name, "kl_to_sampler": best_of_n_kl(n),
                                 "scores": scores.tolist(), "chosen": chosen.tolist()}
        out.append(selected)
    return out


def best_of_n_file(path: str | Path, reward_spec: str, n: int) -> list[dict]:
    """Rewrite a candidates file in place (atomically) with the best of each group of ``n``."""
    from tuneloop.rewards import load_reward

    path = Path(path)
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    selected = select_best_of_n(records, load_reward(reward_spec), n)
    atomic_write_jsonl(path, selected)
    return selected
