"""Preference data: pairs, HH-RLHF transcripts, rankings, KTO examples, weights and prompt splits."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneloop.data import load_records
from tuneloop.data.errors import DataError
from tuneloop.data.formats import sft_messages
from tuneloop.data.loading import Record
from tuneloop.data.preferences import (
    pair_weights,
    preference_pair,
    preference_pairs,
    ranking,
    unpaired_example,
    unpaired_examples,
)
from tuneloop.data.split import split_by_prompt

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless" / "pairs.jsonl"


def rec(data, path="prefs.jsonl", line=3) -> Record:
    return Record(path, line, "line", data)


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


def error_of(fn, data, path="prefs.jsonl") -> DataError:
    with pytest.raises(DataError) as info:
        fn(rec(data, path=path))
    assert info.value.path == path and info.value.line == 3
    return info.value


# --- pairs -----------------------------------------------------------------------------------

def test_text_pair_with_margin():
    pair = preference_pair(rec({"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away.", "margin": 2}))
    assert pair.prompt == [user("Hi?")]
    assert pair.chosen == [bot("Hello!")] and pair.rejected == [bot("Go away.")]
    assert pair.margin == 2.0 and pair.tie is False and pair.source == "prefs.jsonl:3"


def test_message_pair_and_tie():
    pair = preference_pair(rec({"prompt": [{"role": "system", "content": "Be brief."}, user("Hi?")],
                                "chosen": [bot("Hello")], "rejected": [bot("Hey")], "tie": True}))
    assert pair.tie and pair.margin == 0.0 and len(pair.prompt) == 2


def test_empty_reply_is_a_response_but_empty_prompt_is_not():
    assert preference_pair(rec({"prompt": "Q", "chosen": "", "rejected": "harmful"})).chosen == [bot("")]
    assert error_of(preference_pair, {"prompt": "  ", "chosen": "a", "rejected": "b"}).field == "prompt"


def test_same_prompt_same_group():
    a = preference_pair(rec({"prompt": "Q", "chosen": "a", "rejected": "b"}))
    b = preference_pair(rec({"prompt": [user("Q")], "chosen": "c", "rejected": "d"}))
    c = preference_pair(rec({"prompt": "Q2", "chosen": "a", "rejected": "b"}))
    assert a.group == b.group != c.group


@pytest.mark.parametrize("data, field, words", [
    ({"prompt": "Q", "rejected": "b"}, "chosen", "missing"),
    ({"prompt": "Q", "chosen": 5, "rejected": "b"}, "chosen", "expected a string, got int"),
    ({"prompt": "Q", "chosen": [], "rejected": "b"}, "chosen", "non-empty list of messages"),
    ({"prompt": [], "chosen": "a", "rejected": "b"}, "prompt", "non-empty list of messages"),
    ({"prompt": [bot("x")], "chosen": "a", "rejected": "b"}, "prompt", "must end on a user turn"),
    ({"prompt": "Q", "chosen": [user("a")], "rejected": "b"}, "chosen[0].role", "assistant turns only"),
    ({"prompt": "Q", "chosen": [{"role": "assistant"}], "rejected": "b"}, "chosen[0].content", "missing"),
    ({"prompt": "Q", "chosen": "a", "rejected": "b", "margin": "big"}, "margin", "expected a finite number"),
    ({"prompt": "Q", "chosen": "a", "rejected": "b", "margin": True}, "margin", "expected a finite number"),
    ({"prompt": "Q", "chosen": "a", "rejected": "b", "margin": -1}, "margin", "must be ≥ 0"),
    ({"prompt": "Q", "chosen": "a", "rejected": "b", "tie": "yes"}, "tie", "expected true or false"),
    ({"prompt": "Q", "chosen": "a", "rejected": "b", "tie": True, "margin": 1}, "margin", "tie cannot carry"),
    ({"prompt": "Q", "chosen": "same", "rejected": "same"}, "rejected", "same reply"),
])
def test_bad_pairs_name_the_field(data, field, words):
    err = error_of(preference_pair, data)
    assert err.field == field and words in str(err), str(err)
    assert str(err).startswith(f"prefs.jsonl:3: field '{field}':")


def test_csv_cells_are_coerced_only_for_csv():
    data = {"prompt": "Q", "chosen": "a", "rejected": "b", "margin": "1.5", "tie": ""}
    pair = preference_pair(rec(data, path="prefs.csv"))
    assert pair.margin == 1.5 and pair.tie is False
    assert error_of(preference_pair, data).field == "tie"  # the same cells in JSONL are wrong types
    assert error_of(preference_pair, {**data, "tie": False}).field == "margin"


# --- HH-RLHF transcripts ---------------------------------------------------------------------

def test_hh_transcript_splits_at_the_last_reply():
    shared = "\n\nHuman: How do I bake bread?\n\nAssistant: Flour, water, yeast.\n\nHuman: How long?"
    pair = preference_pair(rec({"chosen": shared + "\n\nAssistant: About an hour.",
                                "rejected": shared + "\n\nAssistant: Human: no idea"}))
    assert pair.prompt == [user("How do I bake bread?"), bot("Flour, water, yeast."), user("How long?")]
    assert pair.chosen == [bot("About an hour.")]
    assert pair.rejected == [bot("Human: no idea")]  # a label without a blank line before it is text


def test_hh_consecutive_assistant_blocks_merge_and_empty_reply():
    """Real HH data has 'Assistant:' twice in a row and empty final replies; both parse."""
    pair = preference_pair(rec({"chosen": "\n\nHuman: Q\n\nAssistant: ",
                                "rejected": "\n\nHuman: Q\n\nAssistant: Part one.\n\nAssistant: Part two."}))
    assert pair.chosen == [bot("")] and pair.rejected == [bot("Part one.\n\nPart two.")]


def test_message_conversations_without_prompt():
    pair = preference_pair(rec({"chosen": [user("Q"), bot("good")], "rejected": [user("Q"), bot("bad")]}))
    assert pair.prompt == [user("Q")] and pair.chosen == [bot("good")]


@pytest.mark.parametrize("chosen, rejected, field, words", [
    ("\n\nHuman: A\n\nAssistant: x", "\n\nHuman: B\n\nAssistant: y", "rejected", "share no prompt"),
    ("\n\nHuman: A\n\nAssistant: x", "\n\nHuman: A\n\nAssistant: x", "chosen", "no reply after the shared"),
    ("\n\nHuman: A\n\nAssistant: x\n\nHuman: B\n\nAssistant: y",
     "\n\nHuman: A\n\nAssistant: z\n\nHuman: B\n\nAssistant: y", "chosen", "from turn 2 on"),
    ("Hello there", "\n\nHuman: A\n\nAssistant: x", "chosen", "expected a transcript"),
    ("\n\nHuman: A\n\nAssistant: x", ["not", "messages"], "rejected", "both be transcripts"),
    ("\n\nHuman: \n\nAssistant: x", "\n\nHuman: \n\nAssistant: y", "chosen", "prompt turn 1 (user) is empty"),
])
def test_bad_transcripts(chosen, rejected, field, words):
    err = error_of(preference_pair, {"chosen": chosen, "rejected": rejected})
    assert err.field == field and words in str(err), str(err)


def test_all_real_hh_rlhf_pairs_parse():
    """All 1,800 pairs of ../shared/data/hh-rlhf-harmless parse; every prompt ends on a user turn."""
    assert HH.exists(), f"{HH} is missing: the tests expect ../shared beside the checkout"
    pairs = preference_pairs(load_records(HH))
    assert len(pairs) == 1800
    assert all(p.prompt[-1]["role"] == "user" and p.chosen != p.rejected for p in pairs)
    assert all(len(p.chosen) == len(p.rejected) == 1 for p in pairs)
    train, held_out = split_by_prompt(pairs, 0.1, seed=0)
    assert len(held_out) == 180 and not {p.group for p in train} & {p.group for p in held_out}


# --- rankings --------------------------------------------------------------------------------

def test_ranking_expands_to_pairs_with_ties():
    """Ranking [[1], [0, 2]]: pairs (1 ≻ 0), (1 ≻ 2); with tie pairs also 0 ~ 2. Group ranks (1, 0, 1)."""
    r = ranking(rec({"prompt": "Q", "completions": ["a", "b", "c"], "ranking": [[1], [0, 2]]}))
    assert r.rank_groups() == [1, 0, 1]
    assert [(p.chosen[0]["content"], p.rejected[0]["content"], p.tie) for p in r.pairs()] == \
        [("b", "a", False), ("b", "c", False)]
    with_ties = r.pairs(include_tie_pairs=True)
    assert [(p.chosen[0]["content"], p.rejected[0]["content"], p.tie) for p in with_ties][-1] == ("a", "c", True)
    assert {p.group for p in with_ties} == {r.group}


def test_ranking_bare_indices_are_groups_of_one():
    r = ranking(rec({"prompt": "Q", "completions": ["a", "b", "c"], "ranking": [2, 0, 1]}))
    assert r.tie_groups == [[2], [0], [1]] and len(r.pairs()) == 3


@pytest.mark.parametrize("data, field, words", [
    ({"prompt": "Q", "completions": ["a", "b"], "ranking": [[0, 1], [1]]}, "ranking", "appears twice"),
    ({"prompt": "Q", "completions": ["a", "b", "c"], "ranking": [[0], [2]]}, "ranking", "completions [1] are not"),
    ({"prompt": "Q", "completions": ["a", "b"], "ranking": [[0], [2]]}, "ranking[1]", "not a completion index"),
    ({"prompt": "Q", "completions": ["a", "b"], "ranking": [[0], []]}, "ranking[1]", "non-empty list"),
    ({"prompt": "Q", "completions": ["a", "b"], "ranking": []}, "ranking", "non-empty list of tie groups"),
    ({"prompt": "Q", "completions": ["a"], "ranking": [[0]]}, "completions", "at least 2"),
    ({"prompt": "Q", "completions": ["a", 3], "ranking": [[0], [1]]}, "completions[1]", "expected a string"),
    ({"prompt": "Q", "completions": ["a", "b"]}, "ranking", "missing"),
])
def test_bad_rankings(data, field, words):
    err = error_of(ranking, data)
    assert err.field == field and words in str(err), str(err)


def test_preference_pairs_mixes_pairs_and_rankings():
    records = [rec({"prompt": "Q1", "chosen": "a", "rejected": "b"}),
               rec({"prompt": "Q2", "completions": ["x", "y", "z"], "ranking": [[0], [1], [2]]})]
    pairs = preference_pairs(records)
    assert len(pairs) == 4
    assert pair_weights(pairs) == [1.0, 1 / 3, 1 / 3, 1 / 3]


# --- KTO -------------------------------------------------------------------------------------

def test_unpaired_examples():
    ex = unpaired_example(rec({"prompt": "Q", "completion": "fine", "label": False}))
    assert ex.desirable is False and ex.completion == [bot("fine")]
    assert error_of(unpaired_example, {"prompt": "Q", "completion": "x", "label": 1}).field == "label"
    assert error_of(unpaired_example, {"prompt": "Q", "label": True}).field == "completion"
    from_pairs = unpaired_examples([rec({"prompt": "Q", "chosen": "a", "rejected": "b"}),
                                    rec({"prompt": "Q", "chosen": "c", "rejected": "d", "tie": True})])
    assert [(e.completion[0]["content"], e.desirable) for e in from_pairs] == [("a", True), ("b", False)]


# --- splits ----------------------------------------------------------------------------------

def test_split_by_prompt_is_seeded_and_disjoint():
    records = [rec({"prompt": f"Q{i % 10}", "chosen": f"a{i}", "rejected": f"b{i}"}) for i in range(40)]
    pairs = preference_pairs(records)
    train, held_out = split_by_prompt(pairs, 0.2, seed=7)
    assert len({p.group for p in held_out}) == 2 and len(held_out) == 8 and len(train) == 32
    assert not {p.group for p in train} & {p.group for p in held_out}
    assert split_by_prompt(pairs, 0.2, seed=7) == (train, held_out)
    assert split_by_prompt(list(reversed(pairs)), 0.2, seed=7)[1] == list(reversed(held_out))  # order-free
    assert len(split_by_prompt(pairs[:2], 0.01, seed=0)[1]) == 1  # at least one prompt held out
    assert split_by_prompt(pairs, 0.0, seed=0) == (pairs, [])


def test_formats_helpers_keep_their_behaviour():
    """The refactor of formats (public text_field/messages_field) keeps empty contents an SFT error."""
    with pytest.raises(DataError, match="is empty"):
        sft_messages(rec({"messages": [user("Q"), bot(" ")]}))
