"""What a generation call is asked for (``SamplingConfig``) and what it returns (``Generation``)."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import Literal


class Backend(str, enum.Enum):
    """Who runs the decode loop; every backend returns the same ``Generation`` records."""

    TUNELOOP = "tuneloop"  # tuneloop's engine: pre-allocated KV cache, continuous batching (engine.py)
    HF = "hf"  # transformers' generate(), the reference (hf.py)
    VLLM = "vllm"  # vLLM on GPUs, an optional extra with weight sync from the trainer (vllm.py)


@dataclass
class SamplingConfig:
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling: draw from the smallest token set whose probability reaches top_p (1 disables)."""
    top_k: int = 0
    """Draw only from the k most likely tokens (0 disables)."""
    max_new_tokens: int = 64
    """Generated tokens per candidate at most; a candidate that hits it is marked truncated."""
    batch_size: int = 8
    """Sequences decoded together: the engine's KV-cache slots (a finished sequence's slot takes the next
    prompt at once); the hf backend's fixed chunks of prompts × candidates."""
    backend: Backend = Backend.TUNELOOP
    """'tuneloop' (the engine, default), 'hf' (transformers' generate, the reference) or 'vllm' (GPU extra)."""
    kv_cache_gb: float = 0.0
    """Most memory the engine's KV cache may take, in GB; 0 means what the device has free, less 10%."""

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"sampling.temperature must be ≥ 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"sampling.top_k must be ≥ 0 (0 disables), got {self.top_k}")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("sampling.max_new_tokens and sampling.batch_size must be ≥ 1")
        if self.kv_cache_gb < 0:
            raise ValueError(f"sampling.kv_cache_gb must be ≥ 0 (0 = free memory), got {self.kv_cache_gb}")
        self.backend = Backend(self.backend)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["backend"] = self.backend.value
        return out


@dataclass
class Generation:
    prompt_ids: list[int]
    token_ids: list[int]  # (A,) generated tokens, the stop token included when one was produced
    logprobs: list[float]  # (A,) log p(token) under softmax(logits / T) (T = 1 when greedy)
    text: str  # decoded answer without the stop token and special tokens
    finish_reason: Literal["eos", "length"]


def finish_generation(prompt_ids: list[int], tokens: list[int], logprobs: list[float], stops: list[int],
                      tokenizer) -> Generation:
    """Cut ``tokens`` after the first stop token ('eos') or keep them all ('length'); decode the answer."""
    end = next((j for j, t in enumerate(tokens) if t in stops), None)
    if end is None:
        kept, reason = tokens, "length"
    else:
        kept, reason = tokens[: end + 1], "eos"
    answer = kept[:-1] if reason == "eos" else kept
    text = tokenizer.decode(answer, skip_special_tokens=True).strip()
    return Generation(prompt_ids, kept, logprobs[: len(kept)], text, reason)


def stop_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends an answer: the tokenizer's EOS and the model's generation-config EOS ids."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)
