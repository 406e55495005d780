"""The API's edge: one error shape, a request body limit and strict JSON, before FastAPI parses anything.

Every error the API returns has one shape, ``{"error": "<for a person>", "field": "<where>" | null}``:
the message is at most ``ERROR_MAX_CHARS`` characters and never repeats what was sent (a password,
or a 50 MB name, must not come back in a 422). ``ApiError`` raises one from a route.

``RequestGuard`` (pure ASGI middleware) reads each request body up to ``MAX_BODY_BYTES`` (a larger
one is refused with 413 while it is still arriving, whatever Content-Length says) and, for the API,
checks that a non-empty body is JSON as RFC 8259 defines it: UTF-8, no ``NaN`` / ``Infinity`` (Python's
json module accepts them, and a number such as ``1e400`` becomes infinity), no lone UTF-16 surrogate
(``"\\ud800"`` decodes to a string that cannot be encoded again), no NUL character (PostgreSQL text
cannot hold one), integers within ±2^53 (what a browser can represent) and nesting at most
``MAX_JSON_DEPTH`` deep. Such a body is refused with 400 and a message before any route sees it.
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.responses import JSONResponse

MAX_BODY_BYTES = 1_000_000  # the largest request body read; a judgment with a long rationale is ~20 kB
MAX_JSON_DEPTH = 32  # answers nest 3 deep; deeper input is refused before anything walks it
MAX_JSON_INT = 2**53  # integers beyond ±2^53 cannot round-trip through a browser's numbers
ERROR_MAX_CHARS = 300
FIELD_MAX_CHARS = 100


class ApiError(Exception):
    """An error for the client: HTTP ``status`` with ``{"error": message, "field": field}``."""

    def __init__(self, status: int, message: str, field: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, headers


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_body(message: str, field: str | None = None) -> dict[str, str | None]:
    """The one error shape, bounded in size."""
    return {"error": _clip(str(message), ERROR_MAX_CHARS),
            "field": None if field is None else _clip(str(field), FIELD_MAX_CHARS)}


def error_response(status: int, message: str, field: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, field), status_code=status, headers=headers)


def validation_error(errors: list[dict]) -> tuple[str, str | None]:
    """(message, field) from pydantic's errors: the first one, by location, without the input it echoes."""
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path", "header")]
    message = str(first.get("msg") or "invalid value")
    field = ".".join(loc) or None
    return (f"{field}: {message}" if field else message), field


class StrictJSONError(ValueError):
    """The body is not strict JSON; the message says why (never quoting the body)."""


def _reject_constant(name: str):
    raise StrictJSONError(f"{name} is not a JSON number; send finite numbers only")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise StrictJSONError("a number is too large to be finite; send finite numbers only")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 16:  # 2^53 has 16 digits: decide without converting a huge string
        raise StrictJSONError(f"an integer is out of range (±{MAX_JSON_INT})")
    value = int(text)
    if abs(value) > MAX_JSON_INT:
        raise StrictJSONError(f"an integer is out of range (±{MAX_JSON_INT})")
    return value


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise StrictJSONError("a string holds a lone UTF-16 surrogate (invalid Unicode)") from None
    if "\x00" in text:
        raise StrictJSONError("a string holds a NUL character")


def parse_strict_json(body: bytes) -> Any:
    """The value of a strict-JSON body, or StrictJSONError (see the module docstring for the rules)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise StrictJSONError("the body is not valid UTF-8") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float, parse_int=_bounded_int)
    except RecursionError:
        raise StrictJSONError(f"the JSON is nested more than {MAX_JSON_DEPTH} levels deep") from None
    except json.JSONDecodeError as err:
        raise StrictJSONError(f"the body is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
    stack = [(value, 1)]  # iterative walk: depth is bounded here, not by Python's recursion limit
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise StrictJSONError(f"the JSON is nested more than {MAX_JSON_DEPTH} levels deep")
        if isinstance(node, str):
            _check_text(node)
        elif isinstance(node, list):
            stack.extend((x, depth + 1) for x in node)
        elif isinstance(node, dict):
            for key, x in node.items():
                _check_text(key)
                stack.append((x, depth + 1))
    return value


class RequestGuard:
    """Pure ASGI middleware: body limit for every request, strict JSON for non-empty API bodies."""

    def __init__(self, app, max_body_bytes: int = MAX_BODY_BYTES):
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"0")
        if not declared.isdigit():
            return await error_response(400, "Content-Length must be a number of bytes")(scope, receive, send)
        if int(declared) > self.max_body_bytes:
            return await self._too_large(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return await self._too_large(scope, receive, send)
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        if body and scope["path"].startswith("/api/"):
            content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if content_type != b"application/json":
                return await error_response(415, "send the body as application/json")(scope, receive, send)
            try:
                parse_strict_json(body)
            except StrictJSONError as err:
                return await error_response(400, str(err), "body")(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _too_large(self, scope, receive, send):
        response = error_response(413, f"the request body is larger than {self.max_body_bytes} bytes", "body",
                                  headers={"Connection": "close"})
        await response(scope, receive, send)
