"""A synthetic finished pipeline (run folders, eval.json) for the report tests: no model is trained."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tuneloop.pipeline import StageRecord

HOSTILE = "<script>fetch('https://example.com/x')</script><img src=https://example.com/y.png> & \"quoted\""


def _metrics(path: Path, rows: list[dict]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _ci(mean: float, half: float = 0.05) -> dict:
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "confidence": 0.95, "n": 24}


def _policy(gold: float, rm: float, kl: float) -> dict:
    return {"metrics": {"gold:vader": _ci(gold), "reward_model": _ci(rm), "kl/k3_sequence": _ci(kl),
                        "kl/k1_sequence": _ci(kl), "kl/k1_token": _ci(kl / 30), "kl/k3_token": _ci(kl / 30),
                        "length/tokens": _ci(31.0, 2), "length/words": _ci(22.0, 2), "eos_rate": _ci(0.8),
                        "truncation_rate": _ci(0.2), "repetition/rep_3": _ci(0.01, 0.01),
                        "distinct/1": {"mean": 0.6, "ci_low": None, "ci_high": None, "confidence": 0.95, "n": 24},
                        "distinct/2": {"mean": 0.9, "ci_low": None, "ci_high": None, "confidence": 0.95, "n": 24}},
            "model": "x"}


def finished_pipeline(root: Path) -> dict[str, StageRecord]:
    """Records of sft → label → reward → dpo → ppo (RL metric names) → eval, as the stages leave them."""
    from tuneloop.report import plots

    sft, reward, dpo, ppo = root / "sft/run", root / "reward/run", root / "dpo/run", root / "ppo/run"
    _metrics(sft, [{"step": s, "split": "train", "loss": 3 - s / 10, "lr": 2e-4} for s in range(1, 31)]
             + [{"step": 30, "split": "eval", "loss": 0.9}])
    _metrics(reward, [{"step": s, "split": "train", "loss": 0.7 - s / 100, "accuracy": 0.5 + s / 50}
                      for s in range(1, 13)])
    _metrics(dpo, [{"step": s, "split": "train", "loss": 0.69 - s / 100, "rewards/accuracy": 0.5 + s / 100,
                    "rewards/margin": s / 20} for s in range(1, 41)])
    _metrics(ppo, [{"step": s, "split": "train", "objective/kl": s / 10, "objective/scores": math.log1p(s),
                    "completions/mean_length": 30 + s % 3, "loss/policy_avg": -0.01 * s} for s in range(1, 21)])
    (reward / "eval").mkdir(parents=True)
    (reward / "eval/report.json").write_text(json.dumps({"accuracy": 0.64, "pairs": 40, "ece": 0.05,
                                                         "length_spearman": 0.12}))
    plots.reliability_diagram([0.2, 0.5, 0.8], [0.25, 0.5, 0.7], [5, 10, 5], reward / "eval/reliability.png",
                              "Calibration")
    eval_dir = root / "eval"
    eval_dir.mkdir(parents=True)
    result = {
        "prompts": 24, "prompts_file": "p.jsonl", "reference": "runs/sft/model", "gold": "gold:vader",
        "proxy": "reward_model",
        "policies": {"sft": _policy(0.20, 0.0, 0.0), "dpo": _policy(0.45, 0.6, 2.5), "ppo": _policy(0.55, 1.1, 4.0)},
        "win_rates": [{"a": "dpo", "b": "sft", "by": "gold:vader", **_ci(0.66)},
                      {"a": "dpo", "b": "sft", "by": "reward_model", **_ci(0.71)}],
        "best_of_n": {"sft": {"proxy": "reward_model", "gold": "gold:vader", "points": [
            {"n": n, "kl": math.log(n) - (n - 1) / n, "sqrt_kl": math.sqrt(math.log(n) - (n - 1) / n),
             "proxy": 0.3 * math.log(n), "gold": 0.2 + 0.1 * math.log(n)} for n in (1, 2, 4)],
            "gold_fit": {"form": "best_of_n", "alpha": 0.5, "beta": 0.2, "rmse": 0.01, "peak_sqrt_kl": 1.25}}},
        "overoptimization": {"dpo": {"gold": "gold:vader", "proxy": "reward_model", "method": "rl", "points": [
            {"label": label, "model": "m", "kl": kl, "sqrt_kl": math.sqrt(kl), "gold:vader": g, "reward_model": r}
            for label, kl, g, r in (("start", 0.0, 0.2, 0.0), ("step 20", 1.0, 0.4, 0.4), ("final", 2.5, 0.45, 0.6))],
            "gold_fit": {"form": "rl", "alpha": 0.2, "beta": 0.05, "rmse": 0.01, "peak_sqrt_kl": 20.0},
            "proxy_fit": {"form": "rl", "alpha": 0.4, "beta": 0.0, "rmse": 0.02, "peak_sqrt_kl": None}}},
        "side_by_side": [{"prompt": f"Write a short review of movie {i}. {HOSTILE}", "responses": {
            name: {"text": f"{name} says {HOSTILE}", "finished": i % 2 == 0, "gold:vader": 0.1 * i}
            for name in ("sft", "dpo", "ppo")}} for i in range(3)],
    }
    (eval_dir / "eval.json").write_text(json.dumps(result))
    (root / "label").mkdir()
    (root / "label/labels.db").write_text("")
    label_summary = {"judgments": 216, "annotators": ["a", "b", "c", "d", "e"], "noise_sigma": 0.21,
                     "expected_agreement": 0.75, "measured_agreement": 0.74, "fleiss_kappa": 0.45,
                     "krippendorff_alpha": 0.46, "pairs": 72}

    def record(name, uses, outputs, seconds, summary):
        return StageRecord(name, uses, "k" + name, {k: str(v) for k, v in outputs.items()}, seconds, False, summary)

    return {
        "sft": record("sft", "sft", {"model": sft / "model", "run": sft}, 61.2,
                      {"steps": 30, "eval": {"loss": 0.9}}),
        "label": record("label", "label-simulate", {"db": root / "label/labels.db", "pairs": root / "p"}, 9.5,
                        label_summary),
        "reward": record("reward", "reward", {"model": reward / "model", "run": reward}, 40.0,
                         {"eval": {"accuracy": 0.64, "pairs": 40}}),
        "dpo": record("dpo", "dpo", {"model": dpo / "model", "run": dpo}, 80.0,
                      {"steps": 40, "eval": {"rewards/accuracy": 0.6}}),
        "ppo": record("ppo", "ppo", {"model": ppo / "model", "run": ppo}, 120.0, {}),
        "eval": record("eval", "eval", {"json": eval_dir / "eval.json"}, 70.0,
                       {"gold": "gold:vader", "policies": {}}),
    }
