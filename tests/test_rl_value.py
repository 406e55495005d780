"""The critic (models/value.py): zero-initialised head, or the reward model's backbone and head; and a PPO
run whose reward is a reward-model folder and whose critic starts from it."""

from __future__ import annotations

import math

import pytest
import torch

from tuneloop.models import ModelConfig
from tuneloop.models.reward import RewardModelInfo, build_reward_model, load_reward_model, save_reward_model
from tuneloop.models.value import build_value_model, response_values
from tuneloop.train.reward import RewardModelConfig


@pytest.fixture
def rm_folder(tmp_path, tiny_name):
    model, tok = build_reward_model(RewardModelConfig(name=tiny_name))
    with torch.no_grad():  # a non-zero head, so that "copied" is checkable
        model.core.score.weight.copy_(torch.linspace(-1, 1, model.core.score.weight.numel()).view_as(
            model.core.score.weight))
    folder = tmp_path / "rm"
    save_reward_model(model, tok, folder, RewardModelInfo("causal_lm", "chat-template", 64, tiny_name,
                                                          eval_accuracy=0.7, eval_pairs=10))
    return folder


def _rows(tokenizer):
    ids = tokenizer("hello there, how are you", return_tensors="pt").input_ids
    padded = torch.cat([ids, torch.full((1, 3), tokenizer.pad_token_id)], dim=1)  # right padding
    mask = torch.cat([torch.ones_like(ids), torch.zeros(1, 3, dtype=torch.long)], dim=1)
    return padded, mask, ids.shape[1]


def test_policy_init_critic_starts_at_zero(tiny_name, tiny_tokenizer):
    critic = build_value_model("policy", ModelConfig(name=tiny_name))
    ids, mask, _ = _rows(tiny_tokenizer)
    with torch.no_grad():
        assert torch.equal(critic(ids, mask), torch.zeros(ids.shape))
    assert any(p.requires_grad for p in critic.backbone.parameters())


def test_reward_model_init_critic_scores_like_the_reward_model(rm_folder, tiny_name, tiny_tokenizer):
    """The critic's value at a row's last real token is the reward model's score of that row, and its value
    at response token t is read one column earlier (the state before the token is chosen)."""
    critic = build_value_model("reward_model", ModelConfig(name=tiny_name), str(rm_folder))
    rm, _, _ = load_reward_model(rm_folder)
    ids, mask, n = _rows(tiny_tokenizer)
    with torch.no_grad():
        values = critic(ids, mask)
        torch.testing.assert_close(values[0, n - 1], rm(ids, mask)[0], atol=1e-5, rtol=0)
        per_token = response_values(critic, ids, mask, prompt_width=2, response_width=3)
    torch.testing.assert_close(per_token, values[:, 1:4], atol=0, rtol=0)


def test_encoder_reward_model_cannot_initialise_the_critic(tmp_path, tiny_name):
    folder = tmp_path / "enc"
    folder.mkdir()
    RewardModelInfo("encoder", "text-pair", 64, "minilm").save(folder)
    with pytest.raises(ValueError, match="critic.init: reward_model needs a causal-LM reward model"):
        build_value_model("reward_model", ModelConfig(name=tiny_name), str(folder))


def test_ppo_with_a_reward_model_folder_and_critic_from_it(rm_folder, tmp_path):
    from test_rl_train import make_cfg, metrics_rows

    from tuneloop.train.rl import train

    result = train(make_cfg("ppo", tmp_path, reward=str(rm_folder), critic={"init": "reward_model"}))
    rows = metrics_rows(result.run_dir)
    assert len(rows) == 2 and all(math.isfinite(r["objective/raw_scores"]) for r in rows)
    assert rows[0]["val/vpred"] != 0.0  # a zero head would give exactly 0
