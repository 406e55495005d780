"""`tuneloop inspect data` on preference files: the forms are recognised, every record is validated (a
missing field is named with file and line, exit 2), and valid files get token-length statistics.

Token counts use the tiny model's ChatML template: a reply "a" is trained as "a" + "<|im_end|>"
(2 tokens: "a" is one byte, hence one BPE token, and "<|im_end|>" is a special token); an empty reply
as "<|im_end|>" alone (1 token).
"""

from __future__ import annotations

import pytest

from datafiles import write_jsonl
from tuneloop.cli import main
from tuneloop.data import load_records
from tuneloop.data.formats import detect_format
from tuneloop.inspect_cmd import inspect_data, length_stats
from tuneloop.models.loading import load_tokenizer

MODEL = "tiny-llama"


def _prompt_tokens(text: str) -> int:
    """Tokens of the prompt as ChatML, written out here rather than rendered by the code under test."""
    tokenizer = load_tokenizer(MODEL)
    return len(tokenizer(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n",
                         add_special_tokens=False)["input_ids"])


def test_length_stats_nearest_rank():
    """Sorted [1, 2, 2, 5]: min 1; median = item int(0.5·4) = 2 -> 2; p95 = item int(0.95·4) = 3 -> 5; max 5."""
    assert length_stats([5, 2, 1, 2]) == {"min": 1, "median": 2, "p95": 5, "max": 5}
    assert length_stats([7]) == {"min": 7, "median": 7, "p95": 7, "max": 7}


@pytest.mark.parametrize("row, expected", [
    ({"prompt": "x", "chosen": "a", "rejected": "b"}, "preference"),
    ({"prompt": "x", "chosen": "a"}, "preference"),  # recognised, so validation can name 'rejected'
    ({"chosen": "\n\nHuman: x\n\nAssistant: a", "rejected": "\n\nHuman: x\n\nAssistant: b"}, "preference-implicit"),
    ({"prompt": "x", "completions": ["a", "b"], "ranking": [[0], [1]]}, "ranking"),
    ({"prompt": "x", "ranking": [0, 1]}, "ranking"),
    ({"prompt": "x", "completions": ["a", "b"]}, "candidates"),
    ({"prompt": "x", "completion": "a", "label": True}, "unpaired"),
    ({"prompt": "x", "completion": "a"}, "sft-prompt-completion"),
    ({"prompt": "x"}, "prompt"),
])
def test_detect_format_recognises_preference_forms(tmp_path, row, expected):
    assert detect_format(load_records(write_jsonl(tmp_path / "d.jsonl", [row]))) == expected


def test_pairs_get_counts_and_token_lengths(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": "x", "chosen": "a", "rejected": ""},
        {"prompt": "x", "chosen": "a", "rejected": "b", "margin": 1.5},
        {"prompt": "y", "chosen": "c", "rejected": "c", "tie": True},
    ])
    lines = []
    info = inspect_data(path, MODEL, 512, write=lines.append)
    assert info["format"].startswith("preference: ") and info["records"] == 3
    assert (info["pairs"], info["ties"], info["with_margin"], info["prompts"]) == (3, 1, 1, 2)
    assert info["chosen_tokens"] == {"min": 2, "median": 2, "p95": 2, "max": 2}
    assert info["rejected_tokens"] == {"min": 1, "median": 2, "p95": 2, "max": 2}  # "" -> 1, "b" -> 2, "c" -> 2
    x, y = _prompt_tokens("x"), _prompt_tokens("y")
    assert info["prompt_tokens"] == length_stats([x, x, y])
    assert info["over_max_length_512"] == 0
    assert "rejected_tokens: min 1, median 2, p95 2, max 2" in [line.strip() for line in lines]
    # Every rendered pair (prompt + reply) is longer than x + 1 tokens once the reply is there.
    assert inspect_data(path, MODEL, max(x, y), write=lambda _: None)[f"over_max_length_{max(x, y)}"] == 3


def test_implicit_prompt_transcripts_and_rankings(tmp_path):
    hh = write_jsonl(tmp_path / "hh.jsonl", [
        {"chosen": "\n\nHuman: x\n\nAssistant: a", "rejected": "\n\nHuman: x\n\nAssistant: "},
        {"chosen": [{"role": "user", "content": "y"}, {"role": "assistant", "content": "c"}],
         "rejected": [{"role": "user", "content": "y"}, {"role": "assistant", "content": "d"}]},
    ])
    info = inspect_data(hh, MODEL, 512, write=lambda _: None)
    assert info["format"].startswith("preference-implicit: ") and info["pairs"] == 2 and info["prompts"] == 2
    assert info["chosen_tokens"]["max"] == 2 and info["rejected_tokens"]["min"] == 1
    assert info["prompt_tokens"] == length_stats([_prompt_tokens("x"), _prompt_tokens("y")])
    ranked = write_jsonl(tmp_path / "ranked.jsonl", [
        {"prompt": "x", "completions": ["a", "b", ""], "ranking": [[0], [1, 2]]},
        {"prompt": "x", "completions": ["a", "b"], "ranking": [1, 0]},
    ])
    info = inspect_data(ranked, MODEL, 512, write=lambda _: None)
    assert info["rankings"] == 2 and info["prompts"] == 1 and "pairs" not in info
    assert info["completions_per_ranking"] == {"min": 2, "median": 3, "p95": 3, "max": 3}
    assert info["completion_tokens"] == length_stats([2, 2, 1, 2, 2])


@pytest.mark.parametrize("rows, message", [
    ([{"prompt": "x", "chosen": "a", "rejected": "b"}, {"prompt": "x", "chosen": "a"}],
     ":2: field 'rejected': missing"),
    ([{"prompt": "x", "rejected": "b"}], ":1: field 'chosen': missing"),
    ([{"chosen": "\n\nHuman: x\n\nAssistant: a"}], ":1: field 'rejected': missing"),
    ([{"prompt": "x", "ranking": [[0], [1]]}], ":1: field 'completions': missing"),
    ([{"prompt": "x", "completions": ["a", "b"], "ranking": [[0]]}], ":1: field 'ranking': completions [1] are not ranked"),
    ([{"prompt": "x", "chosen": "a", "rejected": "b"}, {"prompt": "", "chosen": "a", "rejected": "b"}],
     ":2: field 'prompt': is empty"),
    ([{"prompt": "x", "completion": "a"}], None),  # control: a valid SFT file exits 0
])
def test_a_bad_record_names_file_line_and_field_and_exits_2(tmp_path, capsys, rows, message):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    status = main(["inspect", "data", path, "--model", MODEL])
    err = capsys.readouterr().err
    if message is None:
        assert status == 0 and err == ""
    else:
        assert status == 2
        assert f"tuneloop inspect: error: {path}{message}" in err
