"""Sequence packing and batch collation for causal-LM training.

Best-fit decreasing packs documents into bins of at most ``max_length`` tokens. Packed documents never
see each other: each keeps its own position ids (restarting at 0), targets never cross a document
boundary, and the row is fed with ``attention_mask=None`` and those position ids, from which the model
(transformers' masking utilities) builds a block-diagonal causal mask. ``collate_padding_free`` is the
same mechanism for any list of documents: one row, no padding at all.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch

from tuneloop.batches import SFTBatch
from tuneloop.data.chat import Tokenized
from tuneloop.data.padding import pad_rows, padding_mask

IGNORE_TARGET = 0  # any valid id; positions with loss_mask 0 are never read


def pack_best_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group document indices into bins whose total length is at most ``capacity``.

    Best-fit decreasing: documents in decreasing length, each into the fullest bin it still fits.
    Deterministic: ties keep index order. Every length must be ≤ capacity.
    """
    too_long = [(i, n) for i, n in enumerate(lengths) if n > capacity]
    assert not too_long, f"documents longer than the pack capacity {capacity}: {too_long[:5]}"
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    # (remaining space, bin index) sorted ascending, so the first bin with space >= n is the best fit
    free: list[tuple[int, int]] = []
    for i in order:
        n = lengths[i]
        pos = bisect.bisect_left(free, (n, -1))
        if pos < len(free):
            space, b = free.pop(pos)
            bins[b].append(i)
            bisect.insort(free, (space - n, b))
        else:
            bins.append([i])
            bisect.insort(free, (capacity - n, len(bins) - 1))
    return bins


def _targets(doc: Tokenized) -> tuple[list[int], list[float]]:
    """Next-token targets of one document and whether each prediction is trained."""
    targets = doc.input_ids[1:] + [IGNORE_TARGET]
    weights = [float(m) for m in doc.loss_mask[1:]] + [0.0]
    return targets, weights


def collate_padding_free(docs: Sequence[Tokenized]) -> SFTBatch:
    """All documents concatenated into one row (B = 1) with per-document positions."""
    ids, pos, tgt, mask = [], [], [], []
    for doc in docs:
        t, w = _targets(doc)
        ids += doc.input_ids
        pos += range(len(doc))
        tgt += t
        mask += w
    return SFTBatch(
        input_ids=torch.tensor([ids], dtype=torch.long),
        position_ids=torch.tensor([pos], dtype=torch.long),
        attention_mask=None,
        targets=torch.tensor([tgt], dtype=torch.long),
        loss_mask=torch.tensor([mask], dtype=torch.float32),
        num_documents=len(docs),
    )


def collate_padded(docs: Sequence[Tokenized], pad_id: int, padding_side: str = "right") -> SFTBatch:
    """One row per document, padded to the longest; ``padding_side`` is "right" or "left"."""
    targets, weights = zip(*(_targets(doc) for doc in docs))
    side = padding_side
    return SFTBatch(
        input_ids=pad_rows([doc.input_ids for doc in docs], pad_id, side),
        position_ids=pad_rows([range(len(doc)) for doc in docs], 0, side),
        attention_mask=padding_mask([len(doc) for doc in docs], side),
        targets=pad_rows(targets, IGNORE_TARGET, side),
        loss_mask=pad_rows(weights, 0.0, side, dtype=torch.float32),
        num_documents=len(docs),
    )
