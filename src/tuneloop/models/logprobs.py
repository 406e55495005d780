"""Teacher-forced log-probabilities: THE one function every stage scores given tokens with.

``token_logprobs(model, input_ids, attention_mask, position_ids, rows, cols, targets, temperature)``
returns log π(target_n | the tokens before position (rows[n], cols[n]) of its row), one fp32 value per
scored token, with gradients unless called under ``torch.no_grad``. The DPO policy and reference
(``sequence_logps``), the RL trainer (old/new policy and reference log-probs), evaluation and the
generation guard all call it, so they agree to the last bit on the same inputs.

The caller says which positions to score:
  ``rows``, ``cols``  (N,) long: the logits at (rows[n], cols[n]) predict token n -- i.e. cols[n] is the
                      position of the token BEFORE the scored one;
  ``targets``         (N,) long: the token predicted there; None means the next token of the same row,
                      ``input_ids[rows, cols + 1]`` (ordinary rows). Give it explicitly when one
                      position predicts a token that is not next in its row (DPO's shared-prompt trees).
Attention and positions are passed to the model as they are:
  ``attention_mask``  (B, T) 1 on real tokens (left or right padding), (B, 1, T, T) bool (True where a
                      query may attend a key), or None (no padding; a padding-free row of documents
                      whose positions restart, from which transformers builds the per-document mask);
  ``position_ids``    (B, T) or None (transformers' default 0..T-1). With a (B, T) padding mask, pass
                      ``positions_from_mask(attention_mask)`` so a token's position does not depend on
                      the padding (left == right padding, tested).
``temperature``: the logits are divided by it before the softmax (sampling at T scores with T).

Only the positions that are scored get logits when the model takes ``logits_to_keep`` (transformers
causal LMs do): the output head and the vocabulary softmax are the most expensive part of a small model.
``answer_logprobs`` is the convenience form for (prompt ids, answer ids) pairs.
"""

from __future__ import annotations

import inspect
from functools import cache

import torch

from tuneloop.batches import PreferenceBatch
from tuneloop.data.padding import pad_rows, padding_mask
from tuneloop.losses.sequence_logps import sum_by_sequence, token_logps
from tuneloop.models.attention import SDPA_KERNELS


def _base(model):
    base = getattr(model, "module", model)  # DistributedDataParallel
    base = base.get_base_model() if hasattr(base, "get_base_model") else base  # peft
    return getattr(base, "module", base)


@cache
def _takes_logits_to_keep(forward_type: type) -> bool:
    return "logits_to_keep" in inspect.signature(forward_type.forward).parameters


def supports_logits_to_keep(model) -> bool:
    """Whether the model (inside a peft or DDP wrapper too) takes ``logits_to_keep``, so the output head
    can run at chosen positions only."""
    return _takes_logits_to_keep(type(_base(model)))


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) positions counting real tokens only (0 at each row's first real token; padding 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _model_mask(model, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """A (B, 1, T, T) bool mask as the model's attention kernel wants it: eager attention adds the mask
    to the scores, so it gets a float mask, 0 where allowed."""
    if attention_mask is None or attention_mask.dim() != 4:
        return attention_mask
    base = _base(model)
    if base.config._attn_implementation in SDPA_KERNELS:
        return attention_mask
    blocked = torch.finfo(base.dtype).min
    return torch.zeros(attention_mask.shape, dtype=base.dtype, device=attention_mask.device).masked_fill(
        ~attention_mask, blocked)


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                   position_ids: torch.Tensor | None, rows: torch.Tensor, cols: torch.Tensor,
                   targets: torch.Tensor | None = None, temperature: float = 1.0, *,
                   logits_to_keep: bool | None = None) -> torch.Tensor:
    """(N,) log π(targets[n] | row rows[n] through position cols[n]), logits / temperature, in fp32 (or
    the model's wider dtype): see the module doc. ``logits_to_keep``: None uses the model's
    ``logits_to_keep`` when it has one; False forces full logits (to test the fast path against)."""
    assert temperature > 0, f"temperature must be > 0, got {temperature}"
    assert rows.shape == cols.shape and rows.dim() == 1, (
        f"rows and cols must be (N,), got {tuple(rows.shape)} and {tuple(cols.shape)}")
    if targets is None:
        targets = input_ids[rows, cols + 1]
    columns = torch.unique(cols)  # (M,) sorted: every position some scored token is predicted at
    keep = supports_logits_to_keep(model) if logits_to_keep is None else logits_to_keep
    kwargs = {"logits_to_keep": columns} if keep else {}
    # use_cache=False: transformers builds the per-document (block-diagonal) mask from restarting
    # position ids only when no KV cache is passed.
    out = model(input_ids=input_ids, position_ids=position_ids, attention_mask=_model_mask(model, attention_mask),
                use_cache=False, **kwargs)
    logits = out.logits if keep else out.logits[:, columns]  # (B, M, V)
    where = torch.searchsorted(columns, cols)  # (N,) each token's column among the kept ones
    picked = logits[rows, where]  # (N, V)
    if temperature != 1.0:
        picked = picked.to(torch.promote_types(picked.dtype, torch.float32)) / temperature
    return token_logps(picked, targets)


def sequence_logps(model, batch: PreferenceBatch, keep_response_only: bool | None = None) -> torch.Tensor:
    """Σ log π(y_t | x, y_<t) over each sequence's counted response tokens of a ``PreferenceBatch``:
    (S,) fp32, differentiable (DPO's policy and reference log-probs). ``keep_response_only``: the
    ``logits_to_keep`` switch of ``token_logprobs``."""
    values = token_logprobs(model, batch.input_ids, batch.attention_mask, batch.position_ids, batch.score_rows,
                            batch.score_cols, batch.score_targets, logits_to_keep=keep_response_only)
    return sum_by_sequence(values, batch.score_sequence, batch.num_sequences)


def answer_logprobs(model, pairs: list[tuple[list[int], list[int]]], pad_id: int, padding_side: str = "right",
                    temperature: float = 1.0) -> list[torch.Tensor]:
    """log p(answer token | prompt, earlier answer tokens) for each (prompt_ids, answer_ids) pair, the
    pairs padded into one batch (positions from the mask, so the padding side changes nothing).

    Returns one (A_i,) tensor per pair. Gradients flow when called outside ``torch.no_grad``.
    """
    assert all(prompt for prompt, _ in pairs), "every pair needs at least one prompt token"
    device = next(model.parameters()).device
    if not any(answer for _, answer in pairs):
        return [torch.zeros(0, device=device) for _ in pairs]
    seqs = [p + a for p, a in pairs]
    ids = pad_rows(seqs, pad_id, padding_side)
    mask = padding_mask([len(s) for s in seqs], padding_side)
    width = ids.shape[1]
    rows, cols = [], []
    for row, (prompt, answer) in enumerate(pairs):
        start = 0 if padding_side == "right" else width - len(prompt) - len(answer)
        first = start + len(prompt)  # index of the first answer token; position first - 1 predicts it
        rows += [row] * len(answer)
        cols += range(first - 1, first - 1 + len(answer))
    values = token_logprobs(model, ids.to(device), mask.to(device), positions_from_mask(mask).to(device),
                            torch.tensor(rows, dtype=torch.long, device=device),
                            torch.tensor(cols, dtype=torch.long, device=device), temperature=temperature)
    return list(values.split([len(a) for _, a in pairs]))
