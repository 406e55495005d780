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

from tuneloop.batches import Rollout, TensorBatch
from tuneloop.data import load_records
from tuneloop.data.chat import render_prompt
from tuneloop.data.errors import DataError
from tuneloop.data.formats import Message, prompt_messages
from tuneloop.generation import Generation, SamplingConfig, generate
from tuneloop.data.padding import pad_rows, padding_mask
from tuneloop.models.logprobs import token_logprobs
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


@dataclass
class ScoringRows(TensorBatch):
    """A Rollout (or a mini-batch of it) laid out again for teacher forcing, without its shared padding.

    Each row holds one prompt (its real tokens, positions 0…p−1) followed by the responses that share
    it: the run of consecutive rollout rows with the same prompt (a group's K samples, when
    ``share_prompts``), else one response. A response token's position continues its prompt's
    (p, p+1, …) whatever precedes it in the row, and a response attends to its prompt and to itself,
    never to a sibling, so every scored log-prob is the one of the padded layout, while the prompt is
    computed once per group instead of K times and each row is only as wide as its own tokens.
    """

    input_ids: torch.Tensor  # (R, T) prompt + response(s), right-padded
    attention_mask: torch.Tensor  # (R, T) 1 on real tokens, or (R, 1, T, T) bool when a row holds 2+ responses
    position_ids: torch.Tensor  # (R, T) positions counting the row's prompt and each response's own tokens
    rows: torch.Tensor  # (N,) row of the position whose logits predict response token n
    cols: torch.Tensor  # (N,) column of that position (the prompt's last for a response's first token)
    targets: torch.Tensor  # (N,) the response token
    out_rows: torch.Tensor  # (N,) its rollout row b
    out_cols: torch.Tensor  # (N,) its response column t


def scoring_rows(rollout: Rollout, share_prompts: bool) -> ScoringRows:
    """The ``ScoringRows`` of ``rollout`` (see its docstring): the real tokens of each row, read through
    the attention and response masks of the padded layout."""
    width = rollout.prompt_width
    ids, attention = rollout.query_responses.tolist(), rollout.attention_mask.tolist()
    lengths = rollout.response_mask.sum(-1).long().tolist()
    prompt_index = rollout.prompt_index.tolist()
    trees: list[tuple[list[int], list[int]]] = []  # (prompt ids, rollout rows whose responses follow it)
    for b in range(rollout.num_rows):
        prompt = [t for t, m in zip(ids[b][:width], attention[b][:width]) if m]
        if share_prompts and trees and prompt_index[b] == prompt_index[b - 1]:
            assert trees[-1][0] == prompt, f"rows {b - 1} and {b} share prompt {prompt_index[b]} but not its tokens"
            trees[-1][1].append(b)
        else:
            trees.append((prompt, [b]))
    flat_ids, flat_positions, flat_branches = [], [], []
    rows, cols, targets, out_rows, out_cols = [], [], [], [], []
    for r, (prompt, members) in enumerate(trees):
        row, positions, branches = list(prompt), list(range(len(prompt))), [0] * len(prompt)
        for branch, b in enumerate(members, start=1):
            response = ids[b][width:width + lengths[b]]
            start = len(row)
            for t, token in enumerate(response):  # token t is predicted at the prompt's end or at token t − 1
                rows.append(r)
                cols.append(len(prompt) - 1 if t == 0 else start + t - 1)
                targets.append(token)
                out_rows.append(b)
                out_cols.append(t)
            row += response
            positions += range(len(prompt), len(prompt) + len(response))
            branches += [branch] * len(response)
        flat_ids.append(row)
        flat_positions.append(positions)
        flat_branches.append(branches)
    real = [len(row) for row in flat_ids]
    input_ids = pad_rows(flat_ids, 0)  # any id: the mask hides it
    attention_mask = padding_mask(real)
    if any(len(members) > 1 for _, members in trees):
        branch = pad_rows(flat_branches, -1)  # (R, T) 0 prompt, k the k-th response, −1 padding
        index = torch.arange(branch.shape[1])
        visible = ((index[:, None] >= index[None, :]) & (branch[:, None, :] >= 0)
                   & ((branch[:, None, :] == 0) | (branch[:, :, None] == branch[:, None, :])))
        attention_mask = (visible | torch.eye(branch.shape[1], dtype=torch.bool))[:, None]  # padding sees itself
    as_long = lambda values: torch.tensor(values, dtype=torch.long)  # noqa: E731
    return ScoringRows(input_ids, attention_mask, pad_rows(flat_positions, 0), as_long(rows), as_long(cols),
                       as_long(targets), as_long(out_rows), as_long(out_cols))


def policy_logps(model, rollout: Rollout, temperature: float) -> torch.Tensor:
    """log π(y_t) (B, A) by teacher forcing (``models.logprobs.token_logprobs``, logits / temperature, only
    at response positions) on the ``ScoringRows`` of the rollout, the K samples of a prompt sharing one
    copy of it; 0 on padding. Gradients flow unless called under no_grad."""
    layout = scoring_rows(rollout, share_prompts=True).to(rollout.query_responses.device)
    logps = token_logprobs(model, layout.input_ids, layout.attention_mask, layout.position_ids, layout.rows,
                           layout.cols, layout.targets, temperature=temperature or 1.0)
    out = torch.zeros(rollout.response_mask.shape, dtype=logps.dtype, device=logps.device)
    out[layout.out_rows, layout.out_cols] = logps
    return out


def critic_values(critic, rollout: Rollout) -> torch.Tensor:
    """V(s_t) (B, A): the critic's value at the position before response token t, on the ``ScoringRows``
    of the rollout with one response per row (the critic takes a padding mask); 0 on padding."""
    layout = scoring_rows(rollout, share_prompts=False).to(rollout.query_responses.device)
    values = critic(layout.input_ids, layout.attention_mask)
    out = torch.zeros(rollout.response_mask.shape, dtype=values.dtype, device=values.device)
    out[layout.out_rows, layout.out_cols] = values[layout.rows, layout.cols]
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
