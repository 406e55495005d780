"""Data loading and validation: good files in every format, bad records named by file, line and field."""

from __future__ import annotations

import json

import pytest

from datafiles import write_jsonl
from tuneloop.data import DataError, load_records
from tuneloop.data.formats import detect_format, prompt_messages, sft_messages

GOOD = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"prompt": "2+2?", "completion": "4"}]


def _sft(path):
    return [sft_messages(r) for r in load_records(path)]


def test_bom_crlf_and_blank_lines_are_valid(tmp_path):
    body = "\r\n".join(json.dumps(r) for r in GOOD) + "\r\n\r\n"
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + body.replace("\r\n", "\r\n\r\n", 1).encode())
    convs = _sft(path)
    assert convs[1] == [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    assert [r.line for r in load_records(path)] == [1, 3]  # line numbers count the blank line


def test_parquet_csv_and_dataset_folder(tmp_path):
    import datasets
    import pandas as pd

    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    for source in ("d.parquet", "d.csv", "ds"):
        assert [m[1]["content"] for m in _sft(tmp_path / source)] == ["b", "d"], source


@pytest.mark.parametrize("line, field, message", [
    ('{"prompt": "q"}', "completion", "missing"),
    ('{"prompt": "q", "completion": 3}', "completion", "expected a string, got int"),
    ('{"prompt": "q", "completion": "   "}', "completion", "is empty"),
    ('{"messages": [{"role": "bot", "content": "x"}]}', "messages[0].role", "unknown role 'bot'"),
    ('{"messages": [{"role": "user"}]}', "messages[0].content", "missing"),
    ('{"messages": [{"role": "user", "content": "only a question"}]}', "messages", "no assistant turn"),
    ('{"messages": "hello"}', "messages", "expected a list of messages"),
    ('{"text": "free text"}', None, "expected 'messages' or 'prompt' + 'completion'"),
])
def test_bad_records_name_file_line_and_field(tmp_path, line, field, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GOOD[0]) + "\n" + line + "\n")
    with pytest.raises(DataError) as err:
        _sft(path)
    text = str(err.value)
    assert text.startswith(f"{path}:2:"), text
    assert err.value.line == 2 and err.value.field == field
    assert message in text


def test_non_utf8_byte_names_the_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(GOOD[0]).encode() + b'\n{"prompt": "caf\xe9", "completion": "x"}\n')  # é in Latin-1 is the 16th byte
    with pytest.raises(DataError, match=r"latin1.jsonl:2: not valid UTF-8 \(byte 0xe9 at column 16\)"):
        load_records(path)


def test_truncated_last_line(tmp_path):
    path = tmp_path / "cut.jsonl"
    path.write_text(json.dumps(GOOD[0]) + "\n" + json.dumps(GOOD[1])[:-8])
    with pytest.raises(DataError, match=r"cut.jsonl:2: not valid JSON.*cut short"):
        load_records(path)


def test_empty_file_and_missing_file(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="holds no records"):
        load_records(tmp_path / "empty.jsonl")
    with pytest.raises(DataError, match="file not found"):
        load_records(tmp_path / "nope.jsonl")


def test_non_object_line(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text("[1, 2]\n")
    with pytest.raises(DataError, match="list.jsonl:1: expected a JSON object, got list"):
        load_records(path)


def test_prompt_records(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi"}, {"messages": [{"role": "user", "content": "yo"}]},
                                              {"messages": [{"role": "user", "content": "a"},
                                                            {"role": "assistant", "content": "b"}]}])
    records = load_records(path)
    assert prompt_messages(records[0]) == [{"role": "user", "content": "hi"}]
    assert prompt_messages(records[1])[-1]["content"] == "yo"
    with pytest.raises(DataError, match=r"p.jsonl:3: field 'messages': must end on a user turn"):
        prompt_messages(records[2])


def test_detect_format(tmp_path):
    cases = {"sft-messages": GOOD[0], "sft-prompt-completion": GOOD[1], "prompt": {"prompt": "x"},
             "preference": {"prompt": "x", "chosen": "a", "rejected": "b"}}
    for expected, row in cases.items():
        assert detect_format(load_records(write_jsonl(tmp_path / f"{expected}.jsonl", [row]))) == expected


def test_bundled_datasets_are_well_formed():
    chatterbot = load_records("bundled:chatterbot")
    assert len(chatterbot) > 2000
    assert all(sft_messages(r)[-1]["role"] == "assistant" for r in chatterbot)
    reviews = load_records("bundled:reviews")
    assert len(reviews) > 4000 and reviews[0].data["prompt"].startswith("Write a short review")
    with pytest.raises(DataError, match="unknown bundled dataset"):
        load_records("bundled:nope")
