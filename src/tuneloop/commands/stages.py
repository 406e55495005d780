"""The stage kinds a pipeline file can ``use``: each is a thin shell around a stage's Python function.

A kind declares its outputs (names another stage references as ``${stage.output}``) and runs as
``run(context, config) -> (outputs, summary)``. Training stages are ``ConfigStage``s: their ``with``
mapping is the stage's typed config (the same keys as its YAML file and ``--help-config``), and the
pipeline puts the run folder at ``<stage folder>/run``. The RL presets (ppo, a2c, grpo, rloo) are
such stages; a new training stage plugs in as one more line in ``STAGE_KINDS`` with a headline for
its progress line.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.atomic import atomic_write_jsonl
from tuneloop.curves import ROUND_AXIS, STEP_AXIS


def _percent(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) else "n/a"


def _number(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "n/a"


@dataclass(frozen=True)
class StageKind:
    description: str
    outputs: tuple[str, ...]
    run: Callable[[Any, dict], tuple[dict, dict]]
    headline: Callable[[dict], str] = lambda summary: ""
    reads_all_stages: bool = False  # its key includes every earlier stage's key (the report)
    step_unit: str = STEP_AXIS  # what one logged step of its metrics.jsonl is (the curves' x-axis)


def _import(path: str):
    module, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def config_stage(config_cls: str, train_fn: str) -> Callable[[Any, dict], tuple[dict, dict]]:
    """A training stage: ``with`` is its typed config; the run folder is ``<stage>/run``."""

    def run(context, config: dict) -> tuple[dict, dict]:
        from tuneloop.config import load_config

        cls = _import(config_cls)
        overrides = {**config, "run": {**config.get("run", {}), "out_dir": str(context.folder), "name": "run"}}
        result = _import(train_fn)(load_config(cls, overrides=overrides))
        return {"model": result.model_dir, "run": result.run_dir}, result.summary

    return run


# ---------------------------------------------------------------------------------------------
# Non-training stages


def _jsonl(path: Path, rows: list[dict]) -> Path:
    atomic_write_jsonl(path, rows)
    return path


def demo_data(context, config: dict) -> tuple[dict, dict]:
    """The demo's files from the bundled Rotten Tomatoes snippets: SFT examples of the movies not held out,
    the prompts to sample candidates for (the first ``sample_prompts`` held-out movies), the eval prompts
    (the other held-out movies, never seen by any stage) and the train prompts (one per movie the SFT
    examples cover, then the sampling movies: 146 + 48 with the defaults), for a larger panel and for RL."""
    from tuneloop.data.bundled import review_examples, review_prompts

    unknown = set(config) - {"held_out", "sample_prompts"}
    if unknown:
        raise ValueError(f"demo-data: unknown key {sorted(unknown)[0]!r}; known: held_out, sample_prompts")
    held_out_count, sample_count = int(config.get("held_out", 96)), int(config.get("sample_prompts", 48))
    held_out = review_prompts()[-held_out_count:]
    if not 0 < sample_count < len(held_out):
        raise ValueError(f"demo-data: sample_prompts must lie in 1..{len(held_out) - 1}, got {sample_count}")
    excluded = set(held_out)
    sft_rows = [{"prompt": p, "completion": c} for p, c in review_examples() if p not in excluded]
    train_prompts = list(dict.fromkeys(row["prompt"] for row in sft_rows)) + held_out[:sample_count]
    folder = context.folder
    outputs = {"sft_train": _jsonl(folder / "sft-train.jsonl", sft_rows),
               "sample_prompts": _jsonl(folder / "sample-prompts.jsonl", [{"prompt": p} for p in held_out[:sample_count]]),
               "eval_prompts": _jsonl(folder / "eval-prompts.jsonl", [{"prompt": p} for p in held_out[sample_count:]]),
               "train_prompts": _jsonl(folder / "train-prompts.jsonl", [{"prompt": p} for p in train_prompts])}
    return outputs, {"sft_examples": len(sft_rows), "sample_prompts": sample_count,
                     "eval_prompts": held_out_count - sample_count}


def sample(context, config: dict) -> tuple[dict, dict]:
    """``tuneloop sample``: {model, prompts, num_candidates, seed, limit, sampling: {...}}."""
    from tuneloop.config import load_config
    from tuneloop.generation import SamplingConfig
    from tuneloop.sample import sample_candidates

    unknown = set(config) - {"model", "prompts", "num_candidates", "seed", "limit", "sampling"}
    if unknown or "model" not in config or "prompts" not in config:
        raise ValueError(f"sample: needs model and prompts; optional num_candidates, seed, limit, sampling "
                         f"(got {sorted(config)})")
    sampling = load_config(SamplingConfig, overrides=config.get("sampling") or {})
    out = context.folder / "candidates.jsonl"
    records = sample_candidates(str(config["model"]), str(config["prompts"]), out, int(config.get("num_candidates", 4)),
                                sampling, seed=int(config.get("seed", 0)), limit=config.get("limit"))
    finish = [f for r in records for f in r["finish_reasons"]]
    return {"candidates": out}, {"prompts": len(records), "candidates": len(finish),
                                 "truncated": finish.count("length"),
                                 "tokens": sum(sum(r["completion_tokens"]) for r in records)}


def label_simulate(context, config: dict) -> tuple[dict, dict]:
    """The simulated rater panel (``tuneloop label simulate``) and the pairs export (``label export``)."""
    from tuneloop.feedback import export_pairs, simulate

    known = {"candidates", "annotators", "overlap", "seed", "target_agreement", "mode"}
    if set(config) - known or "candidates" not in config:
        raise ValueError(f"label-simulate: needs candidates; optional {', '.join(sorted(known - {'candidates'}))}")
    store = context.folder / "labels.db"
    result = simulate(store, config["candidates"], num_annotators=int(config.get("annotators", 5)),
                      overlap=int(config.get("overlap", 3)), seed=int(config.get("seed", 0)),
                      target_agreement=float(config.get("target_agreement", 0.75)), mode=config.get("mode", "pairwise"))
    pairs = context.folder / "pairs.jsonl"
    count = export_pairs(store, pairs)
    return {"db": store, "pairs": pairs}, {**result.as_dict(), "pairs": count}


def evaluate_stage(context, config: dict) -> tuple[dict, dict]:
    """``tuneloop eval`` with its typed config; eval.json goes into the stage folder."""
    from tuneloop.config import load_config
    from tuneloop.evaluate.config import EvalConfig
    from tuneloop.evaluate.runner import evaluate

    result = evaluate(load_config(EvalConfig, overrides={**config, "out": str(context.folder)}))
    headline = {name: {metric: entry["metrics"][metric]["mean"] for metric in
                       (result["gold"], "reward_model", "kl/k3_sequence", "length/tokens") if metric in entry["metrics"]}
                for name, entry in result["policies"].items()}
    return {"json": context.folder / "eval.json"}, {"gold": result["gold"], "policies": headline}


def report_stage(context, config: dict) -> tuple[dict, dict]:
    """The self-contained HTML report of every stage before it."""
    from tuneloop.report.html import write_pipeline_report

    unknown = set(config) - {"title"}
    if unknown:
        raise ValueError(f"report: unknown key {sorted(unknown)[0]!r}; known: title")
    path = write_pipeline_report(context.folder / "report.html", context.records,
                                 title=config.get("title") or f"tuneloop: {context.pipeline.name}")
    return {"html": path}, {"html": str(path)}


# ---------------------------------------------------------------------------------------------
# Progress lines


def _sft_line(s: dict) -> str:
    return f"{s.get('steps')} steps, held-out loss {_number((s.get('eval') or {}).get('loss'))}"


def _reward_line(s: dict) -> str:
    e = s.get("eval") or {}
    return f"held-out accuracy {_percent(e.get('accuracy'))} on {int(e.get('pairs', 0))} pairs"


def _dpo_line(s: dict) -> str:
    return f"{s.get('steps')} steps, held-out implicit-reward accuracy {_percent((s.get('eval') or {}).get('rewards/accuracy'))}"


def _rl_line(s: dict) -> str:
    final = s.get("final") or {}
    return (f"{s.get('steps')} rounds, score {_number(final.get('objective/scores'))}, "
            f"KL {_number(final.get('objective/kl'), 2)}, length {_number(final.get('completions/mean_length'), 1)}")


def _rl_kind(preset: str, description: str) -> StageKind:
    config_cls = {"ppo": "PPOConfig", "a2c": "A2CConfig", "grpo": "GRPOConfig", "rloo": "RLOOConfig"}[preset]
    return StageKind(description, ("model", "run"),
                     config_stage(f"tuneloop.train.rl_config.{config_cls}", "tuneloop.train.rl.train"), _rl_line,
                     step_unit=ROUND_AXIS)


def _label_line(s: dict) -> str:
    return (f"{s.get('judgments')} judgments by {len(s.get('annotators') or [])} simulated raters, agreement "
            f"{_percent(s.get('measured_agreement'))}, {s.get('pairs')} pairs")


def _eval_line(s: dict) -> str:
    parts = []
    for name, m in (s.get("policies") or {}).items():
        parts.append(f"{name} {s.get('gold')} {_number(m.get(s.get('gold')))}, KL {_number(m.get('kl/k3_sequence'), 2)}")
    return "; ".join(parts)


STAGE_KINDS: dict[str, StageKind] = {
    "demo-data": StageKind("the demo's SFT examples and held-out prompts",
                           ("sft_train", "sample_prompts", "eval_prompts", "train_prompts"),
                           demo_data, lambda s: f"{s['sft_examples']} SFT examples, {s['sample_prompts']} + "
                                                f"{s['eval_prompts']} held-out movies"),
    "sft": StageKind("supervised fine-tuning", ("model", "run"),
                     config_stage("tuneloop.train.sft.SFTConfig", "tuneloop.train.sft.train"), _sft_line),
    "sample": StageKind("K candidates per prompt", ("candidates",), sample,
                        lambda s: f"{s['candidates']} candidates for {s['prompts']} prompts, {s['truncated']} truncated"),
    "label-simulate": StageKind("a simulated rater panel through the labelling store", ("db", "pairs"),
                                label_simulate, _label_line),
    "reward": StageKind("reward model on the judgments", ("model", "run"),
                        config_stage("tuneloop.train.reward.RewardConfig", "tuneloop.train.reward.train"), _reward_line),
    "dpo": StageKind("direct preference optimisation", ("model", "run"),
                     config_stage("tuneloop.train.dpo_config.DPOConfig", "tuneloop.train.dpo.train"), _dpo_line),
    "ppo": _rl_kind("ppo", "RL against the reward: PPO with a critic"),
    "a2c": _rl_kind("a2c", "RL against the reward: A2C (one pass, GAE baseline)"),
    "grpo": _rl_kind("grpo", "RL against the reward: GRPO (group-normalised advantages)"),
    "rloo": _rl_kind("rloo", "RL against the reward: RLOO (leave-one-out baseline)"),
    "eval": StageKind("policies on held-out prompts", ("json",), evaluate_stage, _eval_line),
    "report": StageKind("the HTML report", ("html",), report_stage, lambda s: s.get("html", ""), reads_all_stages=True),
}
