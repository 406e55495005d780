"""Shared fixtures for the labelling app: candidates files, stores, and an app client."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from labeldata import new_pg_database, write_candidates

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def _cheap_password_hashing():
    """argon2id at RFC 9106 strength costs ~0.5 s a hash; tests use a cheap argon2id instead."""
    from argon2 import PasswordHasher

    from tuneloop.feedback import auth

    auth.use_hasher(PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    yield
    auth.use_hasher(auth.PRODUCTION_HASHER)


@pytest.fixture
def candidates_file(tmp_path):
    return write_candidates(tmp_path / "candidates.jsonl", 12, k=3)


@pytest.fixture
def store(tmp_path):
    from tuneloop.feedback.store import Store

    s = Store.open(tmp_path / "labels.db")
    yield s
    s.close()


# -- PostgreSQL: started by the tests themselves from the Debian binaries ----------------------------------
def _pg_bin(name: str) -> str | None:
    import glob
    import shutil

    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory):
    """A throwaway PostgreSQL on 127.0.0.1 (trust auth, fsync off); yields its base URL.

    Fails when the binaries are absent (scripts/install-system-packages.sh installs them); skips only when
    TUNELOOP_SKIP_SYSTEM_TESTS=1 says so explicitly.
    As root, the server runs as the 'postgres' user through runuser.
    """
    import shutil
    import subprocess

    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        if os.environ.get("TUNELOOP_SKIP_SYSTEM_TESTS") == "1":
            pytest.skip("PostgreSQL binaries missing and TUNELOOP_SKIP_SYSTEM_TESTS=1")
        pytest.fail("PostgreSQL binaries (initdb, pg_ctl) not found: run scripts/install-system-packages.sh")
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="tuneloop-pg-"))  # pytest's own tmp folders are root-only
    data = root / "data"
    prefix = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    def run(cmd):
        done = subprocess.run(prefix + cmd, capture_output=True, text=True, check=False)
        if done.returncode:
            raise RuntimeError(f"{cmd[0]} failed: {done.stdout}{done.stderr}")

    run([initdb, "-N", "-D", str(data), "-U", "tuneloop", "--auth=trust", "-E", "UTF8"])
    opts = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=200"
    run([pg_ctl, "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "start"])
    try:
        yield f"postgresql://tuneloop@127.0.0.1:{port}"
    finally:
        subprocess.run(prefix + [pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)




@pytest.fixture(params=["sqlite", "postgres"])
def any_store(request, tmp_path):
    """The same test on SQLite and on PostgreSQL."""
    from tuneloop.feedback.store import Store

    if request.param == "sqlite":
        location = tmp_path / "labels.db"
    else:
        location = new_pg_database(request.getfixturevalue("pg_server"))
    s = Store.open(location)
    yield s
    s.close()
