"""Two CPU processes (torchrun, gloo) run an RL round like one process with twice the accumulation:
each rank samples its own prompts (a prompt's K responses are seeded by its position in the round, so
the ranks draw exactly what one process draws), whitening and the loss normalisation use global sums."""

from __future__ import annotations

import json

from adam_bounds import assert_two_processes_match_one
from processes import one_and_two_processes
from rl_helpers import spec


def _args(prompts, out, name):
    return ["-m", "tuneloop.cli", "a2c", "--model.name", "tiny-llama", "--reward", spec("e_share"),
            "--rollout.prompts", prompts, "--rollout.prompts_per_step", "4", "--rollout.samples_per_prompt", "2",
            "--rollout.sampling.max_new_tokens", "6", "--rollout.sampling.batch_size", "2", "--micro_batch_size", "2",
            "--steps", "1", "--optim.lr", "1", "--optim.eps", "1", "--critic.optim.lr", "1", "--critic.optim.eps", "1",
            "--run.out_dir", str(out), "--run.name", name, "--run.seed", "5"]


def test_two_processes_equal_one_process_with_twice_the_accumulation(tmp_path):
    """A2C (policy + critic), one round of 4 prompts × K = 2: 4 micro-batches of 2 rows on 1 process,
    2 on each of 2 processes. AdamW with ε = 1 (``adam_bounds.linear_adam_bound``): the policy's
    weights agree within the fp32 bound of summing 4 parts in another order; the sampled responses,
    scores and the logged losses agree."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in
                               ["Tell me something.", "What is a robot?", "Say hello.", "Do you like music?"]))
    one, two = one_and_two_processes(_args(str(prompts), tmp_path, "one"), _args(str(prompts), tmp_path, "two"),
                                     timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    assert "= 4 accumulation × 2 rows × 1 process(es)" in one.stdout
    assert "= 2 accumulation × 2 rows × 2 process(es)" in two.stdout
    assert_two_processes_match_one(tmp_path / "one", tmp_path / "two", steps=1, accumulated=4)
    rows = [json.loads((tmp_path / r / "metrics.jsonl").read_text().splitlines()[0]) for r in ("one", "two")]
    for key in ("objective/scores", "completions/mean_length", "objective/entropy"):
        assert abs(rows[0][key] - rows[1][key]) < 1e-5, key
    for key in ("loss/policy_avg", "loss/value_avg"):
        assert abs(rows[0][key] - rows[1][key]) < 1e-5 * max(1.0, abs(rows[0][key])), key
