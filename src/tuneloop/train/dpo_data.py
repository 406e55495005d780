"""Preference data for the DPO family as token sequences: tokenise, truncate, split, collate.

A response is tokenised exactly as SFT masks it, by the one prefix-stable renderer (``data.chat``): the
prompt is ``render_prompt`` (the tokens the model sees at generation time), the response
``render_reply``: each assistant turn is its text plus the end-of-turn marker, cut from the rendered
chat template at message boundaries; trailing whitespace after the marker is not part of the response.
Chosen and rejected share the prompt's tokens.

Truncation (only when prompt + longer response exceeds ``max_length``): the prompt keeps its last
``max_prompt_length`` tokens (the latest turns matter most), then responses are cut at the end to fit.

KTO also needs, for each example, its prompt followed by the response of *another* prompt (a
"mismatched" sequence, for the KL reference point z0 of Ethayarajh et al. 2024, §4.1). The partner is
fixed when the data is prepared (the next example in file order with a different prompt) rather than
drawn from the batch, so its reference log-prob can be cached like every other one; z0 is the batch
mean over these sequences, as in the paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from tuneloop.batches import PreferenceBatch
from tuneloop.data import load_records
from tuneloop.data.chat import render_prompt, render_reply
from tuneloop.data.packing import pack_best_fit
from tuneloop.data.padding import pad_rows, padding_mask
from tuneloop.data.preferences import preference_pairs, unpaired_examples
from tuneloop.data.split import split_by_prompt


@dataclass
class ScoredSequence:
    """A prompt and one response as tokens: the unit whose response log-prob the DPO family needs."""

    prompt_ids: list[int]
    response_ids: list[int]
    response_mask: list[int]  # 1 on response tokens that count; 0 on template separators between turns

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)

    @property
    def response_tokens(self) -> int:
        return sum(self.response_mask)


@dataclass
class TokenPair:
    chosen: ScoredSequence
    rejected: ScoredSequence
    mismatched: ScoredSequence | None  # prompt + another prompt's chosen reply (KL estimate); None: 1 prompt
    source: str  # "file:line"


@dataclass
class TokenExample:
    """One KTO example."""

    completion: ScoredSequence
    mismatched: ScoredSequence | None  # prompt + another prompt's reply (KL reference point); None: 1 prompt
    desirable: bool
    source: str


@dataclass
class DataStats:
    units: int = 0
    dropped_ties: int = 0
    dropped_too_long: int = 0
    truncated_prompts: int = 0
    truncated_responses: int = 0
    lengths: list[int] = field(default_factory=list)  # tokens of every graded sequence

    def summary(self) -> dict[str, float]:
        lengths = sorted(self.lengths) or [0]
        return {"units": self.units, "dropped_ties": self.dropped_ties,
                "dropped_too_long": self.dropped_too_long, "truncated_prompts": self.truncated_prompts,
                "truncated_responses": self.truncated_responses,
                "sequence_tokens_median": lengths[len(lengths) // 2], "sequence_tokens_max": lengths[-1],
                "sequence_tokens_total": sum(lengths)}


@dataclass(frozen=True)
class Limits:
    max_length: int
    max_prompt_length: int
    too_long: Literal["truncate", "drop"]


def _fit(prompt: list[int], responses: list[tuple[list[int], list[int]]], limits: Limits, stats: DataStats
         ) -> list[ScoredSequence] | None:
    """Sequences of one prompt with its responses, truncated (or None: dropped) to ``limits``."""
    longest = max(len(r) for r, _ in responses)
    if len(prompt) + longest > limits.max_length:
        if limits.too_long == "drop":
            stats.dropped_too_long += 1
            return None
        if len(prompt) > limits.max_prompt_length:
            prompt = prompt[-limits.max_prompt_length:]
            stats.truncated_prompts += 1
        room = limits.max_length - len(prompt)
        if longest > room:
            stats.truncated_responses += 1
        responses = [(ids[:room], mask[:room]) for ids, mask in responses]
        if any(sum(mask) == 0 for _, mask in responses):  # a response cut away entirely: nothing to compare
            stats.dropped_too_long += 1
            return None
    return [ScoredSequence(list(prompt), ids, mask) for ids, mask in responses]


def _mismatched_partner(groups: Sequence[str], i: int) -> int | None:
    """The next unit after ``i`` (cyclically, in file order) whose prompt differs; None if all share it."""
    n = len(groups)
    for step in range(1, n):
        j = (i + step) % n
        if groups[j] != groups[i]:
            return j
    return None


def _mismatched(prompts: list[list[int]], responses: list[tuple[list[int], list[int]]], groups: list[str],
                i: int, limits: Limits) -> ScoredSequence | None:
    """Prompt ``i`` followed by the response of the next unit with another prompt (None: no such unit)."""
    j = _mismatched_partner(groups, i)
    fitted = _fit(prompts[i], [responses[j]], limits, DataStats()) if j is not None else None
    return fitted[0] if fitted else None


def tokenize_pairs(pairs, tokenizer, limits: Limits, stats: DataStats) -> list[TokenPair]:
    strict = [pair for pair in pairs if not pair.tie]  # a tie names no better reply: no direction to learn
    stats.dropped_ties += len(pairs) - len(strict)
    pairs = strict
    prompts = [render_prompt(tokenizer, p.prompt) for p in pairs]
    chosen = [render_reply(tokenizer, p.prompt, p.chosen) for p in pairs]
    groups = [p.group for p in pairs]
    out = []
    for i, pair in enumerate(pairs):
        rejected = render_reply(tokenizer, pair.prompt, pair.rejected)
        fitted = _fit(prompts[i], [chosen[i], rejected], limits, stats)
        if fitted is not None:
            mismatched = _mismatched(prompts, chosen, groups, i, limits)
            out.append(TokenPair(fitted[0], fitted[1], mismatched, pair.source))
            stats.lengths += [len(fitted[0]), len(fitted[1])]
    stats.units += len(out)
    return out


def tokenize_examples(examples, tokenizer, limits: Limits, stats: DataStats) -> list[TokenExample]:
    prompts = [render_prompt(tokenizer, e.prompt) for e in examples]
    responses = [render_reply(tokenizer, e.prompt, e.completion) for e in examples]
    groups = [e.group for e in examples]
    out = []
    for i, example in enumerate(examples):
        fitted = _fit(prompts[i], [responses[i]], limits, stats)
        if fitted is not None:
            mismatched = _mismatched(prompts, responses, groups, i, limits)
            out.append(TokenExample(fitted[0], mismatched, example.desirable, example.source))
            stats.lengths.append(len(fitted[0]))
    stats.units += len(out)
    return out


def load_preference_data(train: str, eval_path: str | None, eval_fraction: float, seed: int, paired: bool,
                         tokenizer, limits: Limits) -> tuple[list, list, DataStats]:
    """(train units, eval units, stats): TokenPair for paired losses, TokenExample for KTO.

    Every record is validated (DataError naming file, line and field) before anything is tokenised.
    Without an eval file, ``eval_fraction`` of the distinct prompts is held out (no prompt in both).
    """
    read = preference_pairs if paired else unpaired_examples
    items = read(load_records(train))
    if eval_path:
        train_items, eval_items = items, read(load_records(eval_path))
    else:
        train_items, eval_items = (split_by_prompt(items, eval_fraction, seed) if eval_fraction
                                   else (items, []))
    tokenize = tokenize_pairs if paired else tokenize_examples
    stats = DataStats()
    train_units = tokenize(train_items, tokenizer, limits, stats)
    eval_units = tokenize(eval_items, tokenizer, limits, DataStats()) if eval_items else []
    if not train_units:
        raise ValueError(f"{train}: no usable training {'pairs' if paired else 'examples'} "
                         f"(ties dropped: {stats.dropped_ties}, too long: {stats.dropped_too_long})")
    if not paired and any(u.mismatched is None for u in train_units):
        raise ValueError(f"{train}: KTO needs examples of at least two different prompts (its KL reference "
                         "point pairs each prompt with another prompt's response)")
    return train_units, eval_units, stats


GRADED_NAMES = {True: ("chosen", "rejected"), False: ("completion",)}  # paired → a unit's graded sequences


def graded_sequences(unit: TokenPair | TokenExample) -> list[ScoredSequence]:
    """The sequences whose log-probs enter the loss: [chosen, rejected] or [completion]."""
    return [getattr(unit, name) for name in GRADED_NAMES[isinstance(unit, TokenPair)]]


Layout = Literal["shared_prompt", "padding_free", "padded"]


def _trees(sequences: Sequence[ScoredSequence], share_prompts: bool) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, indices of the sequences that follow it): consecutive sequences with the same prompt
    share it when ``share_prompts``, otherwise every sequence has its own copy."""
    trees: list[tuple[list[int], list[int]]] = []
    for s, seq in enumerate(sequences):
        if share_prompts and trees and trees[-1][0] == seq.prompt_ids:
            trees[-1][1].append(s)
        else:
            trees.append((seq.prompt_ids, [s]))
    return trees


