"""rewards/ sits below the stages and the report: what importing its modules pulls in, checked in a
fresh interpreter (sys.modules of this test process already holds everything)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tuneloop.rewards.evaluation import ScoredPairs, write_report


def _imported_by(module: str) -> set[str]:
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


@pytest.mark.parametrize("module, forbidden", [
    ("tuneloop.rewards.evaluation", ("tuneloop.report", "matplotlib")),
    ("tuneloop.rewards.http", ("tuneloop.models", "transformers")),
    ("tuneloop.rewards", ("tuneloop.report", "tuneloop.train", "tuneloop.feedback", "matplotlib")),
])
def test_rewards_modules_do_not_import_the_layers_above(module, forbidden):
    loaded = _imported_by(module)
    wrong = sorted(m for m in loaded if m.startswith(forbidden))
    assert not wrong, f"importing {module} loads {wrong}"


def _pairs() -> ScoredPairs:
    return ScoredPairs(chosen=torch.tensor([2.0, 1.0, 0.0]), rejected=torch.tensor([1.0, 3.0, 0.0]),
                       tie=torch.tensor([False, False, True]), chosen_len=torch.tensor([4, 8, 5]),
                       rejected_len=torch.tensor([6, 2, 5]))


def test_write_report_records_the_figures_the_caller_draws(tmp_path):
    """Strict pairs: (2 vs 1) right, (1 vs 3) wrong -> accuracy 1/2; the tie is counted apart."""
    seen = {}

    def figures(folder, metrics, pairs, scores, lengths):
        seen["accuracy"] = metrics["accuracy"]
        seen["scores"] = scores.tolist()
        (folder / "one.png").write_bytes(b"png")
        return {"one": folder / "one.png"}

    scores, lengths = torch.tensor([2.0, 1.0, 1.0, 3.0]), torch.tensor([4.0, 6.0, 8.0, 2.0])
    metrics = write_report(tmp_path, _pairs(), scores, lengths, tie_threshold=0.5, figures=figures)
    assert metrics["accuracy"] == 0.5 and seen == {"accuracy": 0.5, "scores": [2.0, 1.0, 1.0, 3.0]}
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["figures"] == {"one": "one.png"} and saved["accuracy"] == 0.5
    bare = write_report(tmp_path / "bare", _pairs(), scores, lengths, tie_threshold=0.5)
    assert bare["figures"] == {} and sorted(p.name for p in (tmp_path / "bare").iterdir()) == ["report.json"]
