"""Handing out tasks under leases, and writing judgments: the two operations that must be exact.

``next_task`` gives an annotator one task (an item with its candidates in a fresh random order) and
reserves it with a lease for ``lease_seconds``. It reuses the annotator's own open lease, so reloading
the page shows the same task. An item is handed out only while its judgments plus open leases are
below the overlap, and never to someone who has judged it (unless it is a deliberate repeat).

``submit`` writes one judgment. In the same transaction it: returns the stored row if the client's
judgment id was seen before (a retried submit); refuses a second judgment of the same item by the
same person (also a unique index); locks the item and refuses the write if the item already has
``overlap`` judgments; bumps the item's counter and closes the lease. Corrections are new rows that
name the judgment they supersede; nothing is updated in place.
"""

from __future__ import annotations

import random
import secrets
import time
from typing import Any

from sqlalchemy import and_, exists, false, func, insert, not_, select, update
from sqlalchemy.engine import Connection

from tuneloop.feedback import schema as S
from tuneloop.feedback.answers import validate_answer
from tuneloop.feedback.store import Store


class Conflict(Exception):
    """The write cannot happen (overlap reached, already judged, unknown lease…): HTTP 409."""


class NotFound(Exception):
    """No such lease or judgment for this annotator: HTTP 404 (never reveals others' rows)."""


def _open_lease(now: float):
    L = S.leases.c
    return and_(not_(L.done), L.expires_at > now)


def next_task(store: Store, user_id: int, now: float | None = None, rng: random.Random | None = None) -> dict | None:
    """The annotator's next task, or None when nothing is left for them."""
    now = time.time() if now is None else now
    with store.write() as conn:
        return _next_task(store, conn, user_id, now, rng, store.settings(conn))


def _next_task(store: Store, conn: Connection, user_id: int, now: float, rng: random.Random | None,
               cfg: dict) -> dict | None:
    rng = rng or random.Random(secrets.randbits(64))
    _serialise(store, conn)
    L = S.leases.c
    mine = conn.execute(select(S.leases).where(L.user_id == user_id, _open_lease(now))
                        .order_by(L.served_at).limit(1)).mappings().first()
    if mine is not None and not mine["is_repeat"]:
        item = conn.execute(select(S.items.c.n_done, S.items.c.is_gold)
                            .where(S.items.c.id == mine["item_id"])).one()
        if not item.is_gold and item.n_done >= cfg["overlap"]:  # filled by others after the lease lapsed
            conn.execute(update(S.leases).where(L.id == mine["id"]).values(done=True))
            mine = None
    if mine is None:
        item_id, is_repeat = _choose_item(conn, user_id, now, cfg, rng)
        if item_id is None:
            return None
        ids = conn.execute(select(S.items.c.candidate_ids).where(S.items.c.id == item_id)).scalar_one()
        order = list(ids)
        rng.shuffle(order)
        lease_id = secrets.token_hex(12)
        mine = dict(id=lease_id, item_id=item_id, user_id=user_id, display_order=order, is_repeat=is_repeat,
                    served_at=now, expires_at=now + cfg["lease_seconds"], done=False)
        conn.execute(insert(S.leases).values(**mine))
    return _task(conn, mine, cfg)


def _serialise(store: Store, conn: Connection) -> None:
    """PostgreSQL: one hand-out or write at a time, taken before any row lock (so no deadlock with the
    foreign-key locks a lease insert takes). SQLite's BEGIN IMMEDIATE already serialises writers."""
    if not store.is_sqlite:
        conn.execute(select(func.pg_advisory_xact_lock(7348)))


