"""Property-based fuzzing of every API endpoint (hypothesis), signed out, as an annotator and as an admin.

The endpoints come from the app's own OpenAPI schema: a route added without a fuzzer here fails
``test_every_endpoint_in_the_schema_is_fuzzed``. Requests mix well-formed bodies (with a live lease and
the task's real candidate ids, so validation runs deep) with hostile values: NaN and infinities, 1e400,
lone surrogates, NUL, right-to-left overrides, huge integers, wrong JSON types, deep nesting, raw
bytes, wrong content types, and arbitrary CSRF headers. Every response must be below 500, bounded in
size, and every error must be the one shape ``{"error", "field"}``; after each state-changing request
the store's invariants (what ``tuneloop label stats --check`` checks) must still hold.

Derandomised (the same examples on every run), about a minute on a 2-core machine. The number of
requests per endpoint is printed (``pytest -s``) and asserted.
"""

import json
import os
import random
import uuid
from collections import Counter
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from labeldata import write_candidates

from tuneloop.feedback.guard import ERROR_MAX_CHARS
from tuneloop.feedback.importer import import_candidates
from tuneloop.feedback.server import create_app

ANN_PW, ADMIN_PW = "annotator password 1", "admin password 1"
EXAMPLES = int(os.environ.get("TUNELOOP_FUZZ_EXAMPLES", "60"))  # per endpoint and identity
MAX_OK_BYTES = 512 * 1024  # the fuzz store is small: no answer should come near this
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
COUNTS: Counter = Counter()
STATUSES: dict[str, Counter] = {}

HOSTILE_TEXT = ["", "ann", "\ud800", "\udfff", "a\x00b", "\u202eevil\u202c", "1e400", "NaN", "x" * 70,
                "é" * 40, "<script>alert(1)</script>", "../../etc/passwd", "' OR 1=1 --", "tl_x_y", "🙂"]
RAW_BODIES = [b"NaN", b"[1e400]", b'{"a": Infinity}', b'"\\ud800"', b"[" * 200 + b"]" * 200, b"\xff\xfe",
              b"{", b"", b"null", b"9" * 40, b'{"id": -Infinity}']
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
                    st.sampled_from(HOSTILE_TEXT))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)


def _store_with_work(tmp_path_factory):
    from tuneloop.feedback.store import Store

    root = tmp_path_factory.mktemp("fuzz")
    store = Store.open(root / "labels.db", synchronous="NORMAL")
    import_candidates(store, write_candidates(root / "p.jsonl", 30, k=3))
    import_candidates(store, write_candidates(root / "r.jsonl", 10, k=3, start=100), mode="ranking")
    import_candidates(store, write_candidates(root / "s.jsonl", 10, k=2, start=200), mode="rating")
    store.set_setting("overlap", 2)
    store.set_setting("scores_on_comparisons", True)
    store.create_user("ann", "annotator", ANN_PW)
    store.create_user("boss", "admin", ADMIN_PW)
    return store


@pytest.fixture(scope="module")
def fuzz_store(tmp_path_factory):
    store = _store_with_work(tmp_path_factory)
    yield store
    store.close()


class Caller:
    """One identity's client: signed out, an annotator's session (cookie + CSRF), or an admin's API token."""

    def __init__(self, store, identity: str):
        self.store, self.identity = store, identity
        self.client = TestClient(create_app(store, submit_limit=None), base_url="http://127.0.0.1:8000",
                                 raise_server_exceptions=False)
        self.headers: dict = {}
        self.sign_in()

    def sign_in(self):
        if self.identity == "annotator":
            r = self.client.post("/api/login", json={"name": "ann", "password": ANN_PW})
            assert r.status_code == 200, r.text
            self.headers = {"X-CSRF-Token": r.json()["csrf"]}
        elif self.identity == "admin":
            self.headers = {"Authorization": "Bearer " + self.store.issue_token("boss", ["judge", "read", "admin"])}

    def live_task(self) -> dict | None:
        if self.identity == "anonymous":
            return None
        r = self.client.post("/api/tasks/next", headers=self.headers)
        return r.json() if r.status_code == 200 else None


def _check(response, label: str):
    COUNTS[label] += 1
    STATUSES.setdefault(label, Counter())[response.status_code] += 1
    assert response.status_code < 500, (label, response.status_code, response.text[:500])
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error", "field"}, (label, body)
        assert len(body["error"]) <= ERROR_MAX_CHARS and len(response.content) < 1024, (label, body)
    else:
        assert len(response.content) <= MAX_OK_BYTES, (label, len(response.content))


