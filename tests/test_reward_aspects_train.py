"""`tuneloop reward` on aspect scores: the loss sum by hand, a scores-only run and a scores + pairs run
on the tiny BERT (what the folder records, what load_reward scores from it), and bad inputs."""

from __future__ import annotations

import json
import random

import pytest
import torch
from handvalues import assert_near

from datafiles import write_jsonl
from reward_helpers import BAD, GOOD, one_torch_thread, review_pairs, tiny_bert  # noqa: F401  (fixtures)
from tuneloop.cli import main
from tuneloop.config import load_config
from tuneloop.data.loading import Record
from tuneloop.data.scores import AspectScaling, score_record
from tuneloop.models.reward import Encoded
from tuneloop.train.reward import RewardConfig, RewardLossConfig, loss_sum, train
from tuneloop.train.reward_aspects import HeadLayout
from tuneloop.train.reward_data import Comparison, make_batch, set_prompt_weights


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def scored_reviews(prompts: int, seed: int = 0) -> list[dict]:
    """4 reviews per prompt: quality high for positive words, safety low when the review swears; three
    votes each, as the labelling app exports them."""
    rng = random.Random(seed)
    rows = []
    for i in range(prompts):
        for _ in range(4):
            good, rude = rng.random() < 0.5, rng.random() < 0.3
            words = GOOD if good else BAD
            votes = {"quality": [min(5, max(1, (5 if good else 2) + rng.choice([-1, 0, 1]))) for _ in range(3)],
                     "safety": [min(5, max(1, (1 if rude else 5) + rng.choice([-1, 0, 1]))) for _ in range(3)]}
            rows.append({"prompt": f"Review movie {i}.", "prompt_messages": [{"role": "user", "content": f"Review movie {i}."}],
                         "response": f"A {rng.choice(words)} film, {rng.choice(words)} acting." + (" Damn idiots." if rude else ""),
                         "prompt_id": f"p-{i}", "candidate_id": len(rows),
                         "scores": {k: sum(v) / 3 for k, v in votes.items()}, "votes": votes})
    return rows


@pytest.fixture(scope="module")
def scores_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("aspects") / "scores.jsonl", scored_reviews(12))


def _cfg(out_dir, model, **sections):
    base = {"model": {"name": model}, "data": {"max_length": 48, "eval_fraction": 0.25},
            "batch": {"batch_size": 8, "micro_batch_size": 4, "max_steps": 8},
            "optim": {"lr": 5e-3, "warmup_steps": 1}, "run": {"out_dir": str(out_dir), "seed": 1}}
    for key, value in sections.items():
        section, _, name = key.partition("__")
        base.setdefault(section, {})[name] = value
    return load_config(RewardConfig, overrides=base)


def _scored(group, scores, votes=None):
    record = score_record(Record("s.jsonl", 1, "line", {"prompt": "p", "response": "r", "scores": scores,
                                                        "votes": votes or {}}))
    return Comparison([Encoded([1, 2], None, 1)], [0], 0.0, group, "test", score=record)


def test_loss_sum_of_scored_responses_and_pairs_by_hand():
    """Aspects q (μ 3, σ 1) and s (μ 4, σ 2). Prompt A has two scored responses (weight ½ each):
    r0 q = 4, s = 4 → targets (1, 0); r1 q = 2, s not scored → (−1, –). Outputs on the aspect heads
    r0 (1, 1), r1 (0, 0): r0 ((1 − 1)² + (1 − 0)²) / 2 = 0.5; r1 (0 − (−1))² = 1. Sum ½·0.5 + ½·1 = 0.75.
    With a pair of prompt B (weight 1) on a preference head, chosen 2 vs rejected 0: −log σ(2) = 0.1269280;
    pairwise_weight 2 → 2·0.1269280 + 0.75 = 1.0038560, over a total weight of 2."""
    scaling = AspectScaling(["q", "s"], [3.0, 4.0], [1.0, 2.0], [1, 1], [5, 5])
    units = [_scored("A", {"q": 4.0, "s": 4.0}), _scored("A", {"q": 2.0})]
    set_prompt_weights(units, per_prompt=True)
    batch = make_batch(units, scaling)
    assert_near(batch.score_target, [[1.0, 0.0], [-1.0, 0.0]])
    assert batch.score_mask.tolist() == [[True, True], [True, False]]
    total, metrics = loss_sum(torch.tensor([[1.0, 1.0], [0.0, 0.0]]), batch, RewardLossConfig(),
                              HeadLayout.build(False, ["q", "s"]), scaling)
    assert_near(total, 0.75)
    assert batch.weight_sum == 1.0 and metrics["aspect_cells"] == 3 and metrics["units"] == 2

    pair = Comparison([Encoded([1, 2], None, 1), Encoded([1, 3], None, 1)], [0, 1], 0.0, "B", "test")
    units.append(pair)
    set_prompt_weights(units, per_prompt=True)  # scored responses and judgments are weighted apart
    batch = make_batch(units, scaling)
    outputs = torch.tensor([[9.0, 1.0, 1.0], [9.0, 0.0, 0.0], [2.0, 7.0, 7.0], [0.0, 7.0, 7.0]])
    total, metrics = loss_sum(outputs, batch, RewardLossConfig(pairwise_weight=2.0),
                              HeadLayout.build(True, ["q", "s"]), scaling)
    assert_near(total, 1.0038560)
    assert batch.weight_sum == 2.0 and metrics["ordered"] == 1 and metrics["correct"] == 1


