"""Small helpers for writing test data files."""

from __future__ import annotations

import json


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)
