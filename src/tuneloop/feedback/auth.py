"""Passwords (argon2id), and a small in-memory rate limiter for login and submit.

Sessions, CSRF tokens and API tokens are random secrets stored as sha256 hashes (see store.py); the
request-level checks are in server.py.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MIN_PASSWORD_CHARS = 10
PRODUCTION_HASHER = PasswordHasher()  # argon2id, RFC 9106 low-memory profile (t=3, m=64 MiB, p=4)
_HASHER = PRODUCTION_HASHER  # tests swap in a cheap hasher with use_hasher() to stay fast
_DUMMY_HASH: str | None = None  # made on first use, so starting the server costs no hash


def use_hasher(hasher: PasswordHasher) -> None:
    """Replace the password hasher (tests only: production keeps argon2id with RFC 9106 parameters)."""
    global _HASHER, _DUMMY_HASH
    _HASHER, _DUMMY_HASH = hasher, None


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_CHARS:
        raise ValueError(f"passwords need at least {MIN_PASSWORD_CHARS} characters")
    return _HASHER.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True if ``password`` matches. Unknown users cost the same time as known ones."""
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = _HASHER.hash("a password nobody has, checked for unknown users")
    try:
        return _HASHER.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


class RateLimiter:
    """At most ``limit`` events per ``window`` seconds per key (a sliding window); thread-safe."""

    def __init__(self, limit: int, window: float):
        self.limit, self.window = limit, window
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            events = self._events.setdefault(key, deque())
            while events and events[0] <= now - self.window:
                events.popleft()
            if len(events) >= self.limit:
                return False
            events.append(now)
            if len(self._events) > 100_000:  # forget idle keys so memory stays bounded
                self._events = {k: v for k, v in self._events.items() if v and v[-1] > now - self.window}
            return True
