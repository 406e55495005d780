"""A simulated rater panel: N annotators who judge through the same HTTP API and store as people.

Each annotator sees a task, perceives every candidate's gold score plus Gaussian noise (a Thurstone
case-V rater), and answers from the perceived scores: the higher wins (a tie inside ``tie_band``),
strength from the perceived gap in units of the noise, rankings by perceived score, a 1–7 rating
from the perceived score. The requests go through the real FastAPI app in-process (httpx's ASGI
transport, no socket), so the store, leases, overlap and validation are exactly those people meet.

Noise calibration (``noise="auto"``): for a candidate pair with gold gap Δ, one rater prefers the
better one with p = Φ(|Δ| / (σ√2)), and two independent raters agree with p² + (1 − p)². σ is found by
bisection so the mean over all pairs of the imported items equals ``target_agreement`` (0.75 by
default: InstructGPT's labellers agreed 72.6–77.3%, Ouyang et al. 2022 §5.1). Pairs with Δ = 0 can
only reach 0.5, so a panel on texts the scorer cannot tell apart agrees less; the result says so.

Aspect scores (rating items, or comparisons when the store asks for scores): each rater perceives a
response's aspect as mid + s_r·(g − mid) + b_r + ε on the aspect's scale, where g = lo + v·(hi − lo) from
the aspect's scorer value v ∈ [0, 1] (aspect_scorers.py), b_r ~ N(0, rater_bias²) is the rater's
leniency, s_r = exp(N(0, 0.2²)) how much of the scale they use, and ε ~ N(0, aspect_noise²) per
score; the score is that rounded and clipped to the scale. ``label stats`` then shows each rater's
offset and scale, and Krippendorff's α interval per aspect is the panel's inter-rater reliability.

Python API (what ``tuneloop demo`` calls)::

    from tuneloop.feedback import simulate, export_pairs
    result = simulate("labels.db", "candidates.jsonl", num_annotators=5, overlap=3, seed=0)
    export_pairs("labels.db", "pairs.jsonl")
"""

from __future__ import annotations

import itertools
import math
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from tuneloop.feedback import schema as S
from tuneloop.feedback.answers import STRENGTHS
from tuneloop.feedback.importer import import_candidates
from tuneloop.feedback.store import Store, opened

Scorer = Callable[[str], float]
STRENGTH_CUTS = (2.0, 1.0, 0.5)  # perceived gap in σ for significantly / better / slightly; below: negligibly


def vader_scorer() -> Scorer:
    """VADER's compound sentiment in [-1, 1] (the demo's gold scorer; works offline): ``rewards.gold``'s."""
    from tuneloop.rewards.gold import vader_sentiment

    return vader_sentiment


AspectScorer = Callable[[str, str], float]  # (prompt, response) → [0, 1]


@dataclass(frozen=True)
class Rater:
    """One simulated annotator's habits for aspect scores."""

    bias: float  # added to every score (lenient > 0 > harsh), in scale points
    spread: float  # how far from the middle of the scale their scores go (1 = as the scorer says)


@dataclass
class SimulationResult:
    judgments: int
    annotators: list[str]
    noise_sigma: float
    expected_agreement: float | None  # from the calibration formula
    measured_agreement: float | None  # raw pairwise agreement between annotators in the store
    fleiss_kappa: float | None
    krippendorff_alpha: float | None
    seconds: float
    imported: dict[str, int] | None
    aspect_alpha_interval: dict[str, float | None] | None = None  # per aspect, when aspects were scored

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def expected_agreement(gaps: list[float], sigma: float) -> float | None:
    """Mean over pairs of p² + (1 − p)², p = Φ(|Δ| / (σ√2)): two noisy raters' chance to agree."""
    if not gaps:
        return None
    total = 0.0
    for gap in gaps:
        if sigma == 0:  # noiseless raters: always the gold order, a coin flip on an exact tie
            p = 1.0 if gap else 0.5
        else:
            p = 0.5 * (1 + math.erf(abs(gap) / (sigma * 2.0)))  # Φ(x) = ½(1 + erf(x/√2)), x = |Δ|/(σ√2)
        total += p * p + (1 - p) * (1 - p)
    return total / len(gaps)


def calibrate_sigma(gaps: list[float], target: float) -> float:
    """σ whose expected agreement is ``target`` (bisection on log σ; agreement falls as σ grows)."""
    if not 0.5 < target < 1:
        raise ValueError(f"target agreement must lie in (0.5, 1), got {target}")
    if not gaps or expected_agreement(gaps, 1e-9) <= target:
        return 1e-9
    lo, hi = math.log(1e-9), math.log(1e6)
    for _ in range(100):
        mid = (lo + hi) / 2
        if expected_agreement(gaps, math.exp(mid)) > target:
            lo = mid
        else:
            hi = mid
    return math.exp((lo + hi) / 2)


