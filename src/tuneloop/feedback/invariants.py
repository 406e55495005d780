"""The store's invariants, checked from the rows themselves (``tuneloop label stats --check``).

Kept apart from ``assign.py`` (which writes the rows) so that ``store.py`` can run the check without
importing the module that imports it: the layering is schema ← invariants ← store ← assign.
"""

from __future__ import annotations

from sqlalchemy import func, not_, select
from sqlalchemy.engine import Connection

from tuneloop.feedback import schema as S


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
