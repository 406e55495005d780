"""Exports: formats the reward model and DPO read as they are, aggregation, manifest hashes."""

import hashlib
import json
import uuid

import pytest
from labeldata import write_candidates

from tuneloop.data.loading import read_records
from tuneloop.data.preferences import preference_pair, ranking
from tuneloop.feedback import assign
from tuneloop.feedback.export import export_all, export_pairs, pair_records, ranking_records
from tuneloop.feedback.importer import import_candidates
from tuneloop.feedback.panel import simulate


def _lease_and_answer(store, uid, answer_for):
    task = assign.next_task(store, uid)
    ids = [c["id"] for c in task["candidates"]]
    assign.submit(store, uid, {"id": uuid.uuid4().hex, "lease_id": task["lease_id"], "answer": answer_for(sorted(ids))})


def test_majority_soft_and_per_judgment_pairs(any_store, tmp_path):
    """One pair, three annotators: lo wins 'significantly' (3) and 'slightly' (1), hi wins once.
    majority → chosen = lo, margin = mean(3, 1) = 2; soft → p_chosen = 2/3; none → 3 records."""
    store = any_store
    import_candidates(store, write_candidates(tmp_path / "c.jsonl", 1, k=2))
    users = [store.create_user(f"u{i}", "annotator") for i in range(3)]
    answers = [lambda ids: {"outcome": "win", "winner": ids[0], "strength": "significantly"},
               lambda ids: {"outcome": "win", "winner": ids[0], "strength": "slightly"},
               lambda ids: {"outcome": "win", "winner": ids[1], "strength": "better"}]
    for uid, answer in zip(users, answers):
        _lease_and_answer(store, uid, answer)
    lo_text, hi_text = json.loads((tmp_path / "c.jsonl").read_text())["completions"]
    (major,) = pair_records(store, "majority")
    assert (major["chosen"], major["rejected"], major["margin"], major["votes"]) == (lo_text, hi_text, 2.0, 3)
    (soft,) = pair_records(store, "soft")
    assert soft["p_chosen"] == pytest.approx(2 / 3, abs=1e-12)
    assert len(pair_records(store, "none")) == 3


def test_ties_and_both_bad(any_store, tmp_path):
    store = any_store
    import_candidates(store, write_candidates(tmp_path / "c.jsonl", 2, k=2))
    uid = store.create_user("u", "annotator")
    _lease_and_answer(store, uid, lambda ids: {"outcome": "tie"})
    _lease_and_answer(store, uid, lambda ids: {"outcome": "both_bad"})
    records = pair_records(store, "majority")
    assert len(records) == 1 and records[0]["tie"] is True and "margin" not in records[0]


def test_rankings_export_and_aggregation(any_store, tmp_path):
    """Two annotators rank 3 candidates [[a], [b], [c]] and [[a], [c], [b]]: a beats both twice;
    b–c split 1–1, so Bradley–Terry and ranked pairs both put a first and tie b with c."""
    store = any_store
    import_candidates(store, write_candidates(tmp_path / "c.jsonl", 1, k=3), mode="ranking")
    u1, u2 = store.create_user("u1", "annotator"), store.create_user("u2", "annotator")
    _lease_and_answer(store, u1, lambda ids: {"ranking": [[ids[0]], [ids[1]], [ids[2]]]})
    _lease_and_answer(store, u2, lambda ids: {"ranking": [[ids[0]], [ids[2]], [ids[1]]]})
    raw = ranking_records(store, "none")
    assert [r["ranking"] for r in raw] == [[[0], [1], [2]], [[0], [2], [1]]]
    assert raw[0]["group_id"] == raw[1]["group_id"]
    assert ranking_records(store, "bradley_terry")[0]["ranking"] == [[0], [1, 2]]
    assert ranking_records(store, "ranked_pairs")[0]["ranking"] == [[0], [1, 2]]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_simulated_session_exports_what_the_reward_model_reads(tmp_path, request, backend):
    """The export needs no conversion: every pairs line parses as a PreferencePair and every rankings
    line as a Ranking with tuneloop's own preference validators; the manifest hashes match the files."""
    from labeldata import new_pg_database

    pairs_src = write_candidates(tmp_path / "p.jsonl", 8, k=3)
    ranks_src = write_candidates(tmp_path / "r.jsonl", 4, k=4, start=500)
    db = tmp_path / "labels.db" if backend == "sqlite" else new_pg_database(request.getfixturevalue("pg_server"))
    simulate(db, pairs_src, num_annotators=3, overlap=2, seed=0)
    simulate(db, ranks_src, num_annotators=3, overlap=2, seed=1, mode="ranking")
    manifest = export_all(db, tmp_path / "export")
    out = tmp_path / "export"
    assert sorted(p.name for p in out.iterdir()) == ["judgments.jsonl", "manifest.json", "pairs.jsonl",
                                                     "rankings.jsonl", "scores.jsonl"]
    pairs = [preference_pair(r) for r in read_records(out / "pairs.jsonl")]
    rankings = [ranking(r) for r in read_records(out / "rankings.jsonl")]
    assert len(pairs) == 8 * 3 and len(rankings) == 4 * 2
    assert all(p.margin >= 0 for p in pairs)
    for name, digest in manifest["sha256"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert json.loads((out / "manifest.json").read_text())["counts"]["judgments.jsonl"] == 8 * 3 * 2 + 4 * 2
    raw = [json.loads(line) for line in (out / "judgments.jsonl").read_text().splitlines()]
    assert {"annotator", "display_order", "served_at", "submitted_at", "active_ms", "guideline_version",
            "provenance", "superseded_by"} <= set(raw[0])
    with pytest.raises(FileExistsError):
        export_all(db, out)
    assert export_pairs(db, tmp_path / "pairs.jsonl") == 8 * 3 + 4 * 6  # rankings expanded into pairs too
