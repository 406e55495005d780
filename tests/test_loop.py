"""The loop skeleton: the schedule (log / eval / save steps), eval mode restored whatever happens, the
schedule keys declared once and validated, one eval split by prompt for every stage."""

from __future__ import annotations

import time

import pytest
import torch

from tuneloop.checkpoint import NamedState, list_checkpoints
from tuneloop.config import ConfigError, load_config
from tuneloop.data.chat import Tokenized
from tuneloop.data.split import split_by_prompt
from tuneloop.models.modes import eval_mode
from tuneloop.runs import RunDir
from tuneloop.train.batch_plan import BatchPlan
from tuneloop.train.loop import Loop, LoopConfig, describe_plan


class _Recorder:
    def __init__(self):
        self.logged, self.steps = [], 0

    def log(self, step, metrics, split="train"):
        self.logged.append((step, split, sorted(metrics)))

    def progress(self, steps=1, **postfix):
        self.steps += steps


def test_end_step_logs_evaluates_and_saves_on_schedule(tmp_path):
    from accelerate import Accelerator

    plan = BatchPlan(batch_size=4, micro_batch_size=2, world_size=1, steps_per_epoch=3, total_steps=7)
    schedule = LoopConfig(log_every=3, eval_every=2, save_every=3, keep_checkpoints=5)
    tracker = _Recorder()
    loop = Loop(Accelerator(cpu=True), RunDir(tmp_path), plan, schedule, tracker, NamedState(plain={"n": 0}),
                start_step=0, started=time.time(), plain_at_start={"n": 0})
    for step in loop.steps():
        loop.state.plain["n"] += 1
        loop.end_step(step, {"loss": 1.0}, evaluate=lambda: {"loss": 2.0})
    train_steps = [s for s, split, _ in tracker.logged if split == "train"]
    eval_steps = [s for s, split, _ in tracker.logged if split == "eval"]
    assert train_steps == [3, 6, 7]  # every 3rd and the last
    assert eval_steps == [2, 4, 6]  # not the last: ``finish`` evaluates there
    assert [keys for _, split, keys in tracker.logged if split == "train"][0] == ["epoch", "loss", "step_time_s"]
    assert tracker.steps == 7
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step-3", "step-6"]


def test_eval_mode_restores_every_flag_even_when_the_block_raises():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    model.train()
    model[0].eval()  # a deliberately frozen-in-eval submodule keeps its own flag
    with pytest.raises(RuntimeError), eval_mode(model):
        assert not model.training and not model[1].training
        raise RuntimeError("evaluation failed")
    assert model.training and model[1].training and not model[0].training


def test_describe_plan():
    plan = BatchPlan(batch_size=8, micro_batch_size=2, world_size=2, steps_per_epoch=5, total_steps=10)
    assert describe_plan(plan) == "10 steps of 8 (2 × 2 × 2 processes)"


def test_schedule_keys_are_declared_once_and_validated():
    from tuneloop.train.dpo_config import DPOConfig
    from tuneloop.train.reward import RewardConfig
    from tuneloop.train.sft import SFTConfig

    for cls in (SFTConfig, RewardConfig, DPOConfig):
        assert issubclass(cls, LoopConfig)
        assert set(vars(cls)["__annotations__"]).isdisjoint(vars(LoopConfig)["__annotations__"]), cls
    with pytest.raises(ConfigError, match="log_every must be ≥ 1, got 0"):
        load_config(SFTConfig, overrides=["--log_every", "0"])
    cfg = load_config(RewardConfig, overrides=["--save_every", "5", "--data.train", "x.jsonl"])
    assert cfg.save_every == 5


@pytest.mark.parametrize("stage", ["sft", "reward", "dpo"])
def test_every_stage_validates_eval_fraction_alike(stage):
    from tuneloop.data.split import EVAL_FRACTION
    from tuneloop.train.dpo_config import DPOConfig
    from tuneloop.train.reward import RewardConfig
    from tuneloop.train.sft import SFTConfig

    cls = {"sft": SFTConfig, "reward": RewardConfig, "dpo": DPOConfig}[stage]
    assert load_config(cls).data.eval_fraction == EVAL_FRACTION
    with pytest.raises(ConfigError, match=r"data.eval_fraction must be in \[0, 1\), got 1.0"):
        load_config(cls, overrides=["--data.eval_fraction", "1"])


def test_sft_documents_are_split_by_prompt():
    """Two documents answering the same prompt go to the same split."""
    docs = [Tokenized([i], [1], group=f"p{i // 2}") for i in range(20)]  # 10 prompts, 2 answers each
    train, held_out = split_by_prompt(docs, 0.3, seed=0)
    assert len(held_out) == 6 and {d.group for d in train}.isdisjoint({d.group for d in held_out})


def test_a_stage_finishes_in_the_shared_order(tmp_path):
    """SFT (the shortest stage) on the skeleton: summary with train_seconds and the counters, curves.png,
    the model folder; and the tracker's eval line written before the summary."""
    import json

    from datafiles import write_jsonl
    from tuneloop.data.bundled import chatterbot_pairs
    from tuneloop.train.sft import SFTConfig, train

    data = write_jsonl(tmp_path / "train.jsonl", [{"prompt": p, "completion": c} for p, c in chatterbot_pairs()[:24]])
    cfg = load_config(SFTConfig, overrides={"model": {"name": "tiny-llama"}, "data": {"train": str(data),
                      "eval_fraction": 0.2, "max_length": 64}, "batch": {"batch_size": 4, "max_steps": 2},
                      "run": {"out_dir": str(tmp_path / "runs")}})
    result = train(cfg)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["stage"] == "sft" and summary["steps"] == 2 and summary["train_seconds"] > 0
    assert summary["tokens_seen"] > 0 and summary["eval"]["loss"] > 0
    assert summary["curves"] == str(result.run_dir / "curves.png") and (result.run_dir / "curves.png").is_file()
    assert (result.model_dir / "config.json").is_file()
    last = json.loads((result.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["split"] == "eval" and last["loss"] == summary["eval"]["loss"]


def test_train_seconds_add_up_over_a_resume(tmp_path):
    """The seconds spent before the checkpoint travel in its plain state and count in the summary."""
    from accelerate import Accelerator

    plan = BatchPlan(batch_size=4, micro_batch_size=2, world_size=1, steps_per_epoch=3, total_steps=2)
    loop = Loop(Accelerator(cpu=True), RunDir(tmp_path), plan, LoopConfig(save_every=1), _Recorder(),
                NamedState(plain={"train_seconds": 100.0}), start_step=1, started=time.time(),
                plain_at_start={"train_seconds": 100.0})
    for step in loop.steps():
        loop.end_step(step, {"loss": 1.0})
    import json

    saved = json.loads((tmp_path / "checkpoints" / "step-2" / "tuneloop_state.json").read_text())
    assert 100.0 < saved["plain"]["train_seconds"] < 160.0
