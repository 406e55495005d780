"""A reward served over HTTP: JSON POST in batches.

Request body: ``{"prompts": [[{"role", "content"}, ...], ...], "prompt_texts": ["...", ...],
"responses": ["...", ...]}`` (the prompts as messages and as plain text, whichever the server likes).
Response body: ``{"scores": [float, ...]}``, one per response, in order. Standard library only.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence

import torch

from tuneloop.models.reward import plain_prompt_text
from tuneloop.rewards.base import Prompt, as_messages, as_scores, check_batch


class RewardServiceError(OSError):
    """The reward endpoint could not be reached or answered something unusable."""


class HttpReward:
    def __init__(self, url: str, batch_size: int = 64, timeout: float = 60.0, headers: dict | None = None):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"an HTTP reward needs an http:// or https:// URL, got {url!r}")
        assert batch_size >= 1, f"batch_size must be ≥ 1, got {batch_size}"
        self.url, self.batch_size, self.timeout = url, batch_size, timeout
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.name = url

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
        check_batch(prompts, responses)
        parts = [self._post(prompts[i:i + self.batch_size], responses[i:i + self.batch_size])
                 for i in range(0, len(responses), self.batch_size)]
        return torch.cat(parts) if parts else torch.zeros(0)

    def _post(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
        messages = [as_messages(p) for p in prompts]
        body = json.dumps({"prompts": messages, "prompt_texts": [plain_prompt_text(m) for m in messages],
                           "responses": list(responses)}).encode("utf-8")
        request = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                payload = json.loads(answer.read().decode("utf-8"))
        except urllib.error.HTTPError as err:
            detail = err.read().decode("utf-8", "replace")[:200]
            raise RewardServiceError(f"reward endpoint {self.url} answered HTTP {err.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            reason = getattr(err, "reason", err)
            raise RewardServiceError(f"reward endpoint {self.url} cannot be reached: {reason}") from None
        except json.JSONDecodeError:
            raise RewardServiceError(f"reward endpoint {self.url} did not answer JSON") from None
        scores = payload.get("scores") if isinstance(payload, dict) else None
        if not isinstance(scores, list) or len(scores) != len(responses):
            got = len(scores) if isinstance(scores, list) else repr(payload)[:80]
            raise RewardServiceError(f"reward endpoint {self.url} must answer {{\"scores\": [...]}} with "
                                     f"{len(responses)} numbers, got {got}")
        return as_scores(scores, f"endpoint {self.url}")
