"""Two CPU processes (torchrun, gloo) train the same model as one process with accumulation."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import torch
from safetensors.torch import load_file

from datafiles import write_jsonl
from tuneloop.data.bundled import chatterbot_pairs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sft_args(train, out, name, micro):
    return ["-m", "tuneloop.cli", "sft", "--model.name", "tiny-llama", "--data.train", train,
            "--data.eval_fraction", "0", "--batch.batch_size", "8", "--batch.micro_batch_size", str(micro),
            "--batch.max_steps", "3", "--optim.lr", "1e-3", "--run.out_dir", str(out), "--run.name", name,
            "--run.seed", "1"]


def test_two_processes_equal_one_process_with_accumulation(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": p, "completion": c} for p, c in chatterbot_pairs()[:32]])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, *_sft_args(train, tmp_path, "one", 2)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                          "127.0.0.1", "--master_port", str(_free_port()), *_sft_args(train, tmp_path, "two", 2)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "(4 × 2 × 1 processes)" in one.stdout and "(2 × 2 × 2 processes)" in two.stdout
    a = load_file(tmp_path / "one" / "model" / "model.safetensors")
    b = load_file(tmp_path / "two" / "model" / "model.safetensors")
    from tuneloop.models.loading import resolve_model_name

    initial = load_file(os.path.join(resolve_model_name("tiny-llama"), "model.safetensors"))
    update = max((a[n] - initial[n]).abs().max().item() for n in a)
    diff = max((a[n] - b[n]).abs().max().item() for n in a)
    assert update > 1e-3
    assert diff < 0.02 * update, f"2 processes differ from 1 by {diff:.2e} (updates are {update:.2e})"
    losses = [[float(line.split('"loss": ')[1].split(",")[0]) for line in (tmp_path / r / "metrics.jsonl").read_text()
               .splitlines() if '"split": "train"' in line] for r in ("one", "two")]
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]), atol=1e-4, rtol=0)
