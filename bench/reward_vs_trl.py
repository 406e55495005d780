"""tuneloop reward vs TRL's RewardTrainer, side by side in one run: same backbone, data, batch, max length.

    python bench/reward_vs_trl.py [--model minilm-l6] [--data ../shared/data/hh-rlhf-harmless/pairs.jsonl]
                                  [--batch-size 32] [--max-length 128] [--epochs 1] [--max-steps N] [--lr 5e-5]

Both sides get the SAME token ids: the pairs are split by prompt with a fixed seed, rendered once with
tuneloop's reward renderer (text pair "[CLS] prompt [SEP] response [SEP]" with segment ids; the prompt
cut from its start to fit max_length, the response kept), and handed to TRL pre-tokenised (its
documented ``chosen_ids``/``rejected_ids`` input; a collator subclass adds the segment ids). Both
fine-tune every weight from the same initial head (same seed), with AdamW, the same learning rate,
cosine schedule with 10% warm-up, gradient clipping at 1.0, dropout off, fp32 on CPU, one pass of
``batch_size`` pairs per optimizer step, and drop the last partial batch.

Measured: pairs/s of the training loop alone (tuneloop: from its first to its last step; TRL: its
``train_runtime``), and held-out pairwise accuracy of both models, scored the same way (tuneloop's
scorer, right padding, head on [CLS]). Goals: ratio ≥ 2, ours ≥ TRL's. Needs the bench extra
(``pip install -e '.[bench]'``). The two runs share the CPU with whatever else runs on it: compare
them only within one invocation.
Kernels: both tools run in this process on the same matmul kernels, tuneloop's choice made before either
runs (``sft_measure.same_kernels``): the ratio is tuneloop's own work, not the matmul library's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from sft_measure import same_kernels  # noqa: E402  (bench/)

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless" / "pairs.jsonl"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minilm-l6")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--eval-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=None, help="fewer steps for a quick speed comparison")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--order", choices=["trl-first", "tuneloop-first"], default="trl-first")
    p.add_argument("--out", default=None, help="folder for run outputs (default: a temporary folder)")
    return p.parse_args(argv)


def prepare(args, work: Path):
    """Split by prompt, write the two JSONL files tuneloop reads, render the rows TRL gets."""
    from tuneloop.data import load_records
    from tuneloop.data.preferences import preference_pairs
    from tuneloop.data.split import split_by_prompt
    from tuneloop.models.loading import load_tokenizer, resolve_model_name
    from tuneloop.models.reward import Renderer, detect_kind

    from transformers import AutoConfig

    pairs = preference_pairs(load_records(args.data))
    train, held_out = split_by_prompt(pairs, args.eval_fraction, args.seed)
    files = {}
    for name, items in (("train", train), ("eval", held_out)):
        files[name] = work / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected})
                                       + "\n" for p in items))
    kind = detect_kind(AutoConfig.from_pretrained(resolve_model_name(args.model)))
    renderer = Renderer(load_tokenizer(args.model), kind, args.max_length)

    def render(items):
        return [(renderer.encode(p.prompt, p.chosen), renderer.encode(p.prompt, p.rejected)) for p in items]

    return files, render(train), render(held_out), kind


def run_tuneloop(args, files, work: Path, steps: int) -> dict:
    from tuneloop.config import load_config
    from tuneloop.train.reward import RewardConfig, train

    cfg = load_config(RewardConfig, overrides={
        "model": {"name": args.model}, "data": {"train": str(files["train"]), "eval": str(files["eval"]),
                                                "max_length": args.max_length},
        "batch": {"batch_size": args.batch_size, "micro_batch_size": args.batch_size, "max_steps": steps},
        "optim": {"lr": args.lr, "warmup_ratio": 0.1, "schedule": "cosine", "max_grad_norm": 1.0},
        "run": {"out_dir": str(work / "tuneloop"), "name": "run", "seed": args.seed}})
    result = train(cfg)
    return {"pairs_per_s": result.summary["units_per_s"], "seconds": result.summary["train_seconds"],
            "pairs": result.summary["units_seen"], "accuracy": result.summary["eval"]["accuracy"]}


def _collator_class():
    from trl.trainer.reward_trainer import DataCollatorForPreference

    class WithSegments(DataCollatorForPreference):
        """TRL's collator plus BERT segment ids, padded the same way (chosen rows, then rejected)."""

        def torch_call(self, examples):
            out = super().torch_call(examples)
            rows = [e["chosen_types"] for e in examples] + [e["rejected_types"] for e in examples]
            types = torch.zeros_like(out["input_ids"])
            for i, row in enumerate(rows):
                types[i, :len(row)] = torch.tensor(row)
            out["token_type_ids"] = types
            return out

    return WithSegments


