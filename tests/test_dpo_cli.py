"""`tuneloop dpo` smoke runs on a tiny model: a complete run folder, resume, help, one-line user errors."""

from __future__ import annotations

import json

from datafiles import write_jsonl
from test_dpo_data import pair_rows
from tuneloop.cli import main

TINY = ["--model.name", "tiny-llama", "--data.max_length", "64", "--data.max_prompt_length", "32"]


def test_dpo_writes_a_complete_run_folder_and_resumes(tmp_path, capsys):
    train = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(24))
    out = tmp_path / "runs"
    code = main(["dpo", *TINY, "--data.train", train, "--loss", "ipo", "--loss_params.beta", "0.5",
                 "--batch.batch_size", "4", "--batch.max_steps", "2", "--data.eval_fraction", "0.2",
                 "--run.out_dir", str(out), "--save_every", "1"])
    assert code == 0
    (run,) = out.iterdir()
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "summary.json", "model", "checkpoints", "curves.png",
            "reference_logps.safetensors"} <= names
    assert "loss: ipo" in (run / "config.yaml").read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["loss"] == "ipo" and {"rewards/accuracy", "rewards/margin", "kl/estimate"} <= set(summary["eval"])
    capsys.readouterr()
    assert main(["dpo", "--resume", str(run)]) == 0
    assert "resuming" in capsys.readouterr().out


def test_help_config_documents_the_loss_parameters(capsys):
    assert main(["dpo", "--help-config"]) == 0
    text = capsys.readouterr().out
    assert "--loss  (one of 'dpo', 'cdpo', 'robust', 'ipo', 'hinge', 'simpo', 'orpo', 'kto'" in text
    assert "--loss_params.beta  (float, default 0.1)\n      β: KL strength" in text
    assert "--reference.mode" in text and "--data.max_prompt_length" in text


def test_bad_pair_is_one_line_exit_2_and_no_run_folder(tmp_path, capsys):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"},
                                               {"prompt": "a", "chosen": ["not", "messages"], "rejected": "c"}])
    out = tmp_path / "runs"
    assert main(["dpo", *TINY, "--data.train", bad, "--run.out_dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.jsonl:2" in err and "'chosen" in err
    assert not out.exists()
    assert main(["dpo", *TINY, "--loss", "dpo", "--loss_params.label_smoothing", "0.2", "--data.train", bad]) == 2
    assert "only applies to 'cdpo' and 'robust'" in capsys.readouterr().err


def test_dpo_on_the_labelling_stores_judgments(tmp_path):
    """The demo's RL-free path: a simulated panel judges candidates in the labelling store; DPO trains on
    the store's own export, with no conversion."""
    from tuneloop.feedback import simulate
    from tuneloop.recipes import dpo_on_judgments

    words = ["great", "awful", "moving", "dull", "fun", "boring", "lovely", "bad"]
    rows = [{"prompt_id": f"p-{i:04d}", "prompt": f"Review movie {i}.",
             "messages": [{"role": "user", "content": f"Review movie {i}."}],
             "completions": [f"A {words[(i + j) % 8]} film." for j in range(3)],
             "completion_tokens": [3, 3, 3], "finish_reasons": ["eos"] * 3,
             "provenance": {"model": "tiny", "model_hash": "0" * 64, "seed": 0, "tuneloop_version": "0.1.0",
                            "sampling": {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 8},
                            "created": "2025-01-01T00:00:00Z"}} for i in range(12)]
    candidates = write_jsonl(tmp_path / "candidates.jsonl", rows)
    simulate(tmp_path / "labels.db", candidates, num_annotators=3, overlap=2, seed=0)
    result = dpo_on_judgments(tmp_path / "labels.db", "tiny-llama", tmp_path / "out", quick=True, steps=2)
    pairs = (tmp_path / "out" / "dpo-pairs.jsonl").read_text().splitlines()
    assert len(pairs) >= 8 and result.summary["steps"] == 2 and (result.model_dir / "config.json").is_file()
