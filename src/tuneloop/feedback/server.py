"""The labelling web app: a small FastAPI server over the store, plus static pages (no build step).

Run it with ``tuneloop label serve --db labels.db`` (127.0.0.1:8000 by default).

Security model: every prompt and model output is untrusted text. Markdown is rendered on the server
with raw HTML disabled and images off; the pages carry a strict Content-Security-Policy (scripts and
styles only from this origin, nothing inline, no outbound connections). Browsers authenticate with a
session cookie (HttpOnly, SameSite=Strict) and must echo the session's CSRF token in ``X-CSRF-Token``
on every state-changing request; scripts use ``Authorization: Bearer tl_…`` API tokens with scopes.
An annotator only ever sees their own judgments.
"""


import logging
import math
import secrets
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Path as PathParam, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from tuneloop.feedback import assign
from tuneloop.feedback.answers import AnswerError
from tuneloop.feedback.auth import LoginPolicy, LoginThrottle, RateLimiter, verify_password
from tuneloop.feedback.guard import ApiError, RequestGuard, error_response, validation_error
from tuneloop.feedback.store import Store

log = logging.getLogger("tuneloop.feedback.server")

STATIC = Path(__file__).parent / "static"
COOKIE = "tl_session"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SUBMIT_LIMIT = (30, 1.0)  # judgments per second per annotator (a person needs far fewer)
PAGES = {"/login": "login.html", "/label": "label.html", "/admin": "admin.html"}

_MD = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
# Bidirectional embedding, override and isolate controls (the "Trojan Source" set) can make text read
# differently from what it is; they are shown as visible code points instead.
BIDI_CONTROLS = {cp: f"[U+{cp:04X}]" for cp in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}


def _link_open(renderer, tokens, idx, options, env):
    """Links in model output open in a new tab, send no referrer and get no search credit."""
    tokens[idx].attrSet("rel", "noopener noreferrer nofollow")
    tokens[idx].attrSet("target", "_blank")
    return renderer.renderToken(tokens, idx, options, env)


def _image_as_text(renderer, tokens, idx, options, env):
    """An image is never loaded: it is shown as text, alt and URL both visible (and no link)."""
    token = tokens[idx]
    alt = renderer.renderInlineAsText(token.children or [], options, env)
    return escapeHtml(f"[image: {alt}] ({token.attrGet('src') or ''})")


_MD.add_render_rule("link_open", _link_open)
_MD.add_render_rule("image", _image_as_text)


def neutralise_bidi(text: str) -> str:
    return text.translate(BIDI_CONTROLS)


def render_markdown(text: str) -> str:
    """Safe HTML for untrusted Markdown: raw HTML is escaped, images become text, unsafe link schemes
    are dropped, bidirectional controls are shown as code points."""
    return _MD.render(neutralise_bidi(text))


class Login(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=64)
    password: str = Field(max_length=1024)


class JudgmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    lease_id: str | None = Field(default=None, max_length=32)
    supersedes: str | None = Field(default=None, max_length=64)
    answer: dict[str, Any]
    rationale: str = Field(default="", max_length=10_000)
    active_ms: int = Field(default=0, ge=0, le=86_400_000)


class Principal:
    def __init__(self, user, scopes: set[str], csrf: str | None):
        self.id, self.name, self.role = user["id"], user["name"], user["role"]
        self.scopes, self.csrf = scopes, csrf


def create_app(store: Store, *, login_limit: LoginPolicy | None = LoginPolicy(),
               submit_limit: tuple[int, float] | None = SUBMIT_LIMIT, secure_cookies: bool = False) -> FastAPI:
    """The app over ``store``. Pass ``login_limit=None, submit_limit=None`` for simulated raters and load tests."""
    app = FastAPI(title="tuneloop labelling", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store
    app.add_middleware(RequestGuard)  # body limit and strict JSON, before any route parses
    app.add_middleware(SecurityHeaders)  # added last = outermost: the guard's refusals get the headers too
    principal = _principal_dependency(store)
    _page_routes(app)
    _session_routes(app, store, principal, LoginThrottle(login_limit) if login_limit else None, secure_cookies)
    _judge_routes(app, store, _needs(principal, "judge"), RateLimiter(*submit_limit) if submit_limit else None)
    _admin_routes(app, store, _needs(principal, "read"), _needs(principal, "admin"))
    _error_handlers(app)
    return app


def _error_handlers(app: FastAPI) -> None:
    """Every error leaves in one shape, {"error", "field"}, bounded and without the submitted values."""

    @app.exception_handler(ApiError)
    def api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.field, exc.headers)

    @app.exception_handler(HTTPException)
    def http_error(request: Request, exc: HTTPException):  # unknown route, wrong method
        return error_response(exc.status_code, str(exc.detail), None, exc.headers)

    @app.exception_handler(RequestValidationError)
    def invalid(request: Request, exc: RequestValidationError):
        message, field = validation_error(list(exc.errors()))
        return error_response(422, message, field)

    @app.exception_handler(Exception)
    def internal(request: Request, exc: Exception):  # a bug: logged here, never described to the client
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error; the server log has the details")


