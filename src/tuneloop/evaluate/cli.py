"""``tuneloop eval``: parse → build an ``EvalConfig`` → ``evaluate``.

  tuneloop eval --model sft=runs/sft/model --model dpo=runs/dpo/model --prompts prompts.jsonl \
      --gold vader --reward runs/reward/model --limit 48
  tuneloop eval --config eval.yaml [--section.key value ...]

Flags fill the same config a YAML file does (``--help-config`` lists every key); flags win over the file.
"""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate policies on held-out prompts: gold, reward model, KL, win rates",
                       description=__doc__.splitlines()[0])
    p.add_argument("--config", help="YAML config file (keys as in --help-config)")
    p.add_argument("--help-config", action="store_true", help="list every config key and exit")
    p.add_argument("--model", action="append", default=[], metavar="[NAME=]MODEL",
                   help="a policy to evaluate (repeat for several; the first is the KL reference by default)")
    p.add_argument("--prompts", help="held-out prompts file or bundled:<name>")
    p.add_argument("--gold", action="append", default=None, metavar="SPEC", help="gold scorer (repeatable)")
    p.add_argument("--reward", help="reward-model folder (proxy score, best-of-n selector)")
    p.add_argument("--judge", help="pairwise judge module:function (prompt, a, b) → P(a better)")
    p.add_argument("--reference", help="model the KL is measured to (default: the first policy)")
    p.add_argument("--limit", type=int, help="number of prompts, drawn with --seed")
    p.add_argument("--samples-per-prompt", type=int, help="K samples per prompt (≥ 2 gives best-of-n curves)")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", help="output folder (eval.json, samples-<policy>.jsonl)")
    p.set_defaults(handler=_run, passes_extra=True)


def _flag_overrides(args) -> dict:
    overrides: dict = {}
    if args.model:
        policies = []
        for entry in args.model:
            name, sep, model = entry.partition("=")
            if not sep:
                name, model = Path(entry.rstrip("/")).name or entry, entry
            policies.append({"name": name, "model": model})
        overrides["policies"] = policies
    for flag, key in (("prompts", "prompts"), ("gold", "gold"), ("reward", "reward"), ("judge", "judge"),
                      ("reference", "reference"), ("limit", "limit"), ("samples_per_prompt", "samples_per_prompt"),
                      ("seed", "seed"), ("out", "out")):
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = value
    return overrides


def _run(args, extra: list[str]) -> int:
    from tuneloop.config import describe, load_config, merge_mappings, parse_overrides
    from tuneloop.evaluate.config import EvalConfig
    from tuneloop.evaluate.runner import evaluate

    if args.help_config:
        for key, tp, default, doc in describe(EvalConfig):
            print(f"--{key}  ({tp}, default {default})\n      {doc}")
        return 0
    overrides = merge_mappings(_flag_overrides(args), parse_overrides(extra))
    evaluate(load_config(EvalConfig, args.config, overrides))
    return 0
