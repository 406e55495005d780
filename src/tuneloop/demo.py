"""``tuneloop demo``: the loop on the bundled model and data, every stage for real.

Stages that exist so far: SFT (LoRA) on movie-review instructions built from Rotten Tomatoes plot
snippets and critics' snippets → K sampled candidate reviews for held-out movies, with provenance.
Later stages (simulated raters, reward model, PPO, evaluation report) join as they land.
``--quick`` runs the same stages on a tiny random model in well under a minute (for CI).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tuneloop.atomic import atomic_write_text
from tuneloop.config import load_config
from tuneloop.data.bundled import review_prompts

HELD_OUT_PROMPTS = 64  # the last plots are never trained on; candidates are sampled for them


def run_demo(quick: bool, out_dir: str, sft_steps: int | None, num_prompts: int | None) -> dict:
    from tuneloop.generation import SamplingConfig
    from tuneloop.sample import sample_candidates
    from tuneloop.train.sft import SFTConfig, train

    root = Path(out_dir) / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    root.mkdir(parents=True)
    prompts = review_prompts()
    held_out = prompts[-HELD_OUT_PROMPTS:]
    # Train on reviews of every other movie: write the SFT data with the held-out plots removed.
    from tuneloop.data.bundled import review_examples

    held = set(held_out)
    train_rows = [{"prompt": p, "completion": c} for p, c in review_examples() if p not in held]
    train_file = root / "sft-train.jsonl"
    atomic_write_text(train_file, "".join(json.dumps(r) + "\n" for r in train_rows))
    prompt_file = root / "held-out-prompts.jsonl"
    atomic_write_text(prompt_file, "".join(json.dumps({"prompt": p}) + "\n" for p in held_out))

    model = "tiny-llama" if quick else "smollm2-135m-instruct"
    steps = sft_steps or (8 if quick else 40)
    overrides = {"model": {"name": model, "lora": {"enabled": not quick, "r": 16, "alpha": 32}},
                 "data": {"train": str(train_file), "max_length": 192, "eval_fraction": 0.02},
                 "batch": {"batch_size": 8, "micro_batch_size": 8, "max_steps": steps},
                 "optim": {"lr": 1e-3 if quick else 2e-4, "warmup_steps": 2},
                 "run": {"out_dir": str(root), "name": "sft", "seed": 0}}
    print(f"\n== 1. SFT: {model}{' + LoRA' if not quick else ''}, {steps} steps on {len(train_rows)} "
          f"review examples")
    sft = train(load_config(SFTConfig, overrides=overrides))

    n = num_prompts or (8 if quick else 16)
    subset = root / "sample-prompts.jsonl"
    atomic_write_text(subset, "".join(json.dumps({"prompt": p}) + "\n" for p in held_out[:n]))
    print(f"\n== 2. Sample: 4 candidate reviews for each of {n} held-out movies")
    sampling = SamplingConfig(temperature=1.0, top_p=0.95, max_new_tokens=24 if quick else 48, batch_size=16)
    candidates = sample_candidates(str(sft.model_dir), str(subset), root / "candidates.jsonl", 4, sampling, seed=0)

    summary = {"sft": sft.summary, "candidates": str(root / "candidates.jsonl"),
               "example": {"prompt": candidates[0]["prompt"], "completions": candidates[0]["completions"]}}
    atomic_write_text(root / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    print(f"\n== done: {root}\n   SFT eval loss {sft.summary['eval'].get('loss', float('nan')):.3f}; "
          f"model in {sft.model_dir}\n   first held-out movie: {candidates[0]['prompt'][:120]}…")
    for k, text in enumerate(candidates[0]["completions"]):
        print(f"   candidate {k + 1}: {text[:160]}")
    print("   next: label these candidates yourself once `tuneloop label serve` lands; try "
          f"`tuneloop chat --model {sft.model_dir}`")
    return summary


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the loop on the bundled model and data")
    p.add_argument("--quick", action="store_true", help="a tiny model, about a minute (for CI)")
    p.add_argument("--out-dir", default="runs")
    p.add_argument("--sft-steps", type=int, default=None)
    p.add_argument("--prompts", type=int, default=None, help="held-out prompts to sample for")
    p.set_defaults(handler=lambda a, _: run_demo(a.quick, a.out_dir, a.sft_steps, a.prompts) and 0)
