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

from sqlalchemy import and_, bindparam, exists, false, func, not_, select, update
from sqlalchemy.engine import Connection

from tuneloop.feedback import schema as S
from tuneloop.feedback.answers import validate_answer
from tuneloop.feedback.aspects import parse_aspects
from tuneloop.feedback.store import Store


class Conflict(Exception):
    """The write cannot happen (overlap reached, already judged, unknown lease…): HTTP 409."""


class NotFound(Exception):
    """No such lease or judgment for this annotator: HTTP 404 (never reveals others' rows)."""


def _open_lease(now):
    L = S.leases.c
    return and_(not_(L.done), L.expires_at > now)


# The hot path's statements, built once (building a statement costs more than running it on SQLite).
_I, _J, _L, _C = S.items.c, S.judgments.c, S.leases.c, S.candidates.c
_NOW, _UID, _ITEM = bindparam("now"), bindparam("uid"), bindparam("b_item")
_JUDGED_BY_ME = exists().where(_J.item_id == _I.id, _J.user_id == _UID)
_LEASED_TO_ME = exists().where(_L.item_id == _I.id, _L.user_id == _UID, _open_lease(_NOW))
_OPEN_LEASES = select(func.count()).where(_L.item_id == _I.id, not_(_L.is_repeat), _open_lease(_NOW)).scalar_subquery()
Q_MY_OPEN_LEASE = (select(S.leases).where(_L.user_id == _UID, _open_lease(_NOW))
                   .order_by(_L.served_at).limit(1))
Q_ITEM_STATE = select(_I.n_done, _I.is_gold, _I.candidate_ids).where(_I.id == _ITEM)
Q_NEXT_ITEM = (select(_I.id).where(_I.is_gold == false(), _I.n_done < bindparam("overlap"),
                                   _I.n_done + _OPEN_LEASES < bindparam("overlap"),
                                   not_(_JUDGED_BY_ME), not_(_LEASED_TO_ME))
               .order_by(_I.n_done.desc(), _I.shuffle_key).limit(1))
Q_NEXT_GOLD = (select(_I.id).where(_I.is_gold, not_(_JUDGED_BY_ME), not_(_LEASED_TO_ME))
               .order_by(_I.shuffle_key).limit(1))
Q_NEXT_REPEAT = (select(_I.id).where(not_(_I.is_gold), _JUDGED_BY_ME, not_(_LEASED_TO_ME),
                                     ~exists().where(_J.item_id == _I.id, _J.user_id == _UID, _J.is_repeat))
                 .order_by(func.random()).limit(1))
Q_TASK_ITEM = (select(_I.id, _I.kind, _I.candidate_ids, S.prompts.c.prompt, S.prompts.c.messages)
               .join_from(S.items, S.prompts).where(_I.id == _ITEM))
Q_TASK_CANDIDATES = select(_C.id, _C.text, _C.finish_reason).where(_C.id.in_(bindparam("ids", expanding=True)))
Q_SEEN = select(S.judgments).where(_J.id == bindparam("jid"))
Q_MY_LEASE = select(S.leases).where(_L.id == bindparam("lease"), _L.user_id == _UID)
Q_ITEM_FOR_WRITE = (select(S.items, S.prompts.c.provenance).join_from(S.items, S.prompts).where(_I.id == _ITEM)
                    .with_for_update(of=S.items, key_share=True))
Q_MY_PRIMARY = select(_J.id).where(_J.item_id == _ITEM, _J.user_id == _UID, _J.supersedes.is_(None), not_(_J.is_repeat))
U_ITEM_COUNT = update(S.items).where(_I.id == _ITEM).values(n_done=_I.n_done + 1)
U_LEASE_DONE = update(S.leases).where(_L.id == bindparam("lease")).values(done=True)
Q_ADVISORY = select(func.pg_advisory_xact_lock(7348))


def next_task(store: Store, user_id: int, now: float | None = None, rng: random.Random | None = None) -> dict | None:
    """The annotator's next task, or None when nothing is left for them."""
    now = time.time() if now is None else now
    with store.write() as conn:
        return _next_task(store, conn, user_id, now, rng, store.settings(conn))


def _next_task(store: Store, conn: Connection, user_id: int, now: float, rng: random.Random | None,
               cfg: dict) -> dict | None:
    rng = rng or random.Random(secrets.randbits(64))
    _serialise(store, conn)
    mine = conn.execute(Q_MY_OPEN_LEASE, {"uid": user_id, "now": now}).mappings().first()
    if mine is not None and not mine["is_repeat"]:
        item = conn.execute(Q_ITEM_STATE, {"b_item": mine["item_id"]}).one()
        if not item.is_gold and item.n_done >= cfg["overlap"]:  # filled by others after the lease lapsed
            conn.execute(U_LEASE_DONE, {"lease": mine["id"]})
            mine = None
    if mine is None:
        item_id, is_repeat = _choose_item(conn, user_id, now, cfg, rng)
        if item_id is None:
            return None
        order = list(conn.execute(Q_ITEM_STATE, {"b_item": item_id}).one().candidate_ids)
        rng.shuffle(order)
        mine = dict(id=secrets.token_hex(12), item_id=item_id, user_id=user_id, display_order=order,
                    is_repeat=is_repeat, served_at=now, expires_at=now + cfg["lease_seconds"], done=False)
        conn.execute(S.leases.insert(), mine)
    return _task(conn, mine, cfg)


def _serialise(store: Store, conn: Connection) -> None:
    """PostgreSQL: one hand-out or write at a time, taken before any row lock (so no deadlock with the
    foreign-key locks a lease insert takes). SQLite's BEGIN IMMEDIATE already serialises writers."""
    if not store.is_sqlite:
        conn.execute(Q_ADVISORY)


