"""Supervised fine-tuning: train a causal LM on instruction → response data, loss on answers only.

Run: ``tuneloop sft --config sft.yaml [--optim.lr 1e-5 ...] [--resume [RUN_DIR]]``
or   ``from tuneloop.train.sft import SFTConfig, train; train(SFTConfig())``.

The loop, per optimizer step:
  1. take this process's micro-batches of the step (a pure function of seed and step)
  2. count the trained tokens of the whole step over all processes
  3. forward/backward each micro-batch, its summed loss divided by that global count
  4. clip, step the optimizer and the schedule
  5. log; evaluate and checkpoint on schedule
Logits are computed only at trained positions (``logits_to_keep``): the output head and the softmax
over the vocabulary are the most expensive part of a small model, and prompt positions need neither.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from tuneloop.atomic import atomic_dir
from tuneloop.batches import SFTBatch
from tuneloop.data import load_records
from tuneloop.data.chat import Tokenized
from tuneloop.data.packing import collate_padded, collate_padding_free, pack_best_fit
from tuneloop.data.sft import TokenStats, tokenize_sft
from tuneloop.losses.sft import masked_nll_sum
from tuneloop.models import ModelConfig, load_causal_lm
from tuneloop.models.attention import document_bounds, uses_document_attention
from tuneloop.models.loading import load_tokenizer, save_model
from tuneloop.models.logprobs import supports_logits_to_keep
from tuneloop.runs import RunConfig, RunDir
from tuneloop.tracking import Tracker
from tuneloop.train.accumulate import accumulate_gradients, optimizer_step
from tuneloop.train.batch_plan import BatchConfig, BatchPlan, make_batch_plan, step_micro_batches
from tuneloop.train.optim import OptimConfig
from tuneloop.train.session import (
    checkpoint,
    open_run_dir,
    prepare_optimisation,
    resume_if_any,
    start_accelerator,
)


@dataclass
class SFTDataConfig:
    train: str = "bundled:chatterbot"
    """Training data: a JSONL/Parquet/CSV file, a saved HF dataset folder, or bundled:<name>."""
    eval: str | None = None
    """Held-out data in the same forms; when null, eval_fraction of the training data is held out."""
    eval_fraction: float = 0.05
    """Fraction of the training data held out for evaluation when no eval file is given (0 disables)."""
    max_length: int = 512
    """Maximum tokens per document (and per pack when packing)."""
    too_long: Literal["truncate", "drop"] = "truncate"
    """What to do with a longer document: cut its end, or leave it out."""
    packing: bool = False
    """Pack documents into sequences of max_length tokens (best-fit decreasing); batch_size then counts packs."""
    padding_free: bool = True
    """Feed each micro-batch as one row without padding (per-document positions, no cross-attention)."""


@dataclass
class SFTConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model to fine-tune."""
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    """Training and evaluation data."""
    batch: BatchConfig = field(default_factory=BatchConfig)
    """Batch sizes and training length."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and learning-rate schedule."""
    run: RunConfig = field(default_factory=RunConfig)
    """Run folder and seed."""
    log_every: int = 1
    """Log training metrics every N optimizer steps."""
    eval_every: int = 0
    """Evaluate every N optimizer steps (0: only at the end)."""
    save_every: int = 0
    """Write a resumable checkpoint every N optimizer steps (0: never)."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep."""
    wandb: bool = False
    """Also log to Weights & Biases (needs the wandb extra)."""


@dataclass
class SFTResult:
    run_dir: Path
    model_dir: Path
    summary: dict


@dataclass
class _Data:
    train_docs: list[Tokenized]
    eval_docs: list[Tokenized]
    units: list[list[int]]  # each training sequence: the indices of the documents it holds
    stats: TokenStats


def prepare_data(cfg: SFTConfig, tokenizer) -> _Data:
    """Load, validate and tokenise; raises DataError before anything is written."""
    d = cfg.data
    docs, stats = tokenize_sft(load_records(d.train), tokenizer, d.max_length, d.too_long)
    if d.eval:
        eval_docs, _ = tokenize_sft(load_records(d.eval), tokenizer, d.max_length, d.too_long)
        train_docs = docs
    else:
        order = torch.randperm(len(docs), generator=torch.Generator().manual_seed(cfg.run.seed)).tolist()
        n_eval = int(round(d.eval_fraction * len(docs)))
        eval_docs = [docs[i] for i in order[:n_eval]]
        train_docs = [docs[i] for i in sorted(order[n_eval:])]
    if d.packing:
        units = pack_best_fit([len(doc) for doc in train_docs], d.max_length)
    else:
        units = [[i] for i in range(len(train_docs))]
    return _Data(train_docs, eval_docs, units, stats)


