"""Helpers for the reward tests: a tiny BERT encoder on the bundled MiniLM tokenizer, preference files."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from datafiles import write_jsonl

GOOD = ["great", "wonderful", "lovely", "superb", "delightful", "brilliant"]
BAD = ["awful", "boring", "dreadful", "terrible", "dull", "clumsy"]


@pytest.fixture(scope="session")
def tiny_bert() -> str:
    """Folder of a 2-layer, 32-wide random BERT with the MiniLM WordPiece tokenizer (built once)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from tuneloop.atomic import atomic_dir
    from tuneloop.models.bundled import cache_dir
    from tuneloop.models.bundled_encoder import bundled_encoder_path

    target = cache_dir() / "models" / "tiny-bert-32x2"
    if not (target / "config.json").is_file():
        tok = AutoTokenizer.from_pretrained(bundled_encoder_path())
        config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=512)
        torch.manual_seed(0)
        with atomic_dir(target) as tmp:
            BertModel(config).save_pretrained(tmp)
            tok.save_pretrained(tmp)
    return str(target)


@pytest.fixture
def one_torch_thread():
    """Run the test with one torch thread (tiny models gain nothing from more; CI runs tests side by side)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def review_pairs(n: int, seed: int = 0) -> list[dict]:
    """Pairs whose chosen review is positive and rejected negative: learnable in a few steps."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt = f"Write a short review of movie number {i}."
        rows.append({"prompt": prompt, "chosen": f"A {rng.choice(GOOD)} film, {rng.choice(GOOD)} acting.",
                     "rejected": f"A {rng.choice(BAD)} film, {rng.choice(BAD)} acting."})
    return rows


def write_pairs(path: Path, n: int, seed: int = 0) -> str:
    return write_jsonl(path, review_pairs(n, seed))


class JsonEndpoint(BaseHTTPRequestHandler):
    """A local JSON POST endpoint for the HTTP reward tests: subclasses define ``answer(body) -> dict``.
    HTTP/1.1, so a client may keep its connection open between requests."""

    protocol_version = "HTTP/1.1"

    def answer(self, body: dict) -> dict:
        raise NotImplementedError

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        data = json.dumps(self.answer(body)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@contextmanager
def local_server(handler: type[BaseHTTPRequestHandler], path: str = "/score") -> Iterator[str]:
    """Serve ``handler`` on 127.0.0.1 (a free port) in a thread; yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}{path}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
