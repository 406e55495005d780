"""The store on SQLite and PostgreSQL: import, leases, exact overlap, idempotent writes, corrections,
gold and repeats, migrations, backup, integrity, and concurrent writers."""

import json
import threading
import uuid

import pytest
from labeldata import candidates_record, write_candidates
from sqlalchemy import select, text

from tuneloop.data.errors import DataError
from tuneloop.feedback import assign
from tuneloop.feedback import schema as S
from tuneloop.feedback.answers import AnswerError
from tuneloop.feedback.importer import import_candidates
from tuneloop.feedback.store import Store


def _users(store, n, prefix="u"):
    return [store.create_user(f"{prefix}{i}", "annotator") for i in range(n)]


def _judge(store, user_id, task, answer=None, jid=None, now=None):
    answer = answer or {"outcome": "win", "winner": task["candidates"][0]["id"], "strength": "better"}
    return assign.submit(store, user_id, {"id": jid or uuid.uuid4().hex, "lease_id": task["lease_id"],
                                          "answer": answer}, now=now)


# -- import -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, field", [
    (lambda r: r.pop("prompt_id"), "prompt_id"),
    (lambda r: r.update(completions=["only one"]), "completions"),
    (lambda r: r.update(completion_tokens=[1]), "completion_tokens"),
    (lambda r: r.update(finish_reasons=["eos", "eos", "boom"]), "finish_reasons[2]"),
    (lambda r: r.update(completions=["a", 3, "c"]), "completions[1]"),
    (lambda r: r.update(provenance="x"), "provenance"),
    (lambda r: r["messages"].append({"role": "robot", "content": "x"}), "messages[1]"),
])
def test_import_errors_name_file_line_and_field(tmp_path, store, change, field):
    import random

    rng = random.Random(0)
    good, bad = candidates_record(0, 3, rng), candidates_record(1, 3, rng)
    change(bad)
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError) as err:
        import_candidates(store, path)
    assert f"{path}:2" in str(err.value) and f"'{field}'" in str(err.value)
    assert store.counts()["prompts"] == 0  # nothing half-imported


def test_import_modes_and_idempotence(any_store, tmp_path):
    path = write_candidates(tmp_path / "c.jsonl", 4, k=4)
    assert import_candidates(any_store, path) == {"prompts": 4, "items": 24, "skipped": 0}  # C(4,2) = 6 each
    assert import_candidates(any_store, path) == {"prompts": 0, "items": 0, "skipped": 4}
    other = write_candidates(tmp_path / "r.jsonl", 3, k=4, start=100)
    assert import_candidates(any_store, other, mode="ranking")["items"] == 3
    few = write_candidates(tmp_path / "f.jsonl", 2, k=4, start=200)
    assert import_candidates(any_store, few, pairs_per_prompt=2)["items"] == 4
    changed = write_candidates(tmp_path / "x.jsonl", 1, k=4, seed=99)  # same prompt ids, new texts
    with pytest.raises(ValueError, match="different completions"):
        import_candidates(any_store, changed)


# -- leases and overlap -------------------------------------------------------------------------------------
def test_overlap_is_exact_and_nobody_judges_twice(any_store, tmp_path):
    import_candidates(any_store, write_candidates(tmp_path / "c.jsonl", 3, k=2))
    any_store.set_setting("overlap", 2)
    users = _users(any_store, 4)
    done = 0
    for _round in range(5):
        for uid in users:
            task = assign.next_task(any_store, uid)
            if task:
                _judge(any_store, uid, task)
                done += 1
    assert done == 3 * 2
    assert all(assign.next_task(any_store, uid) is None for uid in users)
    with any_store.read() as conn:
        pairs = conn.execute(select(S.judgments.c.item_id, S.judgments.c.user_id)).all()
    assert len(pairs) == len(set(pairs)) == 6
    assert any_store.check_integrity() == []


def test_lease_is_reused_and_expires(any_store, tmp_path):
    import_candidates(any_store, write_candidates(tmp_path / "c.jsonl", 1, k=2))
    any_store.set_setting("overlap", 1)
    a, b = _users(any_store, 2)
    first = assign.next_task(any_store, a, now=1000.0)
    assert assign.next_task(any_store, a, now=1001.0)["lease_id"] == first["lease_id"]  # reload = same task
    assert assign.next_task(any_store, b, now=1002.0) is None  # the only slot is leased to a
    later = 1000.0 + any_store.settings()["lease_seconds"] + 1
    task_b = assign.next_task(any_store, b, now=later)  # a's lease lapsed
    assert task_b is not None
    _judge(any_store, b, task_b, now=later)
    with pytest.raises(assign.Conflict, match="already has its 1 judgments"):
        _judge(any_store, a, first, now=later + 1)  # a comes back too late: overlap is never exceeded
    assert any_store.check_integrity() == []