def _invariants(store):
    assert store.check_integrity() == []


# -- request strategies ------------------------------------------------------------------------------------
@st.composite
def bodies(draw, fields: dict):
    """(content bytes, content type): mostly JSON objects shaped like the endpoint's body, else anything."""
    kind = draw(st.sampled_from(["shaped", "shaped", "shaped", "any", "raw"]))
    if kind == "raw":
        content = draw(st.one_of(st.sampled_from(RAW_BODIES), st.binary(max_size=64)))
    else:
        value = ({k: draw(strategy) for k, strategy in fields.items() if draw(st.booleans()) or k == "answer"}
                 if kind == "shaped" else draw(json_values))
        content = json.dumps(value, allow_nan=True).encode()  # NaN / Infinity literals on purpose
    ctype = draw(st.sampled_from(["application/json", "application/json", "application/json; charset=utf-8",
                                  "text/plain", ""]))
    return content, ctype


def csrf_headers(caller: Caller):
    """The caller's own headers, none, or arbitrary bytes as the CSRF token or the bearer token."""
    garbage = st.binary(min_size=1, max_size=40).filter(lambda b: not ({10, 13, 0} & set(b)))
    return st.one_of(st.just(dict(caller.headers)), st.just({}),
                     garbage.map(lambda b: {**caller.headers, "X-CSRF-Token": b}),
                     garbage.map(lambda b: {"Authorization": b"Bearer " + b}),
                     garbage.map(lambda b: {"Authorization": b"Bearer tl_" + b + b"_" + b}))


# Strategies never depend on the live store (hypothesis replays examples and needs the same draws):
# answers name candidates by placeholders "<id0>".."<id2>" (and "<id0.0>" for a float id), resolved to the
# live task's ids after drawing; a valid answer is built from a drawn seed; own judgments by a drawn index.
REFS = [f"<id{i}>" for i in range(3)]
ref = st.sampled_from(REFS)
ref_or_hostile = st.one_of(ref, json_values, st.sampled_from([f"<id{i}.0>" for i in range(3)]))
keyed = st.dictionaries(st.one_of(ref, st.text(max_size=5)), json_values, max_size=3)
scores = st.dictionaries(ref, st.dictionaries(st.sampled_from(["quality", "relevance", "safety", "x"]),
                                              st.one_of(st.integers(0, 6), json_values), max_size=3), max_size=2)
answers = st.one_of(
    st.integers(0, 2**32).map(lambda seed: {"<valid>": seed}),
    st.fixed_dictionaries({"outcome": st.one_of(st.sampled_from(["win", "tie", "both_bad"]), json_values)},
                          optional={"winner": ref_or_hostile,
                                    "strength": st.one_of(st.sampled_from(["better", "slightly"]), json_values),
                                    "ratings": keyed, "flags": keyed, "scores": scores}),
    st.fixed_dictionaries({"ranking": st.one_of(st.permutations(REFS).map(lambda p: [[x] for x in p]),
                                                st.lists(st.lists(ref_or_hostile, max_size=3), max_size=3),
                                                json_values)},
                          optional={"none_acceptable": st.one_of(st.booleans(), json_values), "scores": scores}),
    st.fixed_dictionaries({"scores": scores}, optional={"flags": keyed}),
    json_values)


def resolve(answer, task: dict | None):
    """The drawn answer with placeholders replaced by the live task's candidate ids."""
    ids = [c["id"] for c in task["candidates"]] if task else [1, 2]
    if isinstance(answer, dict) and set(answer) == {"<valid>"}:
        return _valid_answer(task, random.Random(answer["<valid>"]))

    def walk(x):
        if isinstance(x, str) and x.startswith("<id") and x.endswith(">"):
            index, _, fraction = x[3:-1].partition(".")
            cid = ids[int(index) % len(ids)]
            return float(cid) if fraction else cid
        if isinstance(x, list):
            return [walk(v) for v in x]
        if isinstance(x, dict):
            return {(str(walk(k)) if k in REFS else k): walk(v) for k, v in x.items()}
        return x
    return walk(answer)


