"""``tuneloop eval`` end to end on the tiny policy: one seed for every policy, KL, win rates, best-of-n."""

from __future__ import annotations

import json

import pytest

from tuneloop.cli import main


@pytest.fixture
def scorers(tmp_path):
    path = tmp_path / "scorers.py"
    path.write_text("def words(text):\n    return float(len(text.split()))\n\n"
                    "def first_longer(prompt, a, b):\n    return 1.0 if len(a) > len(b) else 0.0 if len(a) < len(b) "
                    "else 0.5\n")
    return path


def test_same_policy_twice_ties_everywhere_with_zero_kl(tmp_path, scorers, capsys):
    """The same model sampled with the same seed gives the same responses: KL 0 (k1 and k3), every
    win rate exactly ½ (all ties), and the judge in both orders averages to ½."""
    out = tmp_path / "eval"
    code = main(["eval", "--model", "a=tiny-llama", "--model", "b=tiny-llama", "--prompts", "bundled:review-prompts",
                 "--limit", "6", "--gold", "vader", "--gold", f"{scorers}:words", "--judge", f"{scorers}:first_longer",
                 "--out", str(out), "--sampling.max_new_tokens", "8", "--bootstrap.resamples", "200"])
    assert code == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["prompts"] == 6 and set(result["policies"]) == {"a", "b"}
    for entry in result["policies"].values():
        m = entry["metrics"]
        for key in ("kl/k1_sequence", "kl/k3_sequence", "kl/k1_token", "kl/k3_token"):
            assert abs(m[key]["mean"]) < 1e-5, (key, m[key])
        assert m["eos_rate"]["mean"] + m["truncation_rate"]["mean"] == pytest.approx(1.0)
        assert m["length/tokens"]["ci_low"] <= m["length/tokens"]["mean"] <= m["length/tokens"]["ci_high"]
        assert {"gold:vader", f"{scorers}:words", "distinct/1", "distinct/2", "repetition/rep_3"} <= set(m)
    rates = {w["by"]: w for w in result["win_rates"]}
    assert set(rates) == {"gold:vader", f"{scorers}:words", "judge"}
    assert all(w["a"] == "b" and w["b"] == "a" and w["mean"] == 0.5 == w["ci_low"] == w["ci_high"]
               for w in rates.values())
    assert len(result["side_by_side"]) == 6
    assert len((out / "samples-a.jsonl").read_text().splitlines()) == 6
    printed = capsys.readouterr().out
    assert "policy" in printed and "b over a by gold:vader: 0.500 [0.500, 0.500]" in printed


def test_best_of_n_curve_from_k_samples(tmp_path, scorers):
    """K = 4 samples scored by a proxy (word count): the best-of-n proxy score cannot fall as n grows, and
    n = 1 is the plain mean of every sample with KL 0."""
    from tuneloop.config import load_config
    from tuneloop.evaluate.config import EvalConfig
    from tuneloop.evaluate.runner import evaluate

    cfg = load_config(EvalConfig, overrides={
        "policies": [{"name": "tiny", "model": "tiny-llama"}], "limit": 5, "samples_per_prompt": 4,
        "gold": ["vader"], "reward": f"{scorers}:words", "out": str(tmp_path / "bon"),
        "sampling": {"max_new_tokens": 12}, "bootstrap": {"resamples": 100}})
    result = evaluate(cfg)
    points = result["best_of_n"]["tiny"]["points"]
    assert [p["n"] for p in points] == [1, 2, 4] and points[0]["kl"] == 0.0
    assert points[0]["proxy"] <= points[1]["proxy"] <= points[2]["proxy"]
    assert points[0]["proxy"] == pytest.approx(result["policies"]["tiny"]["metrics"]["reward_model"]["mean"])
    assert {"alpha", "beta", "rmse"} <= set(result["best_of_n"]["tiny"]["gold_fit"])


def test_eval_config_errors_name_the_key(tmp_path):
    assert main(["eval", "--model", "a=tiny-llama", "--model", "a=tiny-llama", "--out", str(tmp_path)]) == 2
    assert main(["eval", "--model", "tiny-llama", "--compare", "x"]) == 2
