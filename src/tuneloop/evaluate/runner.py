"""``evaluate(cfg)``: the steps of ``tuneloop eval`` (see ``evaluate.policy``) and its printed table."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from tuneloop.atomic import atomic_write_text
from tuneloop.config import to_dict
from tuneloop.evaluate.checkpoints import export_checkpoints, is_run_folder
from tuneloop.evaluate.config import EvalConfig
from tuneloop.evaluate.policy import (
    PolicySamples,
    _point,
    _side_by_side,
    _write_samples,
    best_of_n,
    draw_prompts,
    overoptimization,
    sample_and_score,
    summarise,
    win_rates,
)
from tuneloop.models import ModelConfig, load_causal_lm
from tuneloop.models.matmul import with_fast_linear
from tuneloop.rewards.evaluation import _json_safe  # NaN/inf → null, as the reward report writes them

REWARD_MODEL = "reward_model"
TABLE_COLUMNS = ("gold", REWARD_MODEL, "kl/k3_sequence", "kl/k1_token", "length/tokens", "truncation_rate",
                 "repetition/rep_3", "distinct/2")


def _scorers(cfg: EvalConfig) -> tuple[dict, str | None, str]:
    from tuneloop.rewards import load_reward

    scorers = {}
    for spec in cfg.gold:
        reward = load_reward(spec)
        scorers[reward.name if ":" in reward.name else f"gold:{reward.name}"] = reward
    gold = next(iter(scorers), None)
    if cfg.reward is not None:
        scorers[REWARD_MODEL] = load_reward(cfg.reward)
    if gold is None:
        raise ValueError("eval needs at least one gold scorer (eval.gold)")
    return scorers, (REWARD_MODEL if cfg.reward is not None else None), gold


def _checkpoint_models(spec_checkpoints: list[str], out: Path) -> list[tuple[str, str]]:
    models = []
    for entry in spec_checkpoints:
        if is_run_folder(entry):
            models.extend((f"step {step}", str(folder))
                          for step, folder in export_checkpoints(entry, out / "checkpoint-models"))
        else:
            models.append((Path(entry).name, entry))
    return models


@with_fast_linear  # the scorers' and teacher-forced forwards on oneDNN where it is faster (the engine uses it anyway)
def evaluate(cfg: EvalConfig) -> dict:
    """Run every step, write ``<out>/eval.json``, print the table; returns the JSON content."""
    from tuneloop.rewards.functions import load_function

    started = time.time()
    if not cfg.policies:
        raise ValueError("eval needs at least one policy (eval.policies or --model)")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    # 1. prompts, reference, scorers, judge
    prompts = draw_prompts(cfg.prompts, cfg.limit, cfg.seed)
    reference_name = cfg.reference or cfg.policies[0].model
    reference = load_causal_lm(ModelConfig(name=reference_name), trainable=False)
    scorers, proxy, gold = _scorers(cfg)
    judge = load_function(cfg.judge) if cfg.judge else None
    print(f"[tuneloop] eval: {len(cfg.policies)} policies × {len(prompts)} prompts; KL to {reference_name}; scorers {', '.join(scorers)}")
    # 2. every policy on the same prompts and seed
    samples: dict[str, PolicySamples] = {}
    for spec in cfg.policies:
        t0 = time.time()
        k = spec.samples_per_prompt or cfg.samples_per_prompt
        samples[spec.name] = sample_and_score(spec.name, spec.model, prompts, cfg, reference, scorers, k)
        _write_samples(out, samples[spec.name], prompts)
        print(f"[tuneloop] eval: {spec.name} sampled and scored in {time.time() - t0:.1f}s")
    result: dict = {"prompts": len(prompts), "prompts_file": cfg.prompts, "reference": reference_name,
                    "gold": gold, "proxy": proxy, "config": to_dict(cfg),
                    "policies": {name: {"model": s.model, "metrics": summarise(s, cfg)} for name, s in samples.items()}}
    # 3. win rates
    result["win_rates"] = win_rates(samples, cfg, prompts, judge) if len(samples) > 1 else []
    # 4. best-of-n and over-optimisation
    if proxy is not None:
        result["best_of_n"] = {name: bon for name, s in samples.items() if (bon := best_of_n(s, cfg, proxy, gold))}
    result["overoptimization"] = {}
    for spec in cfg.policies:
        if not spec.checkpoints:
            continue
        start = next((s for s in samples.values() if s.model == reference_name), None)
        if start is None:
            start = sample_and_score("reference", reference_name, prompts, cfg, reference, scorers)
        points = [_point("start", start)]
        for label, model in _checkpoint_models(spec.checkpoints, out):
            points.append(_point(label, sample_and_score(f"{spec.name} {label}", model, prompts, cfg, reference,
                                                         scorers)))
        points.append(_point("final", samples[spec.name]))
        result["overoptimization"][spec.name] = overoptimization(points, spec.method, proxy, gold)
    # 5. write and print
    result["side_by_side"] = _side_by_side(samples, prompts, cfg.samples_in_report)
    result["seconds"] = round(time.time() - started, 1)
    atomic_write_text(out / "eval.json", json.dumps(_json_safe(result), indent=2, ensure_ascii=False) + "\n")
    print(format_table(result))
    print(f"[tuneloop] eval: {out / 'eval.json'} ({result['seconds']:.0f}s)")
    return result


def _cell(metric: dict | None) -> str:
    if not metric or metric.get("mean") is None or not math.isfinite(metric["mean"]):
        return "—"
    low, high = metric.get("ci_low"), metric.get("ci_high")
    if low is None or high is None:
        return f"{metric['mean']:.3f}"
    return f"{metric['mean']:.3f} [{low:.3f}, {high:.3f}]"


def format_table(result: dict) -> str:
    """Policies as rows, the main metrics as columns (mean [CI]); then the win rates."""
    columns = [result["gold"] if c == "gold" else c for c in TABLE_COLUMNS]
    rows = [["policy", *columns]]
    for name, entry in result["policies"].items():
        rows.append([name, *(_cell(entry["metrics"].get(c)) for c in columns)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    confidence = next(iter(result["policies"].values()))["metrics"][columns[0]]["confidence"]
    if result.get("win_rates"):
        lines.append(f"\nwin rate of A over B (ties count ½), {confidence:.0%} bootstrap CI:")
        for w in result["win_rates"]:
            lines.append(f"  {w['a']} over {w['b']} by {w['by']}: {_cell(w)}")
    for name, bon in (result.get("best_of_n") or {}).items():
        last = bon["points"][-1]
        lines.append(f"best-of-{last['n']} from {name}: {bon['gold']} {last['gold']:.3f} "
                     f"(proxy {last['proxy']:.3f}) at KL {last['kl']:.3f} to {name}")
    return "\n".join(lines)
