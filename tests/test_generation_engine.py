"""The engine's own guarantees: continuous batching gives the same samples whatever the number of slots,
a prompt is prefilled once for its K candidates, finished rows cost nothing, the KV cache is planned and
a batch that cannot fit is refused, the Llama fast path equals the generic transformers path."""

from __future__ import annotations

import pytest
import torch

from optimizer_steps import fused_adamw_step

from generation_helpers import assert_sampled_logprobs_are_teacher_forced
from tuneloop.data.chat import render_prompt
from tuneloop.generation import SamplingConfig, generate
from tuneloop.generation.engine import EngineStats, generate_engine
from tuneloop.generation.forward import GenericForward
from tuneloop.generation.kv import KVCacheTooLarge, plan_kv_cache
from tuneloop.models.llama_decode import LlamaForward, supports_llama_fast_path

QUESTIONS = ["Tell me a joke", "What is the capital of a country that has a very long name?", "hi",
             "Do you like movies?", "Write a short review of a film about a dog and a detective."]


def _ids(tokenizer):
    return [render_prompt(tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]


def _run(model, tokenizer, batch_size, forward=None, stats=None, stop_ids=None, num_candidates=3, **sampling):
    cfg = SamplingConfig(max_new_tokens=sampling.pop("max_new_tokens", 10), batch_size=batch_size, **sampling)
    return generate_engine(model, tokenizer, _ids(tokenizer), cfg, num_candidates, seed=2, rank=0, forward=forward,
                           stats=stats, log=lambda line: None, stop_ids=stop_ids)


def _frequent_stops(model, tokenizer) -> list[int]:
    """Three tokens that the seeded samples produce early, so that sequences end at different steps."""
    counts = {}
    for per in _run(model, tokenizer, 16, stop_ids=[]):
        for g in per:
            for t in g.token_ids[1:6]:
                counts[t] = counts.get(t, 0) + 1
    return sorted(counts, key=lambda t: -counts[t])[:3]


def test_slots_and_order_do_not_change_the_samples(tiny_model, tiny_tokenizer):
    """15 sequences that stop at different steps through 1, 2, 4, 7 and 16 slots: freed slots take the
    next candidates at once and rows move between slots, yet every sequence is the same."""
    stops = _frequent_stops(tiny_model, tiny_tokenizer)
    runs = [_run(tiny_model, tiny_tokenizer, size, stop_ids=stops) for size in (1, 2, 4, 7, 16)]
    lengths = {len(g.token_ids) for per in runs[0] for g in per}
    assert len(lengths) > 2, f"sequences should end at different steps, got lengths {lengths}"
    for run in runs[1:]:
        assert [[(g.token_ids, g.finish_reason) for g in per] for per in run] == \
               [[(g.token_ids, g.finish_reason) for g in per] for per in runs[0]]
        for per, base in zip(run, runs[0]):
            for g, b in zip(per, base):
                torch.testing.assert_close(torch.tensor(g.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=0)


def test_prompts_are_prefilled_once_and_finished_rows_cost_no_decode(tiny_model, tiny_tokenizer):
    """K = 3 candidates share one prefill per prompt; decode steps feed exactly one row per generated
    token after the first (drawn from the prefill), none for finished sequences."""
    stops = _frequent_stops(tiny_model, tiny_tokenizer)
    stats = EngineStats()
    results = _run(tiny_model, tiny_tokenizer, 4, stats=stats, stop_ids=stops)
    assert stats.prefilled_prompts == len(QUESTIONS)
    assert stats.decoded_rows == sum(len(g.token_ids) - 1 for per in results for g in per)
    assert stats.decode_steps < sum(len(g.token_ids) - 1 for per in results for g in per)


def test_the_kv_cache_plan_is_printed(tiny_model, tiny_tokenizer):
    lines = []
    cfg = SamplingConfig(max_new_tokens=6, batch_size=4, kv_cache_gb=1.5)
    generate_engine(tiny_model, tiny_tokenizer, _ids(tiny_tokenizer), cfg, 1, 0, 0, log=lines.append)
    longest = max(len(ids) for ids in _ids(tiny_tokenizer))
    # tiny-llama: 2 layers, 1 KV head of 32 dims, fp32: 2 × 2 × 32 × 4 = 512 bytes per position.
    expected = 4 * (longest + 5) * 512 / 2**20
    assert lines == [f"[tuneloop] generate: KV cache 4 slots × {longest + 5} positions × 2 layers × 1 KV heads × "
                     f"32 dims × float32 (keys and values) = {expected:.1f} MiB of 1.5 GiB allowed"]


def test_a_batch_that_cannot_fit_says_so(tiny_model, tiny_tokenizer):
    """512 bytes per position (see above) × 100 positions × 64 slots = 3.1 MiB > 2 MiB: 40 slots fit."""
    with pytest.raises(KVCacheTooLarge, match=r"batch_size=64 .* 0\.00 GiB .* at most 40 sequences fit; lower "
                                              r"sampling.batch_size"):
        plan_kv_cache(tiny_model.config, 64, 100, torch.float32, 2 * 2**20)
    cfg = SamplingConfig(max_new_tokens=10_000, batch_size=64, kv_cache_gb=0.001)
    with pytest.raises(KVCacheTooLarge, match="sampling.kv_cache_gb"):
        generate(tiny_model, tiny_tokenizer, _ids(tiny_tokenizer), cfg)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-llama-128x4"])  # 1 KV head; 4 heads sharing 2 KV heads
def test_llama_fast_path_equals_the_generic_path(name, tiny_tokenizer):
    from tuneloop.models import ModelConfig, load_causal_lm

    model, _ = load_causal_lm(ModelConfig(name=name), trainable=False)
    assert supports_llama_fast_path(model)
    generic = _run(model, tiny_tokenizer, 4, forward=GenericForward(model), temperature=0.8)
    fast = _run(model, tiny_tokenizer, 4, forward=LlamaForward(model), temperature=0.8)
    assert [[g.token_ids for g in per] for per in fast] == [[g.token_ids for g in per] for per in generic]
    for per_fast, per_generic in zip(fast, generic):
        for a, b in zip(per_fast, per_generic):
            torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=0)


def test_a_lora_model_samples_with_its_adapter(tiny_model, tiny_tokenizer):
    """RL samples from the policy under training: a peft-wrapped model is not a plain Llama (it decodes
    with the adapters merged into the fast path's weights, tests/test_generation_lora_fast_path.py), and
    its log-probs still equal teacher forcing."""
    from tuneloop.models.loading import LoraConfig, apply_lora

    model = apply_lora(tiny_model, LoraConfig(enabled=True, r=4, alpha=8))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    assert not supports_llama_fast_path(model)
    results = generate(model, tiny_tokenizer, _ids(tiny_tokenizer), SamplingConfig(temperature=0.8, max_new_tokens=8))
    assert_sampled_logprobs_are_teacher_forced(model, tiny_tokenizer.pad_token_id, results, 0.8)
    assert model.training, "generate() restores the caller's train/eval mode"


def test_the_fast_path_follows_optimizer_steps(tiny_model, tiny_tokenizer):
    """After an optimizer step (fused AdamW, as every stage runs it) the fast path samples from the
    updated weights: the same tokens as the generic path, not those before the step."""
    before = _run(tiny_model, tiny_tokenizer, 4)
    layer = tiny_model.model.layers[0]  # weights the fast path fuses (q/k/v, gate/up), not read in place
    fused_adamw_step([layer.self_attn.q_proj.weight, layer.mlp.gate_proj.weight])
    after = _run(tiny_model, tiny_tokenizer, 4)
    generic = _run(tiny_model, tiny_tokenizer, 4, forward=GenericForward(tiny_model))
    assert [[g.token_ids for g in per] for per in after] == [[g.token_ids for g in per] for per in generic]
    assert [[g.token_ids for g in per] for per in after] != [[g.token_ids for g in per] for per in before]


def test_a_model_with_a_fast_path_can_be_freed(tiny_tokenizer):
    """The kept fused weights must not keep the model alive (the demo loads policy after policy)."""
    import gc
    import weakref

    from tuneloop.models import ModelConfig, load_causal_lm

    model, _ = load_causal_lm(ModelConfig(name="tiny-llama"), trainable=False)
    _run(model, tiny_tokenizer, 4, max_new_tokens=2)
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None
