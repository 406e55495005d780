"""``tuneloop demo --quick --dpo``: every stage runs for real on the tiny policy and leaves its results."""

from __future__ import annotations

import json

from tuneloop.cli import main


def test_quick_demo_runs_every_stage(tmp_path, capsys):
    assert main(["demo", "--quick", "--dpo", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    [root] = list(tmp_path.glob("demo-*"))
    summary = json.loads((root / "summary.json").read_text())
    assert len(list(root.glob("*/model/config.json"))) == 3  # sft, reward, dpo
    candidates = [json.loads(line) for line in (root / "candidates.jsonl").read_text().splitlines()]
    assert len(candidates) == 12 and all(len(c["completions"]) == 4 for c in candidates)
    assert summary["labels"]["judgments"] > 0 and (root / "pairs.jsonl").stat().st_size > 0
    assert 0.0 <= summary["reward"]["eval"]["accuracy"] <= 1.0
    assert summary["dpo"]["steps"] == 4 and 0.0 <= summary["dpo"]["eval"]["rewards/accuracy"] <= 1.0
    for policy in ("sft", "dpo"):
        scores = summary["compare"][policy]
        assert -1.0 <= scores["vader_sentiment"] <= 1.0 and scores["reward_model"] == scores["reward_model"]
        assert len((root / f"compare-{policy}.jsonl").read_text().splitlines()) == 96 - 12
    assert "DPO held-out implicit-reward accuracy" in out and "== 6. Compare" in out
