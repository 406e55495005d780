"""tuneloop SFT vs TRL's SFTTrainer: tokens/s, their ratio, and model-FLOPs utilisation (MFU), in one run.

Run (from the repository root, with the ``bench`` extra installed: ``pip install -e '.[bench]'``):

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python bench/sft_vs_trl.py     # SmolLM2-135M, ~10 min on 2 idle cores
    HF_HUB_OFFLINE=1 python bench/sft_vs_trl.py --model tiny-llama --steps 5     # smoke run, ~1 min
    python bench/sft_vs_trl.py --threads 1 --steps 8                             # a busy machine: see ``cpu``
    python bench/sft_vs_trl.py --json results.json --variants tuneloop-packed,trl-packed

What runs, one after another in this process, on the same model folder (default: the bundled
SmolLM2-135M-Instruct, full fine-tuning, fp32), the same bundled chatterbot records, the same maximum
length (256), batch (4 sequences per optimizer step, no accumulation), number of steps, learning rate,
cosine schedule without warm-up, gradient clipping 1.0 and seed:

  tuneloop unpacked   the 4 documents of a step concatenated into one row (padding-free; documents
                      cannot attend to each other)
  tuneloop packed     documents packed best-fit into sequences of max_length; 4 sequences per step
  TRL unpacked        SFTTrainer: the 4 documents right-padded to the longest of the batch
  TRL packed          SFTTrainer ``packing=True`` (best-fit decreasing, padding-free)

Both tools train only the answer tokens (TRL: completion-only loss on prompt/completion records; it
also trains the newline after the end-of-turn token, tuneloop does not) and both compute the output
head only at trained positions (tuneloop ``logits_to_keep``, TRL's fused LM head), so they do the same
model work. Unpacked, both draw the same documents at every step (both shuffle with a torch.randperm
seeded by --seed), so their per-step losses can be compared directly. TRL is left at its defaults except: fp32 (``bf16=False``,
``fp16=False``), no evaluation or checkpoints, log every step (to read the loss), and gradient
checkpointing OFF, because TRL turns it on by default and tuneloop does not checkpoint -- recomputing
activations would make TRL slower for a reason unrelated to the loop (``--trl-gradient-checkpointing``
measures TRL's default instead). TRL's entropy and token-accuracy metrics, computed every step, are part
of its default step and are left on.

Timing. Model loading, tokenisation and the first ``--warmup-steps`` optimizer steps are not timed.
  step tokens/s  real (non-padding) tokens of the timed steps ÷ their step time. tuneloop: the
                 ``step_time_s`` it logs (collation, forward, backward, clipping, optimizer step, the
                 loss read-back); TRL: a TrainerCallback from on_step_begin to on_step_end (forward,
                 backward, clipping, optimizer step -- its data loading and logging happen outside that
                 window, which favours TRL). The ratio uses these numbers.
  wall tokens/s  the same tokens ÷ the time from the end of one step to the end of the next, i.e.
                 everything the loop does (data loading, logging, progress bar) -- what a user waits for.
Real tokens are counted the same way for both tools, at the model's forward call: the attention-mask
sum for padded rows, every token of a padding-free row except a tail made only of pad tokens.

Model FLOPs (what MFU counts). PaLM (Chowdhery et al. 2022, appendix B) counts 6N + 12·L·H·Q·T per
token: 2 FLOPs per multiply-accumulate, the backward pass twice the forward. Here, per timed step:
  6 · N_blocks · tokens                    N_blocks = weights of the linear layers inside the transformer
                                           blocks (embeddings, norms and the output head excluded)
  + 6 · d_model · vocab · trained          the output head at the trained positions only (a tool that
                                           computes logits at more positions is not credited for them)
  + 12 · L · d_attn · Σ_docs n(n+1)/2      attention scores and values, causal, per document: a token
                                           attends to its own document only (d_attn = heads × head dim)
Padding, recomputation (gradient checkpointing) and TRL's extra metrics are never credited. The causal
attention term is half of PaLM's 12·L·H·Q·T (which credits the masked half) and is ~1% of the total on
these short documents. ``MFU`` = model FLOPs of the timed steps ÷ their step time ÷ the peak;
``MFU head@all`` credits the output head at EVERY token, as the plain 6·(all parameters) rule does --
work that neither tool performs; it is shown only for comparison with numbers quoted that way.

Peak = best fp32 ``torch.mm`` of two 2048×2048 matrices on the training's threads (--threads, default
all cores), measured at the start and at the end of this run (the higher is used). ``cpu`` = process
CPU seconds ÷ wall seconds during the timed steps; clearly below the thread count means another
process competed for the cores and that row understates the tool (the load average is in the JSON).
Run it on an idle machine.

Columns: tok/s (step), wall (tok/s), s/step, tok/step (real tokens), train% (tokens in the loss),
GFLOP/s (model FLOPs), MFU, MFU head@all, loss over all steps (first, mean, mean of the last 5), cpu,
tok/cpu-s and MFU/cpu (the same per process CPU-second, against the peak's FLOPs per CPU-second: far
less sensitive to other processes than tok/s and MFU, most of all with --threads 1; with more threads,
OpenMP threads that spin while waiting count as busy).
Kernels: both tools run in this process on the same matmul kernels, tuneloop's choice made before either
runs (``sft_measure.same_kernels``): the ratio is tuneloop's own work, not the matmul library's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch
from sft_measure import (  # bench/
    FlopModel,
    ForwardRecorder,
    StepTiming,
    VariantResult,
    matmul_peak_gflops,
    same_kernels,
)

VARIANTS = ("tuneloop-unpacked", "trl-unpacked", "tuneloop-packed", "trl-packed")

# ---------------------------------------------------------------- the two tools


def run_tuneloop(args, packed: bool, out_dir: Path) -> VariantResult:
    from tuneloop.config import load_config
    from tuneloop.models.loading import load_tokenizer
    from tuneloop.train.sft import SFTConfig, train

    cfg = load_config(SFTConfig, overrides={
        "model": {"name": args.model},
        "data": {"train": "bundled:chatterbot", "max_length": args.max_length, "packing": packed,
                 "padding_free": True, "eval_fraction": 0.0},
        "batch": {"batch_size": args.batch_size, "micro_batch_size": args.batch_size,
                  "max_steps": args.warmup_steps + args.steps},
        "optim": {"lr": args.lr, "schedule": "cosine", "warmup_steps": 0, "warmup_ratio": 0.0,
                  "max_grad_norm": 1.0, "weight_decay": 0.0},
        "run": {"out_dir": str(out_dir), "seed": args.seed},
        "log_every": 1, "eval_every": 0, "save_every": 0,
    })
    # Period boundaries: tuneloop calls on_micro_batch after each backward (one micro-batch per step).
    marks: list[tuple[int, float, float]] = []  # (forward calls so far, wall clock, process CPU time)
    load0 = os.getloadavg()[0]
    with ForwardRecorder(load_tokenizer(args.model).pad_token_id) as recorder:
        result = train(cfg, on_micro_batch=lambda step, i: marks.append(
            (len(recorder.calls), time.perf_counter(), time.process_time())))
    rows = [json.loads(line) for line in (Path(result.run_dir) / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("split") == "train"]
    assert len(rows) == len(marks) == cfg.batch.max_steps, (
        f"expected {cfg.batch.max_steps} logged steps and micro-batches, got {len(rows)} and {len(marks)}")
    steps = []
    for k, (row, (n_calls, wall, cpu)) in enumerate(zip(rows, marks)):
        prev_calls, prev_wall, prev_cpu = marks[k - 1] if k else (0, math.nan, math.nan)
        calls = recorder.calls[prev_calls:n_calls]
        assert sum(c.tokens for c in calls) == int(row["tokens"]), (
            f"step {k + 1}: counted {sum(c.tokens for c in calls)} tokens, tuneloop logged {row['tokens']}")
        steps.append(StepTiming(row["step_time_s"], wall - prev_wall, cpu - prev_cpu, calls, int(row["trained_tokens"]),
                                row["loss"]))
    notes = {"tuneloop_tokens_per_s_summary": result.summary.get("tokens_per_s")}
    shutil.rmtree(result.run_dir, ignore_errors=True)
    return VariantResult(f"tuneloop {'packed' if packed else 'unpacked'}", steps, args.warmup_steps,
                         (load0, os.getloadavg()[0]), notes)


def trl_dataset(max_records: int | None = None):
    """The bundled chatterbot records as TRL's conversational prompt/completion format."""
    from datasets import Dataset

    from tuneloop.data import load_records
    from tuneloop.data.formats import sft_messages

    rows = []
    for record in load_records("bundled:chatterbot")[:max_records]:
        messages = sft_messages(record)
        first_answer = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
        rows.append({"prompt": messages[:first_answer], "completion": messages[first_answer:]})
    return Dataset.from_list(rows)


