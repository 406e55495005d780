"""Typed batch containers. Shape notation shared across tuneloop: B batch rows, T tokens, A response
tokens, K candidates per prompt, V vocabulary.

Mask meaning, everywhere: 1 (or True) marks a position that counts, 0 a position that does not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, TypeVar

import torch

if TYPE_CHECKING:
    from tuneloop.models.reward import Encoded

_B = TypeVar("_B", bound="TensorBatch")


class TensorBatch:
    """What every typed batch shares: a copy with a function applied to each tensor field (``.to``)."""

    def map_tensors(self: _B, fn: Callable[[torch.Tensor], torch.Tensor]) -> _B:
        values = {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]
        return type(self)(**{name: fn(v) if isinstance(v, torch.Tensor) else v for name, v in values.items()})

    def to(self: _B, device: torch.device | str) -> _B:
        return self.map_tensors(lambda t: t.to(device))


@dataclass
class SFTBatch(TensorBatch):
    """One micro-batch for supervised fine-tuning (padded rows, or one padding-free packed row)."""

    input_ids: torch.Tensor  # (B, T) token ids; padding positions hold the pad id
    position_ids: torch.Tensor  # (B, T) position of each token inside its own document (restarts per document)
    attention_mask: torch.Tensor | None  # (B, T) 1 on real tokens; None for a padding-free row (no padding)
    targets: torch.Tensor  # (B, T) the token each position must predict (the next token of its document)
    loss_mask: torch.Tensor  # (B, T) 1.0 where predicting targets[b, t] is trained, else 0.0
    num_documents: int  # documents in this micro-batch

    @property
    def trained_tokens(self) -> int:
        return int(self.loss_mask.sum().item())

    @property
    def tokens(self) -> int:
        """Real (non-padding) tokens in the micro-batch."""
        if self.attention_mask is None:
            return self.input_ids.numel()
        return int(self.attention_mask.sum().item())



@dataclass
class PreferenceBatch(TensorBatch):
    """One micro-batch for the DPO family: S response sequences scored in one forward pass.

    Paired losses: S = 2P sequences of P pairs, interleaved (sequence 2i is the chosen response of pair
    i, 2i+1 the rejected one). KTO: S unpaired examples. Each sequence is a prompt and a response.
    Layouts: one right-padded row per sequence (B = S); one padding-free row (B = 1) where each
    sequence is a document with positions restarting at 0; or "trees": responses that follow the
    same prompt share one copy of it (each response attends to the prompt and to itself, never to
    its sibling; its positions continue from the prompt's end), trees packed into a few rows.

    The N counted response tokens are listed explicitly: token n is ``score_targets[n]``, predicted by
    the logits at (``score_rows[n]``, ``score_cols[n]``). Two responses of one shared prompt are both
    predicted, for their first token, by the prompt's last position, so a column may be listed twice.
    """

    input_ids: torch.Tensor  # (B, T) token ids; padding positions hold the pad id
    position_ids: torch.Tensor  # (B, T) position of each token inside its own sequence
    attention_mask: torch.Tensor | None  # (B, T) 1 on real tokens (padded layout); (B, 1, T, T) bool, True where
    #                                      query t may attend key t' (trees); None (padding-free row)
    score_rows: torch.Tensor  # (N,) row of the position whose logits predict each counted response token
    score_cols: torch.Tensor  # (N,) column of that position
    score_targets: torch.Tensor  # (N,) the response token predicted there
    score_sequence: torch.Tensor  # (N,) which of the S sequences the token belongs to
    response_tokens: torch.Tensor  # (S,) number of counted response tokens of each sequence, |y|
    reference_logps: torch.Tensor | None  # (S,) Σ log π_ref(y|x) of each response; None: reference-free or live
    desirable: torch.Tensor | None  # (S,) bool, KTO only: True for a desirable response
    paired: bool  # True: interleaved (chosen, rejected) pairs; False: unpaired examples
    tokens: int  # real tokens the model reads (padding excluded; a shared prompt counted once)

    @property
    def num_sequences(self) -> int:
        return int(self.response_tokens.numel())

    @property
    def num_units(self) -> int:
        """Pairs (paired) or examples (KTO): the unit the loss is averaged over."""
        return self.num_sequences // 2 if self.paired else self.num_sequences



@dataclass
class Rollout(TensorBatch):
    """One batch of RL experience: N prompts × K samples = B rows, prompt i's samples in rows iK…iK+K−1.

    Layout: row b of ``query_responses`` is its prompt left-padded to P columns, then its response
    right-padded to A columns, so response token t of every row sits at column P + t and is predicted
    by the logits at column P + t − 1. Per-token fields are (B, A) over the response columns.
    Fields filled in later steps of the loop are None until then.
    """

    query_responses: torch.Tensor  # (B, P + A) token ids; pad id on padding
    attention_mask: torch.Tensor  # (B, P + A) 1 on real prompt and response tokens (the stop token included)
    response_mask: torch.Tensor  # (B, A) 1 on response tokens (the stop token included), 0 on padding
    prompt_width: int  # P: columns of the left-padded prompts
    group_size: int  # K samples per prompt
    prompt_index: torch.Tensor  # (B,) position of the row's prompt in the prompt list
    sampling_logps: torch.Tensor  # (B, A) log π_sampler(y_t) reported by generate() (temperature-scaled)
    ended: torch.Tensor  # (B,) bool: the response stopped at a stop token (False: cut at max_new_tokens)
    loss_mask: torch.Tensor | None = None  # (B, A) response_mask without filtered rows (overlong, zero-signal groups)
    old_logps: torch.Tensor | None = None  # (B, A) log π_old(y_t): the training forward before the update
    ref_logps: torch.Tensor | None = None  # (B, A) log π_ref(y_t) under the reference model
    values: torch.Tensor | None = None  # (B, A) V(s_t) of the critic before the update (gae only)
    scores: torch.Tensor | None = None  # (B,) reward score after penalties, normalisation and clipping
    raw_scores: torch.Tensor | None = None  # (B,) the reward's score as returned
    advantages: torch.Tensor | None = None  # (B, A) Â_t
    returns: torch.Tensor | None = None  # (B, A) value targets (gae) or advantages

    @property
    def num_rows(self) -> int:
        return int(self.response_mask.shape[0])

    def rows(self, index: torch.Tensor | list[int]) -> Rollout:
        """The rows ``index`` (a mini-batch), every per-row field sliced alike."""
        index = torch.as_tensor(index, dtype=torch.long)
        return self.map_tensors(lambda t: t[index.to(t.device)])


@dataclass
class ComparisonBatch(TensorBatch):
    """A reward-model micro-batch of judgment units, flattened for one scoring pass: N units (a pair, or a
    K-way ranking, or one response scored on aspects), R = Σ K rows, P pair units, Q ranking units,
    S scored responses, A aspects, V votes per (response, aspect)."""

    rows: list[Encoded]  # (R,) every candidate of every unit, unit by unit
    pair_chosen: torch.Tensor  # (P,) long: row index of each pair unit's chosen response
    pair_rejected: torch.Tensor  # (P,) long: row index of its rejected response
    pair_margin: torch.Tensor  # (P,) fp32
    pair_tie: torch.Tensor  # (P,) bool
    pair_weight: torch.Tensor  # (P,) fp32 per-prompt weight
    rank_index: torch.Tensor  # (Q, K) long: row index of each candidate of ranking units; −1 pads
    rank_groups: torch.Tensor  # (Q, K) long: tie group, 0 = best; −1 pads
    rank_weight: torch.Tensor  # (Q,) fp32
    score_rows: torch.Tensor  # (S,) long: row index of each scored response
    score_target: torch.Tensor  # (S, A) fp32 standardised mean score, (mean − μ_a) / σ_a; 0 where not scored
    score_mask: torch.Tensor  # (S, A) bool: True where the response was scored on the aspect
    score_votes: torch.Tensor  # (S, A, V) long: the individual integer scores; −1 pads
    score_weight: torch.Tensor  # (S,) fp32 per-prompt weight
    weight_sum: float  # Σ weights: the units this micro-batch's loss sum counts

    @property
    def tokens(self) -> int:
        return sum(len(r) for r in self.rows)