def test_candidate_order_is_randomised_per_task(any_store, tmp_path):
    import_candidates(any_store, write_candidates(tmp_path / "c.jsonl", 1, k=4), mode="ranking")
    any_store.set_setting("overlap", 30)
    orders = {tuple(c["id"] for c in assign.next_task(any_store, uid)["candidates"]) for uid in _users(any_store, 30)}
    assert len(orders) > 5


# -- writes -------------------------------------------------------------------------------------------------
def test_retried_submit_is_harmless(any_store, tmp_path):
    import_candidates(any_store, write_candidates(tmp_path / "c.jsonl", 2, k=2))
    a, b = _users(any_store, 2)
    task = assign.next_task(any_store, a)
    jid = uuid.uuid4().hex
    assert _judge(any_store, a, task, jid=jid)[0] == "created"
    assert _judge(any_store, a, task, jid=jid)[0] == "duplicate"
    with pytest.raises(assign.Conflict, match="already in use"):
        _judge(any_store, b, assign.next_task(any_store, b), jid=jid)
    assert any_store.counts()["judgments"] == 1


def test_another_annotators_lease_is_not_found(any_store, tmp_path):
    import_candidates(any_store, write_candidates(tmp_path / "c.jsonl", 2, k=2))
    a, b = _users(any_store, 2)
    task = assign.next_task(any_store, a)
    with pytest.raises(assign.NotFound):
        _judge(any_store, b, task)


def test_correction_supersedes_and_never_overwrites(any_store, tmp_path):
    import_candidates(any_store, write_candidates(tmp_path / "c.jsonl", 1, k=2))
    (a,) = _users(any_store, 1)
    task = assign.next_task(any_store, a)
    _, first, _ = _judge(any_store, a, task)
    fix = {"id": uuid.uuid4().hex, "supersedes": first["id"], "answer": {"outcome": "tie"}}
    status, second, _ = assign.submit(any_store, a, fix)
    assert status == "created" and second["supersedes"] == first["id"]
    with pytest.raises(assign.Conflict, match="already corrected"):
        assign.submit(any_store, a, {**fix, "id": uuid.uuid4().hex})
    with any_store.read() as conn:
        current = assign.current_judgments(conn)
        n_done = conn.execute(select(S.items.c.n_done)).scalar_one()
    assert [j["id"] for j in current] == [second["id"]] and current[0]["answer"]["outcome"] == "tie"
    assert any_store.counts()["judgments"] == 2 and n_done == 1
    assert any_store.check_integrity() == []


def test_answers_are_validated_against_the_item(any_store, tmp_path):
    import_candidates(any_store, write_candidates(tmp_path / "c.jsonl", 1, k=3), mode="ranking")
    (a,) = _users(any_store, 1)
    task = assign.next_task(any_store, a)
    ids = sorted(c["id"] for c in task["candidates"])
    for bad, message in [({"ranking": [ids[:2]]}, "exactly once"), ({"outcome": "tie"}, "unknown field"),
                         ({"ranking": [ids], "ratings": {str(ids[0]): 9}}, "1–7"),
                         ({"ranking": [ids], "flags": {str(ids[0]): ["nope"]}}, "flags")]:
        with pytest.raises(AnswerError, match=message):
            _judge(any_store, a, task, answer=bad)
    ok = {"ranking": [[ids[2]], [ids[0], ids[1]]], "ratings": {str(ids[2]): 6}, "flags": {str(ids[0]): ["harmful"]}}
    assert _judge(any_store, a, task, answer=ok)[1]["answer"]["ranking"] == [[ids[2]], [ids[0], ids[1]]]


