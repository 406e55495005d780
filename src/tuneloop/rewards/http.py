"""A reward served over HTTP: JSON POST in batches, on pooled keep-alive connections (httpx).

Request body: ``{"prompts": [[{"role", "content"}, ...], ...], "prompt_texts": ["...", ...],
"responses": ["...", ...]}`` (the prompts as messages and as plain text, whichever the server likes).
Response body: ``{"scores": [float, ...]}``, one per response, in order.

RL scores every rollout batch through here, so one ``httpx.Client`` keeps its connections open
between calls instead of a TCP (and TLS) handshake per batch. A failure that may pass -- the
endpoint cannot be reached, a timeout, HTTP 408, 429, 500, 502, 503 or 504 -- is retried up to
``retries`` more times after waiting ``backoff · 2^k`` seconds (k = 0, 1, …; a longer ``Retry-After``
the server sends wins, up to ``MAX_WAIT_S``). Scoring is a pure function of its input, so sending a
batch twice is safe. Any other HTTP status, or an answer that is not ``{"scores": [...]}`` with one
finite number per response, is an error at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence

import httpx
import torch

from tuneloop.data.formats import plain_prompt_text
from tuneloop.rewards.base import Prompt, as_messages, as_scores, check_batch

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_WAIT_S = 60.0  # longest single wait, whatever Retry-After says


class RewardServiceError(OSError):
    """The reward endpoint could not be reached or answered something unusable."""


def backoff_waits(retries: int, backoff: float) -> list[float]:
    """Seconds to wait before retry 1..retries: backoff · 2^k, each at most MAX_WAIT_S."""
    return [min(backoff * 2**k, MAX_WAIT_S) for k in range(retries)]


def _retry_after(answer: httpx.Response) -> float:
    """The Retry-After header in seconds (0 when absent or given as a date)."""
    try:
        return max(0.0, float(answer.headers.get("Retry-After", "0")))
    except ValueError:
        return 0.0


class HttpReward:
    def __init__(self, url: str, batch_size: int = 64, timeout: float = 60.0, headers: dict | None = None,
                 retries: int = 3, backoff: float = 0.5, max_connections: int = 8,
                 transport: httpx.BaseTransport | None = None, sleep: Callable[[float], None] = time.sleep):
        """``timeout``: seconds for connecting and for each read/write; ``retries``: extra attempts after a
        failure that may pass (module docstring); ``transport`` and ``sleep`` are for tests."""
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"an HTTP reward needs an http:// or https:// URL, got {url!r}")
        assert batch_size >= 1, f"batch_size must be ≥ 1, got {batch_size}"
        assert retries >= 0 and backoff >= 0, f"retries and backoff must be ≥ 0, got {retries}, {backoff}"
        self.url, self.batch_size, self.retries, self.backoff = url, batch_size, retries, backoff
        self.name = url
        self._sleep = sleep
        self._client = httpx.Client(
            headers={"Content-Type": "application/json", **(headers or {})}, timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport)

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
        check_batch(prompts, responses)
        parts = [self._post(prompts[i:i + self.batch_size], responses[i:i + self.batch_size])
                 for i in range(0, len(responses), self.batch_size)]
        return torch.cat(parts) if parts else torch.zeros(0)

    def close(self) -> None:
        """Close the pooled connections."""
        self._client.close()

    def __enter__(self) -> HttpReward:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _post(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
        messages = [as_messages(p) for p in prompts]
        body = json.dumps({"prompts": messages, "prompt_texts": [plain_prompt_text(m) for m in messages],
                           "responses": list(responses)}).encode("utf-8")
        answer = self._send(body)
        try:
            payload = answer.json()
        except ValueError:
            raise RewardServiceError(f"reward endpoint {self.url} did not answer JSON") from None
        scores = payload.get("scores") if isinstance(payload, dict) else None
        if not isinstance(scores, list) or len(scores) != len(responses):
            got = len(scores) if isinstance(scores, list) else repr(payload)[:80]
            raise RewardServiceError(f"reward endpoint {self.url} must answer {{\"scores\": [...]}} with "
                                     f"{len(responses)} numbers, got {got}")
        return as_scores(scores, f"endpoint {self.url}")

    def _send(self, body: bytes) -> httpx.Response:
        """POST ``body``, retrying failures that may pass; the answer has a 2xx status."""
        waits = backoff_waits(self.retries, self.backoff)
        for attempt in range(self.retries + 1):
            try:
                answer = self._client.post(self.url, content=body)
            except httpx.TimeoutException as err:
                problem, wait = f"timed out ({type(err).__name__})", 0.0
            except httpx.TransportError as err:
                problem, wait = f"cannot be reached: {err or type(err).__name__}", 0.0
            else:
                if answer.is_success:
                    return answer
                problem = f"answered HTTP {answer.status_code}: {answer.text[:200]}"
                if answer.status_code not in RETRY_STATUS:
                    break
                wait = min(_retry_after(answer), MAX_WAIT_S)
            if attempt < self.retries:
                self._sleep(max(waits[attempt], wait))
        tries = f" (after {attempt + 1} attempts)" if attempt else ""
        raise RewardServiceError(f"reward endpoint {self.url} {problem}{tries}")