def _tree_mask(tree: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) bool from each position's tree (B, T) and branch (B, T): 0 for the prompt, k for the
    k-th response. A query sees an earlier key of its own tree that is in the prompt or in its own
    branch: causal inside a prompt, each response sees the prompt and itself, never a sibling."""
    index = torch.arange(tree.shape[1])
    causal = index[:, None] >= index[None, :]  # (T, T)
    same_tree = tree[:, :, None] == tree[:, None, :]  # (B, T, T)
    visible = (branch[:, None, :] == 0) | (branch[:, :, None] == branch[:, None, :])
    return (same_tree & visible & causal)[:, None]


class _Scores:
    """The explicit list of counted response tokens and the positions that predict them."""

    def __init__(self):
        self.rows, self.cols, self.targets, self.sequence = [], [], [], []

    def add(self, row: int, prompt_end: int, start: int, seq: ScoredSequence, index: int) -> None:
        # token k of a response is predicted by the position before it: the prompt's last position for
        # k = 0 (shared by every response of the prompt), the response's own token k − 1 after that
        for k, (token, counted) in enumerate(zip(seq.response_ids, seq.response_mask)):
            if counted:
                self.rows.append(row)
                self.cols.append(prompt_end - 1 if k == 0 else start + k - 1)
                self.targets.append(token)
                self.sequence.append(index)


def _pack_rows(trees: list[tuple[list[int], list[int]]], sequences: Sequence[ScoredSequence],
               one_row: bool) -> list[list[int]]:
    """Tree indices of each row: all in one row, or best-fit into rows as long as the longest tree.

    Several rows of at most the longest tree bound the attention work: a dense attention kernel
    computes every (query, key) score of a row and masks most of them away, so on hardware without
    variable-length attention one long row costs O(T²) and short rows little padding.
    """
    if one_row:
        return [list(range(len(trees)))]
    sizes = [len(prompt) + sum(len(sequences[s].response_ids) for s in members) for prompt, members in trees]
    return [sorted(row) for row in pack_best_fit(sizes, max(sizes))]


def collate(sequences: Sequence[ScoredSequence], *, paired: bool, layout: Layout, pad_id: int,
            reference_logps: torch.Tensor | None = None, desirable: torch.Tensor | None = None
            ) -> PreferenceBatch:
    """One micro-batch in ``layout`` (see ``PreferenceBatch``)."""
    scores = _Scores()
    if layout == "padded":
        rows = [seq.prompt_ids + seq.response_ids for seq in sequences]
        for s, seq in enumerate(sequences):
            scores.add(s, len(seq.prompt_ids), len(seq.prompt_ids), seq, s)
        ids = pad_rows(rows, pad_id)
        positions = pad_rows([range(len(r)) for r in rows], 0)
        attention = padding_mask([len(r) for r in rows])
        real_tokens = sum(len(r) for r in rows)
    else:
        trees = _trees(sequences, share_prompts=layout == "shared_prompt")
        ids, positions, tree_ids, branches = [], [], [], []
        for row, tree_indices in enumerate(_pack_rows(trees, sequences, one_row=layout == "padding_free")):
            flat, flat_positions, flat_trees, flat_branches = [], [], [], []
            for t in tree_indices:
                prompt, members = trees[t]
                prompt_end = len(flat) + len(prompt)
                flat += prompt
                flat_positions += range(len(prompt))
                flat_branches += [0] * len(prompt)
                for branch, s in enumerate(members, start=1):
                    seq = sequences[s]
                    scores.add(row, prompt_end, len(flat), seq, s)
                    flat += seq.response_ids
                    flat_positions += range(len(prompt), len(prompt) + len(seq.response_ids))
                    flat_branches += [branch] * len(seq.response_ids)
                flat_trees += [t] * (len(flat) - len(flat_trees))
            ids.append(flat)
            positions.append(flat_positions)
            tree_ids.append(flat_trees)
            branches.append(flat_branches)
        real_tokens = sum(len(r) for r in ids)
        width = max(len(r) for r in ids)
        pad = [width - len(r) for r in ids]
        ids = [r + [pad_id] * n for r, n in zip(ids, pad)]
        positions = [r + [0] * n for r, n in zip(positions, pad)]
        # a padding position is a tree of its own (ids below −1), so it sees only itself: no NaN
        tree_ids = [r + list(range(-2, -2 - n, -1)) for r, n in zip(tree_ids, pad)]
        branches = [r + [0] * n for r, n in zip(branches, pad)]
        shared = any(len(members) > 1 for _, members in trees)
        # one row without a shared prompt: restarting positions are enough for transformers' own mask
        attention = None if not shared and len(ids) == 1 else \
            _tree_mask(torch.tensor(tree_ids), torch.tensor(branches))
    return PreferenceBatch(
        input_ids=torch.as_tensor(ids, dtype=torch.long),
        position_ids=torch.as_tensor(positions, dtype=torch.long),
        attention_mask=attention,
        score_rows=torch.tensor(scores.rows, dtype=torch.long),
        score_cols=torch.tensor(scores.cols, dtype=torch.long),
        score_targets=torch.tensor(scores.targets, dtype=torch.long),
        score_sequence=torch.tensor(scores.sequence, dtype=torch.long),
        response_tokens=torch.tensor([seq.response_tokens for seq in sequences], dtype=torch.long),
        reference_logps=reference_logps,
        desirable=desirable,
        paired=paired,
        tokens=real_tokens,
    )
