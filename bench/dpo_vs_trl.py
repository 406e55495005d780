"""tuneloop DPO vs TRL's DPOTrainer: pairs/s, their ratio, and the two losses on one batch, in one run.

Run (from the repository root, with the ``bench`` extra installed: ``pip install -e '.[bench]'``):

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python bench/dpo_vs_trl.py       # SmolLM2-135M + LoRA, 30+ min
    HF_HUB_OFFLINE=1 python bench/dpo_vs_trl.py --model tiny-llama --steps 3    # smoke run, ~1 min
    python bench/dpo_vs_trl.py --json results.json

Same for both tools: the model (default the bundled SmolLM2-135M-Instruct in fp32 with LoRA r=16,
α=32 on every linear layer), the preference pairs (the first ``--batch × --steps`` HH-RLHF harmless
pairs of ../shared/data: one epoch, each tool in its own shuffled order), the token ids (tokenised
once by tuneloop -- prompt through the chat template's generation prompt, each reply its text and
end-of-turn marker -- and handed to TRL as
``prompt_ids``/``chosen_ids``/``rejected_ids``, bypassing TRL's own tokenisation), the lengths
(``--max-length``, ``--max-prompt-length``), the batch (``--batch`` pairs per optimizer step, no
accumulation), β, learning rate, cosine schedule, warm-up, gradient clipping 1.0 and seed. The reference
is the model as loaded (LoRA: the base, adapters off). TRL runs with its defaults except: fp32
(``bf16=False``), gradient checkpointing off (TRL turns it on by default; tuneloop does not checkpoint),
no evaluation or saving, logging every step.

1. Loss agreement. Both tools get identical LoRA weights, perturbed away from zero (seeded) so the
   policy differs from the reference and the loss is not trivially log 2; on the first batch, TRL's
   ``compute_loss`` (its reference: the adapter-disabled base) and tuneloop's loss (its reference
   log-probs computed by the cache code with the adapters disabled) must agree to 1e-5.
2. Speed. Each tool trains ``--steps`` steps from a fresh model; the first ``--warmup-steps`` are not
   timed. tuneloop: its logged ``step_time_s`` (collation, forward, backward, clip, optimizer step),
   plus its reference precomputation spread over the pairs it covers ("with reference"); TRL: a
   callback from on_step_begin to on_step_end (its data loading and logging fall outside, which favours
   TRL), with its reference forward pass inside every step as it does by default. The ratio uses the
   "with reference" number. CPU seconds per pair are also shown: on a shared machine another process
   stealing cores inflates wall time, and ``cpu/wall`` below the thread count says it happened.
Kernels: both tools run in this process on the same matmul kernels, tuneloop's choice made before either
runs (``sft_measure.same_kernels``): the ratio is tuneloop's own work, not the matmul library's.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from sft_measure import same_kernels  # noqa: E402  (bench/)

HH_PAIRS = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless" / "pairs.jsonl"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--data", default=str(HH_PAIRS))
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup-steps", type=int, default=1, help="optimizer steps not timed")
    p.add_argument("--batch", type=int, default=8, help="pairs per optimizer step")
    p.add_argument("--max-length", type=int, default=192)
    p.add_argument("--max-prompt-length", type=int, default=128)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--skip", choices=["none", "tuneloop", "trl", "speed"], default="none")
    p.add_argument("--trl-first", action="store_true", help="time TRL before tuneloop (check for order bias)")
    p.add_argument("--json", default=None, help="write the results here")
    return p.parse_args(argv)


# --- shared data: tokenised once, by tuneloop ----------------------------------------------------

def load_pairs(args, tokenizer):
    """The first ``args.pairs`` pairs as tuneloop's TokenPairs, and the same token ids for TRL."""
    from datasets import Dataset

    from tuneloop.data import load_records
    from tuneloop.data.preferences import preference_pairs
    from tuneloop.train.dpo_data import DataStats, Limits, tokenize_pairs

    pairs = preference_pairs(load_records(args.data)[:args.batch * args.steps])
    limits = Limits(args.max_length, args.max_prompt_length, "truncate")
    units = tokenize_pairs(pairs, tokenizer, limits, DataStats())
    for u in units:  # TRL's collator counts every completion token; HH replies are single turns
        assert all(u.chosen.response_mask + u.rejected.response_mask), f"multi-turn reply at {u.source}"
        assert u.chosen.prompt_ids == u.rejected.prompt_ids
    rows = [{"prompt_ids": u.chosen.prompt_ids, "chosen_ids": u.chosen.response_ids,
             "rejected_ids": u.rejected.response_ids} for u in units]
    return units, Dataset.from_list(rows)


# --- TRL --------------------------------------------------------------------------------------

