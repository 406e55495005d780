"""Atomic file and folder writes: write under a temporary name in the same folder, then rename.

A reader (or a resumed run) sees either the old state or the complete new one, never a half-written
file, whatever moment the process is killed at.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_dir(target: str | Path, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success rename it to ``target``.

    If ``target`` already exists: with ``replace`` it is swapped out, otherwise the existing folder is
    kept (another process finished the same work first) and the temporary one discarded.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        publish_dir(tmp, target, replace)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish_dir(tmp: str | Path, target: str | Path, replace: bool = False) -> None:
    """Make the finished folder ``tmp`` (beside ``target``) appear as ``target`` in one rename, after
    flushing it to disk; an existing ``target`` is swapped out with ``replace``, else kept (``tmp``
    is then left for the caller to remove)."""
    tmp, target = Path(tmp), Path(target)
    _fsync_tree(tmp)
    if target.exists() and replace:
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.rename(target, old)
        os.rename(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    elif not target.exists():
        os.rename(tmp, target)
    _fsync_dir(target.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def jsonl_text(rows: Iterable[Any], sort_keys: bool = False) -> str:
    """``rows`` as JSON Lines text: one object per line, non-ASCII kept, every line ending in a newline."""
    return "".join(json.dumps(row, ensure_ascii=False, sort_keys=sort_keys) + "\n" for row in rows)


def atomic_write_jsonl(path: str | Path, rows: Iterable[Any], sort_keys: bool = False) -> int:
    """Write ``rows`` as JSON Lines (UTF-8, non-ASCII kept) atomically; returns how many were written."""
    rows = list(rows)
    atomic_write_text(path, jsonl_text(rows, sort_keys))
    return len(rows)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
