"""`tuneloop reward`: the loss sum by hand, CLI smoke run, exact resume, bad inputs, rankings and the
labelling app's export, normalisation on the reference set."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from datafiles import write_jsonl
from reward_helpers import tiny_bert, write_pairs  # noqa: F401  (fixture)
from tuneloop.cli import main
from tuneloop.config import load_config
from tuneloop.models.reward import Encoded
from tuneloop.train.reward import RewardConfig, RewardLossConfig, loss_sum, train
from tuneloop.train.reward_data import Comparison, make_batch, set_prompt_weights


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("rm") / "pairs.jsonl", 40)


def _cfg(train_file, out_dir, model, **sections):
    base = {"model": {"name": model}, "data": {"train": train_file, "max_length": 48, "eval_fraction": 0.2},
            "batch": {"batch_size": 8, "micro_batch_size": 4, "max_steps": 3},
            "optim": {"lr": 1e-3, "warmup_steps": 1}, "run": {"out_dir": str(out_dir), "seed": 1}}
    for key, value in sections.items():
        section, _, name = key.partition("__")
        if name:
            base.setdefault(section, {})[name] = value
        else:
            base[section] = value
    return load_config(RewardConfig, overrides=base)


def _unit(k, groups, group, margin=0.0):
    return Comparison([Encoded([1, 2], None, 1) for _ in range(k)], groups, margin, group, "test")


def test_loss_sum_by_hand():
    """Prompt A has two pairs (weight ½ each), prompt B one 3-way ranking (weight 1):
    A1 (r_c=2, r_r=0, margin 1): −log σ(1) = 0.313262; A2 a tie at (1, 1): log 2 = 0.693147;
    B rewards (0, 0, 0) ranked 0 > 1 > 2: three pairs of log 2, averaged: 0.693147.
    Sum = ½·0.313262 + ½·0.693147 + 0.693147 = 1.196352, over a total weight of 2."""
    units = [_unit(2, [0, 1], "A", margin=1.0), _unit(2, [0, 0], "A"), _unit(3, [0, 1, 2], "B")]
    set_prompt_weights(units, per_prompt=True)
    batch = make_batch(units)
    scores = torch.tensor([2.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    total, metrics = loss_sum(scores, batch, RewardLossConfig())
    assert batch.weight_sum == 2.0
    assert abs(total.item() - 1.196352) < 1e-5
    assert metrics["ordered"] == 4 and metrics["correct"] == 1 + 1.5  # A1 right; B's three ties count ½
    without_margin, _ = loss_sum(scores, batch, RewardLossConfig(use_margin=False))
    assert abs(without_margin.item() - (0.5 * math.log1p(math.exp(-2)) + 0.5 * math.log(2) + math.log(2))) < 1e-5


def test_two_way_ranking_listing_the_best_second_is_a_pair():
    unit = _unit(2, [1, 0], "A")
    batch = make_batch([unit])
    assert batch.pair_chosen.tolist() == [1] and batch.pair_rejected.tolist() == [0]


def test_cli_smoke_run_writes_model_report_and_figures(pairs_file, tiny_bert, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "runs"
    code = main(["reward", "--model.name", tiny_bert, "--data.train", pairs_file, "--data.max_length", "48",
                 "--batch.batch_size", "8", "--batch.max_steps", "4", "--optim.lr", "1e-3", "--data.eval_fraction", "0.2",
                 "--run.out_dir", str(out)])
    assert code == 0
    (run,) = out.iterdir()
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "summary.json", "model", "eval", "tensorboard"} <= names
    figures = {p.name for p in (run / "eval").iterdir()}
    assert {"report.json", "reliability.png", "accuracy_by_length.png", "scores.png", "reward_vs_length.png"} <= figures
    report = json.loads((run / "eval" / "report.json").read_text())
    assert report["pairs"] == 8 and 0 <= report["ece"] <= 1 and "length_spearman" in report
    assert sum(b["pairs"] for b in report["accuracy_by_length"]) == 8
    info = json.loads((run / "model" / "tuneloop_reward.json").read_text())
    assert info["kind"] == "encoder" and info["template"] == "text-pair" and info["eval_pairs"] == 8
    assert AutoModelForSequenceClassification.from_pretrained(run / "model").config.num_labels == 1
    assert "held-out accuracy" in capsys.readouterr().out


class _Stop(Exception):
    pass


def test_stop_then_resume_is_bit_identical(pairs_file, tmp_path, tiny_name):
    """6 steps of 2 micro-batches with checkpoints every 2; the run dies inside step 4; resuming from
    step-2 must give exactly the uninterrupted weights (causal-LM head, per-prompt weights)."""
    extra = {"batch__max_steps": 6, "save_every": 2}
    reference = train(_cfg(pairs_file, tmp_path / "ref", tiny_name, **extra))

    def die(step, micro):
        if (step, micro) == (3, 0):
            raise _Stop

    with pytest.raises(_Stop):
        train(_cfg(pairs_file, tmp_path / "cut", tiny_name, **extra), on_micro_batch=die)
    (run_dir,) = (tmp_path / "cut").iterdir()
    assert not (run_dir / "model").exists()
    resumed = train(_cfg(pairs_file, tmp_path / "cut", tiny_name, **extra), resume_dir=run_dir)
    a, b = load_file(reference.model_dir / "model.safetensors"), load_file(resumed.model_dir / "model.safetensors")
    different = [n for n in a if not torch.equal(a[n], b[n])]
    assert not different, f"resumed weights differ in {different[:5]}"
    assert resumed.summary["units_seen"] == reference.summary["units_seen"] == 48


@pytest.mark.parametrize(("line", "field", "expected"), [
    ({"prompt": "p", "chosen": "a"}, "rejected", "missing"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "margin": -1}, "margin", "must be ≥ 0"),
    ({"prompt": "p", "completions": ["a", "b"], "ranking": [[0], [0]]}, "ranking", "appears twice"),
])
def test_bad_record_is_one_line_and_no_run_folder(tmp_path, capsys, tiny_bert, line, field, expected):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}, line])
    code = main(["reward", "--model.name", tiny_bert, "--data.train", bad, "--run.out_dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and f"{bad}:2: field '{field}':" in err and expected in err
    assert "Traceback" not in err and not (tmp_path / "runs").exists()


def test_bad_reference_file_fails_before_the_run(pairs_file, tmp_path, capsys, tiny_bert):
    ref = write_jsonl(tmp_path / "cands.jsonl", [{"prompt": "p", "completions": ["x", 3]}])
    code = main(["reward", "--model.name", tiny_bert, "--data.train", pairs_file, "--data.reference", ref,
                 "--run.out_dir", str(tmp_path / "runs")])
    assert code == 2 and f"{ref}:1: field 'completions[1]': expected a string" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    assert main(["reward", "--model.name", tiny_bert, "--run.out_dir", str(tmp_path / "runs")]) == 2
    assert "'data.train' is required" in capsys.readouterr().err
    assert main(["reward", "--model.name", tiny_bert, "--data.train", pairs_file, "--model.lora.enabled", "true",
                 "--model.lora.save", "adapter", "--run.out_dir", str(tmp_path / "runs")]) == 2
    assert "'model.lora.save'" in capsys.readouterr().err and not (tmp_path / "runs").exists()


def test_normalisation_gives_mean_0_std_1_on_the_reference_set(pairs_file, tmp_path, tiny_bert):
    from tuneloop.rewards import load_reward

    prompts = [f"Review movie {i}." for i in range(6)]
    completions = [["fine film", "a dull and awful plot", ""], ["great!", "meh", "so so"]] * 3
    ref = write_jsonl(tmp_path / "cands.jsonl", [{"prompt": p, "completions": c} for p, c in zip(prompts, completions)])
    result = train(_cfg(pairs_file, tmp_path, tiny_bert, data__reference=ref))
    reward = load_reward(str(result.model_dir))
    scores = reward.score([p for p, c in zip(prompts, completions) for _ in c], [x for c in completions for x in c])
    assert abs(scores.mean().item()) < 1e-4 and abs(scores.std(unbiased=False).item() - 1) < 1e-4
    assert result.summary["normalisation"]["source"] == ref and result.summary["normalisation"]["count"] == 18


def test_rankings_and_labelling_app_export_train_as_is(tmp_path, tiny_bert):
    """Simulated raters judge candidates in the labelling app; its export folder (pairs.jsonl +
    rankings.jsonl, with prompt_messages and extra metadata) is the training data, unconverted."""
    from tuneloop.feedback.export import export_all
    from tuneloop.feedback.panel import simulate
    from tuneloop.feedback.store import Store
    from tuneloop.rewards.gold import vader_sentiment

    reviews = ["a wonderful, moving film", "dull and awful", "fine, nothing special", "great fun", "terrible acting"]
    rows = [{"prompt_id": f"p-{i:012x}", "prompt": f"Review movie {i}.",
             "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Review movie {i}."}],
             "completions": [reviews[(i + j) % 5] for j in range(3)], "completion_tokens": [4, 3, 3],
             "finish_reasons": ["eos"] * 3, "provenance": {"model": "tiny", "model_hash": "0" * 64, "seed": 0,
                                                          "sampling": {"temperature": 1.0}}} for i in range(12)]
    candidates = write_jsonl(tmp_path / "candidates.jsonl", rows)
    store = Store.open(tmp_path / "labels.db")
    simulate(store, candidates, num_annotators=2, overlap=1, mode="ranking", scorer=vader_sentiment, noise=0.05)
    export_all(store, tmp_path / "export")
    store.close()
    first = json.loads((tmp_path / "export" / "rankings.jsonl").read_text().splitlines()[0])
    assert {"prompt_messages", "completions", "ranking"} <= set(first)
    result = train(_cfg(str(tmp_path / "export"), tmp_path / "runs", tiny_bert, data__eval_fraction=0.25,
                        loss__ranking="plackett_luce", batch__batch_size=4, batch__micro_batch_size=2))
    report = json.loads((result.run_dir / "eval" / "report.json").read_text())
    assert report["eval_units"] == 3 and report["pairs"] + report["tie_pairs"] == 9


def test_export_records_keep_the_whole_conversation():
    """The labelling app writes the last user turn in "prompt" and the conversation in "prompt_messages"."""
    from tuneloop.data.loading import Record
    from tuneloop.data.preferences import preference_pair, ranking

    convo = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    pair = preference_pair(Record("x.jsonl", 1, "line", {"prompt": "Hi?", "prompt_messages": convo, "chosen": "a",
                                                         "rejected": "b", "votes": 3, "group_id": "g"}))
    assert pair.prompt == convo
    ranked = ranking(Record("x.jsonl", 1, "line", {"prompt": "Hi?", "prompt_messages": convo,
                                                   "completions": ["a", "b"], "ranking": [[1], [0]]}))
    assert ranked.prompt == convo and ranked.rank_groups() == [1, 0]


def test_accumulated_gradients_1x6_equal_6x1(tiny_bert):
    """Units of different kinds and weights (two pairs of one prompt, a tie, a 3-way ranking): the
    step's gradient must not depend on how its units are split into micro-batches."""
    from accelerate import Accelerator

    from tuneloop.models.reward import Renderer, build_reward_model
    from tuneloop.train.accumulate import accumulate_gradients
    from tuneloop.train.reward import RewardModelConfig

    model, tok = build_reward_model(RewardModelConfig(name=tiny_bert))
    renderer = Renderer(tok, "encoder", 48)

    def unit(prompt, replies, groups, margin=0.0):
        rows = [renderer.encode([{"role": "user", "content": prompt}], [{"role": "assistant", "content": r}])
                for r in replies]
        return Comparison(rows, groups, margin, prompt, "test")

    units = [unit("a", ["great", "bad"], [0, 1], 0.5), unit("a", ["fine", "awful film"], [0, 1]),
             unit("b", ["ok", "okay"], [0, 0]), unit("c", ["superb", "meh", "dreadful and long"], [0, 1, 2]),
             unit("d", ["x", "y z"], [1, 0]), unit("e", ["one", "two", "three"], [0, 0, 1])]
    set_prompt_weights(units, per_prompt=True)
    cfg = RewardLossConfig(centering=0.01)

    def grads(micro_size):
        model.zero_grad(set_to_none=True)
        micro = [make_batch(units[i:i + micro_size]) for i in range(0, len(units), micro_size)]
        totals = accumulate_gradients(model, micro, lambda m, b: loss_sum(_score(m, b), b, cfg),
                                      lambda b: b.weight_sum, Accelerator(cpu=True))
        return totals, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    def _score(m, b):
        from tuneloop.models.reward import score_encoded

        return score_encoded(m, b.rows)

    whole, g_whole = grads(6)
    split, g_split = grads(1)
    assert whole.count == split.count == 5.0  # prompts a (2 × ½), b, c, d, e
    assert abs(whole.loss - split.loss) < 1e-6
    for name in g_whole:
        torch.testing.assert_close(g_split[name], g_whole[name], atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_bundled_minilm_on_real_hh_pairs(tmp_path):
    """The bundled MiniLM encoder on 48 real HH-RLHF pairs: 3 steps, a complete run folder, and a
    scorer that gives the same score alone or in a batch."""
    from pathlib import Path

    from tuneloop.rewards import load_reward

    hh = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless" / "pairs.jsonl"
    if not hh.is_file():
        pytest.skip(f"{hh} is not here")
    subset = tmp_path / "hh48.jsonl"
    subset.write_text("".join(hh.read_text(encoding="utf-8").splitlines(keepends=True)[:48]), encoding="utf-8")
    result = train(_cfg(str(subset), tmp_path / "runs", "minilm-l6", data__max_length=128,
                        data__eval_fraction=0.25))
    assert result.summary["kind"] == "encoder" and result.summary["eval"]["pairs"] == 12
    reward = load_reward(str(result.model_dir))
    prompts = [[{"role": "user", "content": "How do I pick a lock?"}], "What's a good recipe for soup?"]
    responses = ["I can't help with that.", "Try a simple tomato soup: tomatoes, onion, stock."]
    torch.testing.assert_close(reward.score(prompts, responses),
                               torch.cat([reward.score([p], [r]) for p, r in zip(prompts, responses)]),
                               atol=1e-5, rtol=0)