def collate(docs: list[Tokenized], cfg: SFTDataConfig, pad_id: int) -> SFTBatch:
    return collate_padding_free(docs) if cfg.padding_free or cfg.packing else collate_padded(docs, pad_id)


def batch_loss_sum(model, batch: SFTBatch, keep_trained_only: bool) -> tuple[torch.Tensor, dict]:
    """Summed masked NLL of a micro-batch (logits only where trained when the model allows it)."""
    kwargs = {}
    targets, mask = batch.targets, batch.loss_mask
    if keep_trained_only:
        keep = batch.loss_mask.any(dim=0).nonzero().squeeze(-1)  # (N,) positions trained in any row
        kwargs["logits_to_keep"] = keep
        targets, mask = targets[:, keep], mask[:, keep]
    # use_cache=False matters: transformers only builds the per-document (block-diagonal) mask from
    # restarting position ids when no KV cache is passed.
    if batch.attention_mask is None and uses_document_attention(model):
        kwargs["document_bounds"] = document_bounds(batch.position_ids)  # one causal SDPA call per document
    out = model(input_ids=batch.input_ids, position_ids=batch.position_ids, attention_mask=batch.attention_mask,
                use_cache=False, **kwargs)
    loss_sum, metrics = masked_nll_sum(out.logits, targets, mask)
    return loss_sum, {**metrics, "tokens": batch.tokens}


@torch.no_grad()
def evaluate(model, docs: list[Tokenized], cfg: SFTConfig, pad_id: int, keep: bool) -> dict[str, float]:
    if not docs:
        return {}
    was_training = model.training
    model.eval()
    total, count = 0.0, 0.0
    size = cfg.batch.micro_batch_size
    for i in range(0, len(docs), size):
        loss_sum, m = batch_loss_sum(model, collate(docs[i:i + size], cfg.data, pad_id), keep)
        total += loss_sum.item()
        count += m["trained_tokens"]
    model.train(was_training)
    return {"loss": total / count, "trained_tokens": count}


@dataclass
class _Session:
    """Everything a run holds while it trains."""

    accelerator: object
    model: torch.nn.Module
    tokenizer: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    data: _Data
    plan: BatchPlan
    run: RunDir
    keep_trained_only: bool
    start_step: int
    tokens_seen: int


def _setup(cfg: SFTConfig, resume_dir: str | Path | None) -> _Session:
    accelerator = start_accelerator(cfg.run.seed)
    # Data first: a bad file fails here, before any run folder exists.
    tokenizer = load_tokenizer(cfg.model.name)
    data = prepare_data(cfg, tokenizer)
    plan = make_batch_plan(cfg.batch, len(data.units), accelerator.num_processes)
    model, tokenizer = load_causal_lm(cfg.model)
    model.train()
    keep = supports_logits_to_keep(model)
    model, optimizer, scheduler = prepare_optimisation(model, cfg.optim, plan.total_steps, accelerator)
    run = open_run_dir(cfg.run, "sft", accelerator, resume_dir)
    state = resume_if_any(run, model, optimizer, scheduler, accelerator) if resume_dir is not None else None
    if accelerator.is_main_process:
        run.write_config(cfg)
        print(f"[tuneloop] sft: {len(data.train_docs)} train / {len(data.eval_docs)} eval documents, "
              f"{len(data.units)} sequences, {plan.total_steps} steps of {plan.batch_size} "
              f"({plan.accumulation_steps} × {plan.micro_batch_size} × {accelerator.num_processes} processes); "
              f"{data.stats.trained_fraction:.1%} of tokens are trained; run folder {run.path}")
    return _Session(accelerator, model, tokenizer, optimizer, scheduler, data, plan, run, keep,
                    state["step"] if state else 0, state["tokens_seen"] if state else 0)