def _valid_answer(task: dict | None, rng: random.Random) -> dict:
    """An answer that fits the live task, so writes, corrections and the next hand-out are exercised."""
    if not task:
        return {"outcome": "tie"}
    ids = [c["id"] for c in task["candidates"]]
    full = {str(i): {a: rng.randint(1, 5) for a in ("quality", "relevance", "safety")} for i in ids}
    if task["kind"] == "rating":
        return {"scores": full}
    extra = {"scores": full} if rng.random() < 0.5 else {}
    if task["kind"] == "ranking":
        rng.shuffle(ids)
        return {"ranking": [[x] for x in ids], **extra}
    return {"outcome": "win", "winner": rng.choice(ids), "strength": rng.choice(
        ["significantly", "better", "slightly", "negligibly"]), **extra}


def _mine(caller, index: int, fallback: str) -> str:
    """The caller's index-th most recent judgment id (or ``fallback`` when they have none)."""
    ids = _my_judgment_ids(caller)
    return ids[index % len(ids)] if ids else fallback


# -- one fuzzer per endpoint --------------------------------------------------------------------------------
def fuzz_login(caller, data):
    fields = {"name": st.one_of(st.sampled_from(HOSTILE_TEXT), json_values),
              "password": st.one_of(st.sampled_from([ANN_PW, "wrong password!"]), json_values),
              "extra": json_values}
    content, ctype = data.draw(bodies(fields))
    origin = data.draw(st.sampled_from([{}, {"Origin": "http://127.0.0.1:8000"}, {"Origin": "http://evil.example"}]))
    return caller.client.post("/api/login", content=content, headers={"Content-Type": ctype, **origin})


def fuzz_logout(caller, data):
    content, ctype = data.draw(bodies({"x": json_values}))
    response = caller.client.post("/api/logout", content=content,
                                  headers={**data.draw(csrf_headers(caller)), "Content-Type": ctype})
    if response.status_code == 200 and caller.identity == "annotator":
        caller.sign_in()  # the next example needs the session again
    return response


def fuzz_me(caller, data):
    return caller.client.get("/api/me", headers=data.draw(csrf_headers(caller)))


def fuzz_next(caller, data):
    content, ctype = data.draw(bodies({"x": json_values}))
    return caller.client.post("/api/tasks/next", content=content,
                              headers={**data.draw(csrf_headers(caller)), "Content-Type": ctype})


def fuzz_submit(caller, data):
    if data.draw(st.sampled_from(["deep", "deep", "wild"])) == "deep":
        # a well-formed envelope (live lease or a correction, right headers): only the answer is fuzzed
        target = data.draw(st.sampled_from(["lease", "lease", "supersedes"]))
        drawn, rationale, mine = data.draw(answers), data.draw(st.one_of(st.text(max_size=30),
                                                                         st.sampled_from(HOSTILE_TEXT))), data.draw(st.integers(0, 4))
        task = caller.live_task()
        body = {"id": uuid.uuid4().hex, "answer": resolve(drawn, task), "rationale": rationale}
        if target == "lease" and task:
            body["lease_id"] = task["lease_id"]
        else:
            body["supersedes"] = _mine(caller, mine, "none-yet")
        return caller.client.post("/api/judgments", content=json.dumps(body, allow_nan=True).encode(),
                                  headers={**caller.headers, "Content-Type": "application/json"})
    fields = {"id": st.one_of(st.uuids().map(lambda u: u.hex), st.sampled_from(HOSTILE_TEXT), json_values),
              "lease_id": st.one_of(st.just("<lease>"), st.sampled_from(HOSTILE_TEXT), json_values),
              "supersedes": st.one_of(st.just("<mine>"), json_values),
              "answer": answers, "rationale": st.one_of(st.text(max_size=50), json_values),
              "active_ms": st.one_of(st.integers(-5, 10**9), json_values)}
    content, ctype = data.draw(bodies(fields))
    headers = {**data.draw(csrf_headers(caller)), "Content-Type": ctype}
    task = caller.live_task()
    content = content.replace(b'"<lease>"', json.dumps(task["lease_id"] if task else None).encode())
    content = content.replace(b'"<mine>"', json.dumps(_mine(caller, 0, "none-yet")).encode())
    for i, placeholder in enumerate(REFS):  # the live task's ids where the drawn body names a candidate
        cid = task["candidates"][i % len(task["candidates"])]["id"] if task else i + 1
        content = content.replace(f'"{placeholder}"'.encode(), str(cid).encode())
    return caller.client.post("/api/judgments", content=content, headers=headers)


