"""The RL forwards' layout (train/rl_rollout.scoring_rows): the K samples of a prompt share one copy of it,
each row is only as wide as its own tokens, and every log-prob and value equals the one of the padded
Rollout layout; the update's order keeps a group's rows together."""

from __future__ import annotations

import torch

from tuneloop.batches import Rollout
from tuneloop.models import ModelConfig, load_causal_lm
from tuneloop.models.logprobs import positions_from_mask, token_logprobs
from tuneloop.models.value import build_value_model, response_values
from tuneloop.train.rl_rollout import critic_values, policy_logps, scoring_rows
from tuneloop.train.rl_update import group_order

PAD = 0


def ragged_rollout() -> Rollout:
    """2 prompts (3 and 5 tokens) × K = 2 responses (lengths 2, 4 | 1, 3), in the padded layout:
    prompts left-padded to P = 5, responses right-padded to A = 4."""
    prompts = [[11, 12, 13], [21, 22, 23, 24, 25]]
    responses = [[31, 32], [41, 42, 43, 44], [51], [61, 62, 63]]
    p, a = 5, 4
    ids = torch.full((4, p + a), PAD)
    attention = torch.zeros((4, p + a), dtype=torch.long)
    response_mask = torch.zeros((4, a))
    for b, response in enumerate(responses):
        prompt = prompts[b // 2]
        ids[b, p - len(prompt):p] = torch.tensor(prompt)
        ids[b, p:p + len(response)] = torch.tensor(response)
        attention[b, p - len(prompt):p + len(response)] = 1
        response_mask[b, :len(response)] = 1
    return Rollout(query_responses=ids, attention_mask=attention, response_mask=response_mask, prompt_width=p,
                   group_size=2, prompt_index=torch.tensor([7, 7, 3, 3]), sampling_logps=torch.zeros((4, a)),
                   ended=torch.ones(4, dtype=torch.bool))


def padded_logps(model, rollout: Rollout) -> torch.Tensor:
    """The padded layout scored directly with the one log-prob function (the reference for the fast path)."""
    rows, cols = rollout.response_mask.nonzero(as_tuple=True)
    values = token_logprobs(model, rollout.query_responses, rollout.attention_mask,
                            positions_from_mask(rollout.attention_mask), rows, rollout.prompt_width - 1 + cols,
                            temperature=0.7)
    out = torch.zeros(rollout.response_mask.shape)
    out[rows, cols] = values
    return out


def test_a_group_shares_one_copy_of_its_prompt():
    """Hand count: prompt 1 (3) + responses 2 + 4 = 9 tokens; prompt 2 (5) + 1 + 3 = 9: two rows of 9, against
    four rows of 9 columns in the padded layout. Response 2 of group 1 starts at column 3 + 2 = 5 and its
    first token is predicted at the prompt's last column (2), with position 3 (after the 3 prompt tokens)."""
    layout = scoring_rows(ragged_rollout(), share_prompts=True)
    assert layout.input_ids.tolist() == [[11, 12, 13, 31, 32, 41, 42, 43, 44], [21, 22, 23, 24, 25, 51, 61, 62, 63]]
    assert layout.position_ids[0].tolist() == [0, 1, 2, 3, 4, 3, 4, 5, 6]
    assert layout.attention_mask.shape == (2, 1, 9, 9)
    first_of_second = (layout.out_rows == 1) & (layout.out_cols == 0)
    assert layout.cols[first_of_second].tolist() == [2] and layout.rows[first_of_second].tolist() == [0]
    sees = layout.attention_mask[0, 0, 6]  # token 42 (response 2, t = 1): the prompt and 41, not 31/32
    assert sees.tolist() == [True, True, True, False, False, True, True, False, False]


def test_one_response_per_row_drops_the_shared_padding():
    """Rows of 3 + 2, 3 + 4, 5 + 1 and 5 + 3 tokens: 8 columns, not the padded layout's 5 + 4 = 9."""
    layout = scoring_rows(ragged_rollout(), share_prompts=False)
    assert layout.attention_mask.tolist() == [[1] * 5 + [0] * 3, [1] * 7 + [0], [1] * 6 + [0] * 2, [1] * 8]
    assert layout.input_ids[1].tolist() == [11, 12, 13, 41, 42, 43, 44, 0]


def test_shared_and_padded_layouts_give_the_same_logps(tiny_name):
    model, _ = load_causal_lm(ModelConfig(name=tiny_name))
    rollout = ragged_rollout()
    with torch.no_grad():
        expected = padded_logps(model, rollout)
        fast = policy_logps(model, rollout, 0.7)
        unshared = policy_logps(model, rollout.rows(torch.tensor([0, 2, 1, 3])), 0.7)  # no two neighbours share
    torch.testing.assert_close(fast, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(unshared, expected[[0, 2, 1, 3]], atol=1e-5, rtol=0)
    assert (fast[rollout.response_mask == 0] == 0).all()


def test_logps_have_the_padded_layouts_gradient(tiny_name):
    model, _ = load_causal_lm(ModelConfig(name=tiny_name))
    rollout = ragged_rollout()
    grads = []
    for score in (padded_logps, lambda m, r: policy_logps(m, r, 0.7)):
        model.zero_grad()
        score(model, rollout).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)


def test_critic_values_equal_the_padded_layouts(tiny_name):
    critic = build_value_model("policy", ModelConfig(name=tiny_name))
    with torch.no_grad():
        torch.nn.init.normal_(critic.head.weight, generator=torch.Generator().manual_seed(0))
        rollout = ragged_rollout()
        expected = response_values(critic, rollout.query_responses, rollout.attention_mask, 5, 4)
        fast = critic_values(critic, rollout)
    torch.testing.assert_close(fast, expected * rollout.response_mask, atol=1e-5, rtol=0)


def test_group_order_keeps_groups_together():
    order = group_order(12, 3, torch.Generator().manual_seed(0)).view(4, 3)
    assert sorted(order[:, 0].tolist()) == [0, 3, 6, 9]
    assert (order - order[:, :1] == torch.arange(3)).all()
    assert torch.equal(group_order(5, 1, torch.Generator().manual_seed(1)),  # K = 1: a plain permutation
                       torch.randperm(5, generator=torch.Generator().manual_seed(1)))


def test_old_logps_from_the_update_forward_give_the_same_loss_and_gradient(tiny_name):
    """GRPO's one-pass update without the experience step's old-policy forward (``old_logps_from_update``):
    π_old taken from the update's own forward (detached) gives the loss, the gradient and the π_old of a
    separate no-grad forward."""
    import dataclasses

    from tuneloop.config import load_config
    from tuneloop.train.rl import old_logps_from_update
    from tuneloop.train.rl_config import GRPOConfig, PPOConfig
    from tuneloop.train.rl_update import _micro_losses

    cfg = load_config(GRPOConfig, overrides={"model": {"name": tiny_name}})
    assert old_logps_from_update(cfg) and not old_logps_from_update(load_config(PPOConfig))
    model, _ = load_causal_lm(ModelConfig(name=tiny_name))
    rollout = ragged_rollout()
    with torch.no_grad():
        separate = policy_logps(model, rollout, cfg.rollout.sampling.temperature)
    g = torch.Generator().manual_seed(0)
    rollout.loss_mask = rollout.response_mask
    rollout.advantages = torch.randn(4, 1, generator=g).expand(4, 4) * rollout.response_mask
    rollout.ref_logps = (separate - 0.1 * torch.rand(4, 4, generator=g)) * rollout.response_mask
    results = []
    for old in (separate, None):
        model.zero_grad()
        loss, _, _, used = _micro_losses(model, None, dataclasses.replace(rollout, old_logps=old), cfg, 0.04)
        loss.backward()
        results.append((loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()]), used))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-6, rtol=0)
    torch.testing.assert_close(results[1][1], results[0][1], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(results[1][2], separate, atol=1e-5, rtol=0)
