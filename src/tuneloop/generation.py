"""Batched sampling with a KV cache: K candidates per prompt, token ids, text and per-token logprobs.

``generate()`` is the one entry point every stage uses (sample, RL rollouts, eval, chat). It runs
transformers' ``generate`` (KV cache, temperature / top-p / top-k, per-sequence stop at EOS) on
left-padded batches of prompts sorted by length, and reads back the raw logits to return, for every
generated token, its log-probability under the temperature-scaled model distribution
log softmax(logits / T) -- the quantity policy-gradient methods recompute in training. Top-p/top-k
change which tokens can be drawn, not the reported logprob. Sampling is reproducible for a given
seed, prompt list and batch size.

Backends: ``backend="hf"`` here; a vLLM backend can implement the same signature.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch


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
    """Sequences generated together (prompts × candidates are split into batches of this size)."""

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"sampling.temperature must be ≥ 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("sampling.max_new_tokens and sampling.batch_size must be ≥ 1")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Generation:
    prompt_ids: list[int]
    token_ids: list[int]  # (A,) generated tokens, the stop token included when one was produced
    logprobs: list[float]  # (A,) log p(token) under softmax(logits / T) (T = 1 when greedy)
    text: str  # decoded answer without the stop token and special tokens
    finish_reason: Literal["eos", "length"]


def stop_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends an answer: the tokenizer's EOS and the model's generation-config EOS ids."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[int]], cfg: SamplingConfig, num_candidates: int = 1,
             seed: int = 0) -> list[list[Generation]]:
    """Sample ``num_candidates`` answers for every tokenised prompt; result[i][k] is prompt i's k-th."""
    assert num_candidates >= 1, f"num_candidates must be ≥ 1, got {num_candidates}"
    stops = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    jobs = [(i, k) for i in range(len(prompts)) for k in range(num_candidates)]
    jobs.sort(key=lambda job: (-len(prompts[job[0]]), job))  # similar lengths together: less padding
    results: list[list[Generation | None]] = [[None] * num_candidates for _ in prompts]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    for chunk_index, start in enumerate(range(0, len(jobs), cfg.batch_size)):
        chunk = jobs[start:start + cfg.batch_size]
        width = max(len(prompts[i]) for i, _ in chunk)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (i, _) in enumerate(chunk):
            ids = prompts[i]
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            attention[row, width - len(ids):] = 1
        torch.manual_seed(seed * 1_000_003 + chunk_index)
        greedy = cfg.temperature == 0
        out = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention.to(device), do_sample=not greedy,
            temperature=None if greedy else cfg.temperature, top_p=None if greedy else cfg.top_p,
            top_k=None if greedy else cfg.top_k, max_new_tokens=cfg.max_new_tokens, eos_token_id=stops,
            pad_token_id=pad_id, output_logits=True, return_dict_in_generate=True,
        )
        new_tokens = out.sequences[:, width:].cpu()  # (B, A)
        logits = torch.stack(out.logits, dim=1).float().cpu()  # (B, A, V) raw, before any processor
        scale = 1.0 if greedy else cfg.temperature
        token_logprobs = torch.log_softmax(logits / scale, dim=-1).gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
        for row, (i, k) in enumerate(chunk):
            results[i][k] = _finish(prompts[i], new_tokens[row].tolist(), token_logprobs[row].tolist(), stops,
                                    tokenizer)
    model.train(was_training)
    return results  # type: ignore[return-value]


def _finish(prompt_ids: list[int], tokens: list[int], logprobs: list[float], stops: list[int],
            tokenizer) -> Generation:
    end = next((j for j, t in enumerate(tokens) if t in stops), None)
    if end is None:
        kept, reason = tokens, "length"
    else:
        kept, reason = tokens[: end + 1], "eos"
    answer = kept[:-1] if reason == "eos" else kept
    text = tokenizer.decode(answer, skip_special_tokens=True).strip()
    return Generation(prompt_ids, kept, logprobs[: len(kept)], text, reason)
