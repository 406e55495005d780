"""The engine's packed prefill on the Llama fast path: every admitted prompt in one forward pass written
straight into its KV-cache slot, a prefix shared by all prompts run once, candidates copying a prompt's
slot. It must equal the generic transformers prefill (logits and cached keys/values) and keep the
engine's samples exact (log-probs = teacher forcing)."""

from __future__ import annotations

import pytest
import torch

from generation_helpers import assert_sampled_logprobs_are_teacher_forced
from tuneloop.data.chat import render_prompt
from tuneloop.generation import SamplingConfig
from tuneloop.generation.engine import generate_engine
from tuneloop.generation.forward import GenericForward
from tuneloop.generation.kv import KVPlan, SlotKVCache, plan_kv_cache
from tuneloop.models import llama_decode
from tuneloop.models.llama_decode import LlamaForward, common_prefix_length, shared_prefix_length

SYSTEM = "You are a film critic who writes short, honest reviews of every movie you are asked about, in English."
QUESTIONS = ["Review Up.", "What do you think of a long film about a lighthouse keeper and his dog at sea?", "Jaws?"]


def _ids(tokenizer):
    return [render_prompt(tokenizer, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}])
            for q in QUESTIONS]


def _cache(model, slots=6, positions=128):
    return SlotKVCache(plan_kv_cache(model.config, slots, positions, torch.float32, 2**30), torch.device("cpu"))


def test_common_prefix_length_by_hand():
    """[1 2 3 4] and [1 2 5]: 2 shared tokens. [1 2 3] and [1 2 3 4]: all of the shorter one is shared,
    but it keeps its last token (2). A lone prompt keeps its last token too; nothing shared is 0."""
    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert common_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2
    assert common_prefix_length([[7, 8, 9]]) == 2
    assert common_prefix_length([[1, 2], [3, 2]]) == 0


def test_shared_prefix_length_needs_several_prompts_and_the_minimum():
    """The prefix the prefill runs once: 16 shared tokens (SHARED_PREFIX_MIN) of two prompts count; 15 do
    not, nor does a lone prompt's own 20."""
    base = list(range(100, 120))
    assert shared_prefix_length([base[:16] + [1, 2], base[:16] + [3]]) == 16
    assert shared_prefix_length([base[:15] + [1, 2], base[:15] + [3]]) == 0
    assert shared_prefix_length([base]) == 0


def test_cache_copy_takes_the_first_positions_of_each_source():
    """Slots 3 and 4 take positions 0..1 of slots 0 and 1; position 2 and the other slots stay as they were."""
    cache = SlotKVCache(KVPlan(slots=5, positions=3, layers=1, kv_heads=1, head_dim=1, dtype=torch.float32),
                        torch.device("cpu"))
    cache.keys[0][:, 0, :, 0] = torch.arange(15.0).view(5, 3)  # slot s, position p holds 3s + p
    cache.values[0][:, 0, :, 0] = -torch.arange(15.0).view(5, 3)
    cache.copy([0, 1], [3, 4], 2)
    assert cache.keys[0][:, 0, :, 0].tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [0, 1, 11], [3, 4, 14]]
    assert cache.values[0][3:, 0, :, 0].tolist() == [[0, -1, -11], [-3, -4, -14]]
    with pytest.raises(AssertionError, match=r"slots \[1\] both read and written"):
        cache.copy([0, 1], [1, 2], 2)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-llama-128x4"])  # 1 KV head; 4 heads sharing 2 KV heads
