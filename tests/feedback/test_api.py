"""The HTTP API: sessions, CSRF, roles, tokens, rate limits, headers, safe Markdown, and the judge loop."""

import uuid

import pytest
from labeldata import write_candidates
from fastapi.testclient import TestClient

from tuneloop.feedback.importer import import_candidates
from tuneloop.feedback.server import CSP, create_app, render_markdown

ADMIN_PW, ANN_PW = "admin password 1", "annotator password 1"


@pytest.fixture
def app_store(any_store, tmp_path):
    """The API tests run on SQLite and on PostgreSQL."""
    import_candidates(any_store, write_candidates(tmp_path / "c.jsonl", 6, k=2))
    any_store.create_user("boss", "admin", ADMIN_PW)
    any_store.create_user("ann", "annotator", ANN_PW)
    any_store.create_user("bob", "annotator", ANN_PW)
    return any_store


def client(store, **kw) -> TestClient:
    return TestClient(create_app(store, **kw), base_url="http://127.0.0.1:8000")


def login(c: TestClient, name: str, password: str) -> str:
    r = c.post("/api/login", json={"name": name, "password": password})
    assert r.status_code == 200, r.text
    return r.json()["csrf"]


def judge(c, csrf, task, jid=None):
    body = {"id": jid or uuid.uuid4().hex, "lease_id": task["lease_id"],
            "answer": {"outcome": "win", "winner": task["candidates"][1]["id"], "strength": "slightly"}}
    return c.post("/api/judgments", json=body, headers={"X-CSRF-Token": csrf})


def test_login_session_cookie_and_judge_loop(app_store):
    c = client(app_store)
    r = c.post("/api/login", json={"name": "ann", "password": ANN_PW})
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    csrf = r.json()["csrf"]
    task = c.post("/api/tasks/next", headers={"X-CSRF-Token": csrf}).json()
    assert task["kind"] == "pairwise" and len(task["candidates"]) == 2 and "html" in task["candidates"][0]
    jid = uuid.uuid4().hex
    first = judge(c, csrf, task, jid)
    assert first.status_code == 200 and first.json()["status"] == "created" and first.json()["next"]
    again = judge(c, csrf, task, jid)  # the browser retried after a network error
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    me = c.get("/api/me").json()
    assert me["stats"]["judged"] == 1 and me["role"] == "annotator"


def test_passwords_use_argon2id_with_strong_parameters(app_store):
    from tuneloop.feedback import auth

    assert auth.PRODUCTION_HASHER.type.name == "ID" and auth.PRODUCTION_HASHER.memory_cost >= 64 * 1024
    assert auth.PRODUCTION_HASHER.time_cost >= 3
    assert auth.PRODUCTION_HASHER.hash("some password!").startswith("$argon2id$")
    with app_store.read() as conn:
        stored = app_store.user(conn, name="ann")["password_hash"]
    assert stored.startswith("$argon2id$") and ANN_PW not in stored
    with pytest.raises(ValueError, match="at least"):
        app_store.create_user("shorty", "annotator", "short")


def test_wrong_password_unknown_user_and_no_default_accounts(app_store):
    c = client(app_store)
    assert c.post("/api/login", json={"name": "ann", "password": "wrong password"}).status_code == 401
    assert c.post("/api/login", json={"name": "admin", "password": "admin"}).status_code == 401
    assert c.get("/api/me").status_code == 401


def test_csrf_token_required_on_every_state_change(app_store):
    c = client(app_store)
    csrf = login(c, "ann", ANN_PW)
    assert c.post("/api/tasks/next").status_code == 403
    assert c.post("/api/tasks/next", headers={"X-CSRF-Token": "forged"}).status_code == 403
    task = c.post("/api/tasks/next", headers={"X-CSRF-Token": csrf}).json()
    assert judge(c, "forged", task).status_code == 403
    assert c.post("/api/logout").status_code == 403