def _principal_dependency(store: Store):
    """Who is calling: a Bearer API token (scoped, no CSRF) or a session cookie (CSRF on every change)."""

    def principal(request: Request) -> Principal:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            found = store.resolve_token(auth[7:].strip())
            if found is None:
                raise ApiError(401, "invalid or revoked API token")
            user, scopes = found
            return Principal(user, set(scopes), None)
        cookie = request.cookies.get(COOKIE)
        found = store.resolve_session(cookie) if cookie else None
        if found is None:
            raise ApiError(401, "log in first")
        user, csrf = found
        if request.method not in ("GET", "HEAD"):
            # compare bytes: compare_digest refuses str with non-ASCII characters (a header may hold any)
            sent = request.headers.get("x-csrf-token", "").encode("utf-8", "surrogateescape")
            if not sent or not secrets.compare_digest(sent, csrf.encode()):
                raise ApiError(403, "missing or wrong CSRF token")
        scopes = {"judge", "read", "admin"} if user["role"] == "admin" else {"judge"}
        return Principal(user, scopes, csrf)

    return principal


def _needs(principal, scope: str):
    def check(who: Annotated[Principal, Depends(principal)]) -> Principal:
        if scope not in who.scopes:
            raise ApiError(403, f"this needs the '{scope}' permission")
        return who
    return Annotated[Principal, Depends(check)]


def _page_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def root():
        return RedirectResponse("/label")

    for route, filename in PAGES.items():
        app.add_api_route(route, _page(filename), methods=["GET"], include_in_schema=False)

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():  # browsers ask for it on every page; an SVG answers (Chromium and Firefox accept it)
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str):
        path = STATIC / name
        if "/" in name or ".." in name or not path.is_file():
            raise ApiError(404, "not found")
        return FileResponse(path)


def _session_routes(app: FastAPI, store: Store, principal, throttle: LoginThrottle | None, secure: bool) -> None:
    Anyone = Annotated[Principal, Depends(principal)]

    @app.post("/api/login")
    def login(body: Login, request: Request, response: Response):
        _same_origin(request)
        client = request.client.host if request.client else "?"
        wait = throttle.begin(body.name, client) if throttle else 0.0
        if wait > 0:
            seconds = math.ceil(wait)
            raise ApiError(429, f"too many failed logins for this name from this address; try again in {seconds} s",
                           headers={"Retry-After": str(seconds)})
        with store.read() as conn:
            user = store.user(conn, name=body.name)
        if not verify_password(user["password_hash"] if user else None, body.password) or user["disabled"]:
            raise ApiError(401, "wrong name or password")
        if throttle:
            throttle.succeeded(body.name, client)
        secret, csrf = store.create_session(user["id"])
        response.set_cookie(COOKIE, secret, httponly=True, samesite="strict", secure=secure, path="/")
        return {"name": user["name"], "role": user["role"], "csrf": csrf}

    @app.post("/api/logout")
    def logout(who: Anyone, request: Request, response: Response):
        if request.cookies.get(COOKIE):
            store.delete_session(request.cookies[COOKIE])
        response.delete_cookie(COOKIE, path="/")
        return {"ok": True}

    @app.get("/api/me")
    def me(who: Anyone):
        from tuneloop.feedback.quality import annotator_summary

        return {"name": who.name, "role": who.role, "csrf": who.csrf, "scopes": sorted(who.scopes),
                "stats": annotator_summary(store, who.id)}


