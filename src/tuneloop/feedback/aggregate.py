"""Combining several annotators' judgments into one label: pure functions.

- ``majority_pair``: the winning side of a candidate pair by vote, or a tie when votes tie.
- ``soft_pair``: the share of decisive votes for each side (a soft label for the reward model).
- ``ranked_pairs``: Tideman's ranked-pairs order from pairwise wins (Tideman 1987), ties kept.
- ``bradley_terry``: maximum-likelihood strengths from pairwise wins by Hunter's (2004) MM updates,
  with a small symmetric prior so a candidate that always wins still gets a finite score.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence


def majority_pair(labels: Sequence[str]) -> str | None:
    """"lo", "hi" or "tie" by plurality of decisive votes ("tie" votes count for tie); None if none."""
    counts = Counter(label for label in labels if label in ("lo", "hi", "tie"))
    if not counts:
        return None
    best = max(counts.values())
    winners = [label for label, c in counts.items() if c == best]
    return winners[0] if len(winners) == 1 else "tie"


def soft_pair(labels: Sequence[str]) -> float | None:
    """P(lo preferred) = (#lo + ½ #tie) / (#lo + #hi + #tie); None when no vote counts."""
    lo, hi, tie = (sum(1 for x in labels if x == k) for k in ("lo", "hi", "tie"))
    total = lo + hi + tie
    return None if total == 0 else (lo + 0.5 * tie) / total


def ranked_pairs(objects: Sequence[Hashable], wins: dict[tuple[Hashable, Hashable], float]) -> list[list[Hashable]]:
    """Tideman's ranked pairs: lock majorities from strongest to weakest unless they close a cycle.

    ``wins[(a, b)]`` is how often a beat b. Returns tie groups, best first: objects with no locked
    path between them in either direction at the same depth share a group.
    """
    majorities = []
    for i, a in enumerate(objects):
        for b in objects[i + 1:]:
            ab, ba = wins.get((a, b), 0), wins.get((b, a), 0)
            if ab != ba:
                winner, loser = (a, b) if ab > ba else (b, a)
                majorities.append((abs(ab - ba), max(ab, ba), winner, loser))
    majorities.sort(key=lambda m: (-m[0], -m[1], str(m[2]), str(m[3])))
    beats: dict[Hashable, set] = {o: set() for o in objects}
    for _margin, _support, winner, loser in majorities:
        if not _reaches(beats, loser, winner):
            beats[winner].add(loser)
    groups, left = [], list(objects)
    while left:  # peel off the objects nobody remaining beats
        top = [o for o in left if not any(o in beats[p] for p in left if p != o)]
        groups.append(top)
        left = [o for o in left if o not in top]
    return groups


def _reaches(beats: dict, start: Hashable, goal: Hashable) -> bool:
    stack, seen = [start], set()
    while stack:
        node = stack.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            stack.extend(beats[node])
    return False


def bradley_terry(objects: Sequence[Hashable], wins: dict[tuple[Hashable, Hashable], float],
                  prior: float = 0.1, iterations: int = 500, tol: float = 1e-10) -> dict[Hashable, float]:
    """Log-strengths θ (mean 0) maximising Σ w_ab log σ(θ_a − θ_b), by MM: p_a ← W_a / Σ_b n_ab/(p_a+p_b).

    ``prior`` adds that many virtual wins each way for every pair (keeps θ finite under perfect wins).
    """
    index = {o: i for i, o in enumerate(objects)}
    n = len(objects)
    w = [[prior if i != j else 0.0 for j in range(n)] for i in range(n)]
    for (a, b), count in wins.items():
        w[index[a]][index[b]] += count
    p = [1.0] * n
    for _ in range(iterations):
        new = []
        for i in range(n):
            denominator = sum((w[i][j] + w[j][i]) / (p[i] + p[j]) for j in range(n) if j != i)
            new.append(sum(w[i]) / denominator if denominator > 0 else p[i])
        geo = math.exp(sum(math.log(x) for x in new) / n)
        new = [x / geo for x in new]
        done = max(abs(a - b) for a, b in zip(new, p)) < tol
        p = new
        if done:
            break
    return {o: math.log(p[index[o]]) for o in objects}


def groups_from_scores(scores: dict[Hashable, float], tol: float = 1e-9) -> list[list[Hashable]]:
    """Tie groups, best first, from scores (equal within ``tol`` = tied)."""
    ordered = sorted(scores, key=lambda o: -scores[o])
    groups: list[list[Hashable]] = []
    for o in ordered:
        if groups and abs(scores[groups[-1][0]] - scores[o]) <= tol:
            groups[-1].append(o)
        else:
            groups.append([o])
    return groups
