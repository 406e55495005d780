"""The RL stage end to end on the tiny model: errors for people before anything is written, one short
run per preset (metric names, sampled-responses table, curves, sampler/trainer agreement), exact resume,
and a programmatic reward that rises while the KL to the reference stays bounded."""

from __future__ import annotations

import json

import pytest
import torch
from rl_helpers import spec
from safetensors.torch import load_file

from tuneloop.config import ConfigError, load_config
from tuneloop.data import DataError
from tuneloop.models.reward import RewardModelInfo
from tuneloop.rewards import WeakRewardModelError
from tuneloop.train.rl import train
from tuneloop.train.rl_config import PRESETS

ISSUE_METRICS = ["objective/kl", "objective/entropy", "objective/scores", "objective/rlhf_reward",
                 "objective/non_score_reward", "policy/clipfrac_avg", "policy/approxkl_avg", "loss/policy_avg",
                 "completions/mean_length", "completions/clipped_ratio", "sampling/sampling_logp_difference/mean",
                 "sampling/sampling_logp_difference/max", "timing/generate_s", "kl/k1", "kl/k2", "kl/k3"]
CRITIC_METRICS = ["loss/value_avg", "val/vf_explained_var"]


def write_prompts(path, prompts):
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts), encoding="utf-8")
    return str(path)


def make_cfg(preset, tmp_path, name="run", **sections):
    prompts = write_prompts(tmp_path / "prompts.jsonl", ["Tell me something.", "What is a robot?",
                                                         "Say hello.", "Do you like music?"])
    data = {"model": {"name": "tiny-llama"}, "reward": spec("e_share"),
            "rollout": {"prompts": prompts, "prompts_per_step": 2, "samples_per_prompt": 2,
                        "sampling": {"max_new_tokens": 6, "temperature": 0.7, "batch_size": 4}},
            "optim": {"lr": 1e-3}, "critic": {"optim": {"lr": 1e-3}}, "micro_batch_size": 2, "steps": 2,
            "run": {"out_dir": str(tmp_path / "runs"), "name": name, "seed": 3}}
    for key, value in sections.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    return load_config(PRESETS[preset], None, data)


def metrics_rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["split"] == "train"]


# --- errors for people, raised before any model loads or run folder exists ---------------------------------


def test_prompt_file_with_no_prompts(tmp_path):
    (tmp_path / "empty.jsonl").write_text("", encoding="utf-8")
    cfg = make_cfg("ppo", tmp_path)
    cfg.rollout.prompts = str(tmp_path / "empty.jsonl")
    with pytest.raises(DataError, match="empty.jsonl"):
        train(cfg)
    assert not (tmp_path / "runs").exists()


def test_reward_spec_that_does_not_load(tmp_path):
    with pytest.raises(ConfigError, match="reward: 'no/such/reward' does not load"):
        train(make_cfg("grpo", tmp_path, reward="no/such/reward"))
    with pytest.raises(ConfigError, match="no reward given"):
        train(make_cfg("grpo", tmp_path, reward=""))
    assert not (tmp_path / "runs").exists()


def test_reward_model_below_chance_is_refused(tmp_path):
    folder = tmp_path / "weak-rm"
    folder.mkdir()
    RewardModelInfo(kind="causal_lm", template="chat-template", max_length=64, backbone="tiny-llama",
                    eval_accuracy=0.45, eval_pairs=200).save(folder)
    with pytest.raises(WeakRewardModelError, match="0.450 on 200 pairs, not above chance"):
        train(make_cfg("ppo", tmp_path, reward=str(folder)))
    assert not (tmp_path / "runs").exists()


def test_impossible_batch_plan_names_the_numbers(tmp_path):
    cfg = make_cfg("ppo", tmp_path, rollout={"prompts_per_step": 3, "samples_per_prompt": 1},
                   algo={"mini_batches": 2})
    with pytest.raises(ConfigError, match=r"prompts_per_step 3 × samples_per_prompt 1 / 1 processes = 3 episodes, "
                                          r"not a multiple of algo.mini_batches 2 × micro_batch_size 2 = 4"):
        train(cfg)


@pytest.mark.parametrize("preset", ["grpo", "rloo"])
def test_group_estimator_with_k_of_one(tmp_path, preset):
    with pytest.raises(ConfigError, match="needs rollout.samples_per_prompt ≥ 2, got K=1"):
        train(make_cfg(preset, tmp_path, rollout={"samples_per_prompt": 1}))


