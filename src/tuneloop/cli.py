"""The ``tuneloop`` command: parse → build → call. One subcommand per stage.

Config-driven stages take ``--config FILE`` plus ``--section.key value`` overrides; ``--help-config``
lists every key with its type, default and meaning. User errors (bad data, bad config, missing model)
print one clear line and exit with status 2; nothing half-written is left behind.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

EXIT_USER_ERROR = 2


def _config_stage(sub, name: str, help_text: str, config_cls_path: str, run_path: str, resumable: bool = True):
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--config", help="YAML config file (keys as in --help-config)")
    p.add_argument("--help-config", action="store_true", help="list every config key and exit")
    p.add_argument("--print-config", action="store_true", help="print the effective config and exit")
    if resumable:
        p.add_argument("--resume", nargs="?", const="latest", metavar="RUN_DIR",
                       help="continue a run from its newest complete checkpoint (default: the latest run)")
    p.set_defaults(handler=_run_config_stage, stage=name, config_cls=config_cls_path, run_fn=run_path,
                   passes_extra=True)
    return p


def _import(path: str):
    module, _, attr = path.rpartition(".")
    import importlib

    return getattr(importlib.import_module(module), attr)


def _run_config_stage(args, overrides: list[str]) -> int:
    from tuneloop.config import dump_yaml, help_text, load_config
    from tuneloop.runs import latest_run_dir

    cls = _import(args.config_cls)
    if args.help_config:
        print(help_text(cls), end="")
        return 0
    resume_dir = None
    if getattr(args, "resume", None):
        if args.resume == "latest":
            probe = load_config(cls, args.config, overrides)
            resume_dir = latest_run_dir(probe.run.out_dir, args.stage)
            if resume_dir is None:
                raise FileNotFoundError(f"no {args.stage} run to resume under {probe.run.out_dir}/")
        else:
            resume_dir = Path(args.resume)
        if args.config or overrides:
            raise ValueError("--resume continues a run with its saved config; drop --config and overrides")
        cfg = load_config(cls, resume_dir / "config.yaml")
    else:
        cfg = load_config(cls, args.config, overrides)
    is_main = os.environ.get("RANK", "0") == "0"  # under torchrun / accelerate launch, print once
    if is_main or args.print_config:
        print(dump_yaml(cfg), end="")
    if args.print_config:
        return 0
    result = _import(args.run_fn)(cfg, resume_dir=resume_dir)
    if is_main:
        print(f"[tuneloop] {args.stage} finished: {result.run_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuneloop", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from tuneloop import demo, inspect_cmd, sample

    demo.register(sub)
    _config_stage(sub, "sft", "supervised fine-tuning on instruction → response data",
                  "tuneloop.train.sft.SFTConfig", "tuneloop.train.sft.train")
    _config_stage(sub, "dpo", "direct preference optimisation (dpo, ipo, cdpo, robust, hinge, simpo, orpo, kto)", "tuneloop.train.dpo_config.DPOConfig", "tuneloop.train.dpo.train")  # noqa: E501
    _config_stage(sub, "reward", "train a reward model on preference judgments", "tuneloop.train.reward.RewardConfig", "tuneloop.train.reward.train")  # noqa: E501
    for name, text in (("ppo", "PPO against the reward with a KL penalty (critic + GAE, clipped updates)"),
                       ("a2c", "A2C against the reward: one policy-gradient update per rollout with a GAE critic"),
                       ("grpo", "GRPO: K samples per prompt, group-normalised advantages, KL loss term"),
                       ("rloo", "RLOO: K samples per prompt, leave-one-out baseline, KL in the reward")):
        _config_stage(sub, name, text, f"tuneloop.train.rl_config.{name.upper()}Config", "tuneloop.train.rl.train")
    sample.register(sub)
    inspect_cmd.register(sub)
    from tuneloop import pipeline
    from tuneloop.evaluate import cli as eval_cli

    eval_cli.register(sub)
    pipeline.register(sub)
    from tuneloop.feedback import cli as label_cli

    label_cli.register(sub)
    from tuneloop import chat

    chat.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from tuneloop.config import ConfigError
    from tuneloop.data import DataError
    from tuneloop.data.chat import TemplateError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passes_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.handler(args, extra) or 0
    except (DataError, ConfigError, TemplateError, FileNotFoundError, ValueError) as err:
        if os.environ.get("TUNELOOP_DEBUG"):
            raise
        print(f"tuneloop {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as err:  # e.g. a hub id that cannot be reached offline
        print(f"tuneloop {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"\ntuneloop {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
