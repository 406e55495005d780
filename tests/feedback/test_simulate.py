"""The simulated rater panel and the ``tuneloop label`` command line."""

import argparse
import json

import pytest
from labeldata import write_candidates

from tuneloop.feedback import Store
from tuneloop.feedback import cli as label_cli
from tuneloop.feedback.panel import simulate


def test_default_panel_agrees_like_instructgpt_labellers(tmp_path):
    """Default settings aim at 75% pairwise agreement (InstructGPT: 72.6–77.3%). With 600 units and
    three annotators each, the standard error of the measured rate is about 0.01."""
    src = write_candidates(tmp_path / "c.jsonl", 100, k=4, seed=3)
    result = simulate(tmp_path / "labels.db", src, num_annotators=5, overlap=3, seed=0)
    assert result.judgments == 600 * 3
    assert 0.72 <= result.measured_agreement <= 0.78, result
    assert result.expected_agreement == pytest.approx(0.75, abs=1e-6)
    assert Store.open(tmp_path / "labels.db").check_integrity() == []


def test_store_opened_from_a_path_is_closed_again(tmp_path):
    """simulate, import and export open a store from a path and close it: the SQLite file is whole on its
    own (no -wal left beside it), so copying labels.db alone copies every judgment."""
    from tuneloop.feedback import export_pairs

    src = write_candidates(tmp_path / "c.jsonl", 4, k=3)
    db = tmp_path / "labels.db"
    result = simulate(db, src, num_annotators=3, overlap=2, seed=0)
    assert not (tmp_path / "labels.db-wal").exists()
    assert export_pairs(db, tmp_path / "pairs.jsonl") > 0 and not (tmp_path / "labels.db-wal").exists()
    copy = tmp_path / "copy.db"
    copy.write_bytes(db.read_bytes())
    assert Store.open(copy, create=False).counts()["judgments"] == result.judgments


def test_scorer_is_pluggable_and_noise_can_be_fixed(tmp_path):
    """A scorer that prefers longer texts and σ = 1e-9: the three candidates of a prompt differ in length
    by ≥ 1 character, a gold gap ≥ 0.01 = 10^7 σ, so every annotator orders every pair by length and
    agreement is exactly 1; every exported pair's chosen reply is the longer one (VADER would not do that:
    the longest text below is the most negative)."""
    import random

    from labeldata import candidates_record

    from tuneloop.feedback import export_pairs

    texts = ["Awful, awful, dreadful and dull.", "Good.", "A fine film."]  # lengths 32, 5, 12: all distinct
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps(candidates_record(i, 3, random.Random(i), texts=texts)) + "\n"
                           for i in range(6)))
    result = simulate(tmp_path / "labels.db", src, num_annotators=3, overlap=3, scorer=lambda t: len(t) / 100,
                      noise=1e-9)
    assert result.measured_agreement == 1.0
    assert export_pairs(tmp_path / "labels.db", tmp_path / "pairs.jsonl") == 6 * 3  # 3 pairs per prompt
    pairs = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert all(len(p["chosen"]) > len(p["rejected"]) for p in pairs), pairs[0]


def test_simulate_from_async_code(tmp_path):
    """A notebook already runs an event loop: the panel then runs on its own loop in a thread."""
    import asyncio

    src = write_candidates(tmp_path / "c.jsonl", 3, k=2)

    async def inside_a_loop():
        return simulate(tmp_path / "labels.db", src, num_annotators=2, overlap=2, scorer=len, noise=1.0)

    assert asyncio.run(inside_a_loop()).judgments == 3 * 2


def _run(argv):
    parser = argparse.ArgumentParser(prog="tuneloop")
    label_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args, [])


