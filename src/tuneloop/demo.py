"""``tuneloop demo``: the loop on the bundled model and data, every stage for real.

Task: write a short review of a movie described by a Rotten Tomatoes plot snippet; judged by how
positive it is (the sentiment task of Ziegler et al. 2019, on an instruction-tuned model).

  1. SFT (LoRA) of SmolLM2 on (plot → a critic's snippet about that movie)
  2. sample K candidate reviews for held-out movies, with provenance
  3. a simulated rater panel (VADER sentiment + noise, ~75% agreement between raters) judges them
     through the labelling app's store, and the judgments are exported as preference pairs
  4. a reward model (the bundled MiniLM) trained on those pairs, with its held-out accuracy
  5. with ``--dpo``, the RL-free alternative: DPO (LoRA) of the SFT policy on the same pairs, its
     held-out implicit-reward accuracy, then fresh reviews of unseen movies from both policies scored
     by the panel's own criterion (VADER sentiment) and by the reward model
Later stages (PPO against the reward model, evaluation report) join as they land.
``--quick`` runs the same stages on a tiny random policy in about a minute (for CI).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from tuneloop.atomic import atomic_write_text
from tuneloop.config import load_config

HELD_OUT_MOVIES = 96  # the last plots (by movie name) are never trained on; candidates come from them


@dataclass(frozen=True)
class DemoSize:
    policy: str
    lora: bool
    sft_steps: int
    sft_lr: float
    prompts: int
    candidates: int
    max_new_tokens: int
    reward_epochs: int
    dpo_steps: int


FULL = DemoSize("smollm2-135m-instruct", True, 30, 2e-4, 48, 4, 40, 4, 40)
QUICK = DemoSize("tiny-llama", False, 8, 1e-3, 12, 4, 16, 2, 4)


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def stage_sft(root: Path, size: DemoSize, held_out: set[str]):
    from tuneloop.data.bundled import review_examples
    from tuneloop.train.sft import SFTConfig, train

    rows = [{"prompt": p, "completion": c} for p, c in review_examples() if p not in held_out]
    train_file = _write_jsonl(root / "sft-train.jsonl", rows)
    print(f"\n== 1. SFT: {size.policy}{' + LoRA' if size.lora else ''}, {size.sft_steps} steps on {len(rows)} "
          f"review examples")
    overrides = {"model": {"name": size.policy, "lora": {"enabled": size.lora, "r": 16, "alpha": 32}},
                 "data": {"train": str(train_file), "max_length": 192, "eval_fraction": 0.01},
                 "batch": {"batch_size": 8, "micro_batch_size": 8, "max_steps": size.sft_steps},
                 "optim": {"lr": size.sft_lr, "warmup_steps": 2},
                 "run": {"out_dir": str(root), "name": "sft", "seed": 0}}
    return train(load_config(SFTConfig, overrides=overrides))


def stage_sample(root: Path, size: DemoSize, model_dir: Path, prompts: list[str]) -> list[dict]:
    from tuneloop.generation import SamplingConfig
    from tuneloop.sample import sample_candidates

    print(f"\n== 2. Sample: {size.candidates} candidate reviews for each of {len(prompts)} held-out movies")
    prompt_file = _write_jsonl(root / "sample-prompts.jsonl", [{"prompt": p} for p in prompts])
    sampling = SamplingConfig(temperature=1.0, top_p=0.95, max_new_tokens=size.max_new_tokens, batch_size=16)
    return sample_candidates(str(model_dir), str(prompt_file), root / "candidates.jsonl", size.candidates,
                             sampling, seed=0)


def stage_label(root: Path) -> tuple[Path, dict]:
    from tuneloop.feedback import export_pairs, simulate

    print("\n== 3. Label: a simulated panel of 5 raters (VADER sentiment + noise), 3 judgments per pair")
    store = root / "labels.db"
    result = simulate(store, root / "candidates.jsonl", num_annotators=5, overlap=3, seed=0)
    pairs = root / "pairs.jsonl"
    count = export_pairs(store, pairs)
    agreement = result.measured_agreement
    print(f"   {result.judgments} judgments, agreement between raters "
          f"{agreement:.1%} (InstructGPT's labellers: ~73–77%), {count} preference pairs → {pairs}"
          if agreement is not None else f"   {result.judgments} judgments, {count} pairs → {pairs}")
    print(f"   to judge these yourself: tuneloop label serve --db {store}")
    return pairs, result.as_dict()


def stage_reward(root: Path, size: DemoSize, pairs: Path):
    from tuneloop.train.reward import RewardConfig, train

    print("\n== 4. Reward model: the bundled MiniLM on the exported pairs (split by prompt)")
    overrides = {"data": {"train": str(pairs), "eval_fraction": 0.2, "reference": str(root / "candidates.jsonl"),
                          "max_length": 256},
                 "batch": {"batch_size": 16, "micro_batch_size": 16, "epochs": size.reward_epochs},
                 "optim": {"lr": 5e-5},
                 "run": {"out_dir": str(root), "name": "reward", "seed": 0}}
    return train(load_config(RewardConfig, overrides=overrides))


def stage_dpo(root: Path, size: DemoSize, sft_dir: Path, pairs: Path):
    from tuneloop.train.dpo import dpo_on_pairs

    print(f"\n== 5. DPO, the RL-free alternative: the SFT policy{' + LoRA' if size.lora else ''} trained straight on "
          f"the same pairs, {size.dpo_steps} steps (reference: the SFT policy)")
    return dpo_on_pairs(pairs, sft_dir, root, quick=not size.lora, steps=size.dpo_steps)


def stage_compare(root: Path, size: DemoSize, policies: dict[str, Path], prompts: list[str],
                  reward_dir: Path) -> dict:
    """One fresh review per unseen movie from each policy (same seed), scored by VADER and the RM."""
    from tuneloop.generation import SamplingConfig
    from tuneloop.rewards import load_reward
    from tuneloop.rewards.gold import vader_sentiment
    from tuneloop.sample import sample_candidates

    print(f"\n== 6. Compare: one review for each of {len(prompts)} movies no stage has seen, from each policy")
    prompt_file = _write_jsonl(root / "compare-prompts.jsonl", [{"prompt": p} for p in prompts])
    sampling = SamplingConfig(temperature=1.0, top_p=0.95, max_new_tokens=size.max_new_tokens, batch_size=16)
    reward = load_reward(str(reward_dir))
    results = {}
    for name, model_dir in policies.items():
        records = sample_candidates(str(model_dir), str(prompt_file), root / f"compare-{name}.jsonl", 1, sampling,
                                    seed=1)
        texts = [r["completions"][0] for r in records]
        sentiment = sum(vader_sentiment(t) for t in texts) / len(texts)
        rm = reward.score([r["prompt"] for r in records], texts).mean().item()
        results[name] = {"vader_sentiment": sentiment, "reward_model": rm, "example": texts[0]}
        print(f"   {name:>4}: mean VADER sentiment {sentiment:+.3f}, mean reward-model score {rm:+.3f}")
    return results


def run_demo(quick: bool, out_dir: str, dpo: bool = False) -> dict:
    from tuneloop.data.bundled import review_prompts

    size = QUICK if quick else FULL
    root = Path(out_dir) / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    root.mkdir(parents=True)
    held_out = review_prompts()[-HELD_OUT_MOVIES:]
    started = time.time()
    sft = stage_sft(root, size, set(held_out))
    candidates = stage_sample(root, size, sft.model_dir, held_out[:size.prompts])
    pairs, labels = stage_label(root)
    reward = stage_reward(root, size, pairs)
    summary = {"policy": size.policy, "sft": sft.summary, "candidates": str(root / "candidates.jsonl"),
               "labels": labels, "reward": reward.summary}
    if dpo:
        result = stage_dpo(root, size, sft.model_dir, pairs)
        unseen = held_out[size.prompts:]
        summary["dpo"] = result.summary
        summary["compare"] = stage_compare(root, size, {"sft": sft.model_dir, "dpo": result.model_dir}, unseen,
                                           reward.model_dir)
    summary["seconds"] = round(time.time() - started, 1)
    atomic_write_text(root / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    accuracy = reward.summary.get("eval", {}).get("accuracy")
    print(f"\n== done in {summary['seconds']:.0f}s: {root}\n"
          f"   SFT eval loss {sft.summary['eval'].get('loss', float('nan')):.3f}; policy in {sft.model_dir}\n"
          f"   reward model held-out accuracy: {accuracy:.1%}" if accuracy is not None else "")
    if dpo:
        dpo_accuracy = summary["dpo"].get("eval", {}).get("rewards/accuracy")
        if dpo_accuracy is not None:
            print(f"   DPO held-out implicit-reward accuracy: {dpo_accuracy:.1%}; policy in {summary['dpo']['model_dir']}")
    print(f"   first held-out movie: {candidates[0]['prompt'][:110]}…")
    for k, text in enumerate(candidates[0]["completions"]):
        print(f"   candidate {k + 1}: {text[:150]}")
    print(f"   next: judge the candidates yourself with `tuneloop label serve --db {root / 'labels.db'}`, "
          f"or talk to the policy: `tuneloop chat --model {sft.model_dir}`")
    return summary


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the loop on the bundled model and data")
    p.add_argument("--quick", action="store_true", help="a tiny policy, about a minute (for CI)")
    p.add_argument("--out-dir", default="runs")
    p.add_argument("--dpo", action="store_true",
                   help="also run DPO on the judgments (the RL-free alternative) and compare it with the SFT policy")
    p.set_defaults(handler=lambda a, _: run_demo(a.quick, a.out_dir, a.dpo) and 0)
