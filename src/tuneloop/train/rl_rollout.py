"""Rollout and experience of the RL stage: prompts → K responses per prompt → a ``Rollout`` with the
sampler's, the policy's and the reference's log-probs, the critic's values and the reward's scores.

Sampling goes through ``generation.generate`` (the one engine every stage uses), one call per prompt
with the seed of (run seed, round), rank 0 and each prompt keyed on its position in the round
(``prompt_keys``): a prompt's K responses do not depend on which process samples it or on what else
is in the call, so 2 processes sample exactly what 1 does (tested), and a process's prompts are
batched in one call (continuous batching, the K samples of a prompt sharing its prefill).
Training log-probs come from ``models.logprobs.token_logprobs`` (the one teacher-forced function) with
the logits divided by the sampling temperature (Huang et al.: otherwise the ratio is off from step 1).
The reference is the same base with the LoRA adapter disabled, or a frozen copy of the initial policy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from tuneloop.batches import Rollout
from tuneloop.data import load_records
from tuneloop.data.chat import render_prompt
from tuneloop.data.errors import DataError
from tuneloop.data.formats import Message, prompt_messages
from tuneloop.generation import Generation, SamplingConfig, generate
from tuneloop.models.logprobs import positions_from_mask, token_logprobs
from tuneloop.models.reference import frozen_copy, has_adapter, reference_model

SEED_STRIDE = 1_000_003  # the generation seed of round s: seed·STRIDE + s (distinct for s < STRIDE)


@dataclass
class PromptSet:
    messages: list[list[Message]]  # conversations ending on a user turn
    token_ids: list[list[int]]  # each rendered with the generation prompt, cut to its last max tokens


def load_prompts(source: str, tokenizer, max_tokens: int) -> PromptSet:
    """Validated, rendered prompts; a file with no prompts is an error naming it."""
    records = load_records(source)
    messages = [prompt_messages(r) for r in records]
    if not messages:
        raise DataError(f"{source}: no prompts (expected records with 'prompt' or 'messages')")
    ids = [render_prompt(tokenizer, m)[-max_tokens:] for m in messages]
    return PromptSet(messages, ids)


def round_prompts(num_prompts: int, prompts_per_step: int, round_index: int, seed: int) -> list[int]:
    """The prompt positions of round ``round_index`` over all processes: a pure function of (seed, round)
    walking through seeded epoch permutations of the prompt list."""
    out: list[int] = []
    start = round_index * prompts_per_step
    while len(out) < prompts_per_step:
        epoch, offset = divmod(start + len(out), num_prompts)
        order = torch.randperm(num_prompts, generator=torch.Generator().manual_seed(seed * SEED_STRIDE + epoch))
        out += order[offset:offset + prompts_per_step - len(out)].tolist()
    return out


def _quiet(_line: str) -> None:
    pass


def sample_rollout(model, tokenizer, prompts: PromptSet, positions: list[int], order: list[int], k: int,
                   sampling: SamplingConfig, seed: int, round_index: int, log: Callable[[str], None] = _quiet
                   ) -> tuple[Rollout, list[Generation]]:
    """Sample K responses for each prompt in ``positions`` (``order[i]`` is its index within the round);
    ``log`` receives the engine's KV-cache plan."""
    # One call for this process's prompts, each keyed on its position in the round, rank 0: a prompt draws
    # the same samples whichever process holds it.
    per_prompt = generate(model, tokenizer, [prompts.token_ids[p] for p in positions], sampling, k,
                          seed=seed * SEED_STRIDE + round_index, rank=0, log=log, prompt_keys=list(order))
    gens: list[Generation] = [g for candidates in per_prompt for g in candidates]
    pad_id = tokenizer.pad_token_id
    p = max(len(g.prompt_ids) for g in gens)
    a = max(len(g.token_ids) for g in gens)
    ids = torch.full((len(gens), p + a), pad_id, dtype=torch.long)
    attention = torch.zeros((len(gens), p + a), dtype=torch.long)
    response_mask = torch.zeros((len(gens), a))
    sampling_logps = torch.zeros((len(gens), a))
    for row, g in enumerate(gens):
        n_prompt, n_resp = len(g.prompt_ids), len(g.token_ids)
        ids[row, p - n_prompt:p] = torch.tensor(g.prompt_ids)
        ids[row, p:p + n_resp] = torch.tensor(g.token_ids, dtype=torch.long)
        attention[row, p - n_prompt:p + n_resp] = 1
        response_mask[row, :n_resp] = 1.0
        sampling_logps[row, :n_resp] = torch.tensor(g.logprobs)
    rollout = Rollout(
        query_responses=ids, attention_mask=attention, response_mask=response_mask, prompt_width=p, group_size=k,
        prompt_index=torch.tensor([pos for pos in positions for _ in range(k)]), sampling_logps=sampling_logps,
        ended=torch.tensor([g.finish_reason == "eos" for g in gens]))
    return rollout, gens


def policy_logps(model, rollout: Rollout, temperature: float) -> torch.Tensor:
    """log π(y_t) (B, A) by teacher forcing on the Rollout layout (``models.logprobs.token_logprobs``,
    logits / temperature, only at response positions); 0 on padding. Gradients flow unless called
    under no_grad."""
    rows, cols = rollout.response_mask.nonzero(as_tuple=True)  # (N,) response token t of row b
    logps = token_logprobs(model, rollout.query_responses, rollout.attention_mask,
                           positions_from_mask(rollout.attention_mask), rows, rollout.prompt_width - 1 + cols,
                           temperature=temperature or 1.0)
    out = torch.zeros(rollout.response_mask.shape, dtype=logps.dtype, device=logps.device)
    out[rows, cols] = logps
    return out


def reference_logps(policy, reference, rollout: Rollout, temperature: float) -> torch.Tensor:
    """log π_ref(y_t) (B, A): the frozen copy, or the policy with its LoRA adapter disabled
    (``models.reference.reference_model``: eval mode, no gradients)."""
    with reference_model(policy, reference) as ref:
        return policy_logps(ref, rollout, temperature)


def initial_reference(policy):
    """The reference: None when the policy has a LoRA adapter (its disabled base is π_ref), else a
    frozen copy of the policy as it is now (call before any checkpoint loads)."""
    return None if has_adapter(policy) else frozen_copy(policy)


def disable_dropout(model: torch.nn.Module) -> None:
    """Huang et al.: dropout off in policy and critic, so the ratio is 1 at the first step."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    config = getattr(model, "config", None)
    for key in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
        if config is not None and isinstance(getattr(config, key, None), float):
            setattr(config, key, 0.0)
