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


def _answer(task: dict, gold: dict[int, float], sigma: float, tie_band: float, rng: random.Random) -> dict:
    ids = sorted(c["id"] for c in task["candidates"])
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
             pairs_per_prompt: int | None = None, name_prefix: str = "sim") -> SimulationResult:
    """Run the panel until no task is left for any of its annotators; returns what happened."""
    import asyncio

    from tuneloop.feedback.quality import quality_report

    if num_annotators < 1 or overlap < 1:
        raise ValueError(f"need num_annotators ≥ 1 and overlap ≥ 1, got {num_annotators} and {overlap}")
    started = time.time()
    with opened(store, synchronous="NORMAL") as db:
        imported = (import_candidates(db, candidates_path, mode=mode, pairs_per_prompt=pairs_per_prompt, seed=seed)
                    if candidates_path is not None else None)
        db.set_setting("overlap", overlap)
        gold, gaps = _gold_scores(db, scorer or vader_scorer())
        sigma = calibrate_sigma(gaps, target_agreement) if noise == "auto" else float(noise)
        names = [f"{name_prefix}-{i + 1:02d}" for i in range(num_annotators)]
        existing = {u["name"] for u in db.list_users()}
        for name in names:
            if name not in existing:
                db.create_user(name, "annotator")
        tokens = {n: db.issue_token(n, ["judge"], label="simulated rater") for n in names}
        coro = _panel(db, names, tokens, gold, sigma, tie_band, seed)
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # the usual case: no event loop in this thread
            count = asyncio.run(coro)
        else:  # called from async code (a notebook): run the panel on its own loop in a worker thread
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(1) as pool:
                count = pool.submit(asyncio.run, coro).result()
        report = quality_report(db)["pairwise"]
        return SimulationResult(count, names, sigma, expected_agreement(gaps, sigma), report["raw_agreement"],
                                report["fleiss_kappa"], report["krippendorff_alpha"], time.time() - started, imported)


async def _panel(store: Store, names: list[str], tokens: dict[str, str], gold: dict[int, float], sigma: float,
                 tie_band: float, seed: int) -> int:
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
                body = {"id": uuid.uuid4().hex, "lease_id": task["lease_id"],
                        "answer": _answer(task, gold, sigma, tie_band, rngs[name]),
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
            f"{f(result.fleiss_kappa)}, Krippendorff's α {f(result.krippendorff_alpha)}")

