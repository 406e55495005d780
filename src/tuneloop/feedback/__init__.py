"""The labelling app: people (or a simulated panel) rate and rank candidates; judgments are stored durably.

Python API (no server needed)::

    from tuneloop.feedback import import_candidates, simulate, export_pairs, export_all, Store
    import_candidates("labels.db", "candidates.jsonl", mode="pairwise")  # or mode="ranking"
    result = simulate("labels.db", num_annotators=5, overlap=3, seed=0)  # scorer=callable text → float
    export_pairs("labels.db", "pairs.jsonl")                              # reward model / DPO input
    export_all("labels.db", "export/")                                    # pairs, rankings, raw, manifest

Modules: ``store`` (SQLite/PostgreSQL), ``schema`` (tables, migrations), ``importer``, ``assign`` (leases
and writes), ``answers`` (what a judgment may say), ``agreement`` and ``aggregate`` (pure statistics),
``quality`` (the report), ``export``, ``server`` (FastAPI) with ``static/`` pages, ``panel`` (simulated raters), ``cli``.
See docs/labelling.md.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"export_all": "export", "export_pairs": "export", "import_candidates": "importer",
            "SimulationResult": "panel", "simulate": "panel", "vader_scorer": "panel", "Store": "store"}


def __getattr__(name: str):
    """Import on first use, so `tuneloop label serve` starts without loading what it does not need."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tuneloop.feedback' has no attribute {name!r}")
    return getattr(importlib.import_module(f"tuneloop.feedback.{_EXPORTS[name]}"), name)


__all__ = ["SimulationResult", "Store", "export_all", "export_pairs", "import_candidates", "simulate",
           "vader_scorer"]
