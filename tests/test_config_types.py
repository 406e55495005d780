"""Mappings, unions and Literals in a config: YAML, the command line, --help-config and strict errors.

The classes below are written for these tests (the RL reward mix is the first stage that needs a
``dict[str, float]``); every expected value is spelled out by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from tuneloop.config import CliValue, ConfigError, describe, dump_yaml, help_text, load_config, parse_overrides
from tuneloop.models.loading import ModelConfig


@dataclass
class MixConfig:
    weights: dict[str, float] = field(default_factory=lambda: {"rm": 1.0})
    """Weight of each reward in the mix."""
    source: str | dict[str, float] = "rm"
    """One reward spec, or specs with weights."""
    clip: float | None = None
    """Clip rewards to ±clip (null: no clipping)."""
    kernel: Literal["sdpa", "eager"] = "sdpa"
    """Attention kernel."""
    count: int | float = 2
    """A number that may be whole or not."""
    tags: list[str] | None = None
    """Free-form labels."""


@dataclass
class StageConfig:
    reward: MixConfig = field(default_factory=MixConfig)
    """The reward mix."""
    name: str = "stage"
    """Run name."""


def test_defaults_and_yaml_mappings_and_unions(tmp_path):
    assert load_config(StageConfig).reward == MixConfig()
    path = tmp_path / "rl.yaml"
    path.write_text("reward:\n  weights: {rm: 1, vader: 0.5}\n  source: {gold:vader: 2}\n  clip: 3\n"
                    "  count: 2.5\n  tags: [a, b]\n")
    cfg = load_config(StageConfig, path)
    assert cfg.reward.weights == {"rm": 1.0, "vader": 0.5}
    assert isinstance(cfg.reward.weights["rm"], float)  # an int is read as the float it stands for
    assert cfg.reward.source == {"gold:vader": 2.0}
    assert cfg.reward.clip == 3.0 and isinstance(cfg.reward.clip, float)
    assert cfg.reward.count == 2.5
    assert cfg.reward.tags == ["a", "b"]


def test_command_line_mapping_whole_in_json_or_yaml_or_one_entry(tmp_path):
    path = tmp_path / "rl.yaml"
    path.write_text("reward:\n  weights: {rm: 1.0, length: 0.1}\n")
    whole = load_config(StageConfig, path, ["--reward.weights", '{"rm": 1.0, "vader": 0.5}'])
    assert whole.reward.weights == {"rm": 1.0, "vader": 0.5}  # a whole mapping replaces the file's
    flow = load_config(StageConfig, path, ["--reward.weights={rm: 2, vader: -1}"])
    assert flow.reward.weights == {"rm": 2.0, "vader": -1.0}
    entry = load_config(StageConfig, path, ["--reward.weights.vader", "0.5"])
    assert entry.reward.weights == {"rm": 1.0, "length": 0.1, "vader": 0.5}  # one entry added to the file's
    on_default = load_config(StageConfig, None, ["--reward.weights.vader", "0.5", "--reward.weights.rm", "2"])
    assert on_default.reward.weights == {"rm": 2.0, "vader": 0.5}  # ... or to the default {"rm": 1.0}
    path.write_text("reward:\n  weights: {vader: 1}\n")
    assert load_config(StageConfig, path).reward.weights == {"vader": 1.0}  # a file's mapping replaces the default


def test_command_line_unions_pick_the_first_member_that_fits():
    cfg = load_config(StageConfig, None, ["--reward.source", "gold:vader", "--reward.clip", "null",
                                          "--reward.count", "3"])
    assert cfg.reward.source == "gold:vader" and cfg.reward.clip is None
    assert cfg.reward.count == 3 and isinstance(cfg.reward.count, int)
    cfg = load_config(StageConfig, None, ["--reward.source", "{rm: 1, vader: 0.25}", "--reward.clip", "5"])
    assert cfg.reward.source == {"rm": 1.0, "vader": 0.25} and cfg.reward.clip == 5.0
    # Text that YAML reads as a number or bool is still a name where the field takes a string.
    assert load_config(StageConfig, None, ["--name", "123", "--reward.source", "yes"]).name == "123"
    assert load_config(StageConfig, None, ["--reward.source", "yes"]).reward.source == "yes"


@pytest.mark.parametrize("args, message", [
    (["--reward.weights", "{rm: high}"], "config key 'reward.weights.rm': expected float, got 'high'"),
    (["--reward.weights.vader", "x"], "config key 'reward.weights.vader': expected float, got 'x'"),
    (["--reward.weights", "0.5"], "config key 'reward.weights': expected dict[str, float] (a mapping), got 0.5"),
    (["--reward.weights", "{1: 0.5}"], "config key 'reward.weights (the key 1)': expected str"),
    (["--reward.source", "[a]"], "config key 'reward.source': expected str or dict[str, float], got ['a']"),
    (["--reward.source", "{rm: high}"], "config key 'reward.source.rm': expected float, got 'high'"),
    (["--reward.clip", "big"], "config key 'reward.clip': expected float, got 'big'"),
    (["--reward.kernel", "flash"], "config key 'reward.kernel': expected one of 'sdpa', 'eager', got 'flash'"),
    (["--reward.count", "true"], "config key 'reward.count': expected int or float, got True"),
    (["--reward.tags", "3"], "config key 'reward.tags': expected list[str], got 3"),
])
def test_bad_values_name_the_key(args, message):
    with pytest.raises(ConfigError) as err:
        load_config(StageConfig, None, args)
    assert message in str(err.value)


def test_bad_yaml_mapping_names_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("reward:\n  weights:\n    rm: 1.0\n    vader: [0.5]\n")
    with pytest.raises(ConfigError, match=r"config key 'reward.weights.vader': expected float, got \[0.5\]"):
        load_config(StageConfig, path)


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(StageConfig, None, ["--reward.weights", "{rm: 1, vader: 0.5}", "--reward.source",
                                          "{a: 2}", "--reward.clip", "1.5", "--reward.kernel", "eager"])
    path = tmp_path / "saved.yaml"
    path.write_text(dump_yaml(cfg))
    assert load_config(StageConfig, path) == cfg


def test_help_config_shows_mapping_and_union_types():
    rows = {key: (tp, default) for key, tp, default, _ in describe(StageConfig)}
    assert rows["reward.weights"] == ("dict[str, float]", "{'rm': 1.0}")
    assert rows["reward.source"] == ("str or dict[str, float]", "'rm'")
    assert rows["reward.clip"] == ("float or null", "None")
    assert rows["reward.kernel"] == ("one of 'sdpa', 'eager'", "'sdpa'")
    assert rows["reward.count"] == ("int or float", "2")
    assert rows["reward.tags"] == ("list[str] or null", "None")
    text = help_text(StageConfig)
    assert "--reward.weights  (dict[str, float], default {'rm': 1.0})\n      Weight of each reward in the mix.\n" in text


def test_parse_overrides_keeps_the_text_until_the_type_is_known():
    assert parse_overrides(["--a.b", "1", "--a.c.y", "2"]) == {"a": {"b": CliValue("1"), "c": {"y": CliValue("2")}}}
    with pytest.raises(ConfigError, match="conflicts with an earlier one"):  # a whole value, then one of its entries
        parse_overrides(["--a.c={x: 1}", "--a.c.y", "2"])


@dataclass
class WithModel:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model."""


def test_model_attention_kernel_is_a_literal():
    with pytest.raises(ConfigError, match="config key 'model.attn_implementation': expected one of 'sdpa_documents'"):
        load_config(WithModel, None, ["--model.attn_implementation", "sdpa-documents"])
    assert load_config(WithModel, None, ["--model.attn_implementation", "eager"]).model.attn_implementation == "eager"


def test_reward_model_attention_kernel_is_the_same_literal():
    from tuneloop.train.reward import RewardConfig

    with pytest.raises(ConfigError, match="config key 'model.attn_implementation': expected one of 'sdpa_documents'"):
        load_config(RewardConfig, None, ["--model.attn_implementation", "flash"])
    assert load_config(RewardConfig).model.attn_implementation == "sdpa"