def test_a_one_aspect_model_reads_its_single_output_as_the_aspect_head():
    """One aspect, no judgments: the model has one output, (R,); target (5 − 3)/2 = 1, output 3: (3 − 1)² = 4."""
    scaling = AspectScaling(["q"], [3.0], [2.0], [1], [5])
    batch = make_batch([_scored("A", {"q": 5.0})], scaling)
    total, _ = loss_sum(torch.tensor([3.0]), batch, RewardLossConfig(), HeadLayout.build(False, ["q"]), scaling)
    assert_near(total, 4.0)


def test_scores_only_run_records_aspects_and_load_reward_combines_them(scores_file, tmp_path, tiny_bert):
    from tuneloop.models.reward import RewardModelInfo
    from tuneloop.rewards import AspectReward, check_reward_model, load_reward

    prompts = [f"Review movie {i}." for i in range(4)]
    texts = [["A great film.", "Dull, awful. Damn.", "fine"], ["Superb acting!", "boring", "Damn idiots, awful."]] * 2
    ref = write_jsonl(tmp_path / "cands.jsonl", [{"prompt": p, "completions": c} for p, c in zip(prompts, texts)])
    result = train(_cfg(tmp_path / "runs", tiny_bert, data__scores=scores_file, data__reference=ref,
                        model__aspect_weights={"quality": 1.0, "safety": 2.0}))
    info = RewardModelInfo.load(result.model_dir)
    assert info.heads == ["quality", "safety"] and info.format == 2
    assert info.aspect_weights == {"quality": 1.0, "safety": 2.0} and set(info.aspect_stats["quality"]) == {
        "mean", "std", "low", "high"}
    report = json.loads((result.run_dir / "eval" / "report.json").read_text())
    per_aspect = report["aspects"]["per_aspect"]
    assert set(per_aspect) == {"quality", "safety"} and per_aspect["quality"]["responses"] == 12  # 3 prompts × 4
    assert report["aspects"]["score_pairs"]["pairs"] >= 1 and "quality/pearson" in result.summary["eval"]
    assert result.summary["aspects"]["per_aspect"] == per_aspect
    assert (info.eval_accuracy, info.eval_pairs) == (report["aspects"]["score_pairs"]["accuracy"],
                                                     int(report["aspects"]["score_pairs"]["pairs"]))
    assert check_reward_model(f"{result.model_dir}?weights=quality:1", allow_weak=True).heads == info.heads

    folder = str(result.model_dir)
    flat_prompts = [p for p, c in zip(prompts, texts) for _ in c]
    flat_texts = [x for c in texts for x in c]
    default = load_reward(folder)
    assert isinstance(default, AspectReward) and "2·safety" in default.name
    for spec in (folder, f"{folder}?weights=quality:1", {"model": folder, "weights": {"safety": 1, "quality": -0.5}}):
        scores = load_reward(spec).score(flat_prompts, flat_texts)  # normalised on the reference set: mean 0, std 1
        assert abs(scores.mean().item()) < 1e-3 and abs(scores.std(unbiased=False).item() - 1) < 1e-3
    aspects = default.score_aspects(flat_prompts, flat_texts)
    raw = load_reward(folder, normalise=False).score(flat_prompts, flat_texts)
    assert_near(raw, aspects["quality"] + 2 * aspects["safety"], tol=1e-4)
    floor = aspects["safety"].median().item()
    floored = load_reward(f"{folder}?weights=quality:1,safety:2&floor=safety:{floor}&penalty=7")
    below = aspects["safety"] < floor
    assert_near(floored.score(flat_prompts, flat_texts), default.score(flat_prompts, flat_texts) - 7 * below.float(), tol=1e-4)
    with pytest.raises(ValueError, match="heads are quality, safety"):
        load_reward(f"{folder}?weights=relevance:1")