def _aspect_scores(task: dict, aspect_gold: dict[str, dict[int, float]], rater: Rater, noise: float,
                   rng: random.Random) -> dict[str, dict[str, int]]:
    """Every aspect with a scorer, for every candidate of the task (see the module docstring)."""
    out: dict[str, dict[str, int]] = {}
    for cand in task["candidates"]:
        scores = {}
        for aspect in task["aspects"]:
            if aspect["name"] not in aspect_gold:
                continue
            lo, hi = aspect["scale"]
            mid, gold = (lo + hi) / 2, lo + aspect_gold[aspect["name"]][cand["id"]] * (hi - lo)
            seen = mid + rater.spread * (gold - mid) + rater.bias + rng.gauss(0.0, noise)
            scores[aspect["name"]] = int(min(hi, max(lo, round(seen))))
        out[str(cand["id"])] = scores
    return out


def _answer(task: dict, gold: dict[int, float], sigma: float, tie_band: float, rng: random.Random) -> dict:
    ids = sorted(c["id"] for c in task["candidates"])
    if task["kind"] == "rating":
        return {}
    seen = {cid: gold[cid] + rng.gauss(0.0, sigma) for cid in ids}
    ratings = {str(cid): min(7, max(1, round(4 + 3 * seen[cid]))) for cid in ids}
    if task["kind"] == "pairwise":
        a, b = ids
        gap = seen[a] - seen[b]
        if abs(gap) < tie_band:
            return {"outcome": "tie", "ratings": ratings}
        size = abs(gap) / max(sigma, 1e-12)
        strength = next((s for s, cut in zip(STRENGTHS, STRENGTH_CUTS) if size >= cut), "negligibly")
        return {"outcome": "win", "winner": a if gap > 0 else b, "strength": strength, "ratings": ratings}
    ordered = sorted(ids, key=lambda c: -seen[c])
    groups: list[list[int]] = []
    for cid in ordered:
        if groups and seen[groups[-1][-1]] - seen[cid] < tie_band:
            groups[-1].append(cid)
        else:
            groups.append([cid])
    return {"ranking": groups, "none_acceptable": False, "ratings": ratings}


def _aspect_gold(store: Store, scorers: dict[str, AspectScorer]) -> dict[str, dict[int, float]]:
    """{aspect: {candidate id: scorer value in [0, 1]}} for every candidate in the store."""
    from tuneloop.feedback.aspects import parse_aspects

    names = [a.name for a in parse_aspects(store.settings()["aspects"])]
    unknown = sorted(set(scorers) - set(names))
    if unknown:
        raise ValueError(f"aspect_scorers: {unknown} are not aspects of this store ({', '.join(names)})")
    with store.read() as conn:
        rows = conn.execute(select(S.candidates.c.id, S.candidates.c.text, S.prompts.c.prompt)
                            .join_from(S.candidates, S.prompts)).all()
    for scorer in scorers.values():
        if hasattr(scorer, "embed"):  # batch what can be batched (the MiniLM relevance scorer)
            scorer.embed([r.text for r in rows] + [r.prompt for r in rows])
    out = {}
    for name, scorer in scorers.items():
        values = {r.id: float(scorer(r.prompt, r.text)) for r in rows}
        bad = [v for v in values.values() if not 0.0 <= v <= 1.0]
        if bad:
            raise ValueError(f"the {name!r} scorer must return values in [0, 1], got {bad[0]}")
        out[name] = values
    return out


def _gold_scores(store: Store, scorer: Scorer) -> tuple[dict[int, float], list[float]]:
    with store.read() as conn:
        texts = dict(conn.execute(select(S.candidates.c.id, S.candidates.c.text)).all())
        item_ids = [r[0] for r in conn.execute(select(S.items.c.candidate_ids).where(~S.items.c.is_gold))]
    gold = {cid: float(scorer(t)) for cid, t in texts.items()}
    gaps = [gold[a] - gold[b] for ids in item_ids for a, b in itertools.combinations(ids, 2)]
    return gold, gaps


