"""The labelling store: one SQLite file by default, PostgreSQL for teams, through SQLAlchemy Core.

SQLite runs in WAL mode with ``busy_timeout`` 30 s and ``synchronous=FULL`` (by default); every write transaction
starts with ``BEGIN IMMEDIATE`` so two writers never deadlock on a lock upgrade (the usual cause of
"database is locked" under a handful of annotators) and an acknowledged write survives a kill -9 or a
power cut. PostgreSQL uses ordinary transactions plus row locks where a count must not be exceeded.

Open with ``Store.open("labels.db")`` or ``Store.open("postgresql://user@127.0.0.1:5432/db")``.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, create_engine, event, func, insert, select, text, update
from sqlalchemy.engine import Connection, Engine

from tuneloop.feedback import schema as S
from tuneloop.feedback.aspects import parse_aspects
from tuneloop.feedback.invariants import invariant_problems
from tuneloop.feedback.settings import DEFAULT_SETTINGS, ROLES, TOKEN_SCOPES

SQLITE_BUSY_TIMEOUT_MS = 30_000
SQLITE_SYNC_MODES = ("FULL", "NORMAL")
SESSION_SECONDS = 12 * 3600


_Q_SETTINGS = select(S.settings.c.key, S.settings.c.value)
_Q_TOKEN_USER = (select(S.api_tokens.c.secret_hash, S.api_tokens.c.revoked_at, S.api_tokens.c.scopes, S.users)
                 .join_from(S.api_tokens, S.users).where(S.api_tokens.c.id == bindparam("token_id")))
_Q_SESSION_USER = (select(S.sessions.c.csrf_token, S.sessions.c.expires_at, S.users)
                   .join_from(S.sessions, S.users).where(S.sessions.c.id_hash == bindparam("id_hash")))


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _url(location: str | Path) -> str:
    text_ = str(location)
    if "://" not in text_:
        return f"sqlite:///{Path(text_).resolve()}"
    if text_.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + text_.split("://", 1)[1]
    return text_


def _sqlite_engine(url: str, synchronous: str) -> Engine:
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
                           pool_size=8, max_overflow=32, pool_timeout=60)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # the driver must not open transactions itself: we do
        for pragma in ("journal_mode=WAL", f"busy_timeout={SQLITE_BUSY_TIMEOUT_MS}", f"synchronous={synchronous}",
                       "foreign_keys=ON"):
            dbapi_conn.execute(f"PRAGMA {pragma}")

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = "IMMEDIATE" if conn.get_execution_options().get("tuneloop_write") else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


class Store:
    """Connection handling plus the small operations on users, tokens, sessions and settings.

    Task hand-out and judgment writes live in ``assign.py``; importing in ``importer.py``.
    """

    def __init__(self, engine: Engine, location: str):
        self.engine, self.location = engine, location
        self.is_sqlite = engine.dialect.name == "sqlite"
        # SQLite has one writer at a time. Writers of this process queue on a lock instead of SQLite's
        # busy handler, which sleeps and polls (unfair, and slow under many threads); busy_timeout still
        # covers writers in other processes (a CLI command while the server runs).
        self._write_lock = threading.Lock() if self.is_sqlite else None

    @classmethod
    def open(cls, location: str | Path, create: bool = True, synchronous: str = "FULL") -> Store:
        """Open (and create or migrate) a store.

        ``synchronous`` (SQLite only): "FULL" makes every acknowledged write survive a power cut (one
        fsync per commit); "NORMAL" survives a crash or kill -9 of the process but may lose the last
        commits on a power cut, and is several times faster on slow disks (used by ``simulate``).
        """
        if synchronous not in SQLITE_SYNC_MODES:
            raise ValueError(f"synchronous must be one of {', '.join(SQLITE_SYNC_MODES)}, got {synchronous!r}")
        url = _url(location)
        if url.startswith("sqlite:"):
            path = Path(url.removeprefix("sqlite:///"))
            if not path.exists() and not create:
                raise FileNotFoundError(f"no label store at {path} (create it with `tuneloop label import`)")
            path.parent.mkdir(parents=True, exist_ok=True)
            engine = _sqlite_engine(url, synchronous)
        else:
            engine = create_engine(url, pool_size=8, max_overflow=32, pool_pre_ping=True)
        store = cls(engine, str(location))
        store.migrate()
        return store

    def close(self) -> None:
        """Close every pooled connection; SQLite folds its write-ahead log back into the file."""
        self.engine.dispose()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction: ``BEGIN IMMEDIATE`` on SQLite (waits up to busy_timeout for the lock)."""
        if self._write_lock is None:
            with self.engine.connect() as conn, conn.begin():
                yield conn
            return
        with self._write_lock, self.engine.connect() as conn:
            conn.execution_options(tuneloop_write=True)
            with conn.begin():
                yield conn

    # -- schema --------------------------------------------------------------------------------------------
    def migrate(self) -> int:
        """Create a fresh store or bring an old one to ``SCHEMA_VERSION``; returns the version."""
        with self.write() as conn:
            if self.engine.dialect.name == "postgresql":  # two servers starting at once must not race
                conn.execute(text("SELECT pg_advisory_xact_lock(7347)"))
            have = self.engine.dialect.has_table(conn, "schema_version")
            version = conn.execute(select(S.schema_version.c.version)).scalar() if have else None
            if version is None:
                S.METADATA.create_all(conn)
                conn.execute(insert(S.schema_version).values(id=1, version=S.SCHEMA_VERSION))
                for key, value in DEFAULT_SETTINGS.items():
                    conn.execute(insert(S.settings).values(key=key, value=value))
                return S.SCHEMA_VERSION
        if version > S.SCHEMA_VERSION:
            raise ValueError(f"the store {self.location} has schema version {version}, newer than this "
                             f"tuneloop understands ({S.SCHEMA_VERSION}); upgrade tuneloop")
        for target, _what, step in S.MIGRATIONS:
            if target > version:
                with self.write() as conn:
                    step(conn)
                    conn.execute(update(S.schema_version).values(version=target))
                version = target
        return version

    def schema_version(self) -> int:
        with self.read() as conn:
            return int(conn.execute(select(S.schema_version.c.version)).scalar_one())

    # -- settings ------------------------------------------------------------------------------------------
    def settings(self, conn: Connection | None = None) -> dict[str, Any]:
        if conn is None:
            with self.read() as c:
                return self.settings(c)
        out = dict(DEFAULT_SETTINGS)
        out.update({k: v for k, v in conn.execute(_Q_SETTINGS)})
        return out

    def set_setting(self, key: str, value: Any) -> None:
        if key not in DEFAULT_SETTINGS:
            raise ValueError(f"unknown setting {key!r}; expected one of {', '.join(DEFAULT_SETTINGS)}")
        expected = type(DEFAULT_SETTINGS[key])
        if expected is float and isinstance(value, int):
            value = float(value)
        if not isinstance(value, expected) or isinstance(value, bool) != (expected is bool):
            raise ValueError(f"setting {key!r} must be {expected.__name__}, got {value!r}")
        if key in ("overlap", "lease_seconds") and value < 1:
            raise ValueError(f"setting {key!r} must be ≥ 1, got {value}")
        if key in ("gold_rate", "repeat_rate") and not 0 <= value <= 1:
            raise ValueError(f"setting {key!r} must lie in [0, 1], got {value}")
        if key == "flags" and not all(isinstance(f, list) and len(f) == 3 and all(isinstance(x, str) for x in f)
                                      and len(f[2]) == 1 for f in value):
            raise ValueError("setting 'flags' must be a list of [name, label, one-character key]")
        if key in ("flags", "aspects"):  # aspect keys must not collide with flag keys, either way round
            current = self.settings()
            flags, aspects = (value, current["aspects"]) if key == "flags" else (current["flags"], value)
            parse_aspects(aspects, {f[2] for f in flags})
        with self.write() as conn:
            done = conn.execute(update(S.settings).where(S.settings.c.key == key).values(value=value)).rowcount
            if not done:
                conn.execute(insert(S.settings).values(key=key, value=value))

    # -- users, tokens, sessions ---------------------------------------------------------------------------
    def create_user(self, name: str, role: str, password: str | None = None) -> int:
        from tuneloop.feedback.auth import hash_password

        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ValueError(f"user name {name!r}: use 1–64 letters, digits, '-', '_' or '.'")
        hashed = hash_password(password) if password is not None else None
        with self.write() as conn:
            if conn.execute(select(S.users.c.id).where(S.users.c.name == name)).first():
                raise ValueError(f"user {name!r} already exists")
            return conn.execute(insert(S.users).values(name=name, role=role, password_hash=hashed, disabled=False,
                                                       created_at=time.time())).inserted_primary_key[0]

    def set_password(self, name: str, password: str) -> None:
        from tuneloop.feedback.auth import hash_password

        with self.write() as conn:
            if not conn.execute(update(S.users).where(S.users.c.name == name)
                                .values(password_hash=hash_password(password))).rowcount:
                raise ValueError(f"no user {name!r}")

    def set_disabled(self, name: str, disabled: bool) -> None:
        with self.write() as conn:
            uid = conn.execute(select(S.users.c.id).where(S.users.c.name == name)).scalar()
            if uid is None:
                raise ValueError(f"no user {name!r}")
            conn.execute(update(S.users).where(S.users.c.id == uid).values(disabled=disabled))
            if disabled:
                conn.execute(S.sessions.delete().where(S.sessions.c.user_id == uid))

    def user(self, conn: Connection, *, name: str | None = None, user_id: int | None = None):
        column, value = (S.users.c.name, name) if name is not None else (S.users.c.id, user_id)
        return conn.execute(select(S.users).where(column == value)).mappings().first()

    def list_users(self) -> list[dict]:
        with self.read() as conn:
            return [dict(r) for r in conn.execute(
                select(S.users.c.id, S.users.c.name, S.users.c.role, S.users.c.disabled).order_by(S.users.c.id)
            ).mappings()]

    def issue_token(self, name: str, scopes: list[str], label: str = "") -> str:
        bad = [s for s in scopes if s not in TOKEN_SCOPES]
        if bad or not scopes:
            raise ValueError(f"token scopes must be a non-empty subset of {', '.join(TOKEN_SCOPES)}, got {scopes}")
        token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        with self.write() as conn:
            user = self.user(conn, name=name)
            if user is None:
                raise ValueError(f"no user {name!r}")
            if user["role"] != "admin" and set(scopes) - {"judge"}:
                raise ValueError(f"{name} is an annotator: their tokens can only have the 'judge' scope")
            conn.execute(insert(S.api_tokens).values(id=token_id, user_id=user["id"], secret_hash=sha256_hex(secret),
                                                     scopes=sorted(scopes), label=label, created_at=time.time()))
        return f"tl_{token_id}_{secret}"

    def revoke_token(self, token_id: str) -> None:
        with self.write() as conn:
            if not conn.execute(update(S.api_tokens).where(S.api_tokens.c.id == token_id)
                                .values(revoked_at=time.time())).rowcount:
                raise ValueError(f"no API token {token_id!r}")

    def resolve_token(self, token: str):
        """(user row, scopes) for a live token, else None. Comparison is on hashes, in constant time."""
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != "tl":
            return None
        with self.read() as conn:
            row = conn.execute(_Q_TOKEN_USER, {"token_id": parts[1]}).mappings().first()
        if row is None or row["revoked_at"] is not None or row["disabled"]:
            return None
        if not secrets.compare_digest(row["secret_hash"], sha256_hex(parts[2])):
            return None
        return row, list(row["scopes"])

    def create_session(self, user_id: int) -> tuple[str, str]:
        secret, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        with self.write() as conn:
            conn.execute(S.sessions.delete().where(S.sessions.c.expires_at < time.time()))
            conn.execute(insert(S.sessions).values(id_hash=sha256_hex(secret), user_id=user_id, csrf_token=csrf,
                                                   expires_at=time.time() + SESSION_SECONDS))
        return secret, csrf

    def resolve_session(self, secret: str):
        """(user row, csrf token) for a live session, else None."""
        with self.read() as conn:
            row = conn.execute(_Q_SESSION_USER, {"id_hash": sha256_hex(secret)}).mappings().first()
        if row is None or row["expires_at"] < time.time() or row["disabled"]:
            return None
        return row, row["csrf_token"]

    def delete_session(self, secret: str) -> None:
        with self.write() as conn:
            conn.execute(S.sessions.delete().where(S.sessions.c.id_hash == sha256_hex(secret)))

    # -- operations ----------------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        with self.read() as conn:
            return {name: int(conn.execute(select(func.count()).select_from(table)).scalar_one())
                    for name, table in (("prompts", S.prompts), ("items", S.items), ("judgments", S.judgments),
                                        ("users", S.users))}

    def backup(self, dest: str | Path) -> Path:
        """Online backup: a consistent copy taken while annotators keep working."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".partial")
        tmp.unlink(missing_ok=True)
        if self.is_sqlite:
            import sqlite3

            raw = self.engine.raw_connection()
            try:
                target = sqlite3.connect(tmp)
                raw.driver_connection.backup(target)  # SQLite's online backup API
                target.close()
            finally:
                raw.close()
        else:
            pg_dump = shutil.which("pg_dump")
            if pg_dump is None:
                raise FileNotFoundError("pg_dump not found: install the PostgreSQL client to back up this store")
            url = self.engine.url.set(drivername="postgresql")
            env = dict(os.environ, PGPASSWORD=url.password or "")  # not on the command line (ps shows it)
            subprocess.run([pg_dump, "--format=custom", f"--file={tmp}", url.set(password=None).render_as_string()],
                           check=True, env=env)
        tmp.replace(dest)
        return dest

    def check_integrity(self) -> list[str]:
        """Problems found (empty = healthy): the database's own check plus the app's invariants."""
        problems = []
        with self.read() as conn:
            if self.is_sqlite:
                result = [r[0] for r in conn.exec_driver_sql("PRAGMA integrity_check")]
                if result != ["ok"]:
                    problems += [f"sqlite integrity_check: {r}" for r in result]
            problems += invariant_problems(conn, self.settings(conn)["overlap"])
        return problems


@contextmanager
def opened(store: Store | str | Path, **open_kwargs) -> Iterator[Store]:
    """``store`` as is when it is a Store; else the Store at that location, closed again on exit (so a
    SQLite file is left whole, without a -wal beside it)."""
    if isinstance(store, Store):
        yield store
        return
    own = Store.open(store, **open_kwargs)
    try:
        yield own
    finally:
        own.close()
