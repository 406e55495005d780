"""The shipped RL demo configs (examples/{ppo,a2c,grpo,rloo}-demo.yaml) load into their preset and make a valid
batch plan on the demo task's 194 training movies, the command-line overrides the docs give for other paths
win, and examples/rl-task.yaml runs them as its stages (the whole pipeline on the tiny policy)."""

from pathlib import Path

import pytest

from tuneloop.config import load_config
from tuneloop.train.rl_config import PRESETS, make_rl_plan, stage_name

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("preset", ["ppo", "a2c", "grpo", "rloo"])
def test_demo_config_loads_into_its_preset_with_a_valid_plan(preset):
    cfg = load_config(PRESETS[preset], EXAMPLES / f"{preset}-demo.yaml")
    assert stage_name(cfg) == preset
    assert cfg.model.lora.enabled and cfg.reward == "runs/rl-task/reward/run/model"
    assert cfg.rollout.prompts == "runs/rl-task/data/train-prompts.jsonl"
    assert cfg.steps == (48 if preset == "ppo" else 24)  # PPO's rounds chosen on training movies (docs/rl.md)
    assert cfg.rollout.sampling.temperature == 1.0 and cfg.rollout.sampling.top_p == 1.0
    assert cfg.rollout.sampling.max_new_tokens == 40  # the demo's sampling and eval length
    make_rl_plan(cfg, world_size=1, num_prompts=194)  # raises on an impossible plan or K = 1 for a group estimator


def test_demo_config_paths_are_overridable():
    cfg = load_config(PRESETS["ppo"], EXAMPLES / "ppo-demo.yaml",
                      ["--model.name", "/d/sft/run/model", "--reward", "/d/reward/run/model",
                       "--rollout.prompts", "/d/data/train-prompts.jsonl", "--run.out_dir", "/out"])
    assert (cfg.model.name, cfg.reward, cfg.rollout.prompts, cfg.run.out_dir) == (
        "/d/sft/run/model", "/d/reward/run/model", "/d/data/train-prompts.jsonl", "/out")
    assert cfg.algo.epochs == 2 and cfg.algo.mini_batches == 1  # the file's, not the preset's 4 × 2


def test_rl_eval_config_compares_every_preset_with_the_sft_policy_on_the_demo_eval_movies():
    from tuneloop.evaluate.config import EvalConfig

    cfg = load_config(EvalConfig, EXAMPLES / "eval-rl-demo.yaml")
    assert [p.name for p in cfg.policies] == ["sft", "ppo", "grpo", "rloo", "a2c"]
    assert cfg.reference == cfg.policies[0].model and cfg.gold == ["vader"]
    # the RL runs sampled 40 tokens at T = 1 without top-p: the evaluation samples the same way
    for preset in ("ppo", "a2c", "grpo", "rloo"):
        rl = load_config(PRESETS[preset], EXAMPLES / f"{preset}-demo.yaml")
        s, e = rl.rollout.sampling, cfg.sampling
        assert (s.temperature, s.top_p, s.max_new_tokens) == (e.temperature, e.top_p, e.max_new_tokens)
        assert f"runs/{rl.run.name}/model" in [p.model for p in cfg.policies]


def test_rl_task_pipeline_runs_the_example_configs_end_to_end(tmp_path):
    """examples/rl-task.yaml --profile quick (tiny policy, 2 rounds): every stage runs, each RL stage trains with
    its example file's settings and the pipeline's inputs, and the eval compares all four with the SFT policy."""
    import json

    import yaml

    from tuneloop.pipeline import load_pipeline, run_pipeline

    pipeline = load_pipeline(EXAMPLES / "rl-task.yaml", profile="quick", out_dir=tmp_path)
    records = run_pipeline(pipeline, echo=lambda line: None)
    assert list(records) == ["data", "sft", "sample", "label", "reward", "ppo", "a2c", "grpo", "rloo", "eval",
                             "report"]
    train_prompts = (tmp_path / "data/train-prompts.jsonl").read_text().splitlines()
    eval_prompts = {json.loads(line)["prompt"] for line in (tmp_path / "data/eval-prompts.jsonl").read_text().splitlines()}
    assert len(train_prompts) == 194 and not eval_prompts & {json.loads(line)["prompt"] for line in train_prompts}
    for preset in ("ppo", "a2c", "grpo", "rloo"):
        ran = yaml.safe_load((tmp_path / preset / "run/config.yaml").read_text())
        shipped = load_config(PRESETS[preset], EXAMPLES / f"{preset}-demo.yaml")
        assert (ran["algo"]["kl_coef"], ran["algo"]["epochs"], ran["optim"]["lr"]) == (
            shipped.algo.kl_coef, shipped.algo.epochs, shipped.optim.lr)
        assert ran["rollout"]["prompts"] == str(tmp_path / "data/train-prompts.jsonl") and ran["steps"] == 2
        assert ran["model"]["name"] == str(tmp_path / "sft/run/model")
    result = json.loads((tmp_path / "eval/eval.json").read_text())
    assert list(result["policies"]) == ["sft", "ppo", "a2c", "grpo", "rloo"]