def test_gold_items_and_repeats(any_store, tmp_path):
    import_candidates(any_store, write_candidates(tmp_path / "c.jsonl", 3, k=2))
    import_candidates(any_store, write_candidates(tmp_path / "g.jsonl", 2, k=2, start=50, gold=True), gold=True)
    any_store.set_setting("gold_rate", 1.0)
    (a,) = _users(any_store, 1)
    task = assign.next_task(any_store, a)
    with any_store.read() as conn:
        gold = conn.execute(select(S.items.c.is_gold).where(S.items.c.id == task["item_id"])).scalar_one()
    assert gold
    _judge(any_store, a, task)
    any_store.set_setting("gold_rate", 0.0)
    _judge(any_store, a, assign.next_task(any_store, a))
    any_store.set_setting("repeat_rate", 1.0)
    repeat = assign.next_task(any_store, a)
    _, row, _ = _judge(any_store, a, repeat)
    assert row["is_repeat"]
    with any_store.read() as conn:
        counters = dict(conn.execute(select(S.items.c.id, S.items.c.n_done)).all())
    assert counters[repeat["item_id"]] == 1  # a repeat never counts toward the overlap
    assert any_store.check_integrity() == []


# -- schema, backup, concurrency ----------------------------------------------------------------------------
def test_migration_brings_an_old_store_forward(any_store):
    with any_store.write() as conn:
        conn.execute(text("ALTER TABLE api_tokens DROP COLUMN last_used_at"))
        conn.execute(text("UPDATE schema_version SET version = 1"))
    reopened = Store.open(any_store.location)
    assert reopened.schema_version() == 2
    reopened.create_user("boss", "admin", "a long password")
    assert reopened.resolve_token(reopened.issue_token("boss", ["read"])) is not None
    reopened.close()


def test_online_backup_while_writing(any_store, tmp_path):
    import_candidates(any_store, write_candidates(tmp_path / "c.jsonl", 20, k=2))
    users = _users(any_store, 3)
    stop = threading.Event()

    def writer():
        while not stop.is_set():
            task = assign.next_task(any_store, users[0])
            if task is None:
                return
            _judge(any_store, users[0], task)

    thread = threading.Thread(target=writer)
    thread.start()
    dest = any_store.backup(tmp_path / "backup.db")
    stop.set()
    thread.join()
    assert dest.exists() and dest.stat().st_size > 0
    if any_store.is_sqlite:
        copy = Store.open(dest)
        assert copy.counts()["items"] == 20 and copy.check_integrity() == []


def test_concurrent_writers_never_lock_or_overfill(any_store, tmp_path):
    """16 threads judging at once: no 'database is locked', overlap exact, every item done."""
    import_candidates(any_store, write_candidates(tmp_path / "c.jsonl", 20, k=2))
    any_store.set_setting("overlap", 3)
    users = _users(any_store, 16)
    errors, done = [], []

    def annotate(uid):
        try:
            task = assign.next_task(any_store, uid)
            while task:
                _, _, task = assign.submit(any_store, uid, {"id": uuid.uuid4().hex, "lease_id": task["lease_id"],
                                                            "answer": {"outcome": "tie"}}, with_next=True)
                done.append(uid)
        except Exception as err:  # noqa: BLE001 - the test reports any failure
            errors.append(repr(err))

    threads = [threading.Thread(target=annotate, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(done) == 20 * 3
    assert any_store.check_integrity() == []


def _process_worker(path: str, names: list[str], errors) -> None:
    """One OS process judging as several annotators (used by the multi-process test)."""
    try:
        store = Store.open(path)
        with store.read() as conn:
            ids = [store.user(conn, name=n)["id"] for n in names]
        tasks = {u: assign.next_task(store, u) for u in ids}
        while any(tasks.values()):
            for uid, task in tasks.items():
                if task:
                    _, _, tasks[uid] = assign.submit(store, uid, {"id": uuid.uuid4().hex, "lease_id": task["lease_id"],
                                                                  "answer": {"outcome": "tie"}}, with_next=True)
    except Exception as err:  # noqa: BLE001 - reported to the parent
        errors.put(repr(err))


def test_several_processes_share_one_sqlite_file(store, tmp_path):
    """Three processes (as a server and CLI commands would be) write at once: SQLite's busy_timeout and
    BEGIN IMMEDIATE serialise them; no 'database is locked', overlap exact."""
    import multiprocessing

    import_candidates(store, write_candidates(tmp_path / "c.jsonl", 30, k=2))
    store.set_setting("overlap", 3)
    names = [f"p{i}" for i in range(6)]
    for n in names:
        store.create_user(n, "annotator")
    ctx = multiprocessing.get_context("spawn")
    errors = ctx.Queue()
    procs = [ctx.Process(target=_process_worker, args=(store.location, names[i::3], errors)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert errors.empty(), errors.get()
    assert [p.exitcode for p in procs] == [0, 0, 0], "a worker process died (see its stderr above)"
    assert store.counts()["judgments"] == 30 * 3
    assert store.check_integrity() == []
