"""The ``vllm`` backend: rollouts on GPUs through vLLM (``pip install 'tuneloop[vllm]'``), with the
trainer's weights pushed in before each rollout (``VLLMEngine.sync_weights``).

vLLM cannot run on a CPU-only machine; the mapping of settings and results and the weight sync are
tested here against a stand-in with vLLM's interface (tests/test_generation_vllm.py).

- Sampling settings map one to one (temperature, top-p, top-k, max_new_tokens, the stop ids); the K
  candidates of a prompt are one request with ``n=K`` (vLLM shares the prompt's KV between them).
- Seeds: one request seed per prompt from (seed, rank, prompt index): reproducible and different per
  rank, but vLLM's own sampler draws the tokens, so samples differ from the other backends' for a seed.
- Log-probs: the engine is created with ``logprobs_mode="processed_logprobs"``, vLLM's log-probs after
  temperature scaling, i.e. log softmax(logits / T) as the other backends report. vLLM computes them in
  its own kernels (and in bf16 when the model is), so the RL guard that compares sampler and trainer
  log-probs is what tells whether they may be used as the old policy's log-probs.
- Weight sync: named tensors of the trainer's model (LoRA merged on the fly, DDP unwrapped), loaded
  with vLLM's ``apply_model(lambda model: model.load_weights(...))``; the prefix cache is reset after.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from tuneloop.generation.config import Generation, SamplingConfig, finish_generation
from tuneloop.generation.sampling import sequence_seed

FINISH_REASONS = {"stop": "eos", "length": "length"}


class VLLMEngine:
    """A vLLM ``LLM`` for rollouts; pass it as ``model`` to ``generate()`` with backend 'vllm'."""

    def __init__(self, llm, sampling_params_class=None):
        if sampling_params_class is None:
            from vllm import SamplingParams as sampling_params_class
        self.llm = llm
        self.sampling_params_class = sampling_params_class

    @classmethod
    def load(cls, model_path: str, gpu_memory_utilization: float = 0.5, **llm_kwargs) -> VLLMEngine:
        """Start vLLM on ``model_path`` (an HF folder)."""
        try:
            from vllm import LLM
        except ImportError as error:
            raise ImportError("sampling.backend='vllm' needs vLLM on a GPU machine: pip install 'tuneloop[vllm]'; "
                              "on CPU use sampling.backend='tuneloop'") from error
        return cls(LLM(model=model_path, gpu_memory_utilization=gpu_memory_utilization,
                       logprobs_mode="processed_logprobs", **llm_kwargs))

    def sync_weights(self, model) -> int:
        """Load the trainer's current weights into vLLM; returns how many tensors were sent."""
        weights = list(trainer_weights(model))
        self.llm.apply_model(lambda loaded: loaded.load_weights(weights))
        if hasattr(self.llm, "reset_prefix_cache"):
            self.llm.reset_prefix_cache()  # cached prompt KV was computed with the old weights
        return len(weights)


def trainer_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) as a plain transformers checkpoint names them: DDP/FSDP ``module.`` unwrapped,
    LoRA adapters merged into their base weights (and unmerged again afterwards)."""
    model = getattr(model, "module", model)
    is_peft = hasattr(model, "peft_config")
    if is_peft:
        model.merge_adapter()
    try:
        for name, tensor in model.state_dict().items():
            if is_peft:
                if "lora_" in name or ".original_module." in name:
                    continue  # adapters are merged into the base weights; the copy kept by modules_to_save
                name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
                name = name.replace(".modules_to_save.default.", ".")
            yield name, tensor.detach().clone()
    finally:
        if is_peft:
            model.unmerge_adapter()


def generate_vllm(engine: VLLMEngine, tokenizer, prompts: list[list[int]], cfg: SamplingConfig,
                  num_candidates: int, seed: int, rank: int, on_token=None,
                  prompt_keys: list[int] | None = None) -> list[list[Generation]]:
    """result[i][k]: prompt i's k-th candidate, sampled by vLLM (one request of n=K per prompt)."""
    if not isinstance(engine, VLLMEngine):
        raise TypeError(f"sampling.backend='vllm' takes a VLLMEngine as model, got {type(engine).__name__}; "
                        "create one with VLLMEngine.load(model_folder)")
    stops = sorted({tokenizer.eos_token_id} - {None})
    keys = list(range(len(prompts))) if prompt_keys is None else prompt_keys
    params = [engine.sampling_params_class(
        n=num_candidates, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k or -1,
        max_tokens=cfg.max_new_tokens, seed=sequence_seed(seed, rank, keys[i], 0), logprobs=0, stop_token_ids=stops,
        detokenize=False) for i in range(len(prompts))]
    outputs = engine.llm.generate([{"prompt_token_ids": ids} for ids in prompts], params, use_tqdm=False)
    results = []
    for ids, request in zip(prompts, outputs):
        per_prompt = []
        for candidate in sorted(request.outputs, key=lambda c: c.index):
            tokens = list(candidate.token_ids)
            logprobs = [step[token].logprob for step, token in zip(candidate.logprobs, tokens)]
            generation = finish_generation(ids, tokens, logprobs, stops, tokenizer)
            generation.finish_reason = FINISH_REASONS.get(candidate.finish_reason, generation.finish_reason)
            per_prompt.append(generation)
            for token in generation.token_ids if on_token is not None else []:
                on_token(len(results), candidate.index, token)
        results.append(per_prompt)
    return results
