"""Agreement statistics as pure functions of labels and ranks (no store, no web).

Every function returns ``None`` where the statistic is undefined (no variation, too few raters); the
pages and ``tuneloop label stats`` print that as "undefined" rather than a misleading 0 or NaN.

- ``raw_agreement``: share of agreeing rater pairs within units (pooled).
- ``cohen_kappa``: two raters, nominal (Cohen 1960).
- ``fleiss_kappa``: m raters per unit, nominal (Fleiss 1971).
- ``krippendorff_alpha``: any number of raters per unit, missing allowed, with a ``Metric``: nominal,
  interval or ordinal (Krippendorff 2011, "Computing Krippendorff's alpha-reliability", §C–E).
- ``rater_offset_scale``: how lenient (offset) and how spread out (scale) each rater's scores are,
  against everyone's scores on the same units; ``adjust_score`` undoes both.
- ``kendall_w``: concordance of m rankings of n objects, tie-corrected (Kendall & Babington Smith 1939).
- ``kendall_tau_b``: rank correlation of two rankings with ties (Kendall 1945).
- ``wilson_interval``: score interval for a binomial proportion (Wilson 1927).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from enum import Enum

Label = Hashable


def raw_agreement(units: Sequence[Sequence[Label]]) -> float | None:
    """Agreeing ordered rater pairs / all ordered rater pairs, over units with ≥ 2 labels."""
    agree = total = 0
    for labels in units:
        m = len(labels)
        if m < 2:
            continue
        agree += sum(c * (c - 1) for c in Counter(labels).values())
        total += m * (m - 1)
    return agree / total if total else None


def cohen_kappa(a: Sequence[Label], b: Sequence[Label]) -> float | None:
    """κ = (p_o − p_e) / (1 − p_e) with p_e from each rater's own label frequencies."""
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa needs paired labels: got {len(a)} and {len(b)}")
    n = len(a)
    if n == 0:
        return None
    p_o = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    p_e = sum(ca[c] * cb[c] for c in ca) / (n * n)
    return None if math.isclose(p_e, 1.0) else (p_o - p_e) / (1 - p_e)


def fleiss_kappa(units: Sequence[Sequence[Label]]) -> float | None:
    """Fleiss' κ over units that each have the same number m ≥ 2 of labels."""
    if not units:
        return None
    m = len(units[0])
    if m < 2 or any(len(u) != m for u in units):
        raise ValueError(f"fleiss_kappa needs the same number (≥ 2) of labels per unit; got {sorted({len(u) for u in units})}")
    n_units = len(units)
    p_bar = sum((sum(c * c for c in Counter(u).values()) - m) / (m * (m - 1)) for u in units) / n_units
    totals = Counter(label for u in units for label in u)
    p_e = sum((c / (n_units * m)) ** 2 for c in totals.values())
    return None if math.isclose(p_e, 1.0) else (p_bar - p_e) / (1 - p_e)


def _coincidences(units: Sequence[Sequence[Label]]) -> Counter:
    """o_ck = Σ_u (ordered pairs of values c, k from different raters in u) / (m_u − 1), units with m_u ≥ 2."""
    coincidence: Counter = Counter()
    for labels in units:
        m = len(labels)
        if m < 2:
            continue
        counts = Counter(labels)
        for c, nc in counts.items():
            for k, nk in counts.items():
                coincidence[(c, k)] += (nc * (nc - 1) if c == k else nc * nk) / (m - 1)
    return coincidence


def _nominal(values: list, n_c: Mapping) -> Callable[[Label, Label], float]:
    return lambda c, k: 0.0 if c == k else 1.0


def _interval(values: list, n_c: Mapping) -> Callable[[Label, Label], float]:
    return lambda c, k: float(c - k) ** 2


def _ordinal(values: list, n_c: Mapping) -> Callable[[Label, Label], float]:
    """δ²(c, k) = (Σ_{g from c to k} n_g − (n_c + n_k) / 2)²: distance in ranks of the pooled values."""
    position = {v: i for i, v in enumerate(values)}
    cumulative = [0.0]
    for v in values:
        cumulative.append(cumulative[-1] + n_c[v])

    def delta(c, k):
        lo, hi = sorted((position[c], position[k]))
        return (cumulative[hi + 1] - cumulative[lo] - (n_c[c] + n_c[k]) / 2) ** 2
    return delta


class Metric(Enum):
    """How far apart two values are for Krippendorff's α (the squared difference function δ²)."""

    NOMINAL = "nominal"  # any two different labels are equally far apart
    INTERVAL = "interval"  # scores: squared difference
    ORDINAL = "ordinal"  # ordered categories: squared distance in pooled ranks


_DISTANCES = {Metric.NOMINAL: _nominal, Metric.INTERVAL: _interval, Metric.ORDINAL: _ordinal}


