"""Aspect scores (issue 13): the aspects setting, rating items, scores on comparisons, per-aspect agreement,
scores.jsonl (plain and rater-adjusted) and pairs derived from scores."""

import json
import uuid

import pytest
from labeldata import write_candidates

from tuneloop.feedback import assign
from tuneloop.feedback.answers import AnswerError
from tuneloop.feedback.aspects import DEFAULT_ASPECTS, parse_aspects
from tuneloop.feedback.export import export_all, pairs_from_scores, score_records
from tuneloop.feedback.importer import import_candidates
from tuneloop.feedback.quality import quality_report


def _rate(store, uid, scores_for):
    task = assign.next_task(store, uid)
    (cand,) = task["candidates"]
    answer = {"scores": {str(cand["id"]): scores_for(cand["id"])}}
    return assign.submit(store, uid, {"id": uuid.uuid4().hex, "lease_id": task["lease_id"], "answer": answer})


def test_default_aspects_and_bad_configs_are_clear_errors(store):
    assert [a.name for a in parse_aspects(DEFAULT_ASPECTS)] == ["quality", "relevance", "safety"]
    assert all(a.scale == (1, 5) for a in parse_aspects(store.settings()["aspects"]))
    ok = {"name": "humour", "scale": [1, 5], "guideline": "Is it funny?", "key": "f"}
    for bad, message in [
        ([], "1–8"), ([{**ok, "name": "Bad Name"}], r"aspects\[0\].name"),
        ([{**ok, "scale": [5, 1]}], r"aspects\[0\].scale"), ([{**ok, "scale": [1, 10]}], r"aspects\[0\].scale"),
        ([{**ok, "scale": [1.0, 5]}], r"aspects\[0\].scale"), ([{**ok, "key": "u"}], r"aspects\[0\].key"),
        ([{**ok, "key": "h"}], r"aspects\[0\].key"),  # a flag's key
        ([ok, {**ok, "key": "g"}], r"aspects\[1\].name"), ([{**ok, "extra": 1}], "exactly the fields"),
        ([{**ok, "guideline": " "}], "guideline"),
    ]:
        with pytest.raises(ValueError, match=message):
            store.set_setting("aspects", bad)
    store.set_setting("aspects", [ok])
    with pytest.raises(ValueError, match="key"):  # a flag may not take an aspect's key either
        store.set_setting("flags", [["funny", "tries too hard", "f"]])


def test_rating_items_need_every_aspect_in_range(any_store, tmp_path):
    store = any_store
    import_candidates(store, write_candidates(tmp_path / "c.jsonl", 2, k=2), mode="rating")
    assert store.counts()["items"] == 4  # one item per response
    uid = store.create_user("ann", "annotator")
    task = assign.next_task(store, uid)
    assert task["kind"] == "rating" and task["ask_scores"] and [a["name"] for a in task["aspects"]] == [
        "quality", "relevance", "safety"]
    cid = str(task["candidates"][0]["id"])
    for answer, field in [({"scores": {cid: {"quality": 4, "relevance": 5}}}, f"answer.scores.{cid}"),
                          ({"scores": {cid: {"quality": 6, "relevance": 5, "safety": 5}}}, f"answer.scores.{cid}.quality"),
                          ({"scores": {cid: {"quality": 4.0, "relevance": 5, "safety": 5}}}, f"answer.scores.{cid}.quality"),
                          ({"scores": {cid: {"quality": 0, "relevance": 5, "safety": 5}}}, f"answer.scores.{cid}.quality"),
                          ({"outcome": "tie"}, "answer"), ({"scores": {cid: {}}, "ratings": {}}, "answer")]:
        with pytest.raises(AnswerError) as err:
            assign.submit(store, uid, {"id": uuid.uuid4().hex, "lease_id": task["lease_id"], "answer": answer})
        assert err.value.field == field, (answer, str(err.value))
    good = {"scores": {cid: {"quality": 4, "relevance": 5, "safety": 3}}, "flags": {cid: ["harmful"]}}
    status, row, _ = assign.submit(store, uid, {"id": uuid.uuid4().hex, "lease_id": task["lease_id"], "answer": good})
    assert status == "created" and row["answer"]["scores"] == good["scores"]
    with pytest.raises(ValueError, match="gold items"):
        import_candidates(store, write_candidates(tmp_path / "g.jsonl", 1, k=2, gold=True), mode="rating", gold=True)


