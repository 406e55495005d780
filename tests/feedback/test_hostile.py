"""Hostile input (issue 14): every case is a 4xx in the one error shape {"error", "field"}, never a 5xx,
never an echo of what was sent; login throttling that a stranger cannot use to lock someone out."""

import json
import uuid

import pytest
from fastapi.testclient import TestClient
from labeldata import write_candidates

from tuneloop.feedback.auth import LoginPolicy, LoginThrottle
from tuneloop.feedback.guard import ERROR_MAX_CHARS, MAX_BODY_BYTES, StrictJSONError, parse_strict_json
from tuneloop.feedback.importer import import_candidates
from tuneloop.feedback.server import create_app

ANN_PW = "annotator password 1"
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def app_store(store, tmp_path):
    import_candidates(store, write_candidates(tmp_path / "c.jsonl", 4, k=2))
    import_candidates(store, write_candidates(tmp_path / "r.jsonl", 2, k=3, start=40), mode="ranking")
    store.create_user("ann", "annotator", ANN_PW)
    return store


def client(store, address="10.0.0.1", **kw) -> TestClient:
    return TestClient(create_app(store, **kw), base_url="http://127.0.0.1:8000", raise_server_exceptions=False,
                      client=(address, 40000))


def signed_in(store) -> tuple[TestClient, dict]:
    c = client(store)
    r = c.post("/api/login", json={"name": "ann", "password": ANN_PW})
    assert r.status_code == 200, r.text
    return c, {"X-CSRF-Token": r.json()["csrf"], **JSON}


def assert_error(r, status: int, field=..., contains: str = ""):
    """The one error shape, bounded, with the expected status (and field, when given)."""
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()
    assert set(body) == {"error", "field"} and isinstance(body["error"], str) and body["error"]
    assert len(body["error"]) <= ERROR_MAX_CHARS and len(r.content) < 1024
    if field is not ...:
        assert body["field"] == field, body
    assert contains in body["error"], body


@pytest.mark.parametrize("raw", [
    b'{"name": NaN, "password": "x"}', b'{"name": "ann", "password": Infinity}', b'{"name": -Infinity}',
    b'{"name": "ann", "password": 1e400}', b'{"name": "\\ud800", "password": "annotator password 1"}',
    b'{"name": "ann\\u0000", "password": "x"}', b'{"name": 123456789012345678901234567890}',
    b'{"name": "\xff\xfe"}', b'[' * 5000 + b']' * 5000, b'{"name": "ann", ', b'\xef\xbb\xbf{}',
])
def test_login_with_non_strict_json_is_400_without_logging_in(app_store, raw):
    r = client(app_store).post("/api/login", content=raw, headers=JSON)
    assert_error(r, 400, "body")


def test_non_json_body_is_415(app_store):
    assert_error(client(app_store).post("/api/login", content=b"name=ann", headers={"Content-Type": "text/plain"}), 415)


@pytest.mark.parametrize("raw", [b'{"outcome": NaN}', b'{"outcome": "win", "winner": 1e400}',
                                 b'{"outcome": "\\udfff"}', b'{"outcome": "win", "winner": Infinity}'])
def test_judgment_with_non_finite_number_or_surrogate_is_400(app_store, raw):
    c, h = signed_in(app_store)
    task = c.post("/api/tasks/next", headers=h).json()
    body = b'{"id": "' + uuid.uuid4().hex.encode() + b'", "lease_id": "' + task["lease_id"].encode() + \
        b'", "answer": ' + raw + b"}"
    assert_error(c.post("/api/judgments", content=body, headers=h), 400, "body")
    assert_error(client(app_store).post("/api/judgments", content=body, headers=JSON), 400)  # signed out too


def _task(c, h, kind):
    for _ in range(10):
        task = c.post("/api/tasks/next", headers=h).json()
        if task["kind"] == kind:
            return task
        ids = [x["id"] for x in task["candidates"]]
        answer = {"outcome": "tie"} if kind == "ranking" else {"ranking": [ids]}
        assert c.post("/api/judgments", json={"id": uuid.uuid4().hex, "lease_id": task["lease_id"],
                                               "answer": answer}, headers=h).status_code == 200
    raise AssertionError(f"no {kind} task")


