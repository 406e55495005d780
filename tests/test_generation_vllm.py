"""The vllm backend against a stand-in with vLLM's interface (vLLM needs a GPU): settings map one to one,
results come back as Generation records in candidate order, weights sync from a LoRA-wrapped trainer."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tuneloop.generation import SamplingConfig, generate
from tuneloop.generation.sampling import sequence_seed
from tuneloop.generation.vllm import VLLMEngine, trainer_weights


class FakeLLM:
    """vLLM's ``LLM`` surface that tuneloop uses: generate, apply_model, reset_prefix_cache."""

    def __init__(self, stop: int):
        self.stop, self.calls, self.loaded, self.resets = stop, [], None, 0

    def generate(self, prompts, params, use_tqdm=True):
        self.calls.append((prompts, params))
        outputs = []
        for prompt, p in zip(prompts, params):
            candidates = []
            for index in range(p.n):
                tokens = [100 + len(prompt["prompt_token_ids"]) + index + j for j in range(p.max_tokens)]
                reason = "length"
                if index == 1:  # the second candidate stops at its third token
                    tokens, reason = tokens[:2] + [self.stop], "stop"
                logprobs = [{t: SimpleNamespace(logprob=-0.5 * (j + 1)), 7: SimpleNamespace(logprob=-9.0)}
                            for j, t in enumerate(tokens)]
                candidates.append(SimpleNamespace(index=index, token_ids=tokens, logprobs=logprobs, finish_reason=reason))
            outputs.append(SimpleNamespace(outputs=candidates[::-1]))  # vLLM does not promise the order
        return outputs

    def apply_model(self, fn):
        model = SimpleNamespace(load_weights=lambda weights: setattr(self, "loaded", dict(weights)))
        return fn(model)

    def reset_prefix_cache(self):
        self.resets += 1


def test_settings_and_results_map_one_to_one(tiny_tokenizer):
    llm = FakeLLM(stop=tiny_tokenizer.eos_token_id)
    engine = VLLMEngine(llm, sampling_params_class=SimpleNamespace)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    cfg = SamplingConfig(temperature=0.7, top_p=0.9, top_k=0, max_new_tokens=4, backend="vllm")
    results = generate(engine, tiny_tokenizer, prompts, cfg, num_candidates=2, seed=3, rank=1)
    (_, params), = llm.calls
    assert llm.calls[0][0] == [{"prompt_token_ids": [1, 2, 3]}, {"prompt_token_ids": [4, 5, 6, 7, 8]}]
    assert [vars(p) for p in params] == [
        {"n": 2, "temperature": 0.7, "top_p": 0.9, "top_k": -1, "max_tokens": 4, "seed": sequence_seed(3, 1, i, 0),
         "logprobs": 0, "stop_token_ids": [tiny_tokenizer.eos_token_id], "detokenize": False} for i in range(2)]
    first, stopped = results[0]
    assert first.token_ids == [103, 104, 105, 106] and first.finish_reason == "length"
    assert first.logprobs == [-0.5, -1.0, -1.5, -2.0], "the sampled token's log-prob, not another entry's"
    assert stopped.token_ids == [104, 105, tiny_tokenizer.eos_token_id] and stopped.finish_reason == "eos"
    assert stopped.text == tiny_tokenizer.decode([104, 105], skip_special_tokens=True).strip()
    assert results[1][0].token_ids[0] == 105


def test_vllm_backend_needs_an_engine(tiny_model, tiny_tokenizer):
    with pytest.raises(TypeError, match="takes a VLLMEngine as model, got LlamaForCausalLM"):
        generate(tiny_model, tiny_tokenizer, [[1, 2]], SamplingConfig(backend="vllm"))


def test_weight_sync_sends_merged_lora_weights_under_plain_names(tiny_model, tiny_tokenizer):
    """A LoRA policy syncs as the plain model would: same names, W + (alpha / r) B A for adapted layers;
    the trainer's model is unmerged again afterwards (its output is unchanged)."""
    from tuneloop.models.loading import LoraConfig, apply_lora

    plain_names = set(tiny_model.state_dict())
    base_q = tiny_model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    model = apply_lora(tiny_model, LoraConfig(enabled=True, r=4, alpha=8))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
    llm = FakeLLM(stop=0)
    sent = VLLMEngine(llm, sampling_params_class=SimpleNamespace).sync_weights(model)
    assert set(llm.loaded) == plain_names and sent == len(plain_names) and llm.resets == 1
    q = model.base_model.model.model.layers[0].self_attn.q_proj
    expected = base_q + 2.0 * q.lora_B["default"].weight @ q.lora_A["default"].weight  # alpha / r = 8 / 4
    torch.testing.assert_close(llm.loaded["model.layers.0.self_attn.q_proj.weight"], expected, atol=1e-6, rtol=0)
    # Unmerged: W + ΔW - ΔW is W up to fp32 rounding of each element (~1e-7 here), the logits to ~1e-6.
    torch.testing.assert_close(q.base_layer.weight, base_q, atol=1e-6, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, before, atol=1e-5, rtol=0)
    assert dict(trainer_weights(tiny_model.__class__(tiny_model.config))).keys() == plain_names
