"""The labelling store's roles, token scopes and default settings: plain values, importable without the
database layer (the command line builds its help from them)."""

from __future__ import annotations

from typing import Any

from tuneloop.feedback.aspects import DEFAULT_ASPECTS

ROLES = ("admin", "annotator")
TOKEN_SCOPES = ("judge", "read", "admin")
DEFAULT_SETTINGS: dict[str, Any] = {
    "overlap": 3,  # judgments wanted per item (never exceeded)
    "lease_seconds": 600,  # how long a handed-out task is reserved for its annotator
    "gold_rate": 0.0,  # share of tasks drawn from gold items (when any are left for the annotator)
    "repeat_rate": 0.0,  # share of tasks that re-show an item the annotator already judged
    "guideline_version": "v1",
    "flags": [  # InstructGPT-style per-response flags: (name, label, key)
        ["fails_instruction", "fails to follow the instruction", "i"],
        ["hallucination", "hallucination (makes things up)", "h"],
        ["harmful", "harmful or offensive", "x"],
        ["inappropriate", "inappropriate for an assistant", "a"],
    ],
    "aspects": DEFAULT_ASPECTS,  # what responses are scored on (aspects.py): rating items ask for every one
    "scores_on_comparisons": False,  # pairwise and ranking pages ask for aspect scores as well
}