def test_cross_site_login_is_refused(app_store):
    c = client(app_store)
    r = c.post("/api/login", json={"name": "ann", "password": ANN_PW}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403


def test_roles_are_checked(app_store):
    c = client(app_store)
    login(c, "ann", ANN_PW)
    for path in ("/api/admin/stats", "/api/admin/export/pairs.jsonl", "/api/admin/users"):
        assert c.get(path).status_code == 403, path
    admin = client(app_store)
    login(admin, "boss", ADMIN_PW)
    assert admin.get("/api/admin/stats").status_code == 200
    assert admin.get("/api/admin/users").status_code == 200


def test_annotators_cannot_see_or_change_each_others_judgments(app_store):
    ann, bob = client(app_store), client(app_store)
    csrf_a, csrf_b = login(ann, "ann", ANN_PW), login(bob, "bob", ANN_PW)
    task = ann.post("/api/tasks/next", headers={"X-CSRF-Token": csrf_a}).json()
    written = judge(ann, csrf_a, task).json()["judgment"]
    assert bob.get("/api/judgments/mine").json()["judgments"] == []
    assert judge(bob, csrf_b, task).status_code == 404  # ann's lease is invisible to bob
    fix = {"id": uuid.uuid4().hex, "supersedes": written["id"], "answer": {"outcome": "tie"}}
    assert bob.post("/api/judgments", json=fix, headers={"X-CSRF-Token": csrf_b}).status_code == 404
    assert ann.post("/api/judgments", json=fix, headers={"X-CSRF-Token": csrf_a}).status_code == 200
    reuse = {"id": written["id"], "lease_id": bob.post("/api/tasks/next", headers={"X-CSRF-Token": csrf_b}).json()["lease_id"],
             "answer": {"outcome": "tie"}}
    assert bob.post("/api/judgments", json=reuse, headers={"X-CSRF-Token": csrf_b}).status_code == 409


def test_api_tokens_are_scoped_hashed_and_revocable(app_store):
    from sqlalchemy import select

    from tuneloop.feedback import schema as S

    judge_token = app_store.issue_token("ann", ["judge"])
    read_token = app_store.issue_token("boss", ["read"])
    with pytest.raises(ValueError, match="only have the 'judge' scope"):
        app_store.issue_token("ann", ["admin"])
    with app_store.read() as conn:
        stored = conn.execute(select(S.api_tokens.c.secret_hash)).scalars().all()
    assert all(judge_token.split("_", 2)[2] not in h for h in stored)  # only hashes are kept
    c = client(app_store)
    auth = {"Authorization": f"Bearer {judge_token}"}
    assert c.post("/api/tasks/next", headers=auth).status_code == 200  # bearer auth needs no CSRF token
    assert c.get("/api/admin/stats", headers=auth).status_code == 403
    reader = {"Authorization": f"Bearer {read_token}"}
    assert c.get("/api/admin/stats", headers=reader).status_code == 200
    assert c.post("/api/tasks/next", headers=reader).status_code == 403
    app_store.revoke_token(judge_token.split("_")[1])
    assert c.post("/api/tasks/next", headers=auth).status_code == 401
    assert c.get("/api/me", headers={"Authorization": "Bearer tl_nope_nope"}).status_code == 401


def test_login_and_submit_are_rate_limited(app_store):
    from tuneloop.feedback.auth import LoginPolicy

    c = client(app_store, login_limit=LoginPolicy(free_failures=3, first_delay_s=60.0), submit_limit=(2, 60.0))
    for _ in range(3):
        assert c.post("/api/login", json={"name": "bob", "password": "wrong password"}).status_code == 401
    r = c.post("/api/login", json={"name": "bob", "password": ANN_PW})  # backing off: even the right one waits
    assert r.status_code == 429 and int(r.headers["retry-after"]) == 60
    assert r.json() == {"error": "too many failed logins for this name from this address; try again in 60 s",
                        "field": None}
    other = client(app_store, submit_limit=(2, 60.0))
    csrf = login(other, "ann", ANN_PW)
    task = other.post("/api/tasks/next", headers={"X-CSRF-Token": csrf}).json()
    task = judge(other, csrf, task).json()["next"]
    task = judge(other, csrf, task).json()["next"]
    assert judge(other, csrf, task).status_code == 429


def test_security_headers_on_pages_and_api(app_store):
    c = client(app_store)
    for path in ("/login", "/label", "/admin", "/static/label.js", "/api/me"):
        r = c.get(path)
        assert r.headers["content-security-policy"] == CSP, path
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
    assert "'unsafe-inline'" not in CSP and "script-src 'self'" in CSP
    assert c.get("/static/..%2Fserver.py").status_code == 404


def test_pages_have_no_inline_script_or_style():
    import re
    from pathlib import Path

    from tuneloop.feedback import server

    for page in Path(server.STATIC).glob("*.html"):
        html = page.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), page.name  # every script is a file
        assert not re.search(r"\son[a-z]+\s*=", html) and "style=" not in html and "<style" not in html, page.name


