"""Causal attention per document for padding-free rows, registered with transformers as "sdpa_documents".

A padding-free row holds several documents; with plain SDPA, transformers builds a block-diagonal mask
and the CPU kernels compute every block of it, (sum of lengths)^2 work for sum(length^2) of useful
attention: a 1024-token row of ~24 packed documents does ~25x the needed attention, ~30% of a SmolLM2
step. Here each document gets its own causal SDPA call (``is_causal=True``, no mask). Calls without
document bounds (padded batches, generation) are plain SDPA.
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F

DOCUMENT_ATTENTION = "sdpa_documents"
SDPA_KERNELS = ("sdpa", DOCUMENT_ATTENTION)  # take boolean masks (True = may attend) as they are


def sdpa_per_document(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                      **kwargs):
    """query (1, H, T, D), key/value (1, H_kv, T, D); ``document_bounds`` [0, end_1, ..., T] in kwargs."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.get("document_bounds")
    if bounds is None or query.shape[0] != 1 or query.shape[2] != key.shape[2] \
            or getattr(module, "sliding_window", None):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    gqa = getattr(module, "num_key_value_groups", 1) > 1
    outputs = [F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b],
                                              dropout_p=dropout, scale=scaling, is_causal=True, enable_gqa=gqa)
               for a, b in pairwise(bounds)]
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


def attention_kernel(name: str) -> str:
    """``name`` ready to pass as ``attn_implementation`` to any transformers model: tuneloop's own kernel
    is registered with transformers first (every model loader goes through here)."""
    if name == DOCUMENT_ATTENTION:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(DOCUMENT_ATTENTION, sdpa_per_document)
        AttentionMaskInterface.register(DOCUMENT_ATTENTION, sdpa_mask)  # still needed by the fallback
    return name


def document_bounds(position_ids: torch.Tensor) -> list[int]:
    """Start of every document of a padding-free row (B = 1; positions restart at 0) and the row's end."""
    row = position_ids[0]
    return (row == 0).nonzero().flatten().tolist() + [row.numel()]


def uses_document_attention(model) -> bool:
    """True when the model (or the model inside a peft / DDP wrapper) runs the per-document kernel."""
    config = getattr(getattr(model, "module", model), "config", None)
    return getattr(config, "_attn_implementation", None) == DOCUMENT_ATTENTION

