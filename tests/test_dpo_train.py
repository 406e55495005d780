"""DPO training invariances: accumulation 1×N ≡ N×1, stop mid-accumulation + resume ≡ uninterrupted,
the LoRA base as live reference ≡ the precomputed cache; KTO and reference-free losses; bad configs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from datafiles import write_jsonl
from test_dpo_data import pair_rows
from tuneloop.config import ConfigError, load_config
from tuneloop.data import DataError
from tuneloop.train.dpo import Batches, DPOConfig, batch_loss_sum, train
from tuneloop.train.dpo_reference import REFERENCE_FILE


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("dpo") / "pairs.jsonl", pair_rows(48))


def _cfg(train_file, out_dir, **sections):
    base = {"model": {"name": "tiny-llama"}, "data": {"train": train_file, "eval_fraction": 0.0, "max_length": 64,
                                                       "max_prompt_length": 32},
            "batch": {"batch_size": 8, "micro_batch_size": 8, "max_steps": 3},
            "optim": {"lr": 1e-3, "warmup_steps": 1}, "run": {"out_dir": str(out_dir), "seed": 3}}
    for key, value in sections.items():
        if isinstance(value, dict):
            base.setdefault(key, {}).update(value)
        else:
            base[key] = value
    return load_config(DPOConfig, overrides=base)


def _train_records(result):
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == "train"]


def _weights(result):
    return load_file(result.model_dir / "model.safetensors")


@pytest.mark.parametrize("loss", ["dpo", "kto"])
def test_accumulated_gradients_1xN_equal_Nx1(pairs_file, tiny_tokenizer, tmp_path, loss):
    """Pairs of different lengths and random reference log-probs, so every pair has its own weight
    σ(−βh) in the gradient: summing losses and dividing by the step's pair count makes 8 micro-batches
    of 1 give the gradient of one micro-batch of 8 (a per-micro-batch mean would not, with an uneven
    split; KTO's z0 is fixed per step, here 0.3)."""
    from accelerate import Accelerator

    from tuneloop.models import load_causal_lm
    from tuneloop.train.accumulate import accumulate_gradients
    from tuneloop.train.dpo_data import Limits, load_preference_data

    cfg = _cfg(pairs_file, tmp_path, loss=loss, loss_params={"beta": 0.5})
    units, _, _ = load_preference_data(pairs_file, None, 0.0, 0, cfg.loss.is_paired, tiny_tokenizer,
                                       Limits(64, 32, "truncate"))
    units = units[:8]
    generator = torch.Generator().manual_seed(0)
    names = ("chosen", "rejected") if loss == "dpo" else ("completion", "mismatched")
    reference = {f"train.{n}": -40 + 10 * torch.randn(len(units), generator=generator) for n in names}
    batches = Batches(units, "train", reference, cfg, tiny_tokenizer.pad_token_id)
    model, _ = load_causal_lm(cfg.model)
    z0 = torch.tensor(0.3) if loss == "kto" else None

    def gradients(micro_size):
        model.zero_grad(set_to_none=True)
        micro = [batches.graded(list(range(i, i + micro_size))) for i in range(0, len(units), micro_size)]
        totals = accumulate_gradients(model, micro, lambda m, b: batch_loss_sum(m, b, cfg.loss, cfg.loss_params,
                                                                                True, z0),
                                      lambda b: b.num_units, Accelerator(cpu=True))
        return totals, {n: p.grad.clone() for n, p in model.named_parameters()}

    whole, g_whole = gradients(8)
    split, g_split = gradients(1)
    assert whole.count == split.count == 8
    assert abs(whole.loss - split.loss) < 1e-5
    assert abs(whole.metrics["rewards/accuracy" if loss == "dpo" else "units"] -
               split.metrics["rewards/accuracy" if loss == "dpo" else "units"]) < 1e-5
    assert max(g.abs().max().item() for g in g_whole.values()) > 1e-4, "the gradient must not vanish"
    for name in g_whole:
        torch.testing.assert_close(g_split[name], g_whole[name], atol=1e-5, rtol=1e-5)


def test_kto_training_with_accumulation_matches_and_z0_covers_the_step(pairs_file, tmp_path):
    """End to end: z0 is computed over the whole step before any gradient, so it does not depend on
    the micro-batch split; weights agree up to fp32 rounding magnified by Adam."""
    whole = train(_cfg(pairs_file, tmp_path / "a", loss="kto", batch={"micro_batch_size": 8}))
    split = train(_cfg(pairs_file, tmp_path / "b", loss="kto", batch={"micro_batch_size": 2}))
    za = [r["kl/estimate"] for r in _train_records(whole)]
    zb = [r["kl/estimate"] for r in _train_records(split)]
    assert len(za) == 3 and all(abs(a - b) < 1e-4 for a, b in zip(za, zb))
    a, b = _weights(whole), _weights(split)
    diff = max((a[n] - b[n]).abs().max().item() for n in a)
    assert diff < 1e-4, f"max weight difference {diff:.2e}"


class _Stop(Exception):
    pass


@pytest.mark.parametrize("loss, lora", [("dpo", False), ("kto", True)], ids=["dpo-full", "kto-lora-dropout"])
def test_stop_mid_accumulation_then_resume_is_bit_identical(pairs_file, tmp_path, loss, lora):
    """6 steps of 2 micro-batches, checkpoints every 2 steps; the run dies in the first micro-batch of
    step 4 (0-based 3). Resuming replays steps 3-6 from the step-2 checkpoint, reads the cached
    reference log-probs back, and must end with exactly the uninterrupted weights."""
    extra = {"loss": loss, "batch": {"batch_size": 8, "micro_batch_size": 4, "max_steps": 6}, "save_every": 2}
    if lora:
        extra["model"] = {"lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.1, "save": "merged"}}
    reference = train(_cfg(pairs_file, tmp_path / "ref", **extra))

    def die(step, micro):
        if (step, micro) == (3, 0):
            raise _Stop

    with pytest.raises(_Stop):
        train(_cfg(pairs_file, tmp_path / "cut", **extra), on_micro_batch=die)
    (run_dir,) = (tmp_path / "cut").iterdir()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-2"]
    assert not (run_dir / "model").exists(), "a crashed run must not leave a final model behind"
    cache_time = (run_dir / REFERENCE_FILE).stat().st_mtime_ns
    resumed = train(_cfg(pairs_file, tmp_path / "cut", **extra), resume_dir=run_dir)
    assert (run_dir / REFERENCE_FILE).stat().st_mtime_ns == cache_time, "the cache must be reused, not recomputed"
    a, b = _weights(reference), _weights(resumed)
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"resumed weights differ from the uninterrupted run in {different[:5]}"
    assert resumed.summary["units_seen"] == reference.summary["units_seen"]
    assert (run_dir / "curves.png").is_file()


def test_lora_base_as_live_reference_equals_the_cache(pairs_file, tmp_path):
    lora = {"lora": {"enabled": True, "r": 4, "alpha": 8}}
    cached = train(_cfg(pairs_file, tmp_path / "a", model=lora, data={"eval_fraction": 0.2}))
    live = train(_cfg(pairs_file, tmp_path / "b", model=lora, data={"eval_fraction": 0.2},
                      reference={"mode": "lora_base"}))
    assert not (live.run_dir / REFERENCE_FILE).exists()
    first_cached, first_live = _train_records(cached)[0], _train_records(live)[0]
    assert abs(first_cached["loss"] - math.log(2)) < 1e-6 and abs(first_live["loss"] - math.log(2)) < 1e-6
    for key in ("loss", "rewards/margin", "logps/chosen"):
        assert abs(_train_records(cached)[-1][key] - _train_records(live)[-1][key]) < 1e-4, key
    assert abs(cached.summary["eval"]["kl/estimate"] - live.summary["eval"]["kl/estimate"]) < 1e-4


@pytest.mark.parametrize("loss", ["simpo", "orpo"])
def test_reference_free_losses_need_no_reference(pairs_file, tmp_path, loss):
    """The eval metrics must hang together. 48 pairs with their own prompts, eval_fraction 0.1: 5 eval
    pairs, so accuracy is k/5. SimPO: loss_i = softplus(γ − m_i) is convex in the margin m_i, so by
    Jensen the mean loss ≥ softplus(γ − mean margin) (γ = 0.5). ORPO: loss = NLL + λ·softplus(−log odds
    ratio) > NLL, and its rewards are λ·ā, so rewards/chosen = −λ·NLL (λ = orpo_lambda)."""
    result = train(_cfg(pairs_file, tmp_path, loss=loss, batch={"max_steps": 2}, data={"eval_fraction": 0.1}))
    assert not (result.run_dir / REFERENCE_FILE).exists()
    ev = result.summary["eval"]
    assert "kl/estimate" not in ev and ev["units"] == 5
    correct = ev["rewards/accuracy"] * 5
    assert abs(correct - round(correct)) < 1e-5, ev["rewards/accuracy"]
    assert abs(ev["rewards/margin"] - (ev["rewards/chosen"] - ev["rewards/rejected"])) < 1e-5
    if loss == "simpo":
        gamma = result_params(result).simpo_gamma
        assert ev["loss"] >= math.log1p(math.exp(gamma - ev["rewards/margin"])) - 1e-5, ev
    else:
        lam = result_params(result).orpo_lambda
        assert ev["loss"] > ev["orpo/nll"] > 0, ev
        assert abs(ev["rewards/chosen"] + lam * ev["orpo/nll"]) < 1e-4 * max(1.0, abs(ev["rewards/chosen"])), ev


def result_params(result):
    """The loss parameters the run used, read back from its saved config."""
    return load_config(DPOConfig, result.run_dir / "config.yaml").loss_params


def test_a_cache_for_other_data_is_refused(pairs_file, tmp_path):
    first = train(_cfg(pairs_file, tmp_path / "runs", batch={"max_steps": 1}, save_every=1))
    other = write_jsonl(tmp_path / "other.jsonl", pair_rows(48, offset=3))
    with pytest.raises(ValueError, match="computed for other data"):
        train(_cfg(other, tmp_path / "runs", batch={"max_steps": 2}), resume_dir=first.run_dir)


def test_bad_data_fails_before_any_run_folder(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"},
                                               {"prompt": "a", "chosen": "b"}])
    with pytest.raises(DataError, match="bad.jsonl:2: field 'rejected'"):
        train(_cfg(bad, tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ConfigError, match="data.train"):
        train(load_config(DPOConfig, overrides={"run": {"out_dir": str(tmp_path / "runs")}}))
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("overrides, message", [
    ({"loss_params": {"label_smoothing": 0.1}}, "only applies to 'cdpo' and 'robust'"),
    ({"loss": "robust", "loss_params": {"label_smoothing": 0.5}}, "robust DPO needs"),
    ({"loss_params": {"beta": 0.0}}, "beta must be > 0"),
    ({"reference": {"mode": "lora_base"}}, "needs model.lora.enabled"),
    ({"loss": "simpo", "reference": {"model": "tiny-llama"}}, "uses no reference"),
    ({"data": {"max_length": 64, "max_prompt_length": 64}}, "max_prompt_length < data.max_length"),
    ({"loss": "nope"}, "expected one of 'dpo'"),
])
def test_impossible_configs_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(DPOConfig, overrides=overrides)
