"""Atomic writes: a JSONL file is complete or keeps its old content; a published folder appears whole."""

from __future__ import annotations

import json

import pytest

from tuneloop.atomic import atomic_write_jsonl, publish_dir


def test_jsonl_rows_round_trip_and_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "rows.jsonl"
    assert atomic_write_jsonl(path, [{"b": 1, "a": "café"}, {"x": [1, 2]}]) == 2
    assert path.read_text(encoding="utf-8") == '{"b": 1, "a": "café"}\n{"x": [1, 2]}\n'
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"b": 1, "a": "café"}, {"x": [1, 2]}]
    with pytest.raises(TypeError):
        atomic_write_jsonl(path, [{"ok": 1}, {"bad": object()}])
    assert path.read_text(encoding="utf-8").startswith('{"b": 1')  # untouched
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]  # no temporary file left behind
    atomic_write_jsonl(path, [{"b": 1, "a": 2}], sort_keys=True)
    assert path.read_text() == '{"a": 2, "b": 1}\n'


def test_publish_dir_replaces_or_keeps_the_target(tmp_path):
    target = tmp_path / "step-1"
    for content, replace in (("first", False), ("second", False), ("third", True)):
        tmp = tmp_path / f".step-1.{content}"
        tmp.mkdir()
        (tmp / "f.txt").write_text(content)
        publish_dir(tmp, target, replace=replace)
    assert (target / "f.txt").read_text() == "third"  # "second" was refused: the target existed
