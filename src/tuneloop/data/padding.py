"""One padding helper: rows of different lengths into a (B, T) tensor, padded on the left or right."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pad_rows(rows: Sequence[Sequence[int | float]], fill: int | float, side: str = "right",
             dtype: torch.dtype = torch.long) -> torch.Tensor:
    """(B, T) with T the longest row; each row's values at its start (``side="right"``) or end
    (``"left"``), ``fill`` elsewhere. Pad every per-token field of a batch with the same ``side``."""
    assert side in ("left", "right"), f"side must be 'left' or 'right', got {side!r}"
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), fill, dtype=dtype)
    for i, row in enumerate(rows):
        if len(row):
            start = 0 if side == "right" else width - len(row)
            out[i, start:start + len(row)] = torch.as_tensor(list(row), dtype=dtype)
    return out


def padding_mask(lengths: Sequence[int], side: str = "right") -> torch.Tensor:
    """(B, T) long, 1 on the real tokens of rows of these lengths padded on ``side``."""
    return pad_rows([[1] * n for n in lengths], 0, side)