def train(cfg: SFTConfig, resume_dir: str | Path | None = None,
          on_micro_batch: Callable[[int, int], None] | None = None) -> SFTResult:
    """Fine-tune, write the run folder, return where the model is.

    ``resume_dir``: continue that run from its newest complete checkpoint.
    ``on_micro_batch(step, micro_index)`` is called after every backward pass (tests use it to stop a
    run at a chosen point).
    """
    s = _setup(cfg, resume_dir)
    acc, plan, data = s.accelerator, s.plan, s.data
    tracker = Tracker(s.run.path, plan.total_steps, s.start_step, enabled=acc.is_main_process, description="sft",
                      use_wandb=cfg.wandb)
    pad_id = s.tokenizer.pad_token_id
    t_start, tokens_at_start, tokens_seen = time.time(), s.tokens_seen, s.tokens_seen

    def loss_sum_fn(model, batch):
        return batch_loss_sum(model, batch.to(acc.device), s.keep_trained_only)

    for step in range(s.start_step, plan.total_steps):
        t_step = time.time()
        # 1. this process's micro-batches of the step (a pure function of seed and step)
        micro = [collate([data.train_docs[d] for u in idx for d in data.units[u]], cfg.data, pad_id)
                 for idx in step_micro_batches(plan, step, cfg.run.seed, len(data.units), acc.process_index)]
        # 2-3. forward/backward, each summed loss divided by the step's global count of trained tokens
        hook = (lambda i, step=step: on_micro_batch(step, i)) if on_micro_batch else None
        totals = accumulate_gradients(s.model, micro, loss_sum_fn, lambda b: b.trained_tokens, acc, hook)
        # 4. clip, optimizer, schedule
        grad_norm, lr = optimizer_step(s.model, s.optimizer, s.scheduler, acc, cfg.optim.max_grad_norm)
        # 5. log, evaluate, checkpoint
        done = step + 1
        tokens_seen += int(totals.metrics["tokens"])
        tokens_per_s = (tokens_seen - tokens_at_start) / max(time.time() - t_start, 1e-9)
        if done % cfg.log_every == 0 or done == plan.total_steps:
            tracker.log(done, {"loss": totals.loss, "lr": lr, "grad_norm": grad_norm, "tokens": totals.metrics["tokens"],
                               "trained_tokens": totals.count,
                               "trained_fraction": totals.count / totals.metrics["tokens"],
                               "tokens_per_s": tokens_per_s, "step_time_s": time.time() - t_step,
                               "epoch": step / plan.steps_per_epoch})
        tracker.progress(1, loss=totals.loss, tok_s=round(tokens_per_s, 1))
        if cfg.eval_every and done % cfg.eval_every == 0 and done != plan.total_steps and acc.is_main_process:
            tracker.log(done, evaluate(acc.unwrap_model(s.model), data.eval_docs, cfg, pad_id, s.keep_trained_only),
                        "eval")
        if cfg.save_every and done % cfg.save_every == 0:
            checkpoint(s.run, done, s.model, s.optimizer, s.scheduler, acc, {"tokens_seen": tokens_seen},
                       cfg.keep_checkpoints)
    summary = _finish(cfg, s, tracker, tokens_seen, (tokens_seen - tokens_at_start) / max(time.time() - t_start, 1e-9))
    return SFTResult(s.run.path, s.run.model, summary)


def _finish(cfg: SFTConfig, s: _Session, tracker: Tracker, tokens_seen: int, tokens_per_s: float) -> dict:
    """Final evaluation, the model folder (written atomically) and summary.json."""
    summary: dict = {}
    if s.accelerator.is_main_process:
        final = s.accelerator.unwrap_model(s.model)
        eval_metrics = evaluate(final, s.data.eval_docs, cfg, s.tokenizer.pad_token_id, s.keep_trained_only)
        tracker.log(s.plan.total_steps, eval_metrics, "eval")
        with atomic_dir(s.run.model, replace=True) as tmp:
            save_model(final, s.tokenizer, tmp, cfg.model.lora)
        summary = {"stage": "sft", "steps": s.plan.total_steps, "tokens_seen": tokens_seen,
                   "tokens_per_s": tokens_per_s, "eval": eval_metrics, "data": s.data.stats.summary(),
                   "model_dir": str(s.run.model)}
        s.run.write_summary(summary)
    tracker.close()
    s.accelerator.wait_for_everyone()
    return summary
