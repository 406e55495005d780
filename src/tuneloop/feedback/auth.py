"""Passwords (argon2id), login throttling, and a small in-memory rate limiter for submits.

Sessions, CSRF tokens and API tokens are random secrets stored as sha256 hashes (see store.py); the
request-level checks are in server.py.

Login throttling (``LoginThrottle``) counts *failed* logins per (name, client address): after
``free_failures`` of them, that pair must wait ``first_delay_s``, then twice as long after each further
failure, up to ``max_delay_s``; a success clears the pair. Because the pair includes the address, a
stranger who guesses wrong passwords for "ann" slows down only their own guesses: ann, logging in
from her own address, is not locked out. One address that fails for many names (password spraying)
is slowed down after ``address_free_failures`` failures in the same way. Successful logins never count.
What this does not stop: guessing one name from many addresses (each address gets its free failures);
argon2id's cost and the 10-character minimum are the defence there. People behind one shared address
(an office NAT) share that address's budget.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

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


@dataclass(frozen=True)
class LoginPolicy:
    """When failed logins slow further attempts down (see the module docstring)."""

    free_failures: int = 5
    """Failed logins per (name, address) before back-off starts."""
    first_delay_s: float = 2.0
    """The first back-off; it doubles with every further failure."""
    max_delay_s: float = 900.0
    """The longest back-off (15 minutes)."""
    address_free_failures: int = 50
    """Failed logins from one address, over all names, before that address backs off too."""
    forget_after_s: float = 3600.0
    """A key with no failure for this long starts afresh."""


class _Backoff:
    """Failure counts and back-off deadlines per key; bounded in memory."""

    MAX_KEYS = 100_000

    def __init__(self, free: int, policy: LoginPolicy):
        self.free, self.policy = free, policy
        self.state: dict[str, list[float]] = {}  # key → [failures, last failure time, blocked until]

    def wait(self, key: str, now: float) -> float:
        entry = self.state.get(key)
        return 0.0 if entry is None else max(0.0, entry[2] - now)

    def fail(self, key: str, now: float) -> None:
        entry = self.state.get(key)
        if entry is None or now - entry[1] > self.policy.forget_after_s:
            entry = self.state[key] = [0, now, 0.0]
        entry[0] += 1
        entry[1] = now
        over = entry[0] - self.free + 1  # the free-th failure starts the back-off
        if over > 0:
            delay = min(self.policy.max_delay_s, self.policy.first_delay_s * 2 ** min(over - 1, 40))
            entry[2] = now + delay
        if len(self.state) > self.MAX_KEYS:  # forget quiet keys, then the oldest, so memory stays bounded
            keep = {k: v for k, v in self.state.items() if now - v[1] <= self.policy.forget_after_s or v[2] > now}
            if len(keep) > self.MAX_KEYS // 2:
                keep = dict(sorted(keep.items(), key=lambda kv: kv[1][1])[-(self.MAX_KEYS // 2):])
            self.state = keep

    def undo(self, key: str) -> None:
        entry = self.state.get(key)
        if entry is not None:
            entry[0] = max(0, entry[0] - 1)
            if entry[0] < self.free:  # the attempt that set the back-off was not a failure after all
                entry[2] = 0.0

    def clear(self, key: str) -> None:
        self.state.pop(key, None)


class LoginThrottle:
    """Failed-login back-off per (name, address) and per address; thread-safe.

    ``begin`` is called before the password is checked and counts the attempt as a failure at once, so
    parallel guesses cannot slip past the count; ``succeeded`` takes it back.
    """

    def __init__(self, policy: LoginPolicy | None = None):
        self.policy = policy or LoginPolicy()
        self._pairs = _Backoff(self.policy.free_failures, self.policy)
        self._addresses = _Backoff(self.policy.address_free_failures, self.policy)
        self._lock = threading.Lock()

    @staticmethod
    def _pair(name: str, address: str) -> str:
        return f"{address}\x00{name}"

    def begin(self, name: str, address: str, now: float | None = None) -> float:
        """0 when this attempt may go ahead (it is counted as a failure until ``succeeded``), else the
        seconds to wait."""
        now = time.monotonic() if now is None else now
        pair = self._pair(name, address)
        with self._lock:
            wait = max(self._pairs.wait(pair, now), self._addresses.wait(address, now))
            if wait > 0:
                return wait
            self._pairs.fail(pair, now)
            self._addresses.fail(address, now)
            return 0.0

    def succeeded(self, name: str, address: str) -> None:
        with self._lock:
            self._pairs.clear(self._pair(name, address))
            self._addresses.undo(address)
