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

import inspect
from contextlib import nullcontext
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from tuneloop.batches import SFTBatch
from tuneloop.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from tuneloop.data import load_records
from tuneloop.data.chat import Tokenized
from tuneloop.data.packing import collate_padded, collate_padding_free, pack_best_fit
from tuneloop.data.sft import TokenStats, tokenize_sft
from tuneloop.losses.reductions import token_normalised
from tuneloop.losses.sft import masked_nll_sum
from tuneloop.models import ModelConfig, load_causal_lm
from tuneloop.models.loading import load_tokenizer, save_model
from tuneloop.runs import RunConfig, RunDir, new_run_dir
from tuneloop.tracking import Tracker
from tuneloop.train.batch_plan import BatchConfig, BatchPlan, make_batch_plan, step_micro_batches
from tuneloop.train.optim import OptimConfig, build_optimizer, build_scheduler
from tuneloop.atomic import atomic_dir


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


def _supports_logits_to_keep(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base = getattr(base, "module", base)
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def batch_loss_sum(model, batch: SFTBatch, keep_trained_only: bool) -> tuple[torch.Tensor, dict]:
    """Summed masked NLL of a micro-batch (logits only where trained when the model allows it)."""
    kwargs = {}
    targets, mask = batch.targets, batch.loss_mask
    if keep_trained_only:
        keep = batch.loss_mask.any(dim=0).nonzero().squeeze(-1)  # (N,) positions trained in any row
        kwargs["logits_to_keep"] = keep
        targets, mask = targets[:, keep], mask[:, keep]
    out = model(input_ids=batch.input_ids, position_ids=batch.position_ids, attention_mask=batch.attention_mask,
                use_cache=False, **kwargs)
    return masked_nll_sum(out.logits, targets, mask)


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


def train(cfg: SFTConfig, resume_dir: str | Path | None = None,
          on_micro_batch: Callable[[int, int], None] | None = None) -> SFTResult:
    """Fine-tune, write the run folder, return where the model is.

    ``resume_dir``: continue that run from its newest complete checkpoint.
    ``on_micro_batch(step, micro_index)`` is called after every backward pass (tests use it to stop a
    run at a chosen point).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    rank, world, is_main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    set_seed(cfg.run.seed)

    # Data first: a bad file fails here, before any run folder exists.
    tokenizer = load_tokenizer(cfg.model.name)
    data = prepare_data(cfg, tokenizer)
    plan: BatchPlan = make_batch_plan(cfg.batch, len(data.units), world)

    model, tokenizer = load_causal_lm(cfg.model)
    model.train()
    keep = _supports_logits_to_keep(model)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, plan.total_steps, cfg.optim)
    model, optimizer = accelerator.prepare(model, optimizer)

    run = RunDir(Path(resume_dir)) if resume_dir is not None else _shared_run_dir(cfg.run, accelerator)
    start_step, tokens_seen = 0, 0
    if resume_dir is not None and (checkpoints := list_checkpoints(run.checkpoints)):
        state = load_checkpoint(checkpoints[-1], accelerator.unwrap_model(model), optimizer, scheduler, rank, world)
        start_step, tokens_seen = state["step"], state["tokens_seen"]
        if is_main:
            print(f"[tuneloop] resuming {run.path} from {checkpoints[-1].name}")
    if is_main:
        run.write_config(cfg)
        print(f"[tuneloop] sft: {len(data.train_docs)} train / {len(data.eval_docs)} eval documents, "
              f"{len(data.units)} sequences, {plan.total_steps} steps of {plan.batch_size} "
              f"({plan.accumulation_steps} × {plan.micro_batch_size} × {world} processes); "
              f"{data.stats.trained_fraction:.1%} of tokens are trained; run folder {run.path}")
    tracker = Tracker(run.path, plan.total_steps, start_step, enabled=is_main,
                      description="sft", use_wandb=cfg.wandb)
    pad_id = tokenizer.pad_token_id
    t_start, tokens_at_start = time.time(), tokens_seen

    for step in range(start_step, plan.total_steps):
        t_step = time.time()
        # 1. this process's micro-batches of the step
        micro = [collate([data.train_docs[d] for u in idx for d in data.units[u]], cfg.data, pad_id)
                 for idx in step_micro_batches(plan, step, cfg.run.seed, len(data.units), rank)]
        # 2. trained tokens in the whole step, all processes
        counts = torch.tensor([sum(b.trained_tokens for b in micro), sum(b.tokens for b in micro)], dtype=torch.float64,
                              device=accelerator.device)
        global_trained, global_tokens = accelerator.reduce(counts, reduction="sum").tolist()
        # 3. forward/backward, each summed loss normalised by the global count
        loss_total = torch.zeros((), device=accelerator.device)
        for i, batch in enumerate(micro):
            is_last = i == len(micro) - 1
            with accelerator.no_sync(model) if not is_last else nullcontext():
                loss_sum, _ = batch_loss_sum(model, batch.to(accelerator.device), keep)
                accelerator.backward(token_normalised(loss_sum, global_trained, world))
            loss_total += loss_sum.detach()
            if on_micro_batch is not None:
                on_micro_batch(step, i)
        # 4. clip, optimizer and schedule
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm) \
            if cfg.optim.max_grad_norm else _grad_norm(model)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        tokens_seen += int(global_tokens)
        # 5. log, evaluate, checkpoint
        done = step + 1
        step_loss = accelerator.reduce(loss_total, reduction="sum").item() / global_trained
        elapsed = time.time() - t_start
        tokens_per_s = (tokens_seen - tokens_at_start) / max(elapsed, 1e-9)
        if done % cfg.log_every == 0 or done == plan.total_steps:
            tracker.log(done, {"loss": step_loss, "lr": lr, "grad_norm": float(grad_norm), "tokens": global_tokens,
                               "trained_tokens": global_trained, "trained_fraction": global_trained / global_tokens,
                               "tokens_per_s": tokens_per_s, "step_time_s": time.time() - t_step,
                               "epoch": step / plan.steps_per_epoch})
        tracker.progress(1, loss=step_loss, tok_s=round(tokens_per_s, 1))
        if cfg.eval_every and done % cfg.eval_every == 0 and done != plan.total_steps and is_main:
            tracker.log(done, evaluate(accelerator.unwrap_model(model), data.eval_docs, cfg, pad_id, keep), "eval")
        if cfg.save_every and done % cfg.save_every == 0:
            save_checkpoint(run.checkpoints, done,
                            accelerator.unwrap_model(model), optimizer, scheduler, {"tokens_seen": tokens_seen},
                            rank, world, cfg.keep_checkpoints, accelerator.wait_for_everyone)

    final = accelerator.unwrap_model(model)
    summary = {}
    if is_main:
        eval_metrics = evaluate(final, data.eval_docs, cfg, pad_id, keep)
        tracker.log(plan.total_steps, eval_metrics, "eval")
        with atomic_dir(run.model, replace=True) as tmp:
            save_model(final, tokenizer, tmp, cfg.model.lora)
        summary = {"stage": "sft", "steps": plan.total_steps, "tokens_seen": tokens_seen,
                   "tokens_per_s": (tokens_seen - tokens_at_start) / max(time.time() - t_start, 1e-9),
                   "eval": eval_metrics, "data": data.stats.summary(), "model_dir": str(run.model)}
        run.write_summary(summary)
    tracker.close()
    accelerator.wait_for_everyone()
    return SFTResult(run.path, run.model, summary)


def _shared_run_dir(run_cfg: RunConfig, accelerator) -> RunDir:
    """The main process creates the run folder; every process learns its path."""
    from accelerate.utils import broadcast_object_list

    holder = [str(new_run_dir(run_cfg, "sft").path) if accelerator.is_main_process else None]
    broadcast_object_list(holder, from_process=0)
    return RunDir(Path(holder[0]))


def _grad_norm(model) -> torch.Tensor:
    norms = [p.grad.detach().norm() for p in model.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())
