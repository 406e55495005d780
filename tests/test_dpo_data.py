"""DPO data: tokenisation matches SFT's masks, truncation, every accepted input form, bad inputs."""

from __future__ import annotations

import json

import pytest

from datafiles import write_jsonl
from tuneloop.data import DataError, load_records
from tuneloop.data.bundled import chatterbot_pairs
from tuneloop.data.chat import render_prompt, render_reply, render_with_mask
from tuneloop.data.preferences import preference_pairs
from tuneloop.train.dpo_data import Limits, load_preference_data

WIDE = Limits(max_length=4096, max_prompt_length=2048, too_long="truncate")


def pair_rows(n: int, offset: int = 7) -> list[dict]:
    """n pairs of distinct prompts and replies of different lengths: chosen is the prompt's own reply,
    rejected the reply of another prompt. Every third prompt is a multi-turn conversation."""
    source = chatterbot_pairs()
    rows = []
    for i in range(n):
        prompt, chosen = source[i]
        rejected = source[(i + offset) % len(source)][1]
        if i % 3 == 2:
            prompt = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello."},
                      {"role": "user", "content": prompt}]
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def test_response_tokens_are_the_sft_answer_tokens(tiny_tokenizer):
    """Single-turn: prompt tokens are what generation sees, response tokens exactly SFT's trained tokens."""
    prompt = [{"role": "user", "content": "What is a movie?"}]
    reply = [{"role": "assistant", "content": "A story told in moving pictures."}]
    ids, mask = render_reply(tiny_tokenizer, prompt, reply)
    doc = render_with_mask(tiny_tokenizer, prompt + reply)
    prompt_ids = render_prompt(tiny_tokenizer, prompt)
    assert doc.input_ids[:len(prompt_ids)] == prompt_ids
    assert prompt_ids + ids == doc.input_ids[:len(prompt_ids) + len(ids)]
    assert ids == [t for t, m in zip(doc.input_ids, doc.loss_mask) if m]
    assert mask == [1] * len(ids)
    assert tiny_tokenizer.decode(ids).endswith("<|im_end|>")


def test_multi_turn_response_masks_the_template_separator(tiny_tokenizer):
    prompt = [{"role": "user", "content": "Two answers please."}]
    reply = [{"role": "assistant", "content": "One."}, {"role": "assistant", "content": "Two."}]
    ids, mask = render_reply(tiny_tokenizer, prompt, reply)
    doc = render_with_mask(tiny_tokenizer, prompt + reply)
    start = len(render_prompt(tiny_tokenizer, prompt))
    assert ids == doc.input_ids[start:start + len(ids)]
    assert mask == doc.loss_mask[start:start + len(ids)]
    assert 0 in mask and mask[0] == 1 and mask[-1] == 1


def test_truncation_keeps_the_prompt_end_then_cuts_responses(tiny_tokenizer, tmp_path):
    long_prompt = "tell me " * 60
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": long_prompt, "chosen": "yes " * 40, "rejected": "no"},
                                              {"prompt": "short", "chosen": "a", "rejected": "b"}])
    full_prompt = render_prompt(tiny_tokenizer, [{"role": "user", "content": long_prompt}])
    limits = Limits(max_length=48, max_prompt_length=16, too_long="truncate")
    units, _, stats = load_preference_data(path, None, 0.0, 0, True, tiny_tokenizer, limits)
    first = units[0]
    assert first.chosen.prompt_ids == first.rejected.prompt_ids == full_prompt[-16:]
    assert len(first.chosen) == 48 and len(first.rejected) < 48
    assert stats.truncated_prompts == 1 and stats.truncated_responses == 1
    short = units[1]
    assert len(short.chosen.prompt_ids) > 0 and stats.units == 2
    dropped, _, stats = load_preference_data(path, None, 0.0, 0, True, tiny_tokenizer,
                                             Limits(48, 16, "drop"))
    assert len(dropped) == 1 and stats.dropped_too_long == 1


def test_labelling_app_export_reads_as_is(tiny_tokenizer, tmp_path):
    """The export's extra keys are ignored; ties are left out of a preference loss; margin is accepted."""
    rows = [
        {"prompt": "Review this film.", "prompt_messages": [{"role": "user", "content": "Review this film."}],
         "chosen": "Great fun.", "rejected": "Dull.", "margin": 2.0, "votes": 3, "prompt_id": "p1",
         "group_id": "p1:0-1"},
        {"prompt": "Review this film.", "prompt_messages": [{"role": "user", "content": "Review this film."}],
         "chosen": "Fine.", "rejected": "Okay.", "tie": True, "votes": 2, "prompt_id": "p1", "group_id": "p1:2-3"},
        {"prompt": "Another film.", "prompt_messages": [{"role": "user", "content": "Another film."}],
         "chosen": "Moving.", "rejected": "Boring.", "votes": 1, "p_chosen": 1.0, "prompt_id": "p2",
         "group_id": "p2:0-1"},
    ]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    units, _, stats = load_preference_data(path, None, 0.0, 0, True, tiny_tokenizer, WIDE)
    assert len(units) == 2 and stats.dropped_ties == 1
    assert units[0].source.endswith("pairs.jsonl:1") and units[1].source.endswith("pairs.jsonl:3")
    assert tiny_tokenizer.decode(units[0].chosen.response_ids).startswith("Great fun.")


