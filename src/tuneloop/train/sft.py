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

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from tuneloop.batches import SFTBatch
from tuneloop.checkpoint import NamedState
from tuneloop.data import load_records
from tuneloop.data.chat import Tokenized
from tuneloop.data.packing import collate_padded, collate_padding_free, pack_best_fit
from tuneloop.data.sft import TokenStats, tokenize_sft
from tuneloop.data.split import EVAL_FRACTION, check_eval_fraction, split_by_prompt
from tuneloop.losses.sft import masked_nll_sum
from tuneloop.models import ModelConfig, load_causal_lm
from tuneloop.models.attention import document_bounds, uses_document_attention
from tuneloop.models.loading import load_tokenizer, save_model
from tuneloop.models.logprobs import supports_logits_to_keep
from tuneloop.models.matmul import with_fast_linear
from tuneloop.models.modes import eval_mode
from tuneloop.runs import RunConfig
from tuneloop.train.batch_plan import BatchConfig, make_batch_plan, step_micro_batches
from tuneloop.train.loop import (
    LoopConfig,
    finish,
    open_run,
    prepare_optimisation,
    start_accelerator,
    start_loop,
    update,
)
from tuneloop.train.optim import OptimConfig


@dataclass
class SFTDataConfig:
    train: str = "bundled:chatterbot"
    """Training data: a JSONL/Parquet/CSV file, a saved HF dataset folder, or bundled:<name>."""
    eval: str | None = None
    """Held-out data in the same forms; when null, eval_fraction of the training prompts is held out."""
    eval_fraction: float = EVAL_FRACTION
    """Share of the distinct training prompts held out for evaluation when no eval file is given (0 disables)."""
    max_length: int = 512
    """Maximum tokens per document (and per pack when packing)."""
    too_long: Literal["truncate", "drop"] = "truncate"
    """What to do with a longer document: cut its end, or leave it out."""
    packing: bool = False
    """Pack documents into sequences of max_length tokens (best-fit decreasing); batch_size then counts packs."""
    padding_free: bool = True
    """Feed each micro-batch as one row without padding (per-document positions, no cross-attention)."""

    def __post_init__(self) -> None:
        check_eval_fraction(self.eval_fraction)


@dataclass
class SFTConfig(LoopConfig):
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
        train_docs, eval_docs = split_by_prompt(docs, d.eval_fraction, cfg.run.seed)
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
    """Mean NLL per trained token over ``docs``, in eval mode."""
    if not docs:
        return {}
    total, count = 0.0, 0.0
    size = cfg.batch.micro_batch_size
    with eval_mode(model):
        for i in range(0, len(docs), size):
            loss_sum, m = batch_loss_sum(model, collate(docs[i:i + size], cfg.data, pad_id), keep)
            total += loss_sum.item()
            count += m["trained_tokens"]
    return {"loss": total / count, "trained_tokens": count}


CURVE_PANELS = [("loss", ["loss"]), ("learning rate", ["lr"]), ("gradient norm", ["grad_norm"]),
                ("tokens per second", ["tokens_per_s"])]


@with_fast_linear  # fp32 linear layers on oneDNN for the run where it beats MKL (models/matmul.py)
def train(cfg: SFTConfig, resume_dir: str | Path | None = None,
          on_micro_batch: Callable[[int, int], None] | None = None) -> SFTResult:
    """Fine-tune, write the run folder, return where the model is.

    ``resume_dir``: continue that run from its newest complete checkpoint.
    ``on_micro_batch(step, micro_index)`` is called after every backward pass (tests use it to stop a
    run at a chosen point).
    """
    # 1. accelerator; data first, so a bad file fails before any run folder exists
    acc = start_accelerator(cfg.run.seed)
    tokenizer = load_tokenizer(cfg.model.name)
    data = prepare_data(cfg, tokenizer)
    plan = make_batch_plan(cfg.batch, len(data.units), acc.num_processes)
    # 2. model, optimizer, schedule; run folder; resume
    model, tokenizer = load_causal_lm(cfg.model)
    model.train()
    keep = supports_logits_to_keep(model)
    model, optimizer, scheduler = prepare_optimisation(model, cfg.optim, plan.total_steps, acc)
    run = open_run(cfg, "sft", acc, resume_dir)
    state = NamedState({"model": model}, {"model": optimizer}, {"model": scheduler}, {"tokens_seen": 0})
    loop = start_loop(cfg, "sft", acc, run, plan, state, resume_dir is not None,
                      f"{len(data.train_docs)} train / {len(data.eval_docs)} eval documents, {len(data.units)} "
                      f"sequences, {data.stats.trained_fraction:.1%} of tokens are trained")
    pad_id = tokenizer.pad_token_id

    def loss_sum_fn(model, batch):
        return batch_loss_sum(model, batch.to(acc.device), keep)

    def evaluate_now():
        return evaluate(acc.unwrap_model(model), data.eval_docs, cfg, pad_id, keep)

    for step in loop.steps():
        # 3. this process's micro-batches of the step (a pure function of seed and step)
        micro = [collate([data.train_docs[d] for u in idx for d in data.units[u]], cfg.data, pad_id)
                 for idx in step_micro_batches(plan, step, cfg.run.seed, len(data.units), acc.process_index)]
        # 4. forward/backward, each summed loss divided by the step's global count of trained tokens;
        #    clip, optimizer, schedule
        totals, grad_norm, lr = update(loop, "model", micro, loss_sum_fn, lambda b: b.trained_tokens, step,
                                       cfg.optim.max_grad_norm, on_micro_batch)
        # 5. log, evaluate, checkpoint on schedule
        tokens = totals.metrics["tokens"]
        state.plain["tokens_seen"] += int(tokens)
        loop.end_step(step, {"loss": totals.loss, "lr": lr, "grad_norm": grad_norm, "tokens": tokens,
                             "trained_tokens": totals.count, "trained_fraction": totals.count / tokens,
                             "tokens_per_s": loop.per_second("tokens_seen")}, evaluate_now,
                      {"loss": totals.loss, "tok_s": round(loop.per_second("tokens_seen"), 1)})
    # 6. final evaluation, model folder, curves, summary
    summary = finish(loop, evaluate_now,
                     lambda folder: save_model(acc.unwrap_model(model), tokenizer, folder, cfg.model.lora),
                     {"stage": "sft", "tokens_per_s": loop.per_second("tokens_seen"), "data": data.stats.summary()},
                     CURVE_PANELS, f"{run.path.name}: sft, {cfg.model.name}")
    return SFTResult(run.path, run.model, summary)
