"""Stages chained in code for the demo and the docs: DPO straight from a labelling store.

It lives here, not in ``train/``, because it joins two layers: the labelling app (``feedback``) exports
the pairs and the DPO stage (``train.dpo``) trains on them; ``train/`` never imports ``feedback/``.
"""

from __future__ import annotations

from pathlib import Path

from tuneloop.train.dpo import DPOResult, dpo_on_pairs


def dpo_on_judgments(store, model: str | Path, out_dir: str | Path, *, aggregate: str = "majority",
                     **kwargs) -> DPOResult:
    """``train.dpo.dpo_on_pairs`` on a labelling store (a ``Store`` or its database path): its pairs are
    exported exactly as ``tuneloop label export`` writes them, to ``<out_dir>/dpo-pairs.jsonl``."""
    from tuneloop.feedback.export import export_pairs

    pairs = Path(out_dir) / "dpo-pairs.jsonl"
    export_pairs(store, pairs, aggregate=aggregate)
    return dpo_on_pairs(pairs, model, out_dir, **kwargs)