def _choose_item(conn: Connection, user_id: int, now: float, cfg: dict, rng: random.Random):
    params = {"uid": user_id, "now": now, "overlap": cfg["overlap"]}
    if cfg["repeat_rate"] > 0 and rng.random() < cfg["repeat_rate"]:
        row = conn.execute(Q_NEXT_REPEAT, params).first()
        if row:
            return row[0], True
    if cfg["gold_rate"] > 0 and rng.random() < cfg["gold_rate"]:
        row = conn.execute(Q_NEXT_GOLD, params).first()
        if row:
            return row[0], False
    row = conn.execute(Q_NEXT_ITEM, params).first()
    return (row[0], False) if row else (None, False)


def correction_task(store: Store, user_id: int, judgment_id: str) -> dict:
    """The task behind one of the annotator's own current judgments, shown again to correct it."""
    J = S.judgments.c
    newer = S.judgments.alias("newer")
    with store.read() as conn:
        old = conn.execute(select(S.judgments).where(J.id == judgment_id, J.user_id == user_id,
                                                     ~exists().where(newer.c.supersedes == J.id))).mappings().first()
        if old is None:
            raise NotFound("no such current judgment of yours")
        pseudo_lease = {"id": None, "item_id": old["item_id"], "display_order": old["display_order"],
                        "served_at": old["served_at"], "expires_at": None}
        task = _task(conn, pseudo_lease, store.settings(conn))
    task["supersedes"] = old["id"]
    task["previous"] = {"answer": old["answer"], "rationale": old["rationale"]}  # the page starts from it
    return task


def _task(conn: Connection, lease, cfg: dict) -> dict:
    item = conn.execute(Q_TASK_ITEM, {"b_item": lease["item_id"]}).mappings().one()
    rows = {r.id: r for r in conn.execute(Q_TASK_CANDIDATES, {"ids": list(item["candidate_ids"])})}
    return {"lease_id": lease["id"], "item_id": item["id"], "kind": item["kind"],
            "prompt": item["prompt"], "messages": item["messages"],
            "candidates": [{"id": cid, "text": rows[cid].text, "truncated": rows[cid].finish_reason == "length"}
                           for cid in lease["display_order"]],
            "served_at": lease["served_at"], "expires_at": lease["expires_at"],
            "guideline_version": cfg["guideline_version"], "flags": cfg["flags"], "aspects": cfg["aspects"],
            "ask_scores": item["kind"] == "rating" or bool(cfg["scores_on_comparisons"])}


def submit(store: Store, user_id: int, body: dict[str, Any], now: float | None = None,
           with_next: bool = False) -> tuple[str, dict, dict | None]:
    """Write one judgment. Returns ("created" | "duplicate", stored row, next task or None).

    Raises Conflict / NotFound / AnswerError. With ``with_next`` the annotator's next task is leased in
    the same transaction (one commit, one fsync per judgment).

    ``body``: id, answer, rationale, active_ms, and either lease_id (a new judgment) or supersedes
    (a correction of one of the annotator's own judgments).
    """
    now = time.time() if now is None else now
    with store.write() as conn:
        _serialise(store, conn)
        cfg = store.settings(conn)
        seen = conn.execute(Q_SEEN, {"jid": body["id"]}).mappings().first()
        if seen is not None:
            if seen["user_id"] != user_id:
                raise Conflict("this judgment id is already in use")
            return "duplicate", dict(seen), _next_task(store, conn, user_id, now, None, cfg) if with_next else None
        if body.get("supersedes"):
            row = _correction(conn, user_id, body)
        else:
            row = _from_lease(conn, user_id, body, now, cfg)
        item = conn.execute(Q_ITEM_FOR_WRITE, {"b_item": row["item_id"]}).mappings().one()
        flag_names = [f[0] for f in cfg["flags"]]
        answer = validate_answer(item["kind"], list(item["candidate_ids"]), body["answer"], flag_names,
                                 parse_aspects(cfg["aspects"]))
        counts = not row["is_repeat"] and not row.get("supersedes")
        if counts and not item["is_gold"] and item["n_done"] >= cfg["overlap"]:
            raise Conflict(f"item {item['id']} already has its {cfg['overlap']} judgments")
        if counts and conn.execute(Q_MY_PRIMARY, {"b_item": item["id"], "uid": user_id}).first():
            raise Conflict(f"you have already judged item {item['id']}")
        provenance = item["provenance"]
        stored = dict(id=body["id"], item_id=item["id"], user_id=user_id, lease_id=row.get("lease_id"),
                      kind=item["kind"], answer=answer, rationale=str(body.get("rationale") or "")[:10_000],
                      display_order=row["display_order"], served_at=row["served_at"], submitted_at=now,
                      active_ms=max(0, int(body.get("active_ms") or 0)), guideline_version=cfg["guideline_version"],
                      provenance=provenance, is_repeat=row["is_repeat"], is_gold=item["is_gold"],
                      supersedes=row.get("supersedes"))
        conn.execute(S.judgments.insert(), stored)
        if counts:
            conn.execute(U_ITEM_COUNT, {"b_item": item["id"]})
        if row.get("lease_id"):
            conn.execute(U_LEASE_DONE, {"lease": row["lease_id"]})
        return "created", stored, _next_task(store, conn, user_id, now, None, cfg) if with_next else None


def _from_lease(conn: Connection, user_id: int, body: dict, now: float, cfg: dict) -> dict:
    lease = conn.execute(Q_MY_LEASE, {"lease": str(body.get("lease_id") or ""), "uid": user_id}).mappings().first()
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
