"""The aspects a labelling project scores responses on (name, scale, guideline, key). Pure: no store, no web.

The classic RLHF recipe has evaluators score each output on aspects such as quality, relevance and
safety; HelpSteer2-style attribute scores are the same idea. A store (one labelling project) keeps its
aspects in the ``aspects`` setting::

    tuneloop label settings --db labels.db 'aspects=[{"name": "quality", "scale": [1, 5],
        "guideline": "How good is the review as writing?", "key": "q"}, ...]'

Rating items ask for every aspect; pairwise and ranking items ask for them when the setting
``scores_on_comparisons`` is true. The default is quality, relevance and safety on 1–5.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

MAX_ASPECTS = 8
MAX_SCALE_POINTS = 11  # 0–10 at most: a person cannot keep more points apart
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
# keys the judging page already uses (digits score the selected aspect; letters below are commands)
RESERVED_KEYS = set("0123456789cdnu=") | {"i", "h", "x", "a"}


@dataclass(frozen=True)
class Aspect:
    name: str
    """Identifier used in answers and exports (lower case, digits, underscores)."""
    scale: tuple[int, int]
    """Lowest and highest score, integers (1–5 by default)."""
    guideline: str
    """One or two sentences shown to the annotator: what a high score means."""
    key: str
    """The key that selects this aspect on the judging page (one character)."""

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "scale": list(self.scale)}


DEFAULT_ASPECTS = [
    {"name": "quality", "scale": [1, 5], "key": "q",
     "guideline": "How good is the response as a piece of writing for the request: clear, fluent, informative?"},
    {"name": "relevance", "scale": [1, 5], "key": "r",
     "guideline": "How closely does the response address this prompt (here: this movie), rather than something else?"},
    {"name": "safety", "scale": [1, 5], "key": "s",
     "guideline": "5 = nothing harmful, offensive or inappropriate; 1 = clearly harmful or offensive content."},
]


def parse_aspects(value: Any, flag_keys: set[str] = frozenset()) -> list[Aspect]:
    """Validate the ``aspects`` setting; errors name the entry and field (``aspects[1].scale: ...``)."""
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_ASPECTS:
        raise ValueError(f"aspects: expected a list of 1–{MAX_ASPECTS} objects {{name, scale, guideline, key}}")
    out, names, keys = [], set(), set()
    for i, entry in enumerate(value):
        where = f"aspects[{i}]"
        if not isinstance(entry, dict) or set(entry) != {"name", "scale", "guideline", "key"}:
            raise ValueError(f"{where}: expected exactly the fields name, scale, guideline, key")
        name, scale, guideline, key = entry["name"], entry["scale"], entry["guideline"], entry["key"]
        if not isinstance(name, str) or not NAME_PATTERN.match(name) or name in names:
            raise ValueError(f"{where}.name: expected a new identifier (a-z, 0-9, _; ≤ 32 chars), got {name!r}")
        if (not isinstance(scale, list) or len(scale) != 2 or not all(type(s) is int for s in scale)
                or not scale[0] < scale[1] or scale[1] - scale[0] + 1 > MAX_SCALE_POINTS or scale[0] < 0):
            raise ValueError(f"{where}.scale: expected [low, high], integers 0 ≤ low < high, at most "
                             f"{MAX_SCALE_POINTS} points (and ≤ 9 to score with one key), got {scale!r}")
        if scale[1] > 9:
            raise ValueError(f"{where}.scale: the highest score must be ≤ 9 so that one key types it, got {scale!r}")
        if not isinstance(guideline, str) or not guideline.strip() or len(guideline) > 500:
            raise ValueError(f"{where}.guideline: expected 1–500 characters of text")
        if (not isinstance(key, str) or len(key) != 1 or not key.isalpha() or key != key.lower()
                or key in RESERVED_KEYS | set(flag_keys) or key in keys):
            raise ValueError(f"{where}.key: expected one lower-case letter not used by the page, the flags or "
                             f"another aspect, got {key!r}")
        names.add(name)
        keys.add(key)
        out.append(Aspect(name, (scale[0], scale[1]), guideline, key))
    return out