def _choose_item(conn: Connection, user_id: int, now: float, cfg: dict, rng: random.Random):
    I, J, L = S.items.c, S.judgments.c, S.leases.c
    judged_by_me = exists().where(J.item_id == I.id, J.user_id == user_id)
    leased_to_me = exists().where(L.item_id == I.id, L.user_id == user_id, _open_lease(now))
    if cfg["repeat_rate"] > 0 and rng.random() < cfg["repeat_rate"]:
        repeated = exists().where(J.item_id == I.id, J.user_id == user_id, J.is_repeat)
        row = conn.execute(select(I.id).where(not_(I.is_gold), judged_by_me, not_(repeated), not_(leased_to_me))
                           .order_by(func.random()).limit(1)).first()
        if row:
            return row[0], True
    if cfg["gold_rate"] > 0 and rng.random() < cfg["gold_rate"]:
        row = conn.execute(select(I.id).where(I.is_gold, not_(judged_by_me), not_(leased_to_me))
                           .order_by(I.shuffle_key).limit(1)).first()
        if row:
            return row[0], False
    open_leases = (select(func.count()).where(L.item_id == I.id, not_(L.is_repeat), _open_lease(now))
                   .scalar_subquery())
    row = conn.execute(select(I.id).where(I.is_gold == false(), I.n_done < cfg["overlap"],
                                          I.n_done + open_leases < cfg["overlap"],
                                          not_(judged_by_me), not_(leased_to_me))
                       .order_by(I.n_done.desc(), I.shuffle_key).limit(1)).first()
    return (row[0], False) if row else (None, False)


def _task(conn: Connection, lease, cfg: dict) -> dict:
    item = conn.execute(select(S.items.c.id, S.items.c.kind, S.items.c.candidate_ids, S.prompts.c.prompt,
                               S.prompts.c.messages).join_from(S.items, S.prompts)
                        .where(S.items.c.id == lease["item_id"])).mappings().one()
    prompt = item
    rows = {r["id"]: r for r in conn.execute(
        select(S.candidates.c.id, S.candidates.c.text, S.candidates.c.finish_reason)
        .where(S.candidates.c.id.in_(item["candidate_ids"]))).mappings()}
    return {"lease_id": lease["id"], "item_id": item["id"], "kind": item["kind"],
            "prompt": prompt["prompt"], "messages": prompt["messages"],
            "candidates": [{"id": cid, "text": rows[cid]["text"], "truncated": rows[cid]["finish_reason"] == "length"}
                           for cid in lease["display_order"]],
            "served_at": lease["served_at"], "expires_at": lease["expires_at"],
            "guideline_version": cfg["guideline_version"], "flags": cfg["flags"]}


def submit(store: Store, user_id: int, body: dict[str, Any], now: float | None = None,
           with_next: bool = False) -> tuple[str, dict, dict | None]:
    """Write one judgment. Returns ("created" | "duplicate", stored row, next task or None).

    Raises Conflict / NotFound / AnswerError. With ``with_next`` the annotator's next task is leased in
    the same transaction (one commit, one fsync per judgment).

    ``body``: id, answer, rationale, active_ms, and either lease_id (a new judgment) or supersedes
    (a correction of one of the annotator's own judgments).
    """
    now = time.time() if now is None else now
    J = S.judgments.c
    with store.write() as conn:
        _serialise(store, conn)
        cfg = store.settings(conn)
        seen = conn.execute(select(S.judgments).where(J.id == body["id"])).mappings().first()
        if seen is not None:
            if seen["user_id"] != user_id:
                raise Conflict("this judgment id is already in use")
            return "duplicate", dict(seen), _next_task(store, conn, user_id, now, None, cfg) if with_next else None
        if body.get("supersedes"):
            row = _correction(conn, user_id, body)
        else:
            row = _from_lease(conn, user_id, body, now, cfg)
        item = conn.execute(select(S.items, S.prompts.c.provenance).join_from(S.items, S.prompts)
                            .where(S.items.c.id == row["item_id"]).with_for_update(of=S.items, key_share=True)).mappings().one()
        flag_names = [f[0] for f in cfg["flags"]]
        answer = validate_answer(item["kind"], list(item["candidate_ids"]), body["answer"], flag_names)
        counts = not row["is_repeat"] and not row.get("supersedes")
        if counts and not item["is_gold"] and item["n_done"] >= cfg["overlap"]:
            raise Conflict(f"item {item['id']} already has its {cfg['overlap']} judgments")
        if counts and conn.execute(select(J.id).where(J.item_id == item["id"], J.user_id == user_id,
                                                      J.supersedes.is_(None), not_(J.is_repeat))).first():
            raise Conflict(f"you have already judged item {item['id']}")
        provenance = item["provenance"]
        stored = dict(id=body["id"], item_id=item["id"], user_id=user_id, lease_id=row.get("lease_id"),
                      kind=item["kind"], answer=answer, rationale=str(body.get("rationale") or "")[:10_000],
                      display_order=row["display_order"], served_at=row["served_at"], submitted_at=now,
                      active_ms=max(0, int(body.get("active_ms") or 0)), guideline_version=cfg["guideline_version"],
                      provenance=provenance, is_repeat=row["is_repeat"], is_gold=item["is_gold"],
                      supersedes=row.get("supersedes"))
        conn.execute(insert(S.judgments).values(**stored))
        if counts:
            conn.execute(update(S.items).where(S.items.c.id == item["id"]).values(n_done=S.items.c.n_done + 1))
        if row.get("lease_id"):
            conn.execute(update(S.leases).where(S.leases.c.id == row["lease_id"]).values(done=True))
        return "created", stored, _next_task(store, conn, user_id, now, None, cfg) if with_next else None


