"""The shipped RL demo configs (examples/{ppo,a2c,grpo,rloo}-demo.yaml) load into their preset and make a valid
batch plan on the demo's 48 sampling movies, and the command-line overrides the docs give for other paths win."""

from pathlib import Path

import pytest

from tuneloop.config import load_config
from tuneloop.train.rl_config import PRESETS, make_rl_plan, stage_name

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("preset", ["ppo", "a2c", "grpo", "rloo"])
def test_demo_config_loads_into_its_preset_with_a_valid_plan(preset):
    cfg = load_config(PRESETS[preset], EXAMPLES / f"{preset}-demo.yaml")
    assert stage_name(cfg) == preset
    assert cfg.model.lora.enabled and cfg.reward == "runs/demo/reward/run/model"
    assert cfg.rollout.sampling.temperature == 1.0 and cfg.rollout.sampling.top_p == 1.0
    assert cfg.rollout.sampling.max_new_tokens == 40  # the demo's sampling and eval length
    make_rl_plan(cfg, world_size=1, num_prompts=48)  # raises on an impossible plan or K = 1 for a group estimator


def test_demo_config_paths_are_overridable():
    cfg = load_config(PRESETS["ppo"], EXAMPLES / "ppo-demo.yaml",
                      ["--model.name", "/d/sft/run/model", "--reward", "/d/reward/run/model",
                       "--rollout.prompts", "/d/data/sample-prompts.jsonl", "--run.out_dir", "/out"])
    assert (cfg.model.name, cfg.reward, cfg.rollout.prompts, cfg.run.out_dir) == (
        "/d/sft/run/model", "/d/reward/run/model", "/d/data/sample-prompts.jsonl", "/out")
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