def run_trl(args, packed: bool, folder: str, out_dir: Path) -> VariantResult:
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        PrinterCallback,
        ProgressCallback,
        TrainerCallback,
    )
    from trl import SFTConfig as TRLConfig
    from trl import SFTTrainer

    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
    trl_cfg = TRLConfig(
        output_dir=str(out_dir), max_steps=args.warmup_steps + args.steps,
        per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
        learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        max_length=args.max_length, packing=packed, bf16=False, fp16=False,
        gradient_checkpointing=args.trl_gradient_checkpointing,
        logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
        seed=args.seed, use_cpu=True, dataloader_num_workers=0,
    )
    timings: list[StepTiming] = []
    recorder = ForwardRecorder()

    class StepTimer(TrainerCallback):
        """Times each optimizer step (on_step_begin → on_step_end) and the period between step ends."""

        last_end: tuple[float, float] = (math.nan, math.nan)

        def on_step_begin(self, *_, **__):
            self.begin, self.first_call = time.perf_counter(), len(recorder.calls)

        def on_step_end(self, *_, **__):
            now, cpu = time.perf_counter(), time.process_time()
            calls = recorder.calls[self.first_call:]
            timings.append(StepTiming(now - self.begin, now - self.last_end[0], cpu - self.last_end[1], calls,
                                      sum(c.trained for c in calls)))
            self.last_end = (now, cpu)

    trainer = SFTTrainer(model=model, args=trl_cfg, train_dataset=trl_dataset(), processing_class=tokenizer,
                         callbacks=[StepTimer()])
    for quiet in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(quiet)
    load0 = os.getloadavg()[0]
    with recorder:
        trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == len(timings), f"TRL logged {len(losses)} losses for {len(timings)} steps"
    for timing, loss in zip(timings, losses):
        timing.loss = loss
    notes = {"trl_gradient_checkpointing": args.trl_gradient_checkpointing, "trl_optim": str(trl_cfg.optim)}
    del trainer, model
    return VariantResult(f"TRL {'packed' if packed else 'unpacked'}", timings, args.warmup_steps,
                         (load0, os.getloadavg()[0]), notes)


