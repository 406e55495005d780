"""Strict typed config: YAML + CLI overrides, unknown keys and wrong types name the key."""

from __future__ import annotations

import pytest

from tuneloop.config import CliValue, ConfigError, describe, dump_yaml, load_config, parse_overrides
from tuneloop.train.sft import SFTConfig


def test_defaults_yaml_and_overrides_layer_in_order(tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text("optim:\n  lr: 0.001\n  schedule: linear\nbatch:\n  batch_size: 16\n")
    cfg = load_config(SFTConfig, path, ["--optim.lr", "1e-5", "--data.packing=true", "--batch.max-steps", "7"])
    assert cfg.optim.lr == 1e-5  # the override wins over the file
    assert cfg.optim.schedule == "linear"  # the file wins over the default
    assert cfg.batch.batch_size == 16 and cfg.batch.max_steps == 7
    assert cfg.data.packing is True
    assert cfg.model.name == "smollm2-135m-instruct"  # untouched default


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(SFTConfig, None, ["--model.lora.enabled", "true", "--model.lora.target_modules", "[q_proj, v_proj]"])
    path = tmp_path / "saved.yaml"
    path.write_text(dump_yaml(cfg))
    assert load_config(SFTConfig, path) == cfg
    assert cfg.model.lora.target_modules == ["q_proj", "v_proj"]


@pytest.mark.parametrize("args, message", [
    (["--optim.lrr", "1"], "unknown config key 'optim.lrr'"),
    (["--nonsense.key", "1"], "unknown config key 'nonsense'"),
    (["--batch.batch_size", "eight"], "config key 'batch.batch_size': expected int, got 'eight'"),
    (["--batch.batch_size", "2.5"], "config key 'batch.batch_size': expected int"),
    (["--data.packing", "3"], "config key 'data.packing': expected bool"),
    (["--optim.schedule", "cosine_with_restarts"], "config key 'optim.schedule': expected one of 'cosine'"),
    (["--optim.lr"], "has no value"),
])
def test_bad_overrides_name_the_key(args, message):
    with pytest.raises(ConfigError) as err:
        load_config(SFTConfig, None, args)
    assert message in str(err.value)


def test_bad_yaml_names_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown config key 'optim.learning_rate'"):
        load_config(SFTConfig, path)
    path.write_text("optim: 3\n")
    with pytest.raises(ConfigError, match="optim"):
        load_config(SFTConfig, path)


def test_value_checks_in_dataclasses_name_the_key():
    with pytest.raises(ConfigError, match="batch.micro_batch_size must be ≥ 1"):
        load_config(SFTConfig, None, ["--batch.micro_batch_size", "0"])


def test_int_is_accepted_for_float_but_bool_is_not():
    assert load_config(SFTConfig, None, {"optim": {"lr": 1}}).optim.lr == 1.0
    with pytest.raises(ConfigError):
        load_config(SFTConfig, None, {"optim": {"lr": True}})


def test_parse_overrides_nests_keys():
    assert parse_overrides(["--a.b", "1", "--a.c=x", "--d", "null"]) == {
        "a": {"b": CliValue("1"), "c": CliValue("x")}, "d": CliValue("null")}
    assert [CliValue(t).parsed for t in ("1", "x", "null", "1e-5")] == [1, "x", None, 1e-5]


def test_every_field_is_documented():
    rows = describe(SFTConfig)
    undocumented = [key for key, _, _, doc in rows if not doc]
    assert not undocumented, f"fields without a docstring: {undocumented}"
    assert ("optim.lr", "float", "2e-05", "Peak learning rate.") in rows


def test_a_section_given_in_part_keeps_the_presets_defaults_for_the_rest(tmp_path):
    """The PPO preset's policy optimizer is linear without warm-up (Huang et al.); setting only its lr, in a file
    or on the command line, must not bring back OptimConfig's own cosine schedule with 3% warm-up."""
    from tuneloop.train.rl_config import PPOConfig

    path = tmp_path / "ppo.yaml"
    path.write_text("optim: {lr: 3.0e-4}\n")
    for cfg in (load_config(PPOConfig, path), load_config(PPOConfig, None, ["--optim.lr", "3e-4"])):
        assert (cfg.optim.lr, cfg.optim.schedule, cfg.optim.warmup_ratio) == (3e-4, "linear", 0.0)
        assert (cfg.critic.optim.lr, cfg.critic.optim.schedule) == (1e-4, "linear")
    cfg = load_config(PPOConfig, None, ["--optim.schedule", "cosine"])
    assert (cfg.optim.lr, cfg.optim.schedule) == (1e-5, "cosine")
    cfg = load_config(PPOConfig, None, ["--optim", "{lr: 3.0e-4}"])  # the whole section on the command line
    assert (cfg.optim.lr, cfg.optim.schedule) == (3e-4, "linear")
    rows = {key: default for key, _, default, _ in describe(PPOConfig)}  # --help-config shows the preset's
    assert (rows["optim.lr"], rows["optim.schedule"], rows["critic.optim.lr"]) == ("1e-05", "'linear'", "0.0001")


def test_a_preset_section_keeps_its_defaults_and_a_mapping_is_replaced_whole(tmp_path):
    """A nested section given in part keeps the preset's values (GRPO-style T = 0.7 of the RL presets); a
    mapping-valued field given in the file still replaces its default whole."""
    from tuneloop.train.rl_config import PPOConfig

    path = tmp_path / "ppo.yaml"
    path.write_text("reward: {vader: 1.0}\nrollout: {sampling: {max_new_tokens: 8}}\n")
    cfg = load_config(PPOConfig, path)
    assert cfg.reward == {"vader": 1.0}
    assert (cfg.rollout.sampling.max_new_tokens, cfg.rollout.sampling.temperature) == (8, 0.7)  # the preset's T