def run_trl(args, train_rows, work: Path, steps: int):
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from tuneloop.models.loading import resolve_model_name

    source = resolve_model_name(args.model)
    tokenizer = AutoTokenizer.from_pretrained(source)
    columns = {"chosen_ids": [c.input_ids for c, _ in train_rows], "rejected_ids": [r.input_ids for _, r in train_rows]}
    with_types = train_rows[0][0].token_type_ids is not None
    if with_types:
        columns |= {"chosen_types": [c.token_type_ids for c, _ in train_rows],
                    "rejected_types": [r.token_type_ids for _, r in train_rows]}
    torch.manual_seed(args.seed)  # the same head initialisation as tuneloop's
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1, dtype=torch.float32)
    config = RewardConfig(
        output_dir=str(work / "trl"), per_device_train_batch_size=args.batch_size, max_steps=steps,
        learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=int(0.1 * steps), max_grad_norm=1.0, weight_decay=0.0,
        bf16=False, fp16=False, use_cpu=True, seed=args.seed, data_seed=args.seed, dataloader_drop_last=True,
        logging_steps=10, save_strategy="no", eval_strategy="no", report_to=[], disable_dropout=True,
        max_length=args.max_length, remove_unused_columns=False, dataloader_num_workers=0)
    collator = _collator_class()(pad_token_id=tokenizer.pad_token_id) if with_types else None
    trainer = RewardTrainer(model=model, args=config, train_dataset=Dataset.from_dict(columns),
                            processing_class=tokenizer, data_collator=collator)
    metrics = trainer.train().metrics
    pairs = steps * args.batch_size
    return {"pairs_per_s": pairs / metrics["train_runtime"], "seconds": metrics["train_runtime"], "pairs": pairs}, model


def held_out_accuracy(hf_model, rows, kind: str) -> float:
    from tuneloop.metrics.preference import pair_accuracy
    from tuneloop.models.reward import RewardModel, score_encoded

    model = RewardModel(hf_model, kind, hf_model.config.pad_token_id or 0).eval()
    with torch.no_grad():
        scores = score_encoded(model, [row for pair in rows for row in pair])
    return pair_accuracy(scores[0::2] - scores[1::2]).mean().item()


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    same_kernels()
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="reward-vs-trl-"))
    work.mkdir(parents=True, exist_ok=True)
    files, train_rows, eval_rows, kind = prepare(args, work)
    steps = args.max_steps or (len(train_rows) // args.batch_size) * args.epochs
    print(f"[bench] {args.model} ({kind}); {len(train_rows)} train / {len(eval_rows)} held-out pairs (split by "
          f"prompt, seed {args.seed}); {steps} steps of {args.batch_size} pairs; max_length {args.max_length}; "
          f"torch threads {torch.get_num_threads()}; outputs in {work}", flush=True)
    results = {}
    for side in (["trl", "tuneloop"] if args.order == "trl-first" else ["tuneloop", "trl"]):
        t0 = time.time()
        if side == "trl":
            results["trl"], trl_model = run_trl(args, train_rows, work, steps)
            results["trl"]["accuracy"] = held_out_accuracy(trl_model, eval_rows, kind)
            del trl_model
        else:
            results["tuneloop"] = run_tuneloop(args, files, work, steps)
        print(f"[bench] {side} done in {time.time() - t0:.0f}s: {json.dumps(results[side])}", flush=True)
    ours, theirs = results["tuneloop"], results["trl"]
    ratio = ours["pairs_per_s"] / theirs["pairs_per_s"]
    print(f"\n{'':10}{'pairs/s':>10}{'train s':>10}{'held-out acc':>14}")
    for name, r in (("tuneloop", ours), ("TRL", theirs)):
        print(f"{name:10}{r['pairs_per_s']:>10.2f}{r['seconds']:>10.0f}{r['accuracy']:>14.3f}")
    print(f"\nspeed ratio tuneloop/TRL: {ratio:.2f} (goal ≥ 2): {'met' if ratio >= 2 else 'NOT met'}")
    verdict = "met" if ours["accuracy"] >= theirs["accuracy"] else "NOT met"
    print(f"accuracy tuneloop {ours['accuracy']:.3f} vs TRL {theirs['accuracy']:.3f} on {len(eval_rows)} pairs "
          f"(goal ours ≥ TRL's): {verdict}")
    (work / "results.json").write_text(json.dumps({"args": vars(args), "steps": steps, **results,
                                                   "ratio": ratio}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