# ---------------------------------------------------------------- report


def print_report(args, peak: dict, rows: list[dict]) -> None:
    print(f"\nSFT throughput: {args.model}, full fine-tuning, fp32, batch {args.batch_size}, max length "
          f"{args.max_length}, {args.steps} timed steps after {args.warmup_steps} untimed, "
          f"{torch.get_num_threads()} threads")
    print(f"fp32 matmul peak ({peak['n']}×{peak['n']}, {peak['threads']} threads): {peak['gflops']:.1f} GFLOP/s "
          f"(start {peak['start']:.1f}, end {peak['end']:.1f}); {peak['gflops_per_cpu_s']:.1f} GFLOP per CPU-second\n")
    head = (f"{'variant':<19}{'tok/s':>8}{'wall':>8}{'s/step':>8}{'tok/step':>9}{'train%':>7}{'GFLOP/s':>9}"
            f"{'MFU':>7}{'MFU head@all':>14}{'loss 1st':>9}{'mean':>7}{'last5':>7}{'cpu':>6}{'tok/cpu-s':>10}{'MFU/cpu':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['variant']:<19}{r['tokens_per_s']:>8.1f}{r['wall_tokens_per_s']:>8.1f}{r['step_s']:>8.2f}"
              f"{r['tokens_per_step']:>9.0f}{r['trained_fraction']:>7.1%}{r['gflops']:>9.1f}{r['mfu']:>7.1%}"
              f"{r['mfu_head_at_all']:>14.1%}{r['loss_first']:>9.3f}{r['loss_mean']:>7.3f}{r['loss_last5']:>7.3f}"
              f"{r['cpu']:>6.2f}{r['tokens_per_cpu_s']:>10.1f}{r['mfu_per_cpu_s']:>8.1%}")
    by_name = {r["variant"]: r for r in rows}
    print()
    for mode in ("unpacked", "packed"):
        ours, theirs = by_name.get(f"tuneloop {mode}"), by_name.get(f"TRL {mode}")
        if ours and theirs:
            print(f"ratio tuneloop/TRL, {mode:<8}: {ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}× "
                  f"(wall {ours['wall_tokens_per_s'] / theirs['wall_tokens_per_s']:.2f}×, "
                  f"per CPU-second {ours['tokens_per_cpu_s'] / theirs['tokens_per_cpu_s']:.2f}×)")
    ours = [r for r in rows if r["variant"].startswith("tuneloop")]
    theirs = [r for r in rows if r["variant"].startswith("TRL")]
    if ours and theirs:
        best_ours = max(ours, key=lambda r: r["tokens_per_s"])
        best_theirs = max(theirs, key=lambda r: r["tokens_per_s"])
        print(f"ratio best/best          : {best_ours['tokens_per_s'] / best_theirs['tokens_per_s']:.2f}× "
              f"({best_ours['variant']} vs {best_theirs['variant']}); tuneloop MFU {best_ours['mfu']:.1%}")
    if any(r["cpu"] < 0.9 * torch.get_num_threads() for r in rows):
        print(f"warning: a row's cpu use is below {0.9 * torch.get_num_threads():.1f}: other processes competed "
              "for the cores during it, so its numbers understate the tool.")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="tuneloop model name or folder ('tiny-llama' for a smoke run)")
    p.add_argument("--steps", type=int, default=15, help="timed optimizer steps per variant")
    p.add_argument("--warmup-steps", type=int, default=3, help="untimed optimizer steps at the start of each variant")
    p.add_argument("--batch-size", type=int, default=4, help="sequences per optimizer step (documents or packs)")
    p.add_argument("--max-length", type=int, default=256, help="maximum tokens per document and per pack")
    p.add_argument("--lr", type=float, default=2e-5, help="peak learning rate (cosine decay, no warm-up)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="torch threads for both tools and the peak (default: all cores); 1 is less disturbed by "
                        "other processes on a busy machine")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {', '.join(VARIANTS)}")
    p.add_argument("--trl-gradient-checkpointing", action="store_true",
                   help="leave TRL's default gradient checkpointing on (slower; tuneloop does not checkpoint)")
    p.add_argument("--json", metavar="OUT", help="write the results (with per-step numbers) to this file")
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    if args.steps < 1 or args.warmup_steps < 1:
        p.error("--steps and --warmup-steps must be ≥ 1 (the first step is always untimed: its wall period has "
                "no start)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    same_kernels()
    import transformers

    from tuneloop.models.loading import resolve_model_name

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        import datasets
        import trl  # noqa: F401
    except ImportError as err:
        print(f"error: {err.name} is not installed; install the bench extra: pip install -e '.[bench]'",
              file=sys.stderr)
        return 2
    datasets.disable_progress_bars()
    folder = resolve_model_name(args.model)  # converts the bundled GGUF once (untimed)
    flop_model = FlopModel.from_folder(folder)
    start_peak = matmul_peak_gflops()
    print(f"[bench] peak {start_peak['gflops']:.1f} GFLOP/s; model {folder}: N_blocks {flop_model.block_params / 1e6:.1f}M,"
          f" head {flop_model.d_model}×{flop_model.vocab}; variants {', '.join(args.variants)}", flush=True)
    results: list[VariantResult] = []
    scratch = Path(tempfile.mkdtemp(prefix="sft-vs-trl-"))
    try:
        for name in args.variants:
            tool, mode = name.split("-")
            t0 = time.time()
            out = scratch / name
            out.mkdir()
            if tool == "tuneloop":
                results.append(run_tuneloop(args, mode == "packed", out))
            else:
                results.append(run_trl(args, mode == "packed", folder, out))
            print(f"[bench] {name} done in {time.time() - t0:.0f} s", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    end_peak = matmul_peak_gflops()
    peak = {**start_peak, "gflops": max(start_peak["gflops"], end_peak["gflops"]), "start": start_peak["gflops"],
            "gflops_per_cpu_s": max(start_peak["gflops_per_cpu_s"], end_peak["gflops_per_cpu_s"]),
            "end": end_peak["gflops"], "start_detail": start_peak, "end_detail": end_peak}
    rows = [r.summary(flop_model, peak["gflops"], peak["gflops_per_cpu_s"]) for r in results]
    print_report(args, peak, rows)
    if args.json:
        payload = {"args": vars(args), "peak": peak, "flop_model": asdict(flop_model), "results": rows,
                   "torch": torch.__version__, "per_step": {r.name: [
                       {"step_s": s.step_s, "wall_s": s.wall_s, "cpu_s": s.cpu_s, "loss": s.loss,
                        "tokens": sum(c.tokens for c in s.calls), "trained": s.trained,
                        "logits_computed": sum(c.head_positions for c in s.calls),
                        "documents": sum(len(c.doc_lengths) for c in s.calls)} for s in r.steps] for r in results}}
        Path(args.json).write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"[bench] wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