def test_scores_with_pairs_train_a_preference_head_beside_ordinal_aspects(scores_file, tmp_path, tiny_bert):
    from tuneloop.rewards import load_reward

    """Pairs and scores on the same 12 prompts are split together: the 3 held-out prompts give 3 held-out
    pairs and 12 held-out scored responses, and none of them is trained on."""
    rows = [{**pair, "prompt": f"Review movie {i}."} for i, pair in enumerate(review_pairs(12))]
    pairs = write_jsonl(tmp_path / "pairs.jsonl", rows)
    result = train(_cfg(tmp_path / "runs", tiny_bert, data__train=pairs, data__scores=scores_file,
                        data__aspects=["quality"], loss__aspects="ordinal", loss__pairwise_weight=0.5))
    info = json.loads((result.model_dir / "tuneloop_reward.json").read_text())
    assert info["heads"] == ["preference", "quality"]
    report = json.loads((result.run_dir / "eval" / "report.json").read_text())
    assert report["pairs"] == 3 and "accuracy" in report  # the preference head on the held-out pairs
    assert report["aspects"]["judged_pairs"]["pairs"] == 3 and report["aspects"]["per_aspect"]["quality"]["responses"] == 12
    reward = load_reward(f"{result.model_dir}?weights=preference:1")
    assert set(reward.score_aspects(["Review movie 1."], ["A great film."])) == {"preference", "quality"}


@pytest.mark.parametrize("row, field, expected", [
    ({"prompt": "p", "scores": {"quality": 3}}, "response", "missing"),
    ({"prompt": "p", "response": "r", "scores": {"quality": "high"}}, "scores.quality", "expected a finite number"),
    ({"prompt": "p", "response": "r", "scores": {}}, "scores", "at least one aspect"),
    ({"prompt": "p", "response": "r", "scores": {"quality": 3}, "votes": {"quality": [3, 2.5]}}, "votes.quality",
     "integer scores"),
])
def test_bad_score_record_names_file_line_and_field(tmp_path, capsys, tiny_bert, row, field, expected):
    good = {"prompt": "p", "response": "r", "scores": {"quality": 3.0}}
    bad = write_jsonl(tmp_path / "scores.jsonl", [good, row])
    code = main(["reward", "--model.name", tiny_bert, "--data.scores", bad, "--run.out_dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and f"{bad}:2: field '{field}':" in err and expected in err
    assert "Traceback" not in err and not (tmp_path / "runs").exists()


def test_bad_aspect_configs_are_errors_naming_the_key(scores_file, tmp_path, capsys, tiny_bert):
    no_votes = write_jsonl(tmp_path / "means.jsonl", [{"prompt": "p", "response": "r", "scores": {"quality": 3.0}}])
    cases = [
        (["--data.scores", scores_file, "--model.aspect_weights", '{"humour": 1}'], "'model.aspect_weights'"),
        (["--data.train", scores_file, "--data.aspects", '["quality"]'], "'data.aspects' applies to aspect scores"),
        (["--data.scores", scores_file, "--loss.pairwise_weight", "2"], "'loss.pairwise_weight'"),
        (["--data.train", scores_file, "--loss.aspects", "ordinal"], "'loss.aspects' applies to aspect scores"),
        (["--data.scores", scores_file, "--loss.aspects", "ordinal", "--data.score_field", "adjusted"], "'loss.aspects'"),
        (["--data.scores", no_votes, "--loss.aspects", "ordinal"], f"{no_votes}:1: field 'votes.quality'"),
        (["--data.scores", scores_file, "--data.score_field", "adjusted"], "field 'adjusted': missing"),
    ]
    for args, expected in cases:
        code = main(["reward", "--model.name", tiny_bert, *args, "--run.out_dir", str(tmp_path / "runs")])
        err = capsys.readouterr().err
        assert code == 2 and expected in err and "Traceback" not in err, (args, err[-400:])
    assert not (tmp_path / "runs").exists()
