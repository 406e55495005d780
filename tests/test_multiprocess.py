"""Two CPU processes (torchrun, gloo) train the same model as one process with accumulation."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from adam_bounds import assert_two_processes_match_one
from datafiles import write_jsonl
from processes import one_and_two_processes, torchrun
from safetensors.torch import load_file

from tuneloop.data.bundled import chatterbot_pairs


def _sft_args(train, out, name, micro):
    return ["-m", "tuneloop.cli", "sft", "--model.name", "tiny-llama", "--data.train", train,
            "--data.eval_fraction", "0", "--batch.batch_size", "8", "--batch.micro_batch_size", str(micro),
            "--batch.max_steps", "3", "--optim.lr", "1e-3", "--run.out_dir", str(out), "--run.name", name,
            "--run.seed", "1"]


def test_two_processes_equal_one_process_with_accumulation(tmp_path):
    """3 AdamW steps with ε = 1, so that the step is linear in the gradient and an fp32 bound holds
    (``adam_bounds.linear_adam_bound``): 4 micro-batches on 1 process and 2 on each of 2 processes
    sum the same 4 parts in another order (the all-reduce adds the two halves)."""
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": p, "completion": c} for p, c in chatterbot_pairs()[:32]])
    linear = ["--optim.eps", "1", "--optim.lr", "1"]
    one, two = one_and_two_processes([*_sft_args(train, tmp_path, "one", 2), *linear],
                                     [*_sft_args(train, tmp_path, "two", 2), *linear])
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    assert "(4 × 2 × 1 processes)" in one.stdout and "(2 × 2 × 2 processes)" in two.stdout
    assert_two_processes_match_one(tmp_path / "one", tmp_path / "two", steps=3, accumulated=4)
    losses = [[float(line.split('"loss": ')[1].split(",")[0]) for line in (tmp_path / r / "metrics.jsonl").read_text()
               .splitlines() if '"split": "train"' in line] for r in ("one", "two")]
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]), atol=1e-4, rtol=0)


def test_two_process_checkpoint_resumed_by_one_process(tmp_path):
    """A 2-process run's step-2 checkpoint continued by 1 process (module doc of ``tuneloop.checkpoint``):
    the data position is re-derived from the step, so the tokens seen and the batches of steps 3-4 are
    exactly those of the 2-process run; the weights agree with it up to the order of floating-point sums."""
    import json
    import shutil

    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": p, "completion": c} for p, c in chatterbot_pairs()[:32]])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [*_sft_args(train, tmp_path, "two", 2), "--batch.max_steps", "4", "--save_every", "2"]
    two = subprocess.run(torchrun(args), env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    run = tmp_path / "two"
    finished = load_file(run / "model" / "model.safetensors")
    summary = json.loads((run / "summary.json").read_text())
    shutil.rmtree(run / "checkpoints" / "step-4")
    shutil.rmtree(run / "model")
    one = subprocess.run([sys.executable, "-m", "tuneloop.cli", "sft", "--resume", str(run)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    assert "resuming" in one.stdout and "(4 × 2 × 1 processes)" in one.stdout
    resumed = load_file(run / "model" / "model.safetensors")
    assert json.loads((run / "summary.json").read_text())["tokens_seen"] == summary["tokens_seen"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_losses = {}
    for r in records:
        if r["split"] == "train":
            train_losses.setdefault(r["step"], []).append(r)
    for step in (3, 4):  # logged by the 2-process run, then again by the resumed 1-process run
        first, again = train_losses[step]
        assert first["tokens"] == again["tokens"] and first["trained_tokens"] == again["trained_tokens"]
        assert abs(first["loss"] - again["loss"]) < 1e-5, (step, first["loss"], again["loss"])
    diff = max((finished[n] - resumed[n]).abs().max().item() for n in finished)
    assert diff < 1e-5, f"resumed by 1 process, the weights differ from the 2-process run by {diff:.2e}"