@pytest.mark.parametrize("payload", [
    "<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "[click](javascript:alert(1))",
    "![x](http://127.0.0.2:9/x.png)", "<svg onload=alert(1)>", '"><iframe src="http://127.0.0.2/">',
    "<a href='javascript:alert(1)'>x</a>", "[x](data:text/html;base64,PHNjcmlwdD4=)",
])
def test_markdown_rendering_neutralises_html_and_unsafe_links(payload):
    html = render_markdown(payload)
    assert "<script" not in html and "<img" not in html and "<svg" not in html and "<iframe" not in html
    import re

    assert 'href="javascript:' not in html and 'href="data:' not in html
    assert not re.search(r"<[a-z][^>]*\son[a-z]+=", html)  # no tag carries an event handler


def test_markdown_links_open_safely():
    html = render_markdown("[site](https://example.org/)")
    assert 'rel="noopener noreferrer nofollow"' in html and 'target="_blank"' in html


def test_submit_validation_errors_are_422(app_store):
    c = client(app_store)
    csrf = login(c, "ann", ANN_PW)
    task = c.post("/api/tasks/next", headers={"X-CSRF-Token": csrf}).json()
    h = {"X-CSRF-Token": csrf}
    bad = {"id": uuid.uuid4().hex, "lease_id": task["lease_id"], "answer": {"outcome": "win", "winner": 999999}}
    r = c.post("/api/judgments", json=bad, headers=h)
    assert r.status_code == 422 and "answer.winner" in r.json()["error"]
    assert c.post("/api/judgments", json={**bad, "id": "x"}, headers=h).status_code == 422
    assert c.post("/api/judgments", json={**bad, "extra": 1}, headers=h).status_code == 422


def test_markdown_images_show_as_text_with_their_url_and_bidi_controls_are_visible():
    html = render_markdown("look: ![a cat](http://127.0.0.2:9/cat.png) \u202eevil\u202c \u2066x\u2069")
    assert "<img" not in html and "<a" not in html  # not loaded, not a link
    assert "[image: a cat] (http://127.0.0.2:9/cat.png)" in html
    assert "\u202e" not in html and "[U+202E]evil[U+202C]" in html and "[U+2066]x[U+2069]" in html


def test_tasks_neutralise_bidi_controls_in_prompt_and_candidates(app_store, tmp_path):
    import json as _json

    from labeldata import candidates_record
    import random

    record = candidates_record(77, 2, random.Random(0), texts=["safe \u202egnp.exe", "plain"])
    record["prompt"] = "rate \u202ethis"
    record["messages"] = [{"role": "user", "content": record["prompt"]}]
    (tmp_path / "bidi.jsonl").write_text(_json.dumps(record) + "\n")
    import_candidates(app_store, tmp_path / "bidi.jsonl")
    c = client(app_store)
    csrf = login(c, "ann", ANN_PW)
    for _ in range(10):
        task = c.post("/api/tasks/next", headers={"X-CSRF-Token": csrf}).json()
        if task["prompt"].startswith("rate"):
            break
        judge(c, csrf, task)
    assert task["prompt"] == "rate [U+202E]this"
    assert "safe [U+202E]gnp.exe" in [x["text"] for x in task["candidates"]]
    assert all("\u202e" not in x["html"] for x in task["candidates"])
