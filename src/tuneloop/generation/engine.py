"""tuneloop's decode engine: continuous batching over a pre-allocated KV cache.

Shapes: S slots (sampling.batch_size), B live rows (≤ S), V vocabulary, K candidates per prompt.

1. Plan the KV cache for S sequences of up to (longest prompt + max_new_tokens - 1) positions, print the
   plan, refuse a batch that cannot fit (``kv.plan_kv_cache``), allocate it once.
2. Admit prompts while slots are free: the new prompts are prefilled together in one forward pass
   (``forward.prefill``: keys and values straight into the slot of each prompt's first candidate,
   logits at the last position); the prompt's other candidates copy that slot's positions and every
   candidate draws its first token from the shared logits. Prompts go longest first.
3. Decode step: every live row feeds its last token; the head runs on one position per row only;
   the next token is drawn with the row's own generator (``sampling.sample_next``).
4. A row that produced a stop token or max_new_tokens tokens leaves at once; its slot takes the last
   live row, so steps run on B contiguous rows and never on finished ones; freed slots take new prompts
   (step 2) before the next step.

The same (seed, rank) gives the same samples whatever the batch size or slot order, since each sequence
draws from a generator keyed on (seed, rank, prompt index, candidate index).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import torch

from tuneloop.generation.config import Generation, SamplingConfig, finish_generation, stop_token_ids
from tuneloop.generation.kv import SlotKVCache, memory_budget, plan_kv_cache
from tuneloop.generation.sampling import draw_uniforms, sample_next, sequence_generator

ADMIT_EVERY = 8  # new prompts are admitted once 1/8 of the slots (at least one) are free


@dataclass
class _Row:
    prompt: int  # index into the call's prompts
    candidate: int
    generator: torch.Generator
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    length: int = 0  # positions of this row held in the cache


@dataclass
class EngineStats:
    """What one call did, for benchmarks and logs."""

    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    decode_steps: int = 0
    decoded_rows: int = 0  # sum over decode steps of live rows (tokens produced by decode steps)
    prefills: int = 0  # prefill forward passes
    prefilled_prompts: int = 0


def pick_forward(model):
    """The fastest forward this model supports: the Llama fast path (also for a LoRA-wrapped Llama, the
    RL policy: decoded with the adapters merged into the fused weights), else the generic transformers path.

    The fast path's fused weights are copies made here, on every call: they are never reused across
    calls, because no cheap signal says reliably that the parameters changed (torch's fused AdamW, the
    optimizer every stage uses, updates parameters without bumping their version counters, so a cache
    keyed on versions sampled an RL round from the previous round's weights). Fusing costs well under
    a second for SmolLM2-135M, once per ``generate()`` call."""
    from tuneloop.generation.forward import GenericForward
    from tuneloop.models.llama_decode import (
        LlamaForward,
        fused_layer_weights,
        supports_llama_fast_path,
        supports_lora_fast_path,
    )

    if not (supports_llama_fast_path(model) or supports_lora_fast_path(model)):
        return GenericForward(model)
    return LlamaForward(model, fused_layer_weights(model))


@torch.no_grad()
def generate_engine(model, tokenizer, prompts: list[list[int]], cfg: SamplingConfig, num_candidates: int,
                    seed: int, rank: int, forward=None, stats: EngineStats | None = None, log=print,
                    stop_ids: list[int] | None = None, on_token=None,
                    prompt_keys: list[int] | None = None) -> list[list[Generation]]:
    """result[i][k]: prompt i's k-th candidate (see the module docstring for the steps).

    ``forward`` overrides the model path (``pick_forward``), ``stats`` collects timings, ``stop_ids``
    replaces the model's stop tokens (benchmarks pass [] to force max_new_tokens on every sequence),
    ``on_token(prompt, candidate, token)`` sees every token as it is drawn, ``prompt_keys`` replace the
    prompt indices in the generators' keys.
    """
    stats = stats if stats is not None else EngineStats()
    keys = list(range(len(prompts))) if prompt_keys is None else prompt_keys
    stops = stop_token_ids(model, tokenizer) if stop_ids is None else stop_ids
    stop_set = set(stops)
    was_training = model.training
    model.eval()
    forward = forward or pick_forward(model)
    device = next(model.parameters()).device
    # 1. The KV cache, planned and allocated once.
    positions = max(len(p) for p in prompts) + cfg.max_new_tokens - 1
    budget = memory_budget(device, cfg.kv_cache_gb)
    plan = plan_kv_cache(model.config, cfg.batch_size, positions, next(model.parameters()).dtype, budget)
    log(f"[tuneloop] generate: {plan.describe(budget)}")
    cache = SlotKVCache(plan, device)

    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    waiting = deque((i, k) for i in order for k in range(num_candidates))
    prefixes: dict[int, tuple[torch.Tensor, list]] = {}  # prefilled prompts with candidates still waiting
    rows: list[_Row] = []
    results: list[list[Generation | None]] = [[None] * num_candidates for _ in prompts]

    def retire(finished: list[int]) -> None:
        # 4. Finished rows leave; the last live row moves into each freed slot.
        for slot in sorted(finished, reverse=True):
            row = rows[slot]
            results[row.prompt][row.candidate] = finish_generation(prompts[row.prompt], row.tokens, row.logprobs,
                                                                   stops, tokenizer)
            last = rows.pop()
            if slot < len(rows):
                cache.move(len(rows), slot, last.length)
                rows[slot] = last

    def done(row: _Row) -> bool:
        return row.tokens[-1] in stop_set or len(row.tokens) >= cfg.max_new_tokens

    try:
        while waiting or rows:
            # 2. Admit waiting candidates into free slots, prefilling each new prompt once.
            # A prefill is a forward pass of its own: wait for a few free slots unless nothing runs.
            free = cfg.batch_size - len(rows)
            enough = free >= max(1, cfg.batch_size // ADMIT_EVERY) or not rows
            admitted = [waiting.popleft() for _ in range(min(free, len(waiting)))] if enough else []
            if admitted:
                first = len(rows)
                logits = _admit(forward, cache, prompts, admitted, first, prefixes, {i for i, _ in waiting}, stats)
                rows += [_Row(i, k, sequence_generator(seed, rank, keys[i], k), length=len(prompts[i]))
                         for i, k in admitted]
                _sample_into(rows[first:], logits, cfg, on_token)
            retire([slot for slot, row in enumerate(rows) if row.tokens and done(row)])
            if not rows:
                continue
            # 3. One decode step over the live rows.
            started = time.perf_counter()
            tokens = torch.tensor([row.tokens[-1] for row in rows])
            where = torch.tensor([row.length for row in rows])
            logits = forward.decode(cache, tokens, where)
            for row in rows:
                row.length += 1
            _sample_into(rows, logits, cfg, on_token)
            stats.decode_seconds += time.perf_counter() - started
            stats.decode_steps += 1
            stats.decoded_rows += len(rows)
            retire([slot for slot, row in enumerate(rows) if done(row)])
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]


def _admit(forward, cache: SlotKVCache, prompts: list[list[int]], admitted: list[tuple[int, int]], first: int,
           prefixes: dict[int, tuple[torch.Tensor, list]], waiting: set[int], stats: EngineStats) -> torch.Tensor:
    """Put the prompts of the ``admitted`` (prompt, candidate) pairs into slots first, first + 1, ...;
    return each pair's logits (A, V) for its first token.

    A prompt is prefilled once (all new prompts in one ``forward.prefill``) into the slot of its first
    admitted candidate; its other candidates copy that slot's positions. A prompt whose candidates are
    still ``waiting`` keeps a copy of its logits and keys/values in ``prefixes`` for a later admission."""
    started = time.perf_counter()
    slot_of: dict[int, int] = {}  # prompt -> the slot that receives its keys and values
    for offset, (i, _) in enumerate(admitted):
        slot_of.setdefault(i, first + offset)
    new = [i for i in slot_of if i not in prefixes]
    logits_of = {i: prefixes[i][0] for i in slot_of if i in prefixes}
    for i in slot_of:
        if i in prefixes:
            cache.write_prompt(slot_of[i], prefixes[i][1])
    if new:
        logits = forward.prefill(cache, [slot_of[i] for i in new], [prompts[i] for i in new])
        logits_of.update({i: logits[j] for j, i in enumerate(new)})
        stats.prefills += 1
        stats.prefilled_prompts += len(new)
    copies = [(slot_of[i], first + offset) for offset, (i, _) in enumerate(admitted) if slot_of[i] != first + offset]
    if copies:
        cache.copy([s for s, _ in copies], [t for _, t in copies], max(len(prompts[i]) for i, _ in admitted))
    for i in list(prefixes):
        if i not in waiting:
            del prefixes[i]
    for i in slot_of:
        if i in waiting and i not in prefixes:
            prefixes[i] = (logits_of[i], cache.read_prompt(slot_of[i], len(prompts[i])))
    stats.prefill_seconds += time.perf_counter() - started
    return torch.stack([logits_of[i] for i, _ in admitted])


def _sample_into(rows: list[_Row], logits: torch.Tensor, cfg: SamplingConfig, on_token=None) -> None:
    """Draw each row's next token from its logits (B, V) and its own generator; append token and logprob."""
    uniforms = draw_uniforms([row.generator for row in rows])
    tokens, logprobs = sample_next(logits, cfg.temperature, cfg.top_k, cfg.top_p, uniforms)
    for row, token, logprob in zip(rows, tokens.tolist(), logprobs.tolist()):
        row.tokens.append(token)
        row.logprobs.append(logprob)
        if on_token is not None:
            on_token(row.prompt, row.candidate, token)
