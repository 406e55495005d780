"""Direct preference optimisation and its family, straight from preference judgments.

Losses (``losses.dpo``): dpo, cdpo, robust, ipo, hinge (SLiC), simpo, orpo, kto, plus RPO's NLL term.
Run: ``tuneloop dpo --config dpo.yaml [--loss ipo --loss_params.beta 0.5 ...] [--resume [RUN_DIR]]``
or   ``from tuneloop.train.dpo import DPOConfig, train; train(cfg)``. docs/dpo.md explains the losses and
how to read the metrics.

Before the loop: every record is validated and tokenised (a bad one fails before any run folder
exists), then the reference log-probs of every response the run will visit are computed once, in eval
mode, and cached in the run folder (``train.dpo_reference``): no reference model is held while
training, and a resumed run reuses the very same numbers. With LoRA, ``reference.mode: lora_base``
instead scores each batch live with the adapters disabled.

The loop, per optimizer step:
  1. take this process's micro-batches of the step (a pure function of seed and step)
  2. KTO only: the KL reference point z0 over the whole step's mismatched sequences (no gradient)
  3. forward/backward each micro-batch -- chosen and rejected of every pair in one padding-free row,
     logits only at response positions -- its summed loss divided by the step's global number of pairs
  4. clip, step the optimizer and the schedule
  5. log; evaluate and checkpoint on schedule
Then: final evaluation, the model folder, summary.json and curves.png.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tuneloop.atomic import atomic_dir
from tuneloop.batches import PreferenceBatch
from tuneloop.config import ConfigError
from tuneloop.losses.dpo import (
    DPOLoss,
    DPOParams,
    PairLogps,
    UnpairedLogps,
    dpo_family_loss,
    kto_reference_point,
)
from tuneloop.models import ModelConfig, load_causal_lm
from tuneloop.models.loading import load_tokenizer, save_model
from tuneloop.models.logprobs import supports_logits_to_keep
from tuneloop.runs import RunDir
from tuneloop.tracking import Tracker
from tuneloop.train.accumulate import accumulate_gradients, optimizer_step
from tuneloop.train.batch_plan import BatchPlan, make_batch_plan, step_micro_batches
from tuneloop.train.curves import plot_curves
from tuneloop.train.dpo_config import DPOConfig
from tuneloop.train.dpo_data import (
    GRADED_NAMES,
    DataStats,
    Limits,
    collate,
    graded_sequences,
    load_preference_data,
)
from tuneloop.train.dpo_reference import (
    REFERENCE_FILE,
    cached_reference,
    live_reference,
    reference_sets,
    sequence_logps,
    visited_units,
)
from tuneloop.train.session import (
    checkpoint,
    open_run_dir,
    prepare_optimisation,
    resume_if_any,
    start_accelerator,
)


@dataclass
class DPOResult:
    run_dir: Path
    model_dir: Path
    summary: dict


# --- batches and the loss of one micro-batch ---------------------------------------------------

_COUNTS = ("units", "desirable", "undesirable", "tokens")


class Batches:
    """Micro-batches of one split's units, with their cached reference log-probs attached."""

    def __init__(self, units: list, split: str, reference: dict[str, torch.Tensor] | None, cfg: DPOConfig,
                 pad_id: int):
        self.units, self.split, self.reference, self.pad_id = units, split, reference, pad_id
        self.paired, self.layout = cfg.loss.is_paired, cfg.data.layout

    def _reference(self, names: tuple[str, ...], indices: list[int]) -> torch.Tensor | None:
        if self.reference is None:
            return None
        # (len(indices), len(names)) → interleaved, the order ``graded_sequences`` puts the sequences in
        return torch.stack([self.reference[f"{self.split}.{n}"][indices] for n in names], dim=1).reshape(-1)

    def graded(self, indices: list[int]) -> PreferenceBatch:
        """The sequences whose log-probs enter the loss: interleaved (chosen, rejected) or completions."""
        desirable = None if self.paired else torch.tensor([self.units[i].desirable for i in indices])
        sequences = [s for i in indices for s in graded_sequences(self.units[i])]
        reference = self._reference(GRADED_NAMES[self.paired], indices)
        return collate(sequences, paired=self.paired, layout=self.layout, pad_id=self.pad_id,
                       reference_logps=reference, desirable=desirable)

    def mismatched(self, indices: list[int]) -> PreferenceBatch:
        """Each unit's prompt with another prompt's response (the KL estimate of KTO)."""
        return collate([self.units[i].mismatched for i in indices], paired=False, layout=self.layout,
                       pad_id=self.pad_id, reference_logps=self._reference(("mismatched",), indices))