def trl_trainer(args, model, tokenizer, dataset, steps: int, callbacks=()):
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    class PreTokenizedDPOTrainer(DPOTrainer):
        """TRL's trainer fed tuneloop's token ids: its own tokenisation is skipped, nothing else."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    config = DPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-dpo-"), per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1, max_steps=steps, learning_rate=args.lr, lr_scheduler_type="cosine",
        warmup_steps=args.warmup_steps, max_grad_norm=1.0, beta=args.beta, loss_type=["sigmoid"],
        max_length=args.max_length, bf16=False, fp16=False, gradient_checkpointing=False, logging_steps=1,
        save_strategy="no", eval_strategy="no", report_to="none", seed=args.seed, dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(), disable_tqdm=True)
    peft = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    return PreTokenizedDPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                                  peft_config=peft, callbacks=list(callbacks))


class StepTimer:
    """TrainerCallback: wall and CPU time from on_step_begin to on_step_end of every optimizer step."""

    def __init__(self):
        self.wall, self.cpu = [], []

    def as_callback(self):
        from transformers import TrainerCallback

        timer = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timer._t = (time.perf_counter(), time.process_time())

            def on_step_end(self, args, state, control, **kwargs):
                wall, cpu = timer._t
                timer.wall.append(time.perf_counter() - wall)
                timer.cpu.append(time.process_time() - cpu)

        return _Callback()


# --- 1. the two losses on one batch -----------------------------------------------------------------

def loss_agreement(args, units, dataset) -> dict:
    from tuneloop.losses.dpo import DPOLoss, DPOParams
    from tuneloop.models import LoraConfig, ModelConfig, load_causal_lm
    from tuneloop.models.logprobs import supports_logits_to_keep
    from tuneloop.train.dpo import batch_loss_sum
    from tuneloop.train.dpo_data import collate, graded_sequences
    from tuneloop.train.dpo_reference import score_units

    base, tokenizer = load_causal_lm(ModelConfig(name=args.model), trainable=False)
    trainer = trl_trainer(args, copy.deepcopy(base).requires_grad_(True), tokenizer, dataset, steps=1)
    generator = torch.Generator().manual_seed(args.seed)
    perturbed = {}
    with torch.no_grad():  # LoRA B starts at 0 (policy = reference, loss log 2); move it, the same for both
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.02 * torch.randn(param.shape, generator=generator))
            if "lora_" in name:
                perturbed[name] = param.detach().clone()
    first = list(range(args.batch))
    trainer.model.train()
    inputs = trainer._prepare_inputs(trainer.data_collator([dataset[i] for i in first]))
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, inputs).item()

    ours, _ = load_causal_lm(ModelConfig(name=args.model, lora=LoraConfig(enabled=True, r=args.lora_r,
                                                                          alpha=2 * args.lora_r)))
    params = dict(ours.named_parameters())
    missing = sorted(set(perturbed) - set(params))
    assert not missing, f"LoRA parameter names differ between TRL and tuneloop: {missing[:3]}"
    with torch.no_grad():
        for name, value in perturbed.items():
            params[name].copy_(value)
        with ours.disable_adapter():  # the cache code, scoring with the adapters off: the reference
            reference = score_units(ours, [(units[i].chosen, units[i].rejected) for i in first],
                                    layout="shared_prompt", pad_id=tokenizer.pad_token_id,
                                    token_budget=1 << 30, device="cpu").reshape(-1)
        ours.train()
        sequences = [s for i in first for s in graded_sequences(units[i])]
        batch = collate(sequences, paired=True, layout="shared_prompt", pad_id=tokenizer.pad_token_id,
                        reference_logps=reference)
        loss_sum, _ = batch_loss_sum(ours, batch, DPOLoss.DPO, DPOParams(beta=args.beta),
                                     supports_logits_to_keep(ours))
    tuneloop_loss = loss_sum.item() / len(first)
    return {"trl": trl_loss, "tuneloop": tuneloop_loss, "abs_diff": abs(trl_loss - tuneloop_loss),
            "log2": math.log(2), "pairs": len(first)}


# --- 2. speed -------------------------------------------------------------------------------------

def run_trl(args, dataset) -> dict:
    from tuneloop.models import ModelConfig, load_causal_lm

    model, tokenizer = load_causal_lm(ModelConfig(name=args.model), trainable=False)
    model.requires_grad_(True)
    timer = StepTimer()
    trainer = trl_trainer(args, model, tokenizer, dataset, steps=args.steps, callbacks=[timer.as_callback()])
    t0 = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - t0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    timed = slice(args.warmup_steps, None)
    wall, cpu = sum(timer.wall[timed]), sum(timer.cpu[timed])
    pairs = args.batch * len(timer.wall[timed])
    return {"pairs_per_s": pairs / wall, "cpu_s_per_pair": cpu / pairs,
            "cpu_per_wall": cpu / wall, "timed_steps": len(timer.wall[timed]), "step_wall_s": timer.wall,
            "train_wall_s": total, "losses": losses}


def run_tuneloop(args, folder: Path) -> dict:
    from tuneloop.config import load_config
    from tuneloop.train.dpo import DPOConfig, train

    subset = folder / "pairs.jsonl"
    with open(args.data, encoding="utf-8") as src:
        lines = [line for _, line in zip(range(args.batch * args.steps), src)]
    subset.write_text("".join(lines), encoding="utf-8")
    cfg = load_config(DPOConfig, overrides={
        "model": {"name": args.model, "lora": {"enabled": True, "r": args.lora_r, "alpha": 2 * args.lora_r}},
        "data": {"train": str(subset), "eval_fraction": 0.0, "max_length": args.max_length,
                 "max_prompt_length": args.max_prompt_length},
        "loss_params": {"beta": args.beta},
        "batch": {"batch_size": args.batch, "micro_batch_size": args.batch, "max_steps": args.steps},
        "optim": {"lr": args.lr, "warmup_steps": args.warmup_steps, "schedule": "cosine",
                  "max_grad_norm": 1.0},
        "run": {"out_dir": str(folder / "runs"), "seed": args.seed}})
    marks = []  # (wall, cpu) after each step's backward pass: one micro-batch per step, so consecutive
    #             marks are one whole step apart (optimizer step, logging, collation, forward, backward)
    def mark(_step: int, _micro: int) -> None:
        marks.append((time.perf_counter(), time.process_time()))

    result = train(cfg, on_micro_batch=mark)
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["split"] == "train"]
    timed = steps[args.warmup_steps:]
    wall = sum(r["step_time_s"] for r in timed)
    pairs = sum(r["units"] for r in timed)
    between = marks[args.warmup_steps - 1:] if args.warmup_steps else marks
    cpu = between[-1][1] - between[0][1]
    cpu_wall = between[-1][0] - between[0][0]
    reference_s = result.summary["reference"]["seconds"]
    covered = args.batch * args.steps  # the reference was computed for every pair the steps visit
    with_reference = pairs / (wall + reference_s * pairs / covered)
    return {"pairs_per_s": pairs / wall, "pairs_per_s_with_reference": with_reference,
            "reference_s": reference_s, "timed_steps": len(timed),
            "step_wall_s": [r["step_time_s"] for r in steps],
            "cpu_s_per_pair": cpu / (len(between) - 1) / args.batch, "cpu_per_wall": cpu / cpu_wall,
            "cpu_s_per_pair_with_reference": (cpu + reference_s * (cpu / cpu_wall) * pairs / covered) / pairs,
            "losses": [r["loss"] for r in steps], "run_dir": str(result.run_dir)}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    same_kernels()
    from tuneloop.models.loading import load_tokenizer

    tokenizer = load_tokenizer(args.model)
    units, dataset = load_pairs(args, tokenizer)
    assert len(units) == args.batch * args.steps, f"{len(units)} pairs ≠ {args.batch} × {args.steps} steps"
    results = {"args": vars(args), "threads": torch.get_num_threads(), "load_avg_start": os.getloadavg()}
    t = time.perf_counter()
    results["loss_agreement"] = loss_agreement(args, units, dataset)
    la = results["loss_agreement"]
    print(f"first batch ({la['pairs']} pairs): TRL loss {la['trl']:.7f}, tuneloop loss {la['tuneloop']:.7f}, "
          f"|diff| {la['abs_diff']:.2e} (log 2 = {la['log2']:.7f}) [{time.perf_counter() - t:.0f} s]",
          flush=True)
    if args.skip != "speed":
        with tempfile.TemporaryDirectory(prefix="dpo-bench-") as tmp:
            for tool in (("trl", "tuneloop") if args.trl_first else ("tuneloop", "trl")):
                if args.skip == tool:
                    continue
                r = results[tool] = run_tuneloop(args, Path(tmp)) if tool == "tuneloop" else \
                    run_trl(args, dataset)
                with_reference = (f", {r['pairs_per_s_with_reference']:.3f} with the reference precomputation"
                                  if tool == "tuneloop" else " (reference forward inside each step)")
                print(f"{tool}: {r['pairs_per_s']:.3f} pairs/s in steps{with_reference}, "
                      f"{r['cpu_s_per_pair']:.2f} CPU s per pair, cpu/wall {r['cpu_per_wall']:.2f}",
                      flush=True)
    if "tuneloop" in results and "trl" in results:
        ours, theirs = results["tuneloop"], results["trl"]
        results["ratio"] = ours["pairs_per_s_with_reference"] / theirs["pairs_per_s"]
        results["ratio_steps_only"] = ours["pairs_per_s"] / theirs["pairs_per_s"]
        results["ratio_cpu"] = theirs["cpu_s_per_pair"] / ours["cpu_s_per_pair_with_reference"]
        print(f"ratio tuneloop / TRL: {results['ratio']:.2f}× in wall time (steps only "
              f"{results['ratio_steps_only']:.2f}×); {results['ratio_cpu']:.2f}× in CPU seconds per pair "
              f"(cpu/wall: tuneloop {ours['cpu_per_wall']:.2f}, TRL {theirs['cpu_per_wall']:.2f}, "
              f"threads {results['threads']})")
    results["load_avg_end"] = os.getloadavg()
    ok = la["abs_diff"] <= 1e-5 and abs(la["trl"] - la["log2"]) > 1e-3
    print(f"losses agree to 1e-5 on a non-trivial batch: {'yes' if ok else 'NO'}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