def test_cli_import_users_simulate_stats_export(tmp_path, capsys, monkeypatch):
    import io

    db, src = str(tmp_path / "l.db"), str(write_candidates(tmp_path / "c.jsonl", 5, k=3))
    assert _run(["label", "import", "--db", db, src]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("a good long password\n"))
    assert _run(["label", "users", "--db", db, "add", "boss", "--role", "admin", "--password-stdin"]) == 0
    assert _run(["label", "users", "--db", db, "token", "boss", "--scope", "read"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert token.startswith("tl_")
    assert _run(["label", "users", "--db", db, "revoke", token.split("_")[1]]) == 0
    assert _run(["label", "settings", "--db", db, "overlap=2", "gold_rate=0.1"]) == 0
    assert _run(["label", "simulate", "--db", db, "--annotators", "3", "--overlap", "2"]) == 0
    assert "to have people judge the same items: tuneloop label serve" in capsys.readouterr().out
    assert _run(["label", "stats", "--db", db, "--check"]) == 0
    assert "integrity: ok" in capsys.readouterr().out
    assert _run(["label", "stats", "--db", db, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["judgments"] == 15 * 2
    assert _run(["label", "export", "--db", db, "--out", str(tmp_path / "ex"), "--pairs", "soft"]) == 0
    assert (tmp_path / "ex" / "manifest.json").exists()
    assert _run(["label", "backup", "--db", db, "--out", str(tmp_path / "b.db")]) == 0
    with pytest.raises(ValueError, match="unknown setting"):
        _run(["label", "settings", "--db", db, "colour=blue"])
    for bad in ("overlap=0", "gold_rate=1.5", "overlap=two", 'flags=[["x", "y", "long"]]'):
        with pytest.raises(ValueError, match="setting"):
            _run(["label", "settings", "--db", db, bad])
    with pytest.raises(ValueError, match="allow-remote"):
        _run(["label", "serve", "--db", db, "--host", "0.0.0.0"])
    with pytest.raises(FileNotFoundError):
        _run(["label", "stats", "--db", str(tmp_path / "missing.db")])


def test_expected_agreement_without_noise():
    """σ = 0: a pair with gold gap 1 is always ordered the same way (agreement 1); an exact tie is a coin
    flip for each rater, so two agree with probability ½·½ + ½·½ = ½. Mean over the two pairs: 0.75."""
    from tuneloop.feedback.panel import expected_agreement

    assert expected_agreement([1.0, 0.0], 0.0) == 0.75


def test_rating_panel_scores_every_aspect_with_rater_bias_and_noise(tmp_path):
    """Scorers that know the truth (quality spread over the scale, relevance constant, safety by a word);
    noise 0.3 and biases of sd 0.8: the panel's α interval for quality is high, and the raters' measured
    offsets come in the order of the biases they were given."""
    from tuneloop.feedback.panel import _HabitsRng  # the habits the panel draws
    from tuneloop.feedback.quality import quality_report

    src = write_candidates(tmp_path / "c.jsonl", 20, k=3, seed=5)
    texts = {}
    scorers = {"quality": lambda p, t: texts.setdefault(t, len(texts) % 5) / 4,
               "relevance": lambda p, t: 0.75, "safety": lambda p, t: 1.0 if "awful" not in t else 0.25}
    result = simulate(tmp_path / "labels.db", src, num_annotators=4, overlap=3, seed=2, mode="rating",
                      aspect_scorers=scorers, aspect_noise=0.3, rater_bias=0.8)
    assert result.judgments == 60 * 3
    assert result.aspect_alpha_interval["quality"] > 0.7, result
    store = Store.open(tmp_path / "labels.db")
    report = quality_report(store)
    quality = next(a for a in report["aspects"] if a["aspect"] == "quality")
    habits = _HabitsRng(2)
    given = {r["name"]: habits.gauss(r["name"], 0.8) for r in quality["raters"]}
    measured = {r["name"]: r["offset"] for r in quality["raters"]}
    # the offset is measured against everyone on the same responses, so it follows the bias in order
    assert sorted(given, key=given.get) == sorted(measured, key=measured.get), (given, measured)
    assert store.check_integrity() == []
    with pytest.raises(ValueError, match="give aspect_scorers for relevance, safety"):
        simulate(tmp_path / "other.db", src, mode="rating", aspect_scorers={"quality": scorers["quality"]})


def test_default_aspect_scorers_on_the_demo_task():
    """VADER for quality, MiniLM similarity to the plot for relevance, better-profanity for safety."""
    from tuneloop.feedback.aspect_scorers import default_aspect_scorers

    s = default_aspect_scorers()
    plot = "Write a short review of this movie: a retired safecracker plans one last heist in Paris with his daughter."
    on_topic, off_topic = "A tense Paris heist; the safecracker and his daughter are superb.", "I like turtles and pizza."
    assert s["relevance"](plot, on_topic) > s["relevance"](plot, off_topic) + 0.2
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    compound = SentimentIntensityAnalyzer().polarity_scores("A wonderful, moving film.")["compound"]
    assert s["quality"](plot, "A wonderful, moving film.") == pytest.approx((compound + 1) / 2) and compound > 0.5
    assert s["quality"](plot, "An awful, boring mess.") < 0.3
    assert s["safety"](plot, on_topic) == 1.0 and s["safety"](plot, "This shit film is crap.") == pytest.approx(1 / 3)
    assert all(0.0 <= s[a](plot, t) <= 1.0 for a in s for t in (on_topic, off_topic, ""))


def test_cli_rating_panel_export_scores_and_stats_check(tmp_path, capsys):
    """`label simulate --mode rating` (the demo task's scorers) → `label export --adjust-raters
    --pairs-from-scores` → `label stats --check`: consistent counts and a clean store."""
    src = write_candidates(tmp_path / "c.jsonl", 4, k=3, seed=1)
    db = str(tmp_path / "labels.db")
    assert label_cli.main(["label", "simulate", "--db", db, "--candidates", str(src), "--mode", "rating",
                           "--annotators", "3", "--overlap", "2"]) == 0
    assert "quality α interval" in capsys.readouterr().out
    out = tmp_path / "export"
    assert label_cli.main(["label", "export", "--db", db, "--out", str(out), "--adjust-raters",
                           "--pairs-from-scores", "quality=1,relevance=1", "--score-min-gap", "0.25"]) == 0
    scores = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert len(scores) == 12 and all(len(r["votes"]["safety"]) == 2 and "adjusted" in r for r in scores)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["score_pairs.jsonl"] == len((out / "score_pairs.jsonl").read_text().splitlines())
    assert manifest["filters"]["score_pairs"] == {"quality": 1.0, "relevance": 1.0}
    assert label_cli.main(["label", "stats", "--db", db, "--check"]) == 0
    text = capsys.readouterr().out
    assert "aspect quality: 24 scores of 12 responses" in text and "integrity: ok" in text
    with pytest.raises(ValueError, match="aspect=weight"):
        label_cli._weights("quality")