def _count_key(metric: str) -> str:
    """The count a loss metric is a mean over (KTO reports some means over one label only)."""
    for label in ("undesirable", "desirable"):
        if metric.endswith("/" + label):
            return label
    return "units"


def batch_loss_sum(model, batch: PreferenceBatch, kind: DPOLoss, params: DPOParams, keep_response_only: bool,
                   reference_point: torch.Tensor | None = None,
                   live_reference: Callable[[PreferenceBatch], torch.Tensor] | None = None
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    """Summed loss of a micro-batch, and its metrics as sums (mean × the count it is a mean over)."""
    policy = sequence_logps(model, batch, keep_response_only)
    reference = live_reference(batch) if live_reference is not None and kind.needs_reference \
        else batch.reference_logps
    tokens = batch.response_tokens.to(policy.device)
    if batch.paired:
        ref = (reference[0::2], reference[1::2]) if reference is not None else (None, None)
        logps = PairLogps(policy[0::2], policy[1::2], *ref, tokens[0::2], tokens[1::2])
    else:
        logps = UnpairedLogps(policy, reference, batch.desirable, reference_point)
    loss, metrics = dpo_family_loss(kind, logps, params)
    counts = {"units": float(batch.num_units), "tokens": float(batch.tokens)}
    if batch.desirable is not None:
        counts["desirable"] = float(batch.desirable.sum().item())
        counts["undesirable"] = counts["units"] - counts["desirable"]
    sums = dict(counts)
    if batch.desirable is not None:  # the same keys on every process, whatever labels its batch holds
        sums.update({f"{what}/{label}": 0.0 for what in ("rewards", "logps")
                     for label in ("desirable", "undesirable")})
    for key, value in metrics.items():
        if key not in ("pairs", "examples", "desirable"):
            sums[key] = value * counts[_count_key(key)]
    return loss.sum(), sums


def metric_means(sums: dict[str, float]) -> dict[str, float]:
    """Means of summed metrics over their counts; the counts themselves as they are."""
    out = {k: v for k, v in sums.items() if k in _COUNTS}
    out.update({k: v / sums[_count_key(k)] for k, v in sums.items()
                if k not in _COUNTS and sums.get(_count_key(k), 0) > 0})
    return out


@torch.no_grad()
def policy_and_reference_logps(model, batches: list[PreferenceBatch], keep_response_only: bool,
                  live_reference: Callable | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(policy, reference) summed log-probs of every sequence of ``batches``, concatenated, (N,) each."""
    policy, reference = [], []
    for batch in batches:
        policy.append(sequence_logps(model, batch, keep_response_only).float())
        reference.append(live_reference(batch) if live_reference is not None else batch.reference_logps)
    policy = torch.cat(policy)
    return policy, torch.cat(reference).to(policy.device)


@torch.no_grad()
def evaluate(model, batches: Batches, cfg: DPOConfig, keep_response_only: bool, device,
             live_reference: Callable | None = None) -> dict[str, float]:
    """Loss and metrics over every held-out unit, in eval mode; ``kl/estimate`` where mismatched
    sequences exist: mean log π(y'|x) − log π_ref(y'|x) over another prompt's response y' (KTO's z0
    before clamping)."""
    units = batches.units
    if not units:
        return {}
    was_training = model.training
    model.eval()
    size = cfg.batch.micro_batch_size
    chunks = [list(range(i, min(i + size, len(units)))) for i in range(0, len(units), size)]
    # KTO's z0 over the whole split (0 when the split has a single prompt, so no mismatched responses)
    extra, reference_point = {}, torch.tensor(0.0) if cfg.loss is DPOLoss.KTO else None
    if cfg.loss.needs_reference and all(u.mismatched is not None for u in units):
        mismatched = [batches.mismatched(c).to(device) for c in chunks]
        policy, reference = policy_and_reference_logps(model, mismatched, keep_response_only, live_reference)
        extra["kl/estimate"] = (policy - reference).mean().item()
        reference_point = kto_reference_point(policy, reference) if cfg.loss is DPOLoss.KTO else None
    loss_total, sums = 0.0, {}
    for chunk in chunks:
        loss_sum, batch_sums = batch_loss_sum(model, batches.graded(chunk).to(device), cfg.loss,
                                              cfg.loss_params, keep_response_only, reference_point,
                                              live_reference)
        loss_total += loss_sum.item()
        for key, value in batch_sums.items():
            sums[key] = sums.get(key, 0.0) + value
    model.train(was_training)
    return {"loss": loss_total / sums["units"], **metric_means(sums), **extra}


# --- set-up: data, reference log-probs, model ----------------------------------------------------

@dataclass
class _Session:
    """Everything a run holds while it trains."""

    accelerator: object
    model: torch.nn.Module
    tokenizer: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    plan: BatchPlan
    run: RunDir
    train: Batches
    eval: Batches
    stats: DataStats
    keep_response_only: bool
    live_reference: Callable | None
    reference_seconds: float
    start_step: int
    units_seen: int


def _reference_model(cfg: DPOConfig, policy):
    if cfg.reference.model is None:
        return policy
    model_cfg = ModelConfig(name=cfg.reference.model, attn_implementation=cfg.model.attn_implementation)
    return load_causal_lm(model_cfg, trainable=False)[0]


def _setup(cfg: DPOConfig, resume_dir: str | Path | None) -> _Session:
    if not cfg.data.train:
        raise ConfigError("config key 'data.train' is required: a preference file (pairs, rankings, HH-RLHF "
                          "transcripts, the labelling app's pairs.jsonl, or unpaired examples for KTO)")
    accelerator = start_accelerator(cfg.run.seed)
    # Data first: a bad file fails here, before any run folder exists.
    tokenizer = load_tokenizer(cfg.model.name)
    limits = Limits(cfg.data.max_length, cfg.data.max_prompt_length, cfg.data.too_long)
    train_units, eval_units, stats = load_preference_data(cfg.data.train, cfg.data.eval,
                                                          cfg.data.eval_fraction, cfg.run.seed,
                                                          cfg.loss.is_paired, tokenizer, limits)
    plan = make_batch_plan(cfg.batch, len(train_units), accelerator.num_processes)
    model, tokenizer = load_causal_lm(cfg.model)
    model.train()
    keep = supports_logits_to_keep(model)
    run = open_run_dir(cfg.run, "dpo", accelerator, resume_dir)
    if accelerator.is_main_process:
        run.write_config(cfg)
        unit = "pairs" if cfg.loss.is_paired else "examples"
        print(f"[tuneloop] dpo ({cfg.loss.value}): {len(train_units)} train / {len(eval_units)} eval {unit} "
              f"({stats.dropped_ties} ties and {stats.dropped_too_long} too long left out), "
              f"{plan.total_steps} steps of {plan.batch_size} ({plan.accumulation_steps} × "
              f"{plan.micro_batch_size} × {accelerator.num_processes} processes); reference "
              f"{cfg.reference.mode}; run folder {run.path}", flush=True)
    t0 = time.time()
    reference = None
    if cfg.loss.needs_reference and cfg.reference.mode == "precomputed":
        # Before any update (and before a resumed run loads its checkpoint): the model is the reference.
        visited = visited_units(plan, cfg.run.seed, len(train_units), accelerator.num_processes)
        sets = reference_sets(train_units, eval_units, visited, cfg.loss.is_paired)
        reference = cached_reference(run.path / REFERENCE_FILE, sets, cfg.reference.model or cfg.model.name,
                                     lambda: _reference_model(cfg, model), accelerator,
                                     layout=cfg.data.layout, pad_id=tokenizer.pad_token_id,
                                     token_budget=cfg.reference.tokens_per_forward)
    reference_seconds = time.time() - t0
    model, optimizer, scheduler = prepare_optimisation(model, cfg.optim, plan.total_steps, accelerator)
    state = resume_if_any(run, model, optimizer, scheduler, accelerator) if resume_dir is not None else None
    live = live_reference(model, accelerator, keep) if cfg.reference.mode == "lora_base" else None
    if accelerator.is_main_process and reference is not None:
        print(f"[tuneloop] dpo: reference log-probs ready ({reference_seconds:.1f} s)", flush=True)
    pad_id = tokenizer.pad_token_id
    return _Session(accelerator, model, tokenizer, optimizer, scheduler, plan, run,
                    Batches(train_units, "train", reference, cfg, pad_id),
                    Batches(eval_units, "eval", reference, cfg, pad_id), stats, keep, live, reference_seconds,
                    state["step"] if state else 0, state["units_seen"] if state else 0)


# --- the loop ----------------------------------------------------------------------------------

def _step_reference_point(s: _Session, indices: list[list[int]]) -> tuple[torch.Tensor, float]:
    """KTO's z0 for one optimizer step, over every process's mismatched sequences of the step."""
    device = s.accelerator.device
    mismatched = [s.train.mismatched(i).to(device) for i in indices]
    policy, reference = policy_and_reference_logps(s.model, mismatched, s.keep_response_only,
                                                   s.live_reference)
    policy, reference = s.accelerator.gather(policy), s.accelerator.gather(reference)
    return kto_reference_point(policy, reference), (policy - reference).mean().item()


def train(cfg: DPOConfig, resume_dir: str | Path | None = None,
          on_micro_batch: Callable[[int, int], None] | None = None) -> DPOResult:
    """Train, write the run folder, return where the model is.

    ``resume_dir``: continue that run from its newest complete checkpoint.
    ``on_micro_batch(step, micro_index)`` is called after every backward pass (tests use it to stop a
    run at a chosen point).
    """
    s = _setup(cfg, resume_dir)
    acc, plan = s.accelerator, s.plan
    tracker = Tracker(s.run.path, plan.total_steps, s.start_step, enabled=acc.is_main_process,
                      description=f"dpo ({cfg.loss.value})", use_wandb=cfg.wandb)
    if cfg.eval_at_start and s.start_step == 0 and acc.is_main_process:
        tracker.log(0, _evaluate(s, cfg), "eval")
    t_start, units_at_start, units_seen = time.time(), s.units_seen, s.units_seen
    for step in range(s.start_step, plan.total_steps):
        t_step = time.time()
        # 1. this process's micro-batches of the step (a pure function of seed and step)
        indices = step_micro_batches(plan, step, cfg.run.seed, len(s.train.units), acc.process_index)
        micro = [s.train.graded(i) for i in indices]
        # 2. KTO: the reference point z0 of the whole step, fixed before any gradient is taken
        reference_point, kl = _step_reference_point(s, indices) if cfg.loss is DPOLoss.KTO else (None, None)

        # 3. forward/backward, each summed loss divided by the step's global number of pairs (examples)
        def loss_sum_fn(model, batch, z0=reference_point):
            return batch_loss_sum(model, batch.to(acc.device), cfg.loss, cfg.loss_params,
                                  s.keep_response_only, z0, s.live_reference)

        hook = (lambda i, step=step: on_micro_batch(step, i)) if on_micro_batch else None
        totals = accumulate_gradients(s.model, micro, loss_sum_fn, lambda b: b.num_units, acc, hook)
        # 4. clip, optimizer, schedule
        grad_norm, lr = optimizer_step(s.model, s.optimizer, s.scheduler, acc, cfg.optim.max_grad_norm)
        # 5. log, evaluate, checkpoint
        done = step + 1
        units_seen += int(totals.count)
        elapsed = max(time.time() - t_start, 1e-9)
        if done % cfg.log_every == 0 or done == plan.total_steps:
            extra = {"kl/estimate": kl} if kl is not None else {}
            tracker.log(done, {"loss": totals.loss, **metric_means(totals.metrics), **extra, "lr": lr,
                               "grad_norm": grad_norm, "units_per_s": (units_seen - units_at_start) / elapsed,
                               "step_time_s": time.time() - t_step, "epoch": step / plan.steps_per_epoch})
        shown = {"acc": round(totals.metrics["rewards/accuracy"] / totals.count, 3)} \
            if "rewards/accuracy" in totals.metrics else {}
        tracker.progress(1, loss=totals.loss, **shown)
        if cfg.eval_every and done % cfg.eval_every == 0 and done != plan.total_steps and acc.is_main_process:
            tracker.log(done, _evaluate(s, cfg), "eval")
        if cfg.save_every and done % cfg.save_every == 0:
            checkpoint(s.run, done, s.model, s.optimizer, s.scheduler, acc, {"units_seen": units_seen},
                       cfg.keep_checkpoints)
    rate = (units_seen - units_at_start) / max(time.time() - t_start, 1e-9)
    summary = _finish(cfg, s, tracker, units_seen, rate)
    return DPOResult(s.run.path, s.run.model, summary)


def _evaluate(s: _Session, cfg: DPOConfig) -> dict[str, float]:
    return evaluate(s.accelerator.unwrap_model(s.model), s.eval, cfg, s.keep_response_only,
                    s.accelerator.device, s.live_reference)


CURVE_PANELS = [
    ("loss", ["loss"]),
    ("implicit-reward accuracy", ["rewards/accuracy"]),
    ("reward margin", ["rewards/margin"]),
    ("implicit rewards", ["rewards/chosen", "rewards/rejected", "rewards/desirable", "rewards/undesirable"]),
    ("log-probs", ["logps/chosen", "logps/rejected", "logps/desirable", "logps/undesirable"]),
    ("KL estimate", ["kl/estimate", "kto/reference_point"]),
]


def _finish(cfg: DPOConfig, s: _Session, tracker: Tracker, units_seen: int, units_per_s: float) -> dict:
    """Final evaluation, the model folder (written atomically), summary.json and curves.png."""
    summary: dict = {}
    if s.accelerator.is_main_process:
        eval_metrics = _evaluate(s, cfg)
        tracker.log(s.plan.total_steps, eval_metrics, "eval")
        tracker.close()
        with atomic_dir(s.run.model, replace=True) as tmp:
            save_model(s.accelerator.unwrap_model(s.model), s.tokenizer, tmp, cfg.model.lora)
        curves = plot_curves(s.run.metrics, s.run.path / "curves.png", CURVE_PANELS,
                             f"{s.run.path.name}: {cfg.loss.value}, {cfg.model.name}")
        summary = {"stage": "dpo", "loss": cfg.loss.value, "steps": s.plan.total_steps,
                   "units_seen": units_seen, "units_per_s": units_per_s,
                   "reference": {"mode": cfg.reference.mode, "seconds": s.reference_seconds},
                   "eval": eval_metrics, "data": s.stats.summary(), "model_dir": str(s.run.model),
                   "curves": str(curves) if curves else None}
        s.run.write_summary(summary)
    else:
        tracker.close()
    s.accelerator.wait_for_everyone()
    return summary


def dpo_on_pairs(pairs: str | Path, model: str | Path, out_dir: str | Path, *, quick: bool = False,
                 steps: int | None = None, loss: str = "dpo") -> DPOResult:
    """The RL-free path of ``tuneloop demo``: DPO (or any ``loss`` of the family) on a pairs file.

    ``model``: e.g. the demo's SFT folder; trained with LoRA unless ``quick`` (a tiny model). The run
    folder is ``<out_dir>/dpo``; 10% of the prompts are held out for the implicit-reward accuracy.
    """
    from tuneloop.config import load_config

    overrides = {"model": {"name": str(model), "lora": {"enabled": not quick, "r": 16, "alpha": 32}},
                 "data": {"train": str(pairs), "max_length": 192, "max_prompt_length": 128,
                          "eval_fraction": 0.1},
                 "loss": loss,
                 "batch": {"batch_size": 8, "micro_batch_size": 8,
                           "max_steps": steps or (4 if quick else 40)},
                 "optim": {"lr": 1e-3 if quick else 5e-4, "warmup_steps": 2},
                 "run": {"out_dir": str(out_dir), "name": "dpo", "seed": 0}}
    return train(load_config(DPOConfig, overrides=overrides))


def dpo_on_judgments(store, model: str | Path, out_dir: str | Path, *, aggregate: str = "majority",
                     **kwargs) -> DPOResult:
    """``dpo_on_pairs`` on a labelling store (a ``Store`` or its database path): its pairs are exported
    exactly as ``tuneloop label export`` writes them, to ``<out_dir>/dpo-pairs.jsonl``."""
    from tuneloop.feedback.export import export_pairs

    pairs = Path(out_dir) / "dpo-pairs.jsonl"
    export_pairs(store, pairs, aggregate=aggregate)
    return dpo_on_pairs(pairs, model, out_dir, **kwargs)
