"""Data: formats and validation, loading, chat rendering into (ids, loss mask), packing."""

from __future__ import annotations

from pathlib import Path

from tuneloop.data.bundled import BUNDLED_PREFIX, bundled_records
from tuneloop.data.errors import DataError
from tuneloop.data.loading import Record, read_records


def load_records(source: str | Path) -> list[Record]:
    """Records of a file, a dataset folder, or a ``bundled:<name>`` dataset."""
    text = str(source)
    if text.startswith(BUNDLED_PREFIX):
        return bundled_records(text[len(BUNDLED_PREFIX):])
    return read_records(source)


__all__ = ["DataError", "Record", "load_records"]