# The shared system prompt run once, or not shared; all prompts in one packed forward, or one per forward.
@pytest.mark.parametrize(("shared_prefix_min", "prefill_tokens"), [(16, 4096), (10_000, 4096), (16, 10), (10_000, 40)])
def test_packed_prefill_equals_the_generic_prefill(name, shared_prefix_min, prefill_tokens, tiny_tokenizer,
                                                   monkeypatch):
    """Three prompts of different lengths into slots 4, 1, 3 (not in order, not contiguous): the same
    last-position logits and the same keys/values at positions 0..P_i-1 as transformers' forward."""
    from tuneloop.models import ModelConfig, load_causal_lm

    monkeypatch.setattr(llama_decode, "SHARED_PREFIX_MIN", shared_prefix_min)
    monkeypatch.setattr(llama_decode, "PREFILL_TOKENS", prefill_tokens)
    model, _ = load_causal_lm(ModelConfig(name=name), trainable=False)
    prompts = _ids(tiny_tokenizer)
    assert common_prefix_length(prompts) >= 16, "the prompts must share their system prompt"
    targets = [4, 1, 3]
    generic, fast = _cache(model), _cache(model)
    with torch.no_grad():
        expected = GenericForward(model).prefill(generic, targets, prompts)
        logits = LlamaForward(model).prefill(fast, targets, prompts)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    for layer in range(len(fast.keys)):
        for slot, prompt in zip(targets, prompts):
            torch.testing.assert_close(fast.keys[layer][slot, :, :len(prompt)], generic.keys[layer][slot, :, :len(prompt)],
                                       atol=1e-5, rtol=0)
            torch.testing.assert_close(fast.values[layer][slot, :, :len(prompt)],
                                       generic.values[layer][slot, :, :len(prompt)], atol=1e-5, rtol=0)


@pytest.mark.parametrize("batch_size", [2, 5, 16])  # candidates admitted across several prefills; all at once
def test_engine_with_a_shared_system_prompt_is_exact(batch_size, tiny_model, tiny_tokenizer):
    """K = 3 candidates of prompts sharing a system prompt: the fast path (packed prefill, shared prefix,
    candidate copies, prompts kept for later admissions) draws the generic path's tokens, and its
    log-probs equal teacher forcing to 1e-5."""
    prompts = _ids(tiny_tokenizer)
    cfg = SamplingConfig(temperature=0.9, max_new_tokens=8, batch_size=batch_size)

    def run(forward):
        return generate_engine(tiny_model, tiny_tokenizer, prompts, cfg, 3, seed=7, rank=0, forward=forward,
                               log=lambda line: None, stop_ids=[])

    fast, generic = run(LlamaForward(tiny_model)), run(GenericForward(tiny_model))
    assert [[g.token_ids for g in per] for per in fast] == [[g.token_ids for g in per] for per in generic]
    assert_sampled_logprobs_are_teacher_forced(tiny_model, tiny_tokenizer.pad_token_id, fast, 0.9)


def test_a_prompt_prefilled_alone_reuses_the_kept_shared_prefix(tiny_model, tiny_tokenizer):
    """Prompts 0 and 1 prefilled together keep their shared system prompt; prompt 2, admitted later
    alone, copies it in and runs only its own tokens: the same logits and keys/values as transformers."""
    prompts = _ids(tiny_tokenizer)
    shared = common_prefix_length(prompts[:2])
    forward, generic, fast = LlamaForward(tiny_model), _cache(tiny_model), _cache(tiny_model)
    runs = []
    run_tokens = forward._run_tokens
    forward._run_tokens = lambda slots, targets, ids, cached, logits=True: (
        runs.append(cached), run_tokens(slots, targets, ids, cached, logits))[1]
    with torch.no_grad():
        forward.prefill(fast, [0, 1], prompts[:2])
        logits = forward.prefill(fast, [5], prompts[2:])
        expected = GenericForward(tiny_model).prefill(generic, [5], prompts[2:])
    assert runs == [[0], [shared, shared], [shared]], "prompt 2 must start from the kept prefix"
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    for layer in range(len(fast.keys)):
        torch.testing.assert_close(fast.keys[layer][5, :, :len(prompts[2])],
                                   generic.keys[layer][5, :, :len(prompts[2])], atol=1e-5, rtol=0)
        torch.testing.assert_close(fast.values[layer][5, :, :len(prompts[2])],
                                   generic.values[layer][5, :, :len(prompts[2])], atol=1e-5, rtol=0)
