"""The HTTP reward: retries with back-off on failures that may pass, none on the others, timeouts,
and one pooled connection for many batches (a local server on 127.0.0.1 and httpx.MockTransport)."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from reward_helpers import JsonEndpoint, local_server
from tuneloop.rewards.http import MAX_WAIT_S, HttpReward, RewardServiceError, backoff_waits

URL = "http://reward.test/score"


def test_backoff_waits_double_from_backoff_and_are_capped():
    """backoff 0.5: 0.5·2^0, 0.5·2^1, 0.5·2^2, 0.5·2^3 = 0.5, 1, 2, 4 s; backoff 10: 10, 20, 40, then 80 > 60 -> 60."""
    assert backoff_waits(4, 0.5) == [0.5, 1.0, 2.0, 4.0]
    assert backoff_waits(4, 10.0) == [10.0, 20.0, 40.0, MAX_WAIT_S]
    assert backoff_waits(0, 0.5) == []


def _mock(answers: list):
    """A transport answering from ``answers`` in order: (status, body, headers) or an exception to raise."""
    requests = []

    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(json.loads(request.content))
        answer = answers[min(len(requests), len(answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        status, body, headers = answer
        return httpx.Response(status, json=body, headers=headers)

    return httpx.MockTransport(handle), requests


def _reward(transport, sleeps, **kwargs):
    return HttpReward(URL, transport=transport, sleep=sleeps.append, **kwargs)


def test_service_unavailable_twice_then_scores_after_backing_off():
    transport, requests = _mock([(503, {}, {}), (503, {}, {}), (200, {"scores": [0.25, -1.0]}, {})])
    sleeps = []
    scores = _reward(transport, sleeps, retries=3, backoff=0.5).score(["p", "q"], ["a", "b"])
    assert scores.tolist() == [0.25, -1.0]
    assert sleeps == [0.5, 1.0] and len(requests) == 3
    assert requests[0] == requests[2] == {"prompts": [[{"role": "user", "content": "p"}],
                                                      [{"role": "user", "content": "q"}]],
                                          "prompt_texts": ["p", "q"], "responses": ["a", "b"]}


def test_retry_after_longer_than_the_backoff_wins():
    transport, _ = _mock([(429, {}, {"Retry-After": "3"}), (200, {"scores": [1.0]}, {})])
    sleeps = []
    _reward(transport, sleeps, backoff=0.5).score(["p"], ["a"])
    assert sleeps == [3.0]


def test_a_failure_that_persists_is_one_error_after_every_attempt():
    transport, requests = _mock([(502, {"error": "down"}, {})])
    sleeps = []
    with pytest.raises(RewardServiceError, match=r"answered HTTP 502: .*down.* \(after 3 attempts\)"):
        _reward(transport, sleeps, retries=2, backoff=1.0).score(["p"], ["a"])
    assert len(requests) == 3 and sleeps == [1.0, 2.0]


def test_a_client_error_is_not_retried():
    transport, requests = _mock([(400, {"error": "bad prompt"}, {})])
    sleeps = []
    with pytest.raises(RewardServiceError, match=r"answered HTTP 400: .*bad prompt") as err:
        _reward(transport, sleeps, retries=3).score(["p"], ["a"])
    assert "attempts" not in str(err.value) and len(requests) == 1 and sleeps == []


def test_timeouts_and_refused_connections_are_retried():
    transport, requests = _mock([httpx.ReadTimeout("slow"), httpx.ConnectError("refused"),
                                 (200, {"scores": [2.0]}, {})])
    sleeps = []
    assert _reward(transport, sleeps, retries=2, backoff=0.1).score(["p"], ["a"]).tolist() == [2.0]
    assert len(requests) == 3 and sleeps == [0.1, 0.2]
    transport, _ = _mock([httpx.ReadTimeout("slow")])
    with pytest.raises(RewardServiceError, match=r"timed out \(ReadTimeout\) \(after 2 attempts\)"):
        _reward(transport, [], retries=1).score(["p"], ["a"])


class _KeepAliveHandler(JsonEndpoint):
    peers: list = []
    delay_s = 0.0

    def answer(self, body: dict) -> dict:
        type(self).peers.append(self.client_address)
        time.sleep(type(self).delay_s)
        return {"scores": [float(len(r)) for r in body["responses"]]}


@pytest.fixture()
def keepalive_server():
    _KeepAliveHandler.peers, _KeepAliveHandler.delay_s = [], 0.0
    with local_server(_KeepAliveHandler) as url:
        yield url


def test_many_batches_share_one_pooled_connection(keepalive_server):
    with HttpReward(keepalive_server, batch_size=2) as reward:
        assert reward.score(["p"] * 5, ["a", "bb", "ccc", "", "e"]).tolist() == [1.0, 2.0, 3.0, 0.0, 1.0]
        reward.score(["p"], ["again"])
    assert len(_KeepAliveHandler.peers) == 4  # 3 batches, then 1
    assert len(set(_KeepAliveHandler.peers)) == 1, f"one connection expected, got {_KeepAliveHandler.peers}"


def test_a_slow_endpoint_times_out(keepalive_server):
    _KeepAliveHandler.delay_s = 1.0
    start = time.monotonic()
    with pytest.raises(RewardServiceError, match="timed out"), HttpReward(keepalive_server, timeout=0.2,
                                                                          retries=0) as reward:
        reward.score(["p"], ["a"])
    assert time.monotonic() - start < 0.9