# --- one short run per preset ---------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["ppo", "a2c", "grpo", "rloo"])
def test_preset_runs_and_logs_what_users_look_for(tmp_path, preset):
    result = train(make_cfg(preset, tmp_path))
    rows = metrics_rows(result.run_dir)
    assert [r["step"] for r in rows] == [1, 2]
    needs_critic = preset in ("ppo", "a2c")
    for key in ISSUE_METRICS + (CRITIC_METRICS if needs_critic else []):
        assert all(key in r for r in rows), f"{preset}: metric {key} missing"
    # The trainer scores the sampled tokens with the sampler's temperature: same log-probs up to fp32 noise.
    assert rows[0]["sampling/sampling_logp_difference/max"] < 1e-4
    # Before any update the policy is the reference: KL 0 in round 1, up to the rounding of two forwards over
    # differently laid-out batches (GRPO's one-pass config reads it from the update's own forward: 5.7e-14 seen).
    assert abs(rows[0]["objective/kl"]) < 1e-9 and abs(rows[0]["kl/k3"]) < 1e-9
    assert rows[0]["episodes"] == 4 and rows[1]["episodes"] == 8
    if preset == "a2c":
        assert all(r["policy/clipfrac_avg"] == 0.0 and r["optimizer_steps"] == 1 for r in rows)
    if preset == "ppo":
        assert all(r["optimizer_steps"] == 8 for r in rows)  # 4 epochs × 2 mini-batches
    samples = [json.loads(line) for line in (result.run_dir / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8 and {s["step"] for s in samples} == {1, 2}
    assert all({"prompt", "response", "score", "kl", "tokens", "ended"} <= set(s) for s in samples)
    assert (result.run_dir / "curves.png").is_file()
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["stage"] == preset and summary["episodes"] == 8
    assert (result.model_dir / "model.safetensors").is_file()


def test_adaptive_kl_coefficient_moves_with_the_measured_kl(tmp_path):
    """Target 1e-6 nats: any KL after round 1 is far above it, so β grows by (1 + 0.2·4/horizon) per round."""
    result = train(make_cfg("ppo", tmp_path, steps=3, algo={"kl_target": 1e-6, "kl_horizon": 40.0, "kl_estimator": "k3"}))
    coefs = [r["kl_coef"] for r in metrics_rows(result.run_dir)]
    assert coefs[0] == pytest.approx(0.05)
    assert coefs[1] == pytest.approx(0.05 * (1 - 0.2 * 4 / 40))  # round 1: KL 0 < target → e = −0.2
    assert coefs[2] == pytest.approx(coefs[1] * (1 + 0.2 * 4 / 40))  # round 2: KL > target → e = +0.2


def test_lora_policy_uses_its_disabled_adapter_as_reference(tmp_path):
    """PPO with LoRA on policy and critic: round 1 has KL 0 (the adapter starts at zero, so the policy is
    its own base), round 2 a positive k3 KL to the adapter-disabled base; the merged model is saved."""
    result = train(make_cfg("ppo", tmp_path, model={"name": "tiny-llama", "lora": {"enabled": True, "r": 4}},
                            algo={"kl_estimator": "k3"}))
    rows = metrics_rows(result.run_dir)
    assert rows[0]["objective/kl"] == 0.0
    assert rows[1]["objective/kl"] > 0.0
    assert (result.model_dir / "model.safetensors").is_file()


def test_dynamic_sampling_drops_groups_without_signal(tmp_path):
    """GRPO with DAPO's dynamic sampling and a constant reward: every group's K scores are equal, so every
    row leaves the loss, no optimizer step runs and the policy keeps its initial weights."""
    from tuneloop.models.loading import resolve_model_name

    result = train(make_cfg("grpo", tmp_path, reward=spec("constant"), algo={"dynamic_sampling": True}))
    rows = metrics_rows(result.run_dir)
    assert all(r["filtered/kept_fraction"] == 0.0 and r["optimizer_steps"] == 0 for r in rows)
    initial = load_file(f"{resolve_model_name('tiny-llama')}/model.safetensors")
    final = load_file(result.model_dir / "model.safetensors")
    assert all(torch.equal(initial[n], final[n]) for n in initial)


# --- exact resume ---------------------------------------------------------------------------------------------


class Stop(Exception):
    pass


def _stop_after(cfg, rounds: int) -> None:
    """Run ``cfg`` and kill it (an exception from the round hook) once ``rounds`` rounds are done."""
    def stop(done):
        if done == rounds:
            raise Stop

    with pytest.raises(Stop):
        train(cfg, on_round=stop)


def test_killed_run_resumes_bit_identically(tmp_path):
    """PPO with a critic, score normalisation and an adaptive KL coefficient: a run stopped after round 2
    and resumed from its checkpoint ends with exactly the weights and metrics of an uninterrupted run."""
    extra = {"steps": 3, "save_every": 1, "algo": {"kl_target": 0.5, "normalise_scores": True}}
    whole = train(make_cfg("ppo", tmp_path, name="whole", **extra))
    cfg = make_cfg("ppo", tmp_path, name="split", **extra)
    _stop_after(cfg, 2)
    resumed = train(cfg, resume_dir=tmp_path / "runs" / "split")
    a = load_file(whole.model_dir / "model.safetensors")
    b = load_file(resumed.model_dir / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[n], b[n]) for n in a), "resumed policy differs from the uninterrupted one"
    last_whole, last_resumed = metrics_rows(whole.run_dir)[-1], metrics_rows(resumed.run_dir)[-1]
    for key in ("objective/scores", "objective/kl", "loss/policy_avg", "loss/value_avg", "kl_coef"):
        assert last_whole[key] == last_resumed[key], key


def test_resumed_run_writes_each_rounds_samples_once(tmp_path):
    """Stopped after round 3 with a checkpoint at round 2, the resumed run replays round 3: samples.jsonl ends
    with every round's rows once, exactly those of an uninterrupted run (not round 3 twice)."""
    extra = {"steps": 4, "save_every": 2, "algo": {"kl_coef": 0.1}}
    whole = train(make_cfg("grpo", tmp_path, name="whole", **extra))
    cfg = make_cfg("grpo", tmp_path, name="split", **extra)
    _stop_after(cfg, 3)
    stopped = [json.loads(line)["step"] for line in (tmp_path / "runs/split/samples.jsonl").read_text().splitlines()]
    assert sorted(set(stopped)) == [1, 2, 3]  # round 3 was written before the stop, after the last checkpoint
    resumed = train(cfg, resume_dir=tmp_path / "runs" / "split")
    assert (resumed.run_dir / "samples.jsonl").read_text() == (whole.run_dir / "samples.jsonl").read_text()


# --- learning ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_programmatic_reward_rises_while_kl_stays_bounded(tmp_path):
    """GRPO on one prompt, reward = share of the letter 'e' in the response (rl_helpers.e_share), K = 16 samples
    of 8 tokens per round, lr 2e-2 (the preset's linear decay), k3 KL loss term with β = 0.3, seeds 1, 2, 3.
    Over 30 rounds the mean score of the last 5 rounds rises above that of the first 5 in every seed, by more
    than 0.05 on average over the seeds (the random tiny model starts near 0.1), and the response KL stays
    under 30 nats. Measured for seeds 1-16 (2 threads, an earlier session): every seed rose by +0.09 to
    +0.24 (seeds 1-3: +0.216, +0.155, +0.208), the largest KL was 7.8-26.1 nats. A seed's rise depends on
    its trajectory, which float rounding moves: in one full-suite run on an AVX2 CPU seed 3 rose by only
    +0.049, so the 0.05 bar is on the mean over the seeds rather than on each one. With lr 1e-9 (no
    learning) the three rose by +0.004, +0.017, +0.017: the test fails."""
    rises, peaks = [], []
    for seed in (1, 2, 3):
        (tmp_path / str(seed)).mkdir()
        result = train(make_cfg("grpo", tmp_path / str(seed), steps=30, rollout={
            "prompts": write_prompts(tmp_path / "one.jsonl", ["Tell me something."]), "prompts_per_step": 1,
            "samples_per_prompt": 16, "sampling": {"max_new_tokens": 8, "temperature": 1.0, "batch_size": 16}},
            optim={"lr": 2e-2}, algo={"kl_coef": 0.3, "epochs": 2}, micro_batch_size=16,
            run={"out_dir": str(tmp_path / str(seed) / "runs"), "name": "run", "seed": seed}))
        rows = metrics_rows(result.run_dir)
        scores = [r["objective/scores"] for r in rows]
        rises.append(sum(scores[-5:]) / 5 - sum(scores[:5]) / 5)
        peaks.append(max(r["objective/kl"] for r in rows))
    assert min(rises) > 0 and sum(rises) / 3 > 0.05, f"score rises {[round(r, 3) for r in rises]}"
    assert max(peaks) < 30.0, f"KL reached {[round(k, 2) for k in peaks]}"
