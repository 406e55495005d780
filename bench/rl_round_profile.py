"""Where one PPO round's time goes: SmolLM2-135M + LoRA (r = 8), reward ``vader``, per-phase wall times.

Run (from the repository root):

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python bench/rl_round_profile.py                # 3 rounds
    HF_HUB_OFFLINE=1 python bench/rl_round_profile.py --rounds 2 --cprofile prof.out       # + cProfile
    HF_HUB_OFFLINE=1 python bench/rl_round_profile.py --model tiny-llama --rounds 2        # smoke run
    HF_HUB_OFFLINE=1 python bench/rl_round_profile.py --compare-generation 2   # sampling: generic vs engine
    HF_HUB_OFFLINE=1 python bench/rl_round_profile.py --preset grpo --k 4 --micro-batch 4   # GRPO, 2 × K = 4

The workload is docs/rl.md's "Measured" PPO case: 2 prompts × K = 1 per round, 24 new tokens at most,
temperature 0.7, 4 epochs × 2 mini-batches of micro-batch 1 (the PPO defaults otherwise), critic
initialised from the policy with its own LoRA adapter; ``--preset``, ``--prompts``, ``--k`` and
``--micro-batch`` change it (e.g. GRPO's groups). Printed per round:

- the loop's own ``timing/*`` metrics read back from the run's ``metrics.jsonl`` (generate, score,
  experience, update, round);
- finer phases measured here by wrapping the functions the loop calls (no change to the loop):
  ``old_policy`` / ``reference`` / ``critic`` forwards of the experience step, the update's forward
  +loss (``update_forward``), backward (``update_backward``) and optimizer steps (``update_optim``);
- ``log`` (metrics, samples, checkpoints: the rest of the round) and, once, ``setup`` and ``finish``.

``uptime`` is printed before and after: on a shared 2-core CPU the load changes every number, and a
number measured with a load average above ~2 is a number "under load", not a performance claim.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import subprocess
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

TIMES: dict[str, list[float]] = defaultdict(list)  # phase -> one wall time per call


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


@contextmanager
def timed(name: str):
    started = time.perf_counter()
    try:
        yield
    finally:
        TIMES[name].append(time.perf_counter() - started)


def wrap(module, attribute: str, name: str) -> None:
    """Replace module.attribute with a version that records its wall time under ``name``."""
    inner = getattr(module, attribute)

    def timed_call(*args, **kwargs):
        with timed(name):
            return inner(*args, **kwargs)

    setattr(module, attribute, timed_call)


def instrument() -> None:
    import tuneloop.train.rl as rl
    import tuneloop.train.rl_update as rl_update

    wrap(rl, "policy_logps", "old_policy")
    wrap(rl, "reference_logps", "reference")
    wrap(rl, "critic_values", "critic")
    wrap(rl_update, "_micro_losses", "update_forward")
    wrap(rl_update, "optimizer_step", "update_optim")
    wrap(rl, "_setup", "setup")
    wrap(rl, "finish", "finish")
    wrap(rl, "_write_samples", "log_samples")
    # The update's backward: accelerator.backward on the prepared accelerator.
    from accelerate import Accelerator

    inner = Accelerator.backward

    def backward(self, loss, **kwargs):
        with timed("update_backward"):
            return inner(self, loss, **kwargs)

    Accelerator.backward = backward


def config(model: str, rounds: int, out_dir: str, max_new_tokens: int, preset: str = "ppo", prompts: int = 2,
           k: int = 1, micro_batch_size: int = 1):
    from tuneloop.config import load_config
    from tuneloop.train.rl_config import PRESETS

    return load_config(PRESETS[preset], overrides={
        "model": {"name": model, "lora": {"enabled": True, "r": 8}}, "reward": "vader",
        "rollout": {"prompts_per_step": prompts, "samples_per_prompt": k,
                    "sampling": {"temperature": 0.7, "max_new_tokens": max_new_tokens}},
        "micro_batch_size": micro_batch_size, "steps": rounds, "run": {"out_dir": out_dir, "name": "profile", "seed": 0}})


def compare_generation(model_name: str, max_new_tokens: int, repeats: int) -> None:
    """One round's sampling (2 review prompts, K = 1) through the generic transformers path and through
    the engine's pick (the fast path for a LoRA Llama), alternated in one process (same load)."""
    from tuneloop.generation import SamplingConfig
    from tuneloop.generation.engine import generate_engine
    from tuneloop.generation.forward import GenericForward
    from tuneloop.models import load_causal_lm
    from tuneloop.models.loading import LoraConfig, ModelConfig
    from tuneloop.train.rl_rollout import load_prompts

    model, tokenizer = load_causal_lm(ModelConfig(name=model_name, lora=LoraConfig(enabled=True, r=8)))
    prompts = load_prompts("bundled:review-prompts", tokenizer, 256).token_ids[:2]
    cfg = SamplingConfig(temperature=0.7, max_new_tokens=max_new_tokens)
    for repeat in range(repeats):
        for name, forward in (("generic", GenericForward(model)), ("engine", None)):
            started = time.perf_counter()
            out = generate_engine(model, tokenizer, prompts, cfg, 1, seed=repeat, rank=0, log=lambda line: None,
                                  forward=forward)
            tokens = sum(len(g.token_ids) for per in out for g in per)
            print(f"[profile] generation {name}: {time.perf_counter() - started:.2f} s for {tokens} tokens; "
                  f"{uptime()}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--preset", default="ppo", choices=["ppo", "a2c", "grpo", "rloo"])
    parser.add_argument("--prompts", type=int, default=2, help="prompts per round")
    parser.add_argument("--k", type=int, default=1, help="samples per prompt")
    parser.add_argument("--micro-batch", type=int, default=1)
    parser.add_argument("--cprofile", help="write a cProfile of the whole run here and print its top 25")
    parser.add_argument("--json", help="write the per-round phases here")
    parser.add_argument("--compare-generation", type=int, default=0, metavar="N",
                        help="only time one round's sampling N times, generic path vs the engine's pick")
    args = parser.parse_args()
    if args.compare_generation:
        compare_generation(args.model, args.max_new_tokens, args.compare_generation)
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    print(f"[profile] before: {uptime()}; torch threads {torch.get_num_threads()}", flush=True)
    instrument()
    from tuneloop.train import rl

    rounds_seen: list[dict[str, float]] = []
    marks = {"start": time.perf_counter()}

    def on_round(done: int) -> None:  # the round's end: split TIMES into this round's share
        now = time.perf_counter()
        rounds_seen.append({k: sum(v) for k, v in TIMES.items() if k not in ("setup",)})
        rounds_seen[-1]["wall"] = now - marks.get("round", now)
        marks["round"] = now
        for key in [k for k in TIMES if k not in ("setup",)]:
            TIMES[key].clear()
        print(f"[profile] round {done} done: " + json.dumps({k: round(v, 2) for k, v in rounds_seen[-1].items()})
              + f"; {uptime()}", flush=True)

    with tempfile.TemporaryDirectory() as out_dir:
        cfg = config(args.model, args.rounds, out_dir, args.max_new_tokens, args.preset, args.prompts, args.k,
                     args.micro_batch)
        profiler = cProfile.Profile() if args.cprofile else None
        if profiler:
            profiler.enable()
        original_setup = rl._setup

        def setup(*a, **kw):
            session = original_setup(*a, **kw)
            marks["round"] = time.perf_counter()
            return session

        rl._setup = setup
        started = time.perf_counter()
        result = rl.train(cfg, on_round=on_round)
        total = time.perf_counter() - started
        if profiler:
            profiler.disable()
            profiler.dump_stats(args.cprofile)
        logged = [json.loads(line) for line in (Path(result.run_dir) / "metrics.jsonl").read_text().splitlines()]
    after = uptime()
    print(f"[profile] setup {sum(TIMES['setup']):.1f} s, finish {sum(TIMES.get('finish', [])) :.1f} s, "
          f"whole run {total:.1f} s")
    rows = []
    for index, (mine, metrics) in enumerate(zip(rounds_seen, logged)):
        timing = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("timing/")}
        row = {"round": index + 1, **{k: round(v, 2) for k, v in timing.items()},
               **{k: round(v, 2) for k, v in mine.items() if k not in ("finish",)}}
        row["log"] = round(mine["wall"] - timing.get("round_s", 0.0), 2)
        row["sampling_logp_difference_max"] = metrics.get("sampling/sampling_logp_difference/max")
        row["mean_length"] = metrics.get("completions/mean_length")
        rows.append(row)
        print("[profile] round " + json.dumps(row), flush=True)
    print(f"[profile] after: {after}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"rounds": rows, "total_s": total, "uptime_after": after}, indent=1))
    if profiler:
        pstats.Stats(args.cprofile).sort_stats("cumulative").print_stats(25)
        pstats.Stats(args.cprofile).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