def simulate(store: Store | str | Path, candidates_path: str | Path | None = None, num_annotators: int = 5,
             overlap: int = 3, seed: int = 0, scorer: Scorer | None = None, mode: str = "pairwise",
             noise: float | str = "auto", target_agreement: float = 0.75, tie_band: float = 0.0,
             pairs_per_prompt: int | None = None, name_prefix: str = "sim",
             aspect_scorers: dict[str, AspectScorer] | None = None, aspect_noise: float = 0.5,
             rater_bias: float = 0.4) -> SimulationResult:
    """Run the panel until no task is left for any of its annotators; returns what happened.

    ``mode="rating"`` imports one item per response and needs ``aspect_scorers`` for every aspect of the
    store (``aspect_scorers.default_aspect_scorers()`` for the demo task); with scorers, comparisons that
    ask for scores get them too."""
    import asyncio

    from tuneloop.feedback.quality import quality_report

    if num_annotators < 1 or overlap < 1:
        raise ValueError(f"need num_annotators ≥ 1 and overlap ≥ 1, got {num_annotators} and {overlap}")
    started = time.time()
    with opened(store, synchronous="NORMAL") as db:
        imported = (import_candidates(db, candidates_path, mode=mode, pairs_per_prompt=pairs_per_prompt, seed=seed)
                    if candidates_path is not None else None)
        db.set_setting("overlap", overlap)
        gold, gaps = _gold_scores(db, scorer or vader_scorer()) if mode != "rating" else ({}, [])
        aspect_gold = _aspect_gold(db, aspect_scorers) if aspect_scorers else {}
        if mode == "rating":
            from tuneloop.feedback.aspects import parse_aspects

            missing = [a.name for a in parse_aspects(db.settings()["aspects"]) if a.name not in aspect_gold]
            if missing:
                raise ValueError(f"mode='rating' scores every aspect: give aspect_scorers for {', '.join(missing)}")
        sigma = calibrate_sigma(gaps, target_agreement) if noise == "auto" else float(noise)
        names = [f"{name_prefix}-{i + 1:02d}" for i in range(num_annotators)]
        existing = {u["name"] for u in db.list_users()}
        for name in names:
            if name not in existing:
                db.create_user(name, "annotator")
        tokens = {n: db.issue_token(n, ["judge"], label="simulated rater") for n in names}
        habits = _HabitsRng(seed)
        raters = {n: Rater(bias=habits.gauss(n, rater_bias), spread=math.exp(habits.gauss(n + ":spread", 0.2)))
                  for n in names}
        coro = _panel(db, names, tokens, gold, sigma, tie_band, seed, aspect_gold, raters, aspect_noise)
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # the usual case: no event loop in this thread
            count = asyncio.run(coro)
        else:  # called from async code (a notebook): run the panel on its own loop in a worker thread
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(1) as pool:
                count = pool.submit(asyncio.run, coro).result()
        full = quality_report(db)
        report = full["pairwise"]
        alphas = {a["aspect"]: a["alpha_interval"] for a in full["aspects"] if a["scores"]} if aspect_gold else None
        return SimulationResult(count, names, sigma, expected_agreement(gaps, sigma) if gaps else None,
                                report["raw_agreement"], report["fleiss_kappa"], report["krippendorff_alpha"],
                                time.time() - started, imported, alphas)


class _HabitsRng:
    """Each rater's habits drawn from (seed, name), independent of the order raters are created in."""

    def __init__(self, seed: int):
        self.seed = seed

    def gauss(self, name: str, sd: float) -> float:
        return random.Random(f"{self.seed}:{name}:habits").gauss(0.0, sd) if sd > 0 else 0.0


async def _panel(store: Store, names: list[str], tokens: dict[str, str], gold: dict[int, float], sigma: float,
                 tie_band: float, seed: int, aspect_gold: dict[str, dict[int, float]], raters: dict[str, Rater],
                 aspect_noise: float) -> int:
    """Annotators take turns (deterministic order) until none has a task left; returns judgments written."""
    import httpx

    from tuneloop.feedback.server import create_app

    app = create_app(store, login_limit=None, submit_limit=None)
    rngs = {n: random.Random(f"{seed}:{n}") for n in names}
    headers = {n: {"Authorization": f"Bearer {tokens[n]}"} for n in names}
    count = 0
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
        tasks = {n: _call(await client.post("/api/tasks/next", headers=headers[n])) for n in names}
        while any(tasks.values()):
            for name in names:
                task = tasks[name]
                if not task:
                    continue
                answer = _answer(task, gold, sigma, tie_band, rngs[name])
                if task["ask_scores"] and aspect_gold:
                    answer["scores"] = _aspect_scores(task, aspect_gold, raters[name], aspect_noise, rngs[name])
                body = {"id": uuid.uuid4().hex, "lease_id": task["lease_id"], "answer": answer,
                        "active_ms": int(rngs[name].uniform(2_000, 20_000))}
                response = await client.post("/api/judgments", json=body, headers=headers[name])
                if response.status_code == 409:  # the item filled up meanwhile: ask for another
                    tasks[name] = _call(await client.post("/api/tasks/next", headers=headers[name]))
                    continue
                tasks[name] = _call(response)["next"]
                count += 1
    return count


def _call(response) -> Any:
    if response.status_code != 200:
        raise RuntimeError(f"label API answered {response.status_code}: {response.text[:300]}")
    return response.json()


def summary_line(result: SimulationResult) -> str:
    def f(x):
        return "undefined" if x is None else f"{x:.3f}"
    return (f"{result.judgments} judgments by {len(result.annotators)} simulated annotators in "
            f"{result.seconds:.1f}s; noise σ={result.noise_sigma:.4f}; pairwise agreement "
            f"{f(result.measured_agreement)} (expected {f(result.expected_agreement)}), Fleiss' κ "
            f"{f(result.fleiss_kappa)}, Krippendorff's α {f(result.krippendorff_alpha)}"
            + "".join(f"; {aspect} α interval {f(alpha)}" for aspect, alpha in (result.aspect_alpha_interval or {}).items()))