def test_scores_agreement_offsets_and_exports_by_hand(any_store, tmp_path):
    """Two responses (one prompt), two annotators, quality only (others constant):
    a gives 5 and 4, b gives 3 and 2 → per response quality mean 4 and 3; α interval over units [5, 3], [4, 2]:
    coincidences o53 = o35 = o42 = o24 = 1, n = 4, D_o = 4·(4)/4 = 4 (δ² = 4 each);
    D_e = Σ n_c n_k (c−k)² / (n(n−1)) over values 5, 4, 3, 2 (one each) = 2·(1 + 4 + 9 + 1 + 4 + 1)/12 = 40/12;
    α = 1 − 4 / (10/3) = −0.2. Offsets: a's mean 4.5, pooled 3.5 → +1; b → −1; scales 0.5/√1.25 = 1/√5.
    Rater-adjusted: a's 5 → 3.5 + (5 − 4.5)·√5, b's 3 → 3.5 + (3 − 2.5)·√5: mean 3.5 + 0.5√5 for response 1,
    3.5 − 0.5√5 for response 2 (the raters' disagreement about level is gone, the order stays)."""
    store = any_store
    import_candidates(store, write_candidates(tmp_path / "c.jsonl", 1, k=2), mode="rating")
    store.set_setting("overlap", 2)
    a, b = store.create_user("a", "annotator"), store.create_user("b", "annotator")
    with store.read() as conn:
        first, second = sorted(c for (c,) in conn.exec_driver_sql("SELECT id FROM candidates"))
    given = {a: {first: 5, second: 4}, b: {first: 3, second: 2}}
    for uid in (a, b):
        for _ in range(2):
            _rate(store, uid, lambda cid, uid=uid: {"quality": given[uid][cid], "relevance": 4, "safety": 5})
    report = quality_report(store)
    quality = next(x for x in report["aspects"] if x["aspect"] == "quality")
    assert quality["responses_with_2plus"] == 2 and quality["mean"] == pytest.approx(3.5)
    assert quality["alpha_interval"] == pytest.approx(-0.2, abs=1e-12)
    raters = {r["name"]: r for r in quality["raters"]}
    assert raters["a"]["offset"] == pytest.approx(1.0) and raters["b"]["offset"] == pytest.approx(-1.0)
    assert raters["a"]["scale"] == pytest.approx(5 ** -0.5, abs=1e-12)
    records = {r["candidate_id"]: r for r in score_records(store, adjust_raters=True)}
    assert records[first]["scores"] == {"quality": 4.0, "relevance": 4.0, "safety": 5.0}
    assert records[first]["votes"]["quality"] == [5, 3]
    assert records[first]["adjusted"]["quality"] == pytest.approx(3.5 + 0.5 * 5 ** 0.5, abs=1e-12)
    assert records[second]["adjusted"]["quality"] == pytest.approx(3.5 - 0.5 * 5 ** 0.5, abs=1e-12)
    pairs = pairs_from_scores(list(records.values()), {"quality": 1.0}, min_gap=0.5)
    assert len(pairs) == 1 and pairs[0]["chosen"] == records[first]["response"] and pairs[0]["margin"] == 1.0
    assert pairs_from_scores(list(records.values()), {"quality": 1.0}, min_gap=1.5) == []
    # equal weights over three aspects: (4 + 4 + 5)/3 − (3 + 4 + 5)/3 = 1/3 < 0.5 → no pair
    assert pairs_from_scores(list(records.values()), None, min_gap=0.5) == []
    manifest = export_all(store, tmp_path / "export", adjust_raters=True, score_pairs={"quality": 1.0})
    assert manifest["counts"]["scores.jsonl"] == 2 and manifest["counts"]["score_pairs.jsonl"] == 1
    lines = (tmp_path / "export" / "score_pairs.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["source"] == "scores" and store.check_integrity() == []


def test_pairwise_items_may_carry_aspect_scores(store, tmp_path):
    import_candidates(store, write_candidates(tmp_path / "c.jsonl", 1, k=2))
    uid = store.create_user("ann", "annotator")
    task = assign.next_task(store, uid)
    assert task["ask_scores"] is False
    store.set_setting("scores_on_comparisons", True)
    task = assign.next_task(store, uid)
    assert task["ask_scores"] is True
    x, y = (c["id"] for c in task["candidates"])
    answer = {"outcome": "win", "winner": x, "scores": {str(x): {"safety": 5}, str(y): {"safety": 1}}}
    _, row, _ = assign.submit(store, uid, {"id": uuid.uuid4().hex, "lease_id": task["lease_id"], "answer": answer})
    assert row["answer"]["scores"] == {str(x): {"safety": 5}, str(y): {"safety": 1}}
    assert {r["candidate_id"]: r["scores"] for r in score_records(store)} == {x: {"safety": 5.0}, y: {"safety": 1.0}}