@pytest.mark.parametrize("answer, field", [
    ({"outcome": "win", "winner": [1], "strength": "better"}, "answer.winner"),
    ({"outcome": "win", "winner": {"a": 1}}, "answer.winner"),
    ({"outcome": "win", "winner": "FIRST", "strength": ["better"]}, "answer.strength"),
    ({"outcome": "win", "winner": "FIRST", "strength": {"x": 1}}, "answer.strength"),
    ({"outcome": "win", "winner": "FIRST_FLOAT"}, "answer.winner"),  # 83.0 is not the id 83
    ({"outcome": ["win"]}, "answer.outcome"),
    ({"outcome": "tie", "flags": {"FIRST": [["hallucination"]]}}, "answer.flags.FIRST"),
    ({"outcome": "tie", "flags": ["x"]}, "answer.flags"),
    ({"outcome": "tie", "ratings": {"FIRST": 6.0}}, "answer.ratings.FIRST"),
    ({"outcome": "tie", "ratings": {"FIRST": [6]}}, "answer.ratings.FIRST"),
    ({"outcome": "tie", "scores": {"FIRST": {"quality": "5"}}}, "answer.scores.FIRST.quality"),
    ({"outcome": "tie", "scores": {"FIRST": {"quality": 6}}}, "answer.scores.FIRST.quality"),
    ({"outcome": "tie", "scores": {"FIRST": {"nope": 3}}}, "answer.scores.FIRST"),
])
def test_wrong_json_types_in_a_pairwise_answer_are_422_naming_the_field(app_store, answer, field):
    c, h = signed_in(app_store)
    task = _task(c, h, "pairwise")
    first = task["candidates"][0]["id"]
    text = json.dumps(answer).replace('"FIRST":', f'"{first}":')  # a key stays a string
    text = text.replace('"FIRST_FLOAT"', f"{first}.0").replace('"FIRST"', str(first))
    body = '{"id": "%s", "lease_id": "%s", "answer": %s}' % (uuid.uuid4().hex, task["lease_id"], text)
    assert_error(c.post("/api/judgments", content=body.encode(), headers=h), 422, field.replace("FIRST", str(first)))
    with app_store.read() as conn:  # nothing was stored, and certainly no float id
        from tuneloop.feedback.assign import current_judgments

        assert all(type(j["answer"].get("winner")) in (int, type(None)) for j in current_judgments(conn))


@pytest.mark.parametrize("ranking", ["MIXED", "FLOATS", "NESTED", "STRINGS", "BOOLS"])
def test_wrong_json_types_in_a_ranking_are_422(app_store, ranking):
    c, h = signed_in(app_store)
    task = _task(c, h, "ranking")
    a, b, d = [x["id"] for x in task["candidates"]]
    value = {"MIXED": f'[[{a}], ["{b}"], [{d}]]', "FLOATS": f"[[{a}.0], [{b}], [{d}]]",
             "NESTED": f"[[[{a}]], [{b}], [{d}]]", "STRINGS": f'["{a}", "{b}", "{d}"]',
             "BOOLS": f"[[true], [{b}], [{d}]]"}[ranking]
    body = '{"id": "%s", "lease_id": "%s", "answer": {"ranking": %s}}' % (uuid.uuid4().hex, task["lease_id"], value)
    assert_error(c.post("/api/judgments", content=body.encode(), headers=h), 422, "answer.ranking")


def test_non_ascii_csrf_header_with_a_valid_session_is_403(app_store):
    c, h = signed_in(app_store)
    r = c.post("/api/tasks/next", headers={"X-CSRF-Token": "é€ñ".encode("utf-8")})
    assert_error(r, 403, None, "CSRF")
    r = c.post("/api/tasks/next", headers={"X-CSRF-Token": b"\xff\xfe\x80"})
    assert_error(r, 403, None, "CSRF")


def test_non_ascii_bearer_tokens_are_401(app_store):
    c = client(app_store)
    for token in ("Bearer tl_é€_ñ".encode("utf-8"), b"Bearer \xff\xfe", b"Bearer tl_" + b"a" * 5000 + b"_x"):
        assert_error(c.get("/api/me", headers={"Authorization": token}), 401, None)


def test_bodies_over_the_limit_are_refused_before_parsing_and_nothing_is_echoed(app_store):
    c = client(app_store)
    big = b'{"name": "' + b"a" * (50 * 1024 * 1024) + b'", "password": "p"}'
    assert_error(c.post("/api/login", content=big, headers=JSON), 413, "body", str(MAX_BODY_BYTES))

    def chunks():  # no Content-Length: counted while it arrives
        yield b'{"name": "'
        for _ in range(40):
            yield b"b" * 65536
        yield b'"}'
    assert_error(c.post("/api/login", content=chunks(), headers=JSON), 413, "body")
    secret = "my secret password which must never come back"
    r = c.post("/api/login", json={"name": "x" * 5000, "password": secret})
    assert_error(r, 422, "name")
    assert secret not in r.text and "xxxxxxxxxx" not in r.text
    r = c.post("/api/login", json={"name": "ann", "password": secret, "extra": secret})
    assert_error(r, 422, "extra")
    assert secret not in r.text


