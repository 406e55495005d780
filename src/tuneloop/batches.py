"""Typed batch containers. Shape notation shared across tuneloop: B batch rows, T tokens, A response
tokens, K candidates per prompt, V vocabulary.

Mask meaning, everywhere: 1 (or True) marks a position that counts, 0 a position that does not.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class SFTBatch:
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

    def to(self, device: torch.device | str) -> SFTBatch:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, torch.Tensor):
                moved[name] = value.to(device)
        return SFTBatch(**moved)