def _from_lease(conn: Connection, user_id: int, body: dict, now: float, cfg: dict) -> dict:
    lease = conn.execute(select(S.leases).where(S.leases.c.id == str(body.get("lease_id") or ""),
                                                S.leases.c.user_id == user_id)).mappings().first()
    if lease is None:
        raise NotFound("no such task for you (it may belong to someone else)")
    if lease["done"]:
        raise Conflict("this task was already submitted; to change the answer, submit a correction")
    return {"item_id": lease["item_id"], "lease_id": lease["id"], "display_order": lease["display_order"],
            "served_at": lease["served_at"], "is_repeat": lease["is_repeat"]}


def _correction(conn: Connection, user_id: int, body: dict) -> dict:
    J = S.judgments.c
    old = conn.execute(select(S.judgments).where(J.id == str(body["supersedes"]), J.user_id == user_id)).mappings().first()
    if old is None:
        raise NotFound("no such judgment of yours to correct")
    if conn.execute(select(J.id).where(J.supersedes == old["id"])).first():
        raise Conflict("that judgment was already corrected; correct the newest version")
    return {"item_id": old["item_id"], "lease_id": None, "display_order": old["display_order"],
            "served_at": old["served_at"], "is_repeat": old["is_repeat"], "supersedes": old["id"]}


def current_judgments(conn: Connection, user_id: int | None = None) -> list[dict]:
    """Judgments not superseded by a correction (repeats included, flagged), oldest first."""
    J = S.judgments.c
    newer = S.judgments.alias("newer")
    query = select(S.judgments).where(~exists().where(newer.c.supersedes == J.id))
    if user_id is not None:
        query = query.where(J.user_id == user_id)
    return [dict(r) for r in conn.execute(query.order_by(J.submitted_at, J.id)).mappings()]


def invariant_problems(conn: Connection, overlap: int) -> list[str]:
    """The app's invariants, checked from the rows themselves."""
    J, I = S.judgments.c, S.items.c
    problems = []
    primary = (select(J.item_id, func.count().label("n")).where(J.supersedes.is_(None), not_(J.is_repeat))
               .group_by(J.item_id).subquery())
    for item_id, n_done, n, is_gold in conn.execute(
            select(I.id, I.n_done, func.coalesce(primary.c.n, 0), I.is_gold)
            .select_from(S.items.outerjoin(primary, primary.c.item_id == I.id))):
        if n_done != n:
            problems.append(f"item {item_id}: counter says {n_done} judgments, rows say {n}")
        if n > overlap and not is_gold:
            problems.append(f"item {item_id}: {n} judgments exceed the overlap {overlap}")
    for item_id, user_id, n in conn.execute(
            select(J.item_id, J.user_id, func.count()).where(J.supersedes.is_(None), not_(J.is_repeat))
            .group_by(J.item_id, J.user_id).having(func.count() > 1)):
        problems.append(f"item {item_id}: user {user_id} judged it {n} times")
    return problems
