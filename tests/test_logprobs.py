"""The one teacher-forced log-prob function and the reference model.

``token_logprobs`` is checked against the naive computation (one full forward pass, log-softmax over
the whole vocabulary, read at the next token), with and without ``logits_to_keep``, at a temperature,
with explicit targets; ``reference_model`` against the base model without the adapter."""

from __future__ import annotations

import pytest
import torch

from tuneloop.models.logprobs import answer_logprobs, positions_from_mask, token_logprobs
from tuneloop.models.reference import frozen_copy, reference_model

TOL = {"atol": 1e-5, "rtol": 0}


def _batch():
    ids = torch.tensor([[5, 9, 14, 3, 22, 7], [8, 2, 2, 30, 0, 0]])  # row 1: 4 real tokens, right padded
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    return ids, mask


@torch.no_grad()
@pytest.mark.parametrize("keep", [None, False], ids=["logits_to_keep", "full-logits"])
def test_token_logprobs_equal_the_naive_log_softmax(tiny_model, keep):
    ids, mask = _batch()
    positions = positions_from_mask(mask)
    rows, cols = torch.tensor([0, 0, 0, 1, 1]), torch.tensor([1, 2, 4, 0, 2])
    got = token_logprobs(tiny_model, ids, mask, positions, rows, cols, logits_to_keep=keep)
    logits = tiny_model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.double()
    naive = torch.log_softmax(logits, dim=-1)
    expected = torch.stack([naive[r, c, ids[r, c + 1]] for r, c in zip(rows.tolist(), cols.tolist())])
    assert got.dtype == torch.float32 and got.shape == (5,)
    torch.testing.assert_close(got.double(), expected, **TOL)
    explicit = token_logprobs(tiny_model, ids, mask, positions, rows, cols, ids[rows, cols + 1])
    torch.testing.assert_close(explicit, got, **TOL)


@torch.no_grad()
def test_temperature_divides_the_logits(tiny_model):
    ids, mask = _batch()
    rows, cols = torch.tensor([0, 1]), torch.tensor([3, 1])
    got = token_logprobs(tiny_model, ids, mask, positions_from_mask(mask), rows, cols, temperature=0.5)
    logits = tiny_model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask)).logits.double()
    naive = torch.log_softmax(logits / 0.5, dim=-1)
    torch.testing.assert_close(got.double(), torch.stack([naive[0, 3, ids[0, 4]], naive[1, 1, ids[1, 2]]]), **TOL)


@torch.no_grad()
def test_answer_logprobs_are_token_logprobs_of_the_answer_positions(tiny_model):
    pairs = [([5, 9, 14], [3, 22]), ([8], [2, 2, 30])]
    left = answer_logprobs(tiny_model, pairs, pad_id=0, padding_side="left")
    ids = torch.tensor([[5, 9, 14, 3, 22]])
    alone = token_logprobs(tiny_model, ids, None, None, torch.tensor([0, 0]), torch.tensor([2, 3]))
    torch.testing.assert_close(left[0], alone, **TOL)
    assert [t.shape[0] for t in left] == [2, 3]


def _lora_policy(tiny_model):
    from tuneloop.models.loading import LoraConfig, apply_lora

    policy = apply_lora(tiny_model, LoraConfig(enabled=True, r=4, alpha=8))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained adapter: the policy differs from its base
    return policy


def test_reference_is_the_adapter_disabled_base(tiny_model):
    base_copy = frozen_copy(tiny_model)
    policy = _lora_policy(tiny_model)
    policy.train()
    ids = torch.tensor([[5, 9, 14, 3, 22, 7]])
    with torch.no_grad():
        expected = base_copy(input_ids=ids).logits
        trained = policy(input_ids=ids).logits
    assert (trained - expected).abs().max() > 1e-3, "the adapter must change the output for the test to bite"
    with reference_model(policy) as ref:
        assert not ref.training and not torch.is_grad_enabled()
        torch.testing.assert_close(ref(input_ids=ids).logits, expected, **TOL)
    assert policy.training and torch.is_grad_enabled()
    with torch.no_grad():
        torch.testing.assert_close(policy(input_ids=ids).logits, trained, **TOL)  # adapter back on


def test_a_given_frozen_reference_is_used_and_a_plain_policy_needs_one(tiny_model):
    reference = frozen_copy(tiny_model)
    with reference_model(tiny_model, reference) as ref:
        assert ref is reference
    with pytest.raises(ValueError, match="no reference model"), reference_model(tiny_model):
        pass
