"""The engine's Llama fast path on a LoRA-wrapped Llama (the RL policy): prefill and
decode steps with the adapters merged into the fused weights (W + s·B·A)."""

from __future__ import annotations

import torch

from optimizer_steps import fused_adamw_step
from generation_helpers import assert_sampled_logprobs_are_teacher_forced
from tuneloop.data.chat import render_prompt
from tuneloop.generation import SamplingConfig, generate
from tuneloop.generation.engine import generate_engine, pick_forward
from tuneloop.generation.forward import GenericForward
from tuneloop.models.llama_decode import LlamaForward, supports_lora_fast_path
from tuneloop.models.loading import LoraConfig, apply_lora

QUESTIONS = ["Tell me a joke", "What is the capital of a country that has a very long name?", "hi"]


def _ids(tokenizer):
    return [render_prompt(tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]


def _lora(tiny_model):
    model = apply_lora(tiny_model, LoraConfig(enabled=True, r=4, alpha=8))
    with torch.no_grad():  # a non-zero adapter, so that merged and unmerged differ from the base
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    return model


def _run(model, tokenizer, forward=None):
    cfg = SamplingConfig(temperature=0.8, max_new_tokens=8, batch_size=4)
    return generate_engine(model, tokenizer, _ids(tokenizer), cfg, 2, seed=3, rank=0, forward=forward,
                           log=lambda line: None)


def _tokens(results):
    return [[g.token_ids for g in per] for per in results]


def test_a_lora_llama_decodes_on_the_fast_path_like_the_generic_path(tiny_model, tiny_tokenizer):
    model = _lora(tiny_model)
    assert supports_lora_fast_path(model)
    assert isinstance(pick_forward(model), LlamaForward)
    fast = _run(model, tiny_tokenizer)
    generic = _run(model, tiny_tokenizer, forward=GenericForward(model))
    assert _tokens(fast) == _tokens(generic)
    # the sampler's log-probs are the trainer's (teacher forcing, adapter unmerged)
    assert_sampled_logprobs_are_teacher_forced(model, tiny_tokenizer.pad_token_id, fast, 0.8)


def test_the_adapter_is_in_the_samples_and_updates_are_followed(tiny_model, tiny_tokenizer):
    """The merged weights are not the base's; after an optimizer step on an adapter the samples follow it."""
    model = _lora(tiny_model)
    with model.disable_adapter():
        assert not supports_lora_fast_path(model)  # disabled adapters: the generic path, which honours it
        base = _run(model, tiny_tokenizer)
    adapted = _run(model, tiny_tokenizer)
    assert _tokens(adapted) != _tokens(base)
    fused_adamw_step([model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight])
    after = _run(model, tiny_tokenizer)
    generic = _run(model, tiny_tokenizer, forward=GenericForward(model))
    assert _tokens(after) == _tokens(generic)
    assert _tokens(after) != _tokens(adapted)


def test_rl_sampling_through_generate_matches_teacher_forcing(tiny_model, tiny_tokenizer):
    model = _lora(tiny_model)
    results = generate(model, tiny_tokenizer, _ids(tiny_tokenizer), SamplingConfig(temperature=0.7,
                                                                                   max_new_tokens=6),
                       2, seed=5, rank=0, log=lambda line: None)
    assert_sampled_logprobs_are_teacher_forced(model, tiny_tokenizer.pad_token_id, results, 0.7)
