"""The reward protocol: callables, an HTTP endpoint on 127.0.0.1, mixes, gold scorers, the sanity gate,
and the trained reward model behind ``load_reward`` (batch invariance, prompt forms)."""

from __future__ import annotations

import pytest
import torch

from reward_helpers import JsonEndpoint, local_server, tiny_bert  # noqa: F401  (tiny_bert: fixture)
from tuneloop.models.reward import RewardModelInfo
from tuneloop.rewards import (
    HttpReward,
    RewardServiceError,
    WeakRewardModelError,
    check_reward_model,
    load_reward,
    load_text_scorer,
)
from tuneloop.rewards.gold import readability, vader_sentiment


def length_reward(response: str) -> float:
    return float(len(response))


def test_callable_reward_takes_response_or_prompt_and_response(tmp_path):
    reward = load_reward(length_reward)
    assert reward.score(["p", "q"], ["ab", ""]).tolist() == [2.0, 0.0]
    both = load_reward(lambda prompt, response: float(len(prompt) * 10 + len(response)))
    assert both.score(["abc", [{"role": "user", "content": "x"}]], ["z", "zz"]).tolist() == [31.0, 12.0]
    module = tmp_path / "my_reward.py"
    module.write_text("def score(text):\n    return text.count('!')\n")
    assert load_reward(f"{module}:score").score(["p"], ["wow!!"]).tolist() == [2.0]


def test_callable_reward_errors_are_clear(tmp_path):
    bad = load_reward(lambda r: float("nan"))
    with pytest.raises(ValueError, match=r"gave nan for item 0; expected a finite number"):
        bad.score(["p"], ["x"])
    with pytest.raises(ValueError, match="one prompt per response"):
        load_reward(length_reward).score(["p"], ["a", "b"])
    with pytest.raises(ValueError, match="has no function 'nope'"):
        load_reward("json:nope")
    with pytest.raises(FileNotFoundError, match="not a reward-model folder, a gold scorer"):
        load_reward(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="unknown gold scorer 'nope'"):
        load_reward("gold:nope")


def test_text_scorers_for_the_rater_panel_come_from_one_loader(tmp_path):
    assert load_text_scorer("vader") is vader_sentiment and load_text_scorer("gold:vader") is vader_sentiment
    assert load_text_scorer("readability") is readability
    module = tmp_path / "exclaim.py"
    module.write_text("def score(text):\n    return float(text.count('!'))\n")
    assert load_text_scorer(f"{module}:score")("a!b!") == 2.0
    with pytest.raises(ValueError, match="a scorer is a gold scorer .* got 'vaderr'"):
        load_text_scorer("vaderr")
    with pytest.raises(ValueError, match="got 'gold:nope'"):
        load_text_scorer("gold:nope")
    with pytest.raises(ValueError, match="has no function 'nope'"):
        load_text_scorer("json:nope")


class _Handler(JsonEndpoint):
    calls: list[int] = []

    def answer(self, body: dict) -> dict:
        _Handler.calls.append(len(body["responses"]))
        if body["responses"] and body["responses"][0] == "break":
            return {"scores": [1.0]}  # wrong count
        return {"scores": [len(r) + len(t) / 100 for r, t in zip(body["responses"], body["prompt_texts"])]}


@pytest.fixture()
def reward_server():
    _Handler.calls = []
    with local_server(_Handler) as url:
        yield url


def test_http_reward_posts_batches_and_checks_answers(reward_server):
    reward = HttpReward(reward_server, batch_size=2)
    scores = reward.score(["ab", "c", "d", "e", [{"role": "user", "content": "xyz"}]], ["1", "22", "333", "", "5"])
    assert scores.tolist() == pytest.approx([1.02, 2.01, 3.01, 0.01, 1.03])
    assert _Handler.calls == [2, 2, 1]
    assert load_reward(reward_server).score(["p"], ["abc"]).tolist() == pytest.approx([3.01])
    with pytest.raises(RewardServiceError, match="must answer .* with 2 numbers, got 1"):
        reward.score(["p", "q"], ["break", "x"])


def test_http_reward_unreachable_is_one_clear_error():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(RewardServiceError, match=f"http://127.0.0.1:{port}/ cannot be reached"):
        HttpReward(f"http://127.0.0.1:{port}/", timeout=5, retries=1, backoff=0.0).score(["p"], ["x"])


def test_weighted_mix_and_gold_scorers():
    mix = load_reward([("vader", 2.0), {"spec": length_reward, "weight": 0.5}])
    responses = ["I love this wonderful film", "A terrible, boring mess", ""]
    vader = load_reward("gold:vader").score(["p"] * 3, responses)
    assert vader[0] > 0.5 and vader[1] < -0.5 and vader[2] == 0
    expected = 2.0 * vader + 0.5 * torch.tensor([float(len(r)) for r in responses])
    torch.testing.assert_close(mix.score(["p"] * 3, responses), expected)
    assert set(mix.parts(["p"], ["x"])) == {"gold:vader", "length_reward"}
    easy = load_reward("readability").score(["p", "p", "p"], [
        "The cat sat on the mat. It was warm.",
        "Notwithstanding considerable institutional heterogeneity, comprehensive epistemological "
        "reconceptualisation necessitates interdisciplinary collaboration.", " "])
    assert easy[0] > easy[1] and easy[2] == 0


def _info(tmp_path, accuracy, pairs=100):
    RewardModelInfo("encoder", "text-pair", 64, "x", eval_accuracy=accuracy, eval_pairs=pairs).save(tmp_path)
    return tmp_path


def test_sanity_gate_refuses_a_model_not_above_chance(tmp_path, capsys):
    assert check_reward_model(_info(tmp_path, 0.61)).eval_accuracy == 0.61
    with pytest.raises(WeakRewardModelError, match=r"held-out accuracy 0.500 on 100 pairs, not above chance"):
        check_reward_model(_info(tmp_path, 0.5))
    assert check_reward_model(_info(tmp_path, 0.4), allow_weak=True).eval_accuracy == 0.4
    assert "going on because allow_weak is set" in capsys.readouterr().out
    with pytest.raises(WeakRewardModelError, match="no recorded held-out accuracy"):
        check_reward_model(_info(tmp_path, None, pairs=0))
    with pytest.raises(FileNotFoundError, match="not a tuneloop reward model folder"):
        check_reward_model(tmp_path / "nowhere")


def test_reward_model_scorer_is_batch_invariant_and_normalised(tmp_path, tiny_bert):
    from tuneloop.models.reward import build_reward_model, save_reward_model
    from tuneloop.train.reward import RewardModelConfig

    model, tok = build_reward_model(RewardModelConfig(name=tiny_bert))
    save_reward_model(model, tok, tmp_path, RewardModelInfo("encoder", "text-pair", 64, tiny_bert, gain=2.0, bias=1.0))
    normalised, raw = load_reward(str(tmp_path)), load_reward(str(tmp_path), normalise=False)
    prompts = ["Review movie 1.", [{"role": "user", "content": "Review movie 1."}], "Another, much longer prompt here."]
    responses = ["A fine film.", "A fine film.", "Short."]
    batch = normalised.score(prompts, responses)
    alone = torch.cat([normalised.score([p], [r]) for p, r in zip(prompts, responses)])
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=0)
    assert abs(batch[0] - batch[1]) < 1e-6  # a string prompt is one user turn
    torch.testing.assert_close(batch, 2.0 * raw.score(prompts, responses) + 1.0, atol=1e-5, rtol=0)