def krippendorff_alpha(units: Sequence[Sequence[Label]], metric: Metric = Metric.NOMINAL) -> float | None:
    """α = 1 − D_o / D_e from the coincidence matrix; units with < 2 labels are not pairable.

    D_o = (1/n) Σ_c Σ_k o_ck δ²(c, k),  D_e = 1/(n(n − 1)) Σ_c Σ_k n_c n_k δ²(c, k),  n = Σ_c n_c.
    None when fewer than two pairable values or no expected disagreement (every value the same).
    """
    coincidence = _coincidences(units)
    n_c: Counter = Counter()
    for (c, _k), value in coincidence.items():
        n_c[c] += value
    n = sum(n_c.values())
    if n <= 1:
        return None
    values = sorted(n_c) if metric is not Metric.NOMINAL else list(n_c)
    delta = _DISTANCES[metric](values, n_c)
    d_o = sum(v * delta(c, k) for (c, k), v in coincidence.items()) / n
    d_e = sum(n_c[c] * n_c[k] * delta(c, k) for c in values for k in values) / (n * (n - 1))
    return None if d_e == 0 else 1 - d_o / d_e


def krippendorff_alpha_nominal(units: Sequence[Sequence[Label]]) -> float | None:
    """Krippendorff's α for nominal labels (the pairwise and ranking labels "lo", "hi", "tie", ...)."""
    return krippendorff_alpha(units, Metric.NOMINAL)


def rater_offset_scale(units: Mapping[Hashable, Mapping[Hashable, float]]) -> dict[Hashable, dict]:
    """Per rater, over the units they scored that someone else scored too:

    offset = μ_r − μ_pool (positive: lenient, negative: harsh) and scale = σ_r / σ_pool (> 1: uses more
    of the scale than the others), where μ_r, σ_r are the mean and population standard deviation of the
    rater's own scores and μ_pool, σ_pool those of every score on the same units (the rater's included).
    Returns {rater: {"n", "offset", "scale", "mean", "pool_mean"}}; scale is None when σ_pool = 0.
    """
    mine: dict[Hashable, list[float]] = {}
    pooled: dict[Hashable, list[float]] = {}
    for unit in units.values():
        if len(unit) < 2:
            continue
        for rater, score in unit.items():
            mine.setdefault(rater, []).append(float(score))
            pooled.setdefault(rater, []).extend(float(s) for s in unit.values())
    out = {}
    for rater, own in mine.items():
        pool = pooled[rater]
        sd_pool = statistics.pstdev(pool)
        out[rater] = {"n": len(own), "mean": statistics.fmean(own), "pool_mean": statistics.fmean(pool),
                      "offset": statistics.fmean(own) - statistics.fmean(pool),
                      "scale": None if sd_pool == 0 else statistics.pstdev(own) / sd_pool}
    return out


def adjust_score(score: float, rater: Mapping) -> float:
    """A rater's score on the pooled scale: μ_pool + (x − μ_r) / scale (only the offset when the scale
    is undefined or zero)."""
    if not rater["scale"]:
        return score - rater["offset"]
    return rater["pool_mean"] + (score - rater["mean"]) / rater["scale"]


def average_ranks(groups: Sequence[Sequence[Hashable]]) -> dict[Hashable, float]:
    """Ranks 1..n from tie groups (best first); tied objects share the mean of their positions."""
    ranks, position = {}, 1
    for group in groups:
        mean = position + (len(group) - 1) / 2
        for obj in group:
            ranks[obj] = mean
        position += len(group)
    return ranks


def kendall_w(rankings: Sequence[Sequence[float]]) -> float | None:
    """Kendall's W for m raters (rows) ranking the same n objects (columns), ties averaged.

    W = 12 S / (m² (n³ − n) − m Σ_i T_i), S = Σ_j (R_j − R̄)², T_i = Σ_groups (t³ − t).
    """
    m = len(rankings)
    if m < 2:
        return None
    n = len(rankings[0])
    if any(len(r) != n for r in rankings):
        raise ValueError("kendall_w needs every rater to rank the same objects")
    sums = [sum(r[j] for r in rankings) for j in range(n)]
    mean = sum(sums) / n
    s = sum((x - mean) ** 2 for x in sums)
    ties = sum(t ** 3 - t for r in rankings for t in Counter(r).values())
    denominator = m * m * (n ** 3 - n) - m * ties
    return None if denominator <= 0 else 12 * s / denominator


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float | None:
    """τ_b = (C − D) / sqrt((n0 − n1)(n0 − n2)); None when either side has no variation."""
    if len(x) != len(y):
        raise ValueError(f"kendall_tau_b needs paired values: got {len(x)} and {len(y)}")
    concordant = discordant = tied_x = tied_y = 0
    n = len(x)
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                tied_x += 1
                tied_y += 1
            elif dx == 0:
                tied_x += 1
            elif dy == 0:
                tied_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    n0 = n * (n - 1) // 2
    denominator = math.sqrt((n0 - tied_x) * (n0 - tied_y))
    return None if denominator == 0 else (concordant - discordant) / denominator


def wilson_interval(successes: int, trials: int, z: float = 1.959963984540054) -> tuple[float, float] | None:
    """The Wilson score interval (95% by default) for successes / trials; None when trials = 0."""
    if trials == 0:
        return None
    if not 0 <= successes <= trials:
        raise ValueError(f"wilson_interval: successes {successes} must lie in 0..{trials}")
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)