def test_rankings_expand_to_pairs_and_split_by_prompt(tiny_tokenizer, tmp_path):
    rows = [{"prompt": f"Prompt {k}", "completions": ["best", "middle", "worst"], "ranking": [[0], [1], [2]]}
            for k in range(10)]
    path = write_jsonl(tmp_path / "rank.jsonl", rows)
    assert len(preference_pairs(load_records(path))) == 30
    train, evaluation, _ = load_preference_data(path, None, 0.2, 0, True, tiny_tokenizer, WIDE)
    assert len(train) == 24 and len(evaluation) == 6
    train_prompts = {tuple(u.chosen.prompt_ids) for u in train}
    assert not train_prompts & {tuple(u.chosen.prompt_ids) for u in evaluation}, "a prompt is in both splits"
    decoded = {(tiny_tokenizer.decode(u.chosen.response_ids), tiny_tokenizer.decode(u.rejected.response_ids))
               for u in train}
    assert decoded == {("best<|im_end|>", "middle<|im_end|>"), ("best<|im_end|>", "worst<|im_end|>"),
                       ("middle<|im_end|>", "worst<|im_end|>")}


def test_hh_transcripts(tiny_tokenizer, tmp_path):
    shared = "\n\nHuman: How do I bake bread?\n\nAssistant: Flour, water, yeast.\n\nHuman: And then?"
    path = write_jsonl(tmp_path / "hh.jsonl", [
        {"chosen": shared + "\n\nAssistant: Knead and bake.", "rejected": shared + "\n\nAssistant: Burn it."}])
    (unit,), _, _ = load_preference_data(path, None, 0.0, 0, True, tiny_tokenizer, WIDE)
    prompt = tiny_tokenizer.decode(unit.chosen.prompt_ids)
    assert prompt.count("<|im_start|>user") == 2 and prompt.endswith("<|im_start|>assistant\n")
    assert tiny_tokenizer.decode(unit.rejected.response_ids) == "Burn it.<|im_end|>"


def test_kto_examples_get_a_mismatched_sequence_from_another_prompt(tiny_tokenizer, tmp_path):
    rows = [{"prompt": "A?", "completion": "yes", "label": True}, {"prompt": "A?", "completion": "no", "label": False},
            {"prompt": "B?", "completion": "maybe", "label": True}]
    path = write_jsonl(tmp_path / "kto.jsonl", rows)
    units, _, _ = load_preference_data(path, None, 0.0, 0, False, tiny_tokenizer, WIDE)
    assert [u.desirable for u in units] == [True, False, True]
    for unit in units:
        assert unit.mismatched.prompt_ids == unit.completion.prompt_ids
        assert unit.mismatched.response_ids != unit.completion.response_ids
    assert tiny_tokenizer.decode(units[0].mismatched.response_ids) == "maybe<|im_end|>"
    # pairs feed KTO too: chosen → desirable, rejected → undesirable
    pairs = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(3))
    units, _, _ = load_preference_data(pairs, None, 0.0, 0, False, tiny_tokenizer, WIDE)
    assert [u.desirable for u in units] == [True, False] * 3


@pytest.mark.parametrize("row, field", [
    ({"prompt": "x", "chosen": "a"}, "rejected"),
    ({"prompt": "x", "chosen": "a", "rejected": "b", "margin": -1}, "margin"),
    ({"prompt": "x", "chosen": 3, "rejected": "b"}, "chosen"),
    ({"prompt": "x", "completions": ["a", "b"], "ranking": [[0]]}, "ranking"),
])
def test_bad_records_name_file_line_and_field(tiny_tokenizer, tmp_path, row, field):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok", "chosen": "a", "rejected": "b"}, row])
    with pytest.raises(DataError) as err:
        load_preference_data(path, None, 0.0, 0, True, tiny_tokenizer, WIDE)
    assert err.value.line == 2 and err.value.field == field and "bad.jsonl:2" in str(err.value)


def test_not_json_is_a_data_error(tiny_tokenizer, tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n{oops\n")
    with pytest.raises(DataError, match="broken.jsonl:2"):
        load_preference_data(str(path), None, 0.0, 0, True, tiny_tokenizer, WIDE)