def test_unknown_routes_methods_and_parameters_use_the_error_shape(app_store):
    c, h = signed_in(app_store)
    assert_error(c.get("/api/nothing"), 404)
    assert_error(c.get("/api/login"), 405)
    assert_error(c.get("/api/judgments/mine?limit=abc"), 422, "limit")
    assert_error(c.get("/api/judgments/mine?limit=99999999999999999999999"), 422, "limit")
    assert_error(c.get("/api/judgments/%00%01/task"), 422, "judgment_id")
    assert_error(c.post("/api/judgments", json={"id": "short", "answer": {}}, headers=h), 422, "id")
    assert_error(c.post("/api/judgments", json=[1, 2], headers=h), 422)
    assert_error(c.post("/api/judgments", json={"id": uuid.uuid4().hex, "answer": {}}, headers=h), 422, "lease_id")


def test_favicon_is_served(app_store):
    r = client(app_store).get("/favicon.ico")
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml")
    assert r.content.startswith(b"<svg") and b"<script" not in r.content


@pytest.mark.parametrize("text, ok", [
    ('{"a": [1, 2.5, "x", null, true]}', True), ('"\\u00e9\\ud83d\\ude00"', True),  # a surrogate *pair* is fine
    ("NaN", False), ('{"a": -Infinity}', False), ('{"a": 1e309}', False), ('"\\ud83d"', False),
    ("9007199254740993", False), ("9007199254740992", True), ('{"\\udc00": 1}', False),
    ("[" * 33 + "]" * 33, False), ("[" * 32 + "]" * 32, True),
])
def test_parse_strict_json(text, ok):
    if ok:
        parse_strict_json(text.encode())
    else:
        with pytest.raises(StrictJSONError):
            parse_strict_json(text.encode())


def test_throttle_backs_off_per_name_and_address_and_a_success_clears_it():
    """free_failures=3, first delay 2 s doubling: failures at t=0,0,0 → blocked until 2; the 4th failure at
    t=2 → blocked until 2 + 4 = 6; the 5th at t=6 → until 6 + 8 = 14."""
    t = LoginThrottle(LoginPolicy(free_failures=3, first_delay_s=2.0, max_delay_s=10.0, address_free_failures=100))
    for _ in range(3):
        assert t.begin("ann", "1.1.1.1", now=0.0) == 0.0  # counted as failures (never succeeded)
    assert t.begin("ann", "1.1.1.1", now=1.0) == pytest.approx(1.0)
    assert t.begin("ann", "2.2.2.2", now=1.0) == 0.0  # ann from her own address is not locked out
    t.succeeded("ann", "2.2.2.2")
    assert t.begin("ann", "1.1.1.1", now=2.0) == 0.0
    assert t.begin("ann", "1.1.1.1", now=5.0) == pytest.approx(1.0)
    assert t.begin("ann", "1.1.1.1", now=6.0) == 0.0
    assert t.begin("ann", "1.1.1.1", now=6.0) == pytest.approx(8.0)
    assert t.begin("ann", "1.1.1.1", now=14.0) == 0.0
    assert t.begin("ann", "1.1.1.1", now=14.0) == pytest.approx(10.0)  # capped at max_delay_s
    t.succeeded("ann", "1.1.1.1")
    assert t.begin("ann", "1.1.1.1", now=14.0) == 0.0


def test_throttle_slows_an_address_spraying_many_names_and_successes_never_count():
    t = LoginThrottle(LoginPolicy(free_failures=5, first_delay_s=2.0, address_free_failures=4))
    for name in ("a", "b", "c", "d"):
        assert t.begin(name, "6.6.6.6", now=0.0) == 0.0
    assert t.begin("e", "6.6.6.6", now=0.0) == pytest.approx(2.0)
    assert t.begin("e", "7.7.7.7", now=0.0) == 0.0  # other addresses are untouched
    for _ in range(50):  # many successful logins from one address never throttle it
        assert t.begin("ann", "8.8.8.8", now=0.0) == 0.0
        t.succeeded("ann", "8.8.8.8")


def test_a_stranger_cannot_lock_a_user_out(app_store):
    stranger, ann = client(app_store, address="203.0.113.9"), client(app_store, address="198.51.100.7")
    for _ in range(30):
        r = stranger.post("/api/login", json={"name": "ann", "password": "a wrong guess!"})
        assert r.status_code in (401, 429)
    assert_error(stranger.post("/api/login", json={"name": "ann", "password": ANN_PW}), 429)
    assert ann.post("/api/login", json={"name": "ann", "password": ANN_PW}).status_code == 200
    for _ in range(20):  # successes do not count against ann's address
        assert ann.post("/api/login", json={"name": "ann", "password": ANN_PW}).status_code == 200
