"""Batched sampling: K candidates per prompt, token ids, text and per-token log-probs.

``generate()`` is the one entry point every stage uses (sample, chat, RL rollouts, eval); the backend
is configuration (``SamplingConfig.backend``), the result type the same for all:

- ``tuneloop`` (default, engine.py): pre-allocated KV cache, continuous batching, the K candidates of a
  prompt share its prefill, admitted prompts prefilled together (packed, their shared prefix once, on the
  Llama fast path), logits at the last position only.
- ``hf`` (hf.py): transformers' ``generate()``, the reference.
- ``vllm`` (vllm.py): vLLM on GPUs, an optional extra; ``model`` is then a ``VLLMEngine``.

Every returned token carries its log-probability under the temperature-scaled model distribution
log softmax(logits / T) (T = 1 when greedy) -- what policy-gradient methods recompute in training;
top-p / top-k change which tokens can be drawn, not the reported log-prob. Each sequence draws from its
own generator keyed on (seed, rank, prompt index, candidate index) (sampling.py): reproducible for a
seed whatever the batch size, slot order or backend, different on every rank, and the caller's global
RNG is neither read nor changed. Callers that sample repeatedly (RL) pass a new seed per call.
"""

from __future__ import annotations

from collections.abc import Callable

from tuneloop.generation.config import Backend, Generation, SamplingConfig, stop_token_ids


def current_rank() -> int:
    """This process's rank under torch.distributed, else 0."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def generate(model, tokenizer, prompts: list[list[int]], cfg: SamplingConfig, num_candidates: int = 1,
             seed: int = 0, rank: int | None = None,
             on_token: Callable[[int, int, int], None] | None = None,
             log: Callable[[str], None] = print, prompt_keys: list[int] | None = None) -> list[list[Generation]]:
    """Sample ``num_candidates`` answers for every tokenised prompt; result[i][k] is prompt i's k-th.

    ``rank`` defaults to the torch.distributed rank, so that every process draws its own samples.
    ``on_token(prompt_index, candidate_index, token_id)`` is called for every token as it is drawn, the
    stop token included (chat streams with it; the vllm backend calls it once the answers are complete).
    ``log`` receives the engine's KV-cache plan. ``prompt_keys`` replace the prompt indices in the
    generators' keys (seed, rank, key, candidate): a caller that cuts its prompts into calls differently
    on different processes (RL) still draws the same samples for a prompt by giving it the same key.
    """
    from tuneloop.generation.engine import generate_engine
    from tuneloop.generation.hf import generate_hf
    from tuneloop.generation.vllm import generate_vllm

    assert num_candidates >= 1, f"num_candidates must be ≥ 1, got {num_candidates}"
    if not prompts:
        return []
    rank = current_rank() if rank is None else rank
    keys = list(range(len(prompts))) if prompt_keys is None else [int(key) for key in prompt_keys]
    assert len(keys) == len(prompts), f"{len(prompt_keys)} prompt_keys for {len(prompts)} prompts"
    if cfg.backend == Backend.TUNELOOP:
        return generate_engine(model, tokenizer, prompts, cfg, num_candidates, seed, rank, on_token=on_token, log=log,
                               prompt_keys=keys)
    backends = {Backend.HF: generate_hf, Backend.VLLM: generate_vllm}
    return backends[cfg.backend](model, tokenizer, prompts, cfg, num_candidates, seed, rank, on_token=on_token,
                                 prompt_keys=keys)


__all__ = ["Backend", "Generation", "SamplingConfig", "current_rank", "generate", "stop_token_ids"]