def _my_judgment_ids(caller) -> list[str]:
    if caller.identity == "anonymous":
        return []
    r = caller.client.get("/api/judgments/mine?limit=5", headers=caller.headers)
    return [j["id"] for j in r.json()["judgments"]] if r.status_code == 200 else []


def fuzz_mine(caller, data):
    limit = data.draw(st.one_of(st.integers(-10, 2000), st.text(max_size=12), st.sampled_from(["1e400", "NaN"])))
    return caller.client.get("/api/judgments/mine", params={"limit": limit}, headers=caller.headers)


def fuzz_correction(caller, data):
    jid = data.draw(st.one_of(st.integers(0, 4).map(lambda i: ("<mine>", i)),
                              st.text(max_size=70), st.sampled_from(["..", "%00", "a" * 65, "\u202e12345678"])))
    if isinstance(jid, tuple):
        jid = _mine(caller, jid[1], "x" * 10)
    return caller.client.get(f"/api/judgments/{_segment(jid)}/task", headers=caller.headers)


def _segment(text: str) -> str:
    """A path segment as a client sends it: every byte percent-encoded (lone surrogates too)."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def fuzz_stats(caller, data):
    return caller.client.get("/api/admin/stats", headers=data.draw(csrf_headers(caller)))


def fuzz_export(caller, data):
    what = data.draw(st.one_of(st.sampled_from(["pairs.jsonl", "rankings.jsonl", "judgments.jsonl", "scores.jsonl"]),
                               st.text(max_size=20)))
    aggregate = data.draw(st.one_of(st.sampled_from(["majority", "soft", "none", "bradley_terry", "ranked_pairs"]),
                                    st.text(max_size=12)))
    return caller.client.get(f"/api/admin/export/{_segment(what)}", params={"aggregate": aggregate}, headers=caller.headers)


def fuzz_users(caller, data):
    return caller.client.get("/api/admin/users", headers=data.draw(csrf_headers(caller)))


FUZZERS = {
    ("post", "/api/login"): fuzz_login, ("post", "/api/logout"): fuzz_logout, ("get", "/api/me"): fuzz_me,
    ("post", "/api/tasks/next"): fuzz_next, ("post", "/api/judgments"): fuzz_submit,
    ("get", "/api/judgments/mine"): fuzz_mine, ("get", "/api/judgments/{judgment_id}/task"): fuzz_correction,
    ("get", "/api/admin/stats"): fuzz_stats, ("get", "/api/admin/export/{what}"): fuzz_export,
    ("get", "/api/admin/users"): fuzz_users,
}
IDENTITIES = ("anonymous", "annotator", "admin")


def test_every_endpoint_in_the_schema_is_fuzzed(fuzz_store):
    schema = create_app(fuzz_store).openapi()
    endpoints = {(method, path) for path, ops in schema["paths"].items() for method in ops}
    assert endpoints == set(FUZZERS), f"endpoints without a fuzzer: {endpoints - set(FUZZERS)}"


@pytest.mark.parametrize("identity", IDENTITIES)
@pytest.mark.parametrize("endpoint", list(FUZZERS), ids=lambda e: f"{e[0].upper()} {e[1]}" if isinstance(e, tuple) else e)
def test_fuzz_endpoint(fuzz_store, endpoint, identity):
    caller = Caller(fuzz_store, identity)
    method, path = endpoint
    label = f"{method.upper()} {path} [{identity}]"
    before = COUNTS[label]

    @FUZZ
    @given(data=st.data())
    def run(data):
        _check(FUZZERS[endpoint](caller, data), label)
        if method == "post":
            _invariants(fuzz_store)

    run()
    made = COUNTS[label] - before
    print(f"\nfuzz: {made:4d} requests  {label}  statuses {dict(sorted(STATUSES[label].items()))}")
    assert made >= min(EXAMPLES, 20)


def test_label_stats_check_is_clean_after_fuzzing(fuzz_store, capsys):
    """The same check ``tuneloop label stats --check`` runs, through the CLI, on the fuzzed store."""
    from tuneloop.feedback.cli import main

    assert main(["label", "stats", "--db", str(fuzz_store.location), "--check"]) == 0
    assert "integrity: ok" in capsys.readouterr().out
