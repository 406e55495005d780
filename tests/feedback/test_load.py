"""The load test and the kill -9 test on loopback (bench/label_load.py does the work; numbers are printed).

- load: 50 annotators with no think time, ≥ 5,000 submissions to a real server on SQLite: zero lost or
  duplicated judgments, zero "database is locked", overlap never exceeded, integrity check clean.
- kill: the server killed with SIGKILL at random moments ≥ 50 times under load; every acknowledged
  judgment is present after the restarts and the integrity check passes.

The load test takes 35–75 s on a 2-core machine (runs by default); the kill test about 1.5–2 minutes (50
server restarts of ~1.4 s each, most of it the server's imports), so it is marked slow (CI still runs it:
pytest runs every marker unless told otherwise).
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "label_load.py"


def _bench():
    spec = importlib.util.spec_from_file_location("label_load", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["label_load"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_load_50_annotators_5000_submissions(tmp_path):
    result = _bench().run_load(annotators=50, items=1700, overlap=3, workdir=tmp_path)
    print("\nlabel load:", json.dumps({k: v for k, v in result.items() if k != "statuses"}, default=str))
    assert result["submissions"] >= 5000
    assert result["lost"] == 0 and result["duplicated_ids"] == 0 and result["stored"] == result["acknowledged"]
    assert result["database_locked_in_log"] == 0 and result["server_5xx"] == 0 and result["client_errors"] == []
    assert result["integrity_problems"] == []  # includes "overlap never exceeded" and the counters


@pytest.mark.slow
def test_kill_9_under_load_loses_nothing_acknowledged(tmp_path):
    result = _bench().run_kill(kills=50, annotators=20, items=4000, overlap=3, workdir=tmp_path)
    print("\nlabel kill -9:", json.dumps(result, default=str))
    assert result["kills"] >= 50 and result["kills_with_progress_between"] >= 50  # every kill hit a live load
    assert result["lost"] == 0 and result["duplicated_ids"] == 0
    assert result["integrity_problems"] == []
    assert result["acknowledged"] > 0 and result["stored"] >= result["acknowledged"]
