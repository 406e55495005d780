"""Browser tests: Debian's chromium driven by Playwright against a real server on 127.0.0.1.

An annotator logs in and judges pairs and a ranking with the keyboard only; an admin sees the
statistics and exports; an XSS payload corpus in prompts and candidates runs no script, opens no
dialog and makes no request outside the app's origin.
"""

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from labeldata import candidates_record

try:
    from playwright.sync_api import expect

    expect.set_options(timeout=20_000)  # a loaded 2-core CI machine can be slow to paint
except ImportError:  # pragma: no cover - the skip below explains
    expect = None

CHROMIUM = os.environ.get("TUNELOOP_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ADMIN_PW, ANN_PW = "admin password 1", "annotator password 1"

pytestmark = pytest.mark.skipif(
    (expect is None or not (shutil.which(CHROMIUM) or os.path.exists(CHROMIUM)))
    and os.environ.get("TUNELOOP_SKIP_SYSTEM_TESTS") == "1",
    reason="chromium or playwright missing and TUNELOOP_SKIP_SYSTEM_TESTS=1")


class LiveServer:
    def __init__(self, store):
        import uvicorn

        from tuneloop.feedback.server import create_app

        sock_port = _free_port()
        self.url = f"http://127.0.0.1:{sock_port}"
        config = uvicorn.Config(create_app(store), host="127.0.0.1", port=sock_port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _login_with_keyboard(page, url, name, password):
    page.goto(url + "/login")
    page.wait_for_selector("#name:focus")  # autofocus: no click needed
    page.keyboard.type(name)
    page.keyboard.press("Tab")
    page.keyboard.type(password)
    page.keyboard.press("Enter")


def test_keyboard_judging_stats_and_export(browser, store, tmp_path):
    import random

    from tuneloop.feedback import assign
    from tuneloop.feedback.importer import import_candidates

    rng = random.Random(0)
    import_candidates(store, _write(tmp_path / "p.jsonl", [candidates_record(i, 2, rng) for i in range(2)]))
    import_candidates(store, _write(tmp_path / "r.jsonl", [candidates_record(9, 3, rng)]), mode="ranking")
    store.set_setting("overlap", 1)
    store.create_user("boss", "admin", ADMIN_PW)
    ann = store.create_user("ann", "annotator", ANN_PW)
    with LiveServer(store) as live:
        page = browser.new_page()
        _login_with_keyboard(page, live.url, "ann", ANN_PW)
        page.wait_for_url("**/label")
        page.wait_for_selector("#candidates .cand")
        assert "Enter" in page.locator("#keys").inner_text()  # shortcuts are on screen
        expected = []
        for _ in range(3):
            page.wait_for_selector("#candidates .cand")
            shown = [int(x) for x in page.locator("#candidates .cand").evaluate_all(
                "nodes => nodes.map(n => n.dataset.id)")]
            if page.locator("#candidates.pair").count():
                page.keyboard.press("2")  # B is better…
                page.keyboard.press("5")  # …significantly
                page.keyboard.press("ArrowRight")
                page.keyboard.press("Shift+Digit6")  # B rated 6/7
                page.keyboard.press("h")  # flag B: hallucination
                assert "B is significantly better" in page.locator("#answer-line").inner_text()
                expected.append(("pairwise", shown))
            else:
                page.keyboard.press("ArrowDown")
                page.keyboard.press("Shift+ArrowUp")  # move the second response to the top
                page.keyboard.press("ArrowDown")
                page.keyboard.press("ArrowDown")
                page.keyboard.press("=")  # tie the last one with the one above
                expected.append(("ranking", shown))
            page.evaluate("document.getElementById('status').textContent = ''")
            page.keyboard.press("Enter")
            expect(page.locator("#status")).to_have_text("Saved.")
        page.wait_for_selector("#done:not(.hidden)")
        with store.read() as conn:
            rows = {j["kind"]: j for j in assign.current_judgments(conn, ann)}
        pair_shown = [s for k, s in expected if k == "pairwise"][-1]
        assert rows["pairwise"]["answer"]["winner"] == rows["pairwise"]["display_order"][1]
        assert rows["pairwise"]["answer"]["strength"] == "significantly"
        b_id = str(rows["pairwise"]["display_order"][1])
        assert rows["pairwise"]["answer"]["ratings"] == {b_id: 6}
        assert rows["pairwise"]["answer"]["flags"] == {b_id: ["hallucination"]}
        (_, rank_shown), = [e for e in expected if e[0] == "ranking"]
        a, b, c = rank_shown
        assert rows["ranking"]["answer"]["ranking"] == [[b], sorted([a, c])]
        assert pair_shown and rows["ranking"]["active_ms"] > 0

        page.keyboard.press("u")  # correct the last judgment: a new row supersedes it
        expect(page.locator("#guideline")).to_contain_text("CORRECTING")
        if page.locator("#candidates.pair").count():
            page.keyboard.press("0")
        page.keyboard.press("Enter")
        expect(page.locator("#status")).to_have_text("Correction saved.")
        with store.read() as conn:
            corrections = [j for j in assign.current_judgments(conn, ann) if j["supersedes"]]
        assert len(corrections) == 1 and store.counts()["judgments"] == 4

        admin = browser.new_page()
        _login_with_keyboard(admin, live.url, "boss", ADMIN_PW)
        admin.wait_for_url("**/admin")
        admin.wait_for_selector("#annotators td")
        assert "raw pairwise agreement" in admin.locator("#agreement").inner_text()
        assert "ann" in admin.locator("#annotators").inner_text()
        admin.focus("#export-pairs")
        with admin.expect_download() as download:
            admin.keyboard.press("Enter")
        lines = Path(download.value.path()).read_text().splitlines()
        assert len(lines) == 2 and {"prompt", "chosen", "rejected"} <= set(json.loads(lines[0]))


XSS = [
    "<script>window.__xss = 1; alert(1)</script>",
    "<img src=x onerror=\"window.__xss = 1; alert(1)\">",
    "<img src=\"http://127.0.0.2:9/beacon.png\">",
    "![a](http://127.0.0.2:9/md.png)",
    "[click me](javascript:alert(1))",
    "<javascript:alert(1)>",
    "<svg/onload=alert(1)>",
    "<iframe src=\"javascript:alert(1)\"></iframe>",
    "<style>@import 'http://127.0.0.2:9/x.css'; body { background: url(http://127.0.0.2:9/bg.png) }</style>",
    "<link rel=stylesheet href=http://127.0.0.2:9/y.css>",
    "<meta http-equiv=\"refresh\" content=\"0;url=http://127.0.0.2:9/\">",
    "<base href=\"http://127.0.0.2:9/\">",
    "<object data=\"http://127.0.0.2:9/o\"></object><embed src=\"http://127.0.0.2:9/e\">",
    "\"><script>alert(document.cookie)</script>",
    "<details open ontoggle=alert(1)>x</details>",
    "<a href=\"http://127.0.0.2:9/\">plain link</a> <form action=\"http://127.0.0.2:9/\"><button>go</button></form>",
    "`<script>alert(1)</script>` and ```\n<img src=x onerror=alert(1)>\n```",
    "<video><source onerror=\"alert(1)\"></video><audio src=x onerror=alert(1)>",
]


def test_xss_corpus_runs_nothing_and_requests_nothing_outside(browser, store, tmp_path):
    import random

    from tuneloop.feedback.importer import import_candidates

    rng = random.Random(1)
    records = []
    for i in range(0, len(XSS), 2):
        record = candidates_record(100 + i, 2, rng, texts=[XSS[i], XSS[i + 1]])
        record["prompt"] = XSS[(i + 5) % len(XSS)]
        record["messages"] = [{"role": "system", "content": XSS[(i + 7) % len(XSS)]},  # shown as context
                              {"role": "user", "content": XSS[(i + 3) % len(XSS)]},
                              {"role": "assistant", "content": XSS[(i + 9) % len(XSS)]},
                              {"role": "user", "content": record["prompt"]}]
        records.append(record)
    import_candidates(store, _write(tmp_path / "x.jsonl", records))
    import_candidates(store, _write(tmp_path / "xr.jsonl", [candidates_record(300, 3, rng, texts=XSS[:3])]),
                      mode="ranking")
    store.set_setting("overlap", 1)
    store.create_user("ann", "annotator", ANN_PW)
    with LiveServer(store) as live:
        context = browser.new_context()
        page = context.new_page()
        dialogs, outside, csp_blocked = [], [], []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.on("console", lambda m: csp_blocked.append(m.text) if "Content Security Policy" in m.text else None)

        def guard(route):
            if route.request.url.startswith(live.url):
                route.continue_()
            else:  # record and stop it: nothing leaves the machine either way
                outside.append(route.request.url)
                route.abort()

        context.route("**/*", guard)
        _login_with_keyboard(page, live.url, "ann", ANN_PW)
        page.wait_for_url("**/label")
        seen = context_turns = 0
        while page.locator("#done.hidden").count():
            page.wait_for_selector("#candidates .cand")
            page.wait_for_timeout(150)  # give any injected handler a chance to fire
            context_turns = max(context_turns, page.locator("#context .turn").count())
            if page.locator("#candidates.pair").count():
                page.keyboard.press("d")  # the difference view renders the raw text too
                page.wait_for_timeout(100)
                page.keyboard.press("1")
            page.evaluate("document.getElementById('status').textContent = ''")
            page.keyboard.press("Enter")
            expect(page.locator("#status")).to_have_text("Saved.")
            seen += 1
        assert seen == len(records) + 1
        assert context_turns == 3  # the earlier turns of a conversation are shown (and inert) too
        assert page.evaluate("window.__xss") is None
        assert dialogs == [] and outside == []
        body = page.content()
        assert "<script>window.__xss" not in body
        context.close()


def _shot(page, name, tmp_path):
    """Screenshots for a person to look at: into $TUNELOOP_SCREENSHOTS when set, else the test's folder."""
    folder = Path(os.environ.get("TUNELOOP_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def test_stable_labels_correction_rating_done_and_admin_page(browser, store, tmp_path):
    """Ranking cards keep their letter when moved; the correction view (u) starts from the earlier answer,
    ratings and flags; the difference view says it is on; flag hints are key chips; a rating item is scored
    with the keyboard; the done state hides the answer panel; the admin page has singular wording, progress
    bars and an agreement chart; /favicon.ico is served."""
    import random

    from tuneloop.feedback import assign
    from tuneloop.feedback.importer import import_candidates

    rng = random.Random(3)
    import_candidates(store, _write(tmp_path / "p.jsonl", [candidates_record(1, 2, rng, texts=[
        "A warm, funny heist with a **great** cast. ![poster](http://127.0.0.2:9/p.png)",
        "A cold, dull heist with a great cast and \u202eevil\u202c text."])]))
    import_candidates(store, _write(tmp_path / "r.jsonl", [candidates_record(2, 3, rng)]), mode="ranking")
    import_candidates(store, _write(tmp_path / "s.jsonl", [candidates_record(3, 2, rng)]), mode="rating")
    store.set_setting("overlap", 1)
    store.create_user("boss", "admin", ADMIN_PW)
    ann = store.create_user("ann", "annotator", ANN_PW)
    with LiveServer(store) as live:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        _login_with_keyboard(page, live.url, "ann", ANN_PW)
        page.wait_for_url("**/label")
        expect(page.locator("#keys")).to_contain_text("correct your previous judgment")
        kinds = []
        while page.locator("#done.hidden").count():
            page.wait_for_selector("#candidates .cand")
            labels = lambda: page.locator("#candidates .cand").evaluate_all("ns => ns.map(n => n.dataset.label)")
            if page.locator("#candidates.pair").count():
                kinds.append("pairwise")
                assert "[image: poster] (http://127.0.0.2:9/p.png)" in page.locator("#candidates").inner_text()
                page.keyboard.press("d")
                expect(page.locator("#diff-indicator")).to_contain_text("difference view on")
                _shot(page, "label-pairwise-diff", tmp_path)
                page.keyboard.press("d")
                expect(page.locator("#diff-indicator")).to_have_count(0)
                page.keyboard.press("1")
                page.keyboard.press("ArrowRight")
                page.keyboard.press("Shift+Digit5")
                page.keyboard.press("h")
                expect(page.locator("#flag-line kbd.on")).to_have_text("h")  # the flag hint is a key chip, lit
                _shot(page, "label-pairwise", tmp_path)
                page.keyboard.press("Enter")
                expect(page.locator("#status")).to_have_text("Saved.")
                page.keyboard.press("u")  # correct it at once: the view starts from the earlier answer
                expect(page.locator("#guideline")).to_contain_text("CORRECTING")
                expect(page.locator("#answer-line")).to_contain_text("A is better")
                assert "rating 5/7 · ⚑ hallucination" in page.locator("#candidates .cand").nth(1).inner_text()
                page.keyboard.press("0")
                page.keyboard.press("Enter")
                expect(page.locator("#status")).to_have_text("Correction saved.")
            elif page.locator("#candidates.ranking").count():
                kinds.append("ranking")
                assert labels() == ["A", "B", "C"]
                page.keyboard.press("ArrowDown")
                page.keyboard.press("Shift+ArrowUp")  # B moves to the top and keeps its letter
                assert labels() == ["B", "A", "C"]
                assert "place 1" in page.locator("#candidates .cand").first.inner_text()
                expect(page.locator("#answer-line")).to_contain_text("B  >  A  >  C")
                _shot(page, "label-ranking", tmp_path)
                page.keyboard.press("Enter")
                expect(page.locator("#status")).to_have_text("Saved.")
            else:
                kinds.append("rating")
                for key in "345":  # quality, relevance, safety in turn
                    page.keyboard.press(key)
                expect(page.locator("#answer-line")).to_contain_text("All aspects scored")
                _shot(page, "label-rating", tmp_path)
                page.keyboard.press("Enter")
                expect(page.locator("#status")).to_have_text("Saved.")
            page.evaluate("document.getElementById('status').textContent = ''")
        assert sorted(kinds) == ["pairwise", "ranking", "rating", "rating"]
        expect(page.locator("#answer-card")).to_be_hidden()  # nothing left: no stale answer panel
        expect(page.locator("#rationale")).to_be_hidden()
        _shot(page, "label-done", tmp_path)
        with store.read() as conn:
            rows = assign.current_judgments(conn, ann)
        fixed = next(j for j in rows if j["supersedes"])
        b_id = str(fixed["display_order"][1])
        assert fixed["answer"]["outcome"] == "tie"  # the change …
        assert fixed["answer"]["ratings"] == {b_id: 5} and fixed["answer"]["flags"] == {b_id: ["hallucination"]}
        ranking = next(j for j in rows if j["kind"] == "ranking")
        order = ranking["display_order"]
        assert ranking["answer"]["ranking"] == [[order[1]], [order[0]], [order[2]]]
        assert all(j["answer"]["scores"][str(j["display_order"][0])] == {"quality": 3, "relevance": 4, "safety": 5}
                   for j in rows if j["kind"] == "rating")
        assert page.request.get(live.url + "/favicon.ico").status == 200

        admin = browser.new_page(viewport={"width": 1280, "height": 900})
        _login_with_keyboard(admin, live.url, "boss", ADMIN_PW)
        admin.wait_for_url("**/admin")
        admin.wait_for_selector("#annotators td")
        expect(admin.locator("#counts")).to_contain_text("by 1 annotator;")
        assert admin.locator("#annotators progress").count() == 1 and admin.locator("#overall").count() == 1
        assert admin.locator("#agreement-chart rect.bar").count() >= 5
        expect(admin.locator("#aspects")).to_contain_text("quality")
        _shot(admin, "admin", tmp_path)


def test_aspect_scores_on_a_pairwise_item_with_the_keyboard(browser, store, tmp_path):
    """With scores_on_comparisons, an aspect's key then a digit scores the focused response."""
    import random

    from tuneloop.feedback import assign
    from tuneloop.feedback.importer import import_candidates

    import_candidates(store, _write(tmp_path / "p.jsonl", [candidates_record(1, 2, random.Random(0))]))
    store.set_setting("scores_on_comparisons", True)
    ann = store.create_user("ann", "annotator", ANN_PW)
    with LiveServer(store) as live:
        page = browser.new_page()
        _login_with_keyboard(page, live.url, "ann", ANN_PW)
        page.wait_for_url("**/label")
        page.wait_for_selector("#candidates .cand")
        expect(page.locator("#aspect-panel")).to_contain_text("relevance")
        for key in ("q", "4", "ArrowRight", "s", "2", "1"):  # A: quality 4; B: safety 2; A is better
            page.keyboard.press(key)
        expect(page.locator("#aspect-panel kbd.on")).to_have_text("s")  # B's safety is scored
        page.keyboard.press("Enter")
        expect(page.locator("#status")).to_have_text("Saved.")
        with store.read() as conn:
            (row,) = assign.current_judgments(conn, ann)
        a, b = (str(c) for c in row["display_order"])
        assert row["answer"]["scores"] == {a: {"quality": 4}, b: {"safety": 2}}
        assert row["answer"]["winner"] == int(a)
