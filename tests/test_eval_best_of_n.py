"""Best-of-n selection (``tuneloop sample --best-of N --reward SPEC``)."""

from __future__ import annotations

import json

import pytest

from tuneloop.evaluate.best_of_n import select_best_of_n
from tuneloop.rewards import load_reward


def _words(text):
    return float(len(text.split()))


def test_keeps_the_best_of_each_group_in_order():
    """Candidates (word counts) [1, 3, 2 | 2, 2, 1] in groups of 3: group 1 keeps index 1 ("b b b"),
    group 2 the first of the equal maxima, index 0 ("d d")."""
    record = {"prompt": "p", "completions": ["a", "b b b", "c c", "d d", "e e", "f"],
              "completion_tokens": [1, 3, 2, 2, 2, 1], "finish_reasons": ["eos"] * 5 + ["length"]}
    [out] = select_best_of_n([record], load_reward(_words), 3)
    assert out["completions"] == ["b b b", "d d"] and out["completion_tokens"] == [3, 2]
    assert out["best_of_n"]["chosen"] == [1, 0] and out["best_of_n"]["scores"] == [[1, 3, 2], [2, 2, 1]]
    assert out["best_of_n"]["kl_to_sampler"] == pytest.approx(1.0986123 - 2 / 3)
    assert record["completions"][0] == "a"  # the input is not modified


def test_uneven_groups_are_an_error():
    with pytest.raises(ValueError, match="groups of 2"):
        select_best_of_n([{"prompt": "p", "completions": ["a", "b", "c"]}], load_reward(_words), 2)


def test_sample_cli_best_of(tmp_path):
    from tuneloop.cli import main

    scorer = tmp_path / "score.py"
    scorer.write_text("def words(text):\n    return float(len(text.split()))\n")
    out = tmp_path / "best.jsonl"
    assert main(["sample", "--model", "tiny-llama", "--prompts", "bundled:review-prompts", "--limit", "2",
                 "--num-candidates", "2", "--best-of", "3", "--reward", f"{scorer}:words", "--max-new-tokens", "12",
                 "--out", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2
    for r in records:
        assert len(r["completions"]) == 2 and r["best_of_n"]["n"] == 3
        for text, scores in zip(r["completions"], r["best_of_n"]["scores"]):
            assert float(len(text.split())) == max(scores)
    assert main(["sample", "--model", "tiny-llama", "--prompts", "bundled:review-prompts", "--best-of", "3",
                 "--out", str(out)]) == 2
