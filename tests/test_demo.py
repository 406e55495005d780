"""``tuneloop demo --quick``: every stage of the shipped pipeline runs for real on the tiny policy, prints
one clean line per stage, writes the report; a second run reuses every stage."""

from __future__ import annotations

import json
from pathlib import Path

from tuneloop.cli import main

STAGES = ("data", "sft", "sample", "label", "reward", "dpo", "ppo", "eval", "report")  # quick: DPO on
NOISE = ("Loading weights", "FutureWarning", "it/s]", "step/s]", "Traceback")


def test_quick_demo_runs_every_stage_then_reuses_them(tmp_path, capsys):
    assert main(["demo", "--quick", "--out-dir", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    root = tmp_path / "demo-quick"
    lines = [line for line in captured.out.splitlines() if line.startswith("[")]
    assert [line.split()[1] for line in lines] == list(STAGES), captured.out
    assert all(line.split()[2].endswith("s") for line in lines)  # the time each stage took
    assert not any(noise in captured.out + captured.err for noise in NOISE), captured.out + captured.err
    assert "Report: " in captured.out and "tuneloop label serve --db" in captured.out
    state = json.loads((root / "pipeline.json").read_text())
    assert [s["name"] for s in state["stages"]] == list(STAGES) and state["failed"] is None
    candidates = [json.loads(line) for line in (root / "sample/candidates.jsonl").read_text().splitlines()]
    assert len(candidates) == 12 and all(len(c["completions"]) == 4 for c in candidates)
    assert (root / "label/pairs.jsonl").stat().st_size > 0
    reward = json.loads((root / "reward/stage.json").read_text())["summary"]
    held_out = reward["eval"]  # accuracy is k of the held-out strict pairs, and the gate reads the same numbers
    correct = held_out["accuracy"] * held_out["pairs"]
    assert held_out["pairs"] >= 1 and abs(correct - round(correct)) < 1e-6, held_out
    info = json.loads((Path(reward["model_dir"]) / "tuneloop_reward.json").read_text())
    assert (info["eval_accuracy"], info["eval_pairs"]) == (held_out["accuracy"], held_out["pairs"])
    result = json.loads((root / "eval/eval.json").read_text())
    assert set(result["policies"]) == {"sft", "dpo", "ppo"} and result["prompts"] == 12
    assert result["best_of_n"]["sft"]["points"][-1]["n"] == 4
    assert [p["label"] for p in result["overoptimization"]["dpo"]["points"]] == ["start", "step 2", "final"]
    assert [p["label"] for p in result["overoptimization"]["ppo"]["points"]] == ["start", "step 2", "final"]
    ppo = json.loads((root / "ppo/stage.json").read_text())["summary"]
    assert ppo["steps"] == 4 and "objective/kl" in ppo["final"], ppo
    html = (root / "report/report.html").read_text()
    assert '<section id="frontier">' in html and "data:image/png;base64," in html

    assert main(["demo", "--quick", "--out-dir", str(tmp_path)]) == 0
    again = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert len(again) == len(STAGES) and all("cached" in line for line in again)
