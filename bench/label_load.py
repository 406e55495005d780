"""Load and crash tests of the labelling server on loopback (127.0.0.1 only; bounded in count and time).

  python bench/label_load.py load  [--annotators 50] [--items 1700] [--overlap 3] [--sync FULL]
  python bench/label_load.py kill  [--kills 50] [--annotators 20]

``load``: a real ``tuneloop label serve`` process and N annotator threads with no think time, each
on its own keep-alive connection and API token, judging until nothing is left. Reports submissions,
throughput, p50/p95/p99 submit latency, and checks: no lost or duplicated judgment (every
acknowledged id is stored, the store holds nothing else), no "database is locked" (no 5xx, nothing in
the server log), overlap never exceeded and the store's integrity check clean.

``kill``: the same under load, but the server is killed with SIGKILL at random moments and restarted;
clients retry an unanswered submit with the same judgment id after the restart. After the run every
acknowledged judgment must be in the store and the integrity check must pass.

The tests in tests/feedback/test_load.py call ``run_load`` and ``run_kill``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

MAX_SECONDS = 600  # every run stops by itself


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_pairs(path: Path, n: int, k: int = 2, seed: int = 0) -> Path:
    rng = random.Random(seed)
    words = ["good", "bad", "fine", "great", "awful", "odd", "long", "short", "warm", "cold"]
    with open(path, "w") as f:
        for i in range(n):
            completions = [" ".join(rng.choices(words, k=8)) for _ in range(k)]
            f.write(json.dumps({"prompt_id": f"p-{i:012x}", "prompt": f"Review movie {i}.",
                                "messages": [{"role": "user", "content": f"Review movie {i}."}],
                                "completions": completions, "provenance": {"model": "bench"}}) + "\n")
    return path


class Server:
    """``tuneloop label serve`` in a child process on a loopback port."""

    def __init__(self, db: Path, port: int, sync: str, log: Path):
        self.db, self.port, self.sync, self.log = db, port, sync, log
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> float:
        started = time.time()
        cmd = [sys.executable, "-m", "tuneloop.feedback", "label", "serve", "--db", str(self.db), "--port",
               str(self.port), "--sync", self.sync, "--no-rate-limits"]
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        while time.time() - started < timeout:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/login", timeout=1).status_code == 200:
                    return time.time() - started
            except httpx.HTTPError:
                time.sleep(0.05)
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
        raise RuntimeError("server did not start")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()


@dataclass
class Tally:
    acked: set = field(default_factory=set)
    latencies: list = field(default_factory=list)
    statuses: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, status) -> None:
        with self.lock:
            self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1


def annotator(base: str, token: str, tally: Tally, deadline: float, retry_unanswered: bool,
              stop: threading.Event) -> None:
    """Judge with no think time until nothing is left, the deadline, or ``stop``."""
    headers = {"Authorization": f"Bearer {token}"}
    rng = random.Random(token)
    with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
        task, pending = None, None
        while time.time() < deadline and not stop.is_set():
            try:
                if pending is None:
                    if task is None:
                        response = client.post("/api/tasks/next")
                        tally.count(response.status_code)
                        task = response.json() if response.status_code == 200 else None
                        if task is None:
                            return
                    ids = [c["id"] for c in task["candidates"]]
                    pending = {"id": uuid.uuid4().hex, "lease_id": task["lease_id"],
                               "answer": {"outcome": "win", "winner": rng.choice(ids), "strength": "better"}}
                started = time.perf_counter()
                response = client.post("/api/judgments", json=pending)
                elapsed = time.perf_counter() - started
                tally.count(response.status_code)
                if response.status_code == 200:
                    with tally.lock:
                        tally.acked.add(pending["id"])
                        tally.latencies.append(elapsed)
                    task, pending = response.json()["next"], None
                    if task is None:
                        return
                elif response.status_code == 409:  # item filled meanwhile
                    task, pending = None, None
                else:
                    tally.errors.append(f"{response.status_code}: {response.text[:200]}")
                    return
            except httpx.HTTPError as err:  # the server died: retry the same judgment id
                if not retry_unanswered:
                    tally.errors.append(repr(err))
                    return
                time.sleep(0.1)


def _setup(tmp: Path, annotators: int, items: int, overlap: int):
    from tuneloop.feedback.importer import import_candidates
    from tuneloop.feedback.store import Store

    db = tmp / "labels.db"
    store = Store.open(db)
    import_candidates(store, write_pairs(tmp / "candidates.jsonl", items))
    store.set_setting("overlap", overlap)
    tokens = []
    for i in range(annotators):
        store.create_user(f"load-{i:02d}", "annotator")
        tokens.append(store.issue_token(f"load-{i:02d}", ["judge"]))
    store.close()
    return db, tokens


def _verify(db: Path, tally: Tally, log: Path) -> dict:
    from sqlalchemy import select

    from tuneloop.feedback import schema as S
    from tuneloop.feedback.store import Store

    store = Store.open(db)
    with store.read() as conn:
        stored = conn.execute(select(S.judgments.c.id)).scalars().all()
    problems = store.check_integrity()
    store.close()
    server_log = log.read_text()
    return {"stored": len(stored), "acknowledged": len(tally.acked),
            "lost": len(tally.acked - set(stored)), "duplicated_ids": len(stored) - len(set(stored)),
            "integrity_problems": problems, "database_locked_in_log": server_log.count("database is locked"),
            "server_5xx": sum(v for k, v in tally.statuses.items() if k.startswith("5"))}


def _threads(base, tokens, tally, deadline, retry, stop):
    threads = [threading.Thread(target=annotator, args=(base, t, tally, deadline, retry, stop), daemon=True)
               for t in tokens]
    for t in threads:
        t.start()
    return threads


def _quantiles(latencies: list[float]) -> dict:
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"p50_ms": 1000 * q[49], "p95_ms": 1000 * q[94], "p99_ms": 1000 * q[98], "max_ms": 1000 * max(latencies)}


def run_load(annotators: int = 50, items: int = 1700, overlap: int = 3, sync: str = "FULL",
             workdir: Path | None = None) -> dict:
    tmp = Path(workdir or tempfile.mkdtemp(prefix="tuneloop-load-"))
    db, tokens = _setup(tmp, annotators, items, overlap)
    server = Server(db, free_port(), sync, tmp / "server.log")
    server.start()
    tally = Tally()
    started = time.time()
    try:
        for t in _threads(f"http://127.0.0.1:{server.port}", tokens, tally, started + MAX_SECONDS, False,
                          threading.Event()):
            t.join()
    finally:
        seconds = time.time() - started
        server.stop()
    result = {"annotators": annotators, "items": items, "overlap": overlap, "sync": sync,
              "submissions": len(tally.latencies), "seconds": seconds,
              "per_second": len(tally.latencies) / seconds, "statuses": tally.statuses, "client_errors": tally.errors,
              **_quantiles(tally.latencies), **_verify(db, tally, tmp / "server.log")}
    return result


def run_kill(kills: int = 50, annotators: int = 20, items: int = 4000, overlap: int = 3, sync: str = "FULL",
             seed: int = 0, workdir: Path | None = None) -> dict:
    tmp = Path(workdir or tempfile.mkdtemp(prefix="tuneloop-kill-"))
    db, tokens = _setup(tmp, annotators, items, overlap)
    server = Server(db, free_port(), sync, tmp / "server.log")
    rng = random.Random(seed)
    tally = Tally()
    started = time.time()
    restarts, acked_at_kill = [], []
    stop = threading.Event()
    server.start()
    threads = _threads(f"http://127.0.0.1:{server.port}", tokens, tally, started + MAX_SECONDS, True, stop)
    try:
        for _ in range(kills):
            time.sleep(rng.uniform(0.2, 0.6))  # a random moment under load
            acked_at_kill.append(len(tally.acked))
            server.kill9()
            restarts.append(server.start())
        time.sleep(1.0)  # the clients retry what the last kill left unanswered
        stop.set()
        for t in threads:
            t.join(timeout=60)
    finally:
        server.stop()
    under_load = sum(1 for a, b in zip(acked_at_kill, acked_at_kill[1:] + [len(tally.acked)]) if b > a)
    kills_done = len(restarts)
    return {"kills": kills_done, "kills_with_progress_between": under_load, "annotators": annotators,
            "seconds": time.time() - started,
            "mean_restart_s": statistics.fmean(restarts) if restarts else None,
            "statuses": tally.statuses, **_verify(db, tally, tmp / "server.log")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["load", "kill"])
    parser.add_argument("--annotators", type=int)
    parser.add_argument("--items", type=int)
    parser.add_argument("--overlap", type=int, default=3)
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--sync", choices=["FULL", "NORMAL"], default="FULL")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.what == "load":
        result = run_load(args.annotators or 50, args.items or 1700, args.overlap, args.sync)
    else:
        result = run_kill(args.kills, args.annotators or 20, args.items or 4000, args.overlap, args.sync)
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
