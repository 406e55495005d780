"""Teacher-forced log-probabilities of given answer tokens, for any padding side.

Rows are padded to the longest (left or right); position ids are computed from the attention mask so
a token's position is the same whatever the padding, and the answer logprobs of a sequence do not
depend on its neighbours in the batch (tested: left == right padding to 1e-5).
"""

from __future__ import annotations

import inspect

import torch


def supports_logits_to_keep(model) -> bool:
    """Whether the model (inside a peft or DDP wrapper too) takes ``logits_to_keep``, so the output head
    can run at chosen positions only."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base = getattr(base, "module", base)
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def answer_logprobs(model, pairs: list[tuple[list[int], list[int]]], pad_id: int, padding_side: str = "right",
                    temperature: float = 1.0) -> list[torch.Tensor]:
    """log p(answer token | prompt, earlier answer tokens) for each (prompt_ids, answer_ids) pair.

    Returns one (A_i,) tensor per pair. Gradients flow when called outside ``torch.no_grad``.
    """
    assert padding_side in ("left", "right"), f"padding_side must be 'left' or 'right', got {padding_side!r}"
    seqs = [p + a for p, a in pairs]
    width = max(len(s) for s in seqs)
    device = next(model.parameters()).device
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    offsets = []
    for row, seq in enumerate(seqs):
        start = 0 if padding_side == "right" else width - len(seq)
        ids[row, start:start + len(seq)] = torch.tensor(seq)
        mask[row, start:start + len(seq)] = 1
        offsets.append(start)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                use_cache=False)
    logprobs = torch.log_softmax(out.logits.float() / temperature, dim=-1)  # (B, T, V)
    result = []
    for row, ((prompt, answer), start) in enumerate(zip(pairs, offsets)):
        first = start + len(prompt)  # index of the first answer token
        predicted = logprobs[row, first - 1:first - 1 + len(answer)]  # positions that predict the answer
        targets = torch.tensor(answer, device=predicted.device).unsqueeze(-1)
        result.append(predicted.gather(-1, targets).squeeze(-1))
    return result