JudgmentId = Annotated[str, PathParam(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


def _judge_routes(app: FastAPI, store: Store, Judge, submit_rl: RateLimiter | None) -> None:
    @app.post("/api/tasks/next")
    def next_task(who: Judge):
        return JSONResponse(_with_html(assign.next_task(store, who.id)))

    @app.post("/api/judgments")
    def submit(body: JudgmentIn, who: Judge):
        if submit_rl and not submit_rl.allow(str(who.id)):
            raise ApiError(429, "too many submissions; slow down")
        if bool(body.lease_id) == bool(body.supersedes):
            raise ApiError(422, "give either lease_id (a new judgment) or supersedes (a correction)", "lease_id")
        try:
            status, row, following = assign.submit(store, who.id, body.model_dump(), with_next=True)
        except AnswerError as err:
            raise ApiError(422, str(err), err.field) from None
        except assign.Conflict as err:
            raise ApiError(409, str(err)) from None
        except assign.NotFound as err:
            raise ApiError(404, str(err)) from None
        return JSONResponse({"status": status, "judgment": _public(row), "next": _with_html(following)})

    @app.get("/api/judgments/mine")
    def mine(who: Judge, limit: Annotated[int, Query(ge=1, le=1000)] = 50):
        with store.read() as conn:
            rows = assign.current_judgments(conn, who.id)
        return {"judgments": [_public(r) for r in rows[-limit:]]}

    @app.get("/api/judgments/{judgment_id}/task")
    def correction_task(judgment_id: JudgmentId, who: Judge):
        try:
            return JSONResponse(_with_html(assign.correction_task(store, who.id, judgment_id)))
        except assign.NotFound as err:
            raise ApiError(404, str(err)) from None


def _admin_routes(app: FastAPI, store: Store, Reader, Admin) -> None:
    @app.get("/api/admin/stats")
    def stats(who: Reader):
        from tuneloop.feedback.quality import quality_report

        return quality_report(store)

    @app.get("/api/admin/export/{what}")
    def export(what: Literal["pairs.jsonl", "rankings.jsonl", "judgments.jsonl", "scores.jsonl"], who: Reader,
               aggregate: Literal["majority", "soft", "none", "bradley_terry", "ranked_pairs"] = "majority"):
        from tuneloop.feedback.export import export_text

        try:
            body, media = export_text(store, what, aggregate=aggregate)
        except ValueError as err:
            raise ApiError(422, str(err), "aggregate") from None
        return PlainTextResponse(body, media_type=media,
                                 headers={"Content-Disposition": f'attachment; filename="{what}"'})

    @app.get("/api/admin/users")
    def users(who: Admin):
        return {"users": store.list_users()}


class SecurityHeaders:
    """Pure ASGI middleware adding the security headers to every response (cheaper than BaseHTTPMiddleware)."""

    HEADERS = ((b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
               (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer"),
               (b"cross-origin-opener-policy", b"same-origin"))

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        api = scope["path"].startswith("/api/")

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() not in dict(self.HEADERS)]
                headers += list(self.HEADERS) + ([(b"cache-control", b"no-store")] if api else [])
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _page(filename: str):
    def page():
        return FileResponse(STATIC / filename, media_type="text/html")
    return page


def _same_origin(request: Request) -> None:
    """Refuse a login posted from another site (login CSRF); browsers always send Origin on POST."""
    origin = request.headers.get("origin")
    if origin is not None and origin.split("://", 1)[-1] != request.headers.get("host"):
        raise ApiError(403, "cross-site request refused")


def _with_html(task: dict | None) -> dict | None:
    if task is None:
        return None
    task["prompt"] = neutralise_bidi(task["prompt"])
    task["prompt_html"] = render_markdown(task["prompt"])
    # earlier turns of a multi-turn prompt, shown above the last user turn
    task["context"] = [{"role": m["role"], "html": render_markdown(m["content"])} for m in task["messages"][:-1]]
    for cand in task["candidates"]:
        cand["text"] = neutralise_bidi(cand["text"])  # the difference view shows the text itself
        cand["html"] = render_markdown(cand["text"])
    return task


def _public(row: dict) -> dict:
    keep = ("id", "item_id", "kind", "answer", "rationale", "display_order", "served_at", "submitted_at",
            "active_ms", "guideline_version", "is_repeat", "supersedes")
    return {k: row[k] for k in keep}
