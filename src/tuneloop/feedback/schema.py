"""The labelling store's tables (SQLAlchemy Core) and its schema migrations.

One row per thing that happened; judgments are append-only (a correction is a new row that names the
row it supersedes). Timestamps are UTC seconds since the epoch as floats; JSON columns hold plain
lists and objects.

Migrations: a fresh store is created from ``METADATA`` (the newest shape) and stamped with
``SCHEMA_VERSION``; an older store is brought forward by the steps in ``MIGRATIONS`` in order, each in
its own transaction. Add a column by adding it to the table below *and* a migration step.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.engine import Connection

METADATA = MetaData()

settings = Table(  # key → JSON value: overlap, lease_seconds, gold_rate, repeat_rate, flags, guideline
    "settings", METADATA,
    Column("key", String(64), primary_key=True),
    Column("value", JSON, nullable=False),
)

schema_version = Table(
    "schema_version", METADATA,
    Column("id", Integer, primary_key=True),  # always 1: a single row
    Column("version", Integer, nullable=False),
)

users = Table(
    "users", METADATA,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),  # "admin" | "annotator"
    Column("password_hash", Text),  # argon2id; NULL = token-only account (cannot log in with a password)
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at", Float, nullable=False),
)

sessions = Table(  # browser sessions; the cookie holds the secret, the store only its sha256
    "sessions", METADATA,
    Column("id_hash", String(64), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("csrf_token", String(64), nullable=False),
    Column("expires_at", Float, nullable=False),
)

api_tokens = Table(  # "tl_<id>_<secret>"; the store keeps sha256(secret) only
    "api_tokens", METADATA,
    Column("id", String(16), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("secret_hash", String(64), nullable=False),
    Column("scopes", JSON, nullable=False),  # subset of ["judge", "read", "admin"]
    Column("label", String(128), nullable=False, default=""),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
    Column("last_used_at", Float),  # added by migration 2
)

prompts = Table(
    "prompts", METADATA,
    Column("prompt_id", String(64), primary_key=True),
    Column("prompt", Text, nullable=False),
    Column("messages", JSON, nullable=False),
    Column("provenance", JSON, nullable=False),
    Column("source", Text, nullable=False),  # "file:line" it was imported from
)

candidates = Table(
    "candidates", METADATA,
    Column("id", Integer, primary_key=True),
    Column("prompt_id", String(64), ForeignKey("prompts.prompt_id"), nullable=False),
    Column("idx", Integer, nullable=False),  # position in the candidates file's "completions"
    Column("text", Text, nullable=False),
    Column("tokens", Integer),
    Column("finish_reason", String(16)),
    Index("ix_candidates_prompt", "prompt_id", "idx", unique=True),
)

items = Table(  # one unit of work: a prompt and the candidates to compare (2 = pairwise, ≥3 = ranking)
    "items", METADATA,
    Column("id", Integer, primary_key=True),
    Column("prompt_id", String(64), ForeignKey("prompts.prompt_id"), nullable=False),
    Column("kind", String(16), nullable=False),  # "pairwise" | "ranking" | "rating" (one response, every aspect)
    Column("candidate_ids", JSON, nullable=False),  # ascending candidate ids
    Column("is_gold", Boolean, nullable=False, default=False),
    Column("gold_answer", JSON),  # pairwise: {"winner": cid}; ranking: {"ranking": [[cid..], ..]}
    Column("n_done", Integer, nullable=False, default=0),  # primary judgments so far (kept in the write tx)
    Column("shuffle_key", Integer, nullable=False),  # random hand-out order, fixed at import
    Index("ix_items_prompt", "prompt_id"),
)
# hand-out order: fullest unfinished items first (so items complete), then the import-time shuffle
Index("ix_items_handout", items.c.is_gold, items.c.n_done.desc(), items.c.shuffle_key)

leases = Table(
    "leases", METADATA,
    Column("id", String(32), primary_key=True),
    Column("item_id", Integer, ForeignKey("items.id"), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("display_order", JSON, nullable=False),  # candidate ids, left/top first
    Column("is_repeat", Boolean, nullable=False, default=False),
    Column("served_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("done", Boolean, nullable=False, default=False),
    Index("ix_leases_item_open", "item_id", "done", "expires_at"),
    Index("ix_leases_user", "user_id", "done"),
)

judgments = Table(
    "judgments", METADATA,
    Column("id", String(64), primary_key=True),  # generated by the client: a retried submit is harmless
    Column("item_id", Integer, ForeignKey("items.id"), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("lease_id", String(32)),
    Column("kind", String(16), nullable=False),
    Column("answer", JSON, nullable=False),  # validated payload: choice/strength or ranking, ratings, flags
    Column("rationale", Text, nullable=False, default=""),
    Column("display_order", JSON, nullable=False),
    Column("served_at", Float, nullable=False),
    Column("submitted_at", Float, nullable=False),  # server clock when the write committed
    Column("active_ms", Integer, nullable=False),  # time the page was visible and focused
    Column("guideline_version", String(64), nullable=False),
    Column("provenance", JSON, nullable=False),  # the candidates' provenance at judging time
    Column("is_repeat", Boolean, nullable=False, default=False),
    Column("is_gold", Boolean, nullable=False, default=False),
    Column("supersedes", String(64), ForeignKey("judgments.id")),
    # "Nobody judges an item twice": one primary (non-repeat, non-correction) judgment per user and item.
    Index("ux_judgments_primary", "item_id", "user_id", unique=True,
          sqlite_where=text("supersedes IS NULL AND NOT is_repeat"),
          postgresql_where=text("supersedes IS NULL AND NOT is_repeat")),
    Index("ux_judgments_supersedes", "supersedes", unique=True),
    Index("ix_judgments_item_user", "item_id", "user_id"),
    Index("ix_judgments_user", "user_id"),
)


def _add_token_last_used(conn: Connection) -> None:
    conn.execute(text("ALTER TABLE api_tokens ADD COLUMN last_used_at FLOAT"))


# (version reached, what it does, step). Version 1 is the first released schema.
MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (2, "api_tokens.last_used_at", _add_token_last_used),
]
SCHEMA_VERSION = 2
