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

from tuneloop.batches import PreferenceBatch
from tuneloop.checkpoint import NamedState
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
from tuneloop.models.logprobs import sequence_logps, supports_logits_to_keep
from tuneloop.models.matmul import with_fast_linear
from tuneloop.models.modes import eval_mode
from tuneloop.models.reference import load_frozen
from tuneloop.runs import RunDir
from tuneloop.train.batch_plan import BatchPlan, make_batch_plan, step_micro_batches
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
    visited_units,
)
from tuneloop.train.loop import (
    finish,
    open_run,
    prepare_optimisation,
    print_banner,
    start_accelerator,
    start_loop,
    update,
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
    with eval_mode(model):
        return _evaluate_split(model, batches, cfg, keep_response_only, device, live_reference)


def _evaluate_split(model, batches: Batches, cfg: DPOConfig, keep_response_only: bool, device,
                    live_reference: Callable | None) -> dict[str, float]:
    units = batches.units
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
    return {"loss": loss_total / sums["units"], **metric_means(sums), **extra}


# --- set-up: data, reference log-probs, model ----------------------------------------------------

@dataclass
class _Setup:
    """What the loop of a DPO run works on, besides the model, optimizer and schedule."""

    train: Batches
    eval: Batches
    stats: DataStats
    keep_response_only: bool
    live_reference: Callable | None
    reference_seconds: float


def _reference_model(cfg: DPOConfig, policy):
    if cfg.reference.model is None:
        return policy
    return load_frozen(ModelConfig(name=cfg.reference.model, attn_implementation=cfg.model.attn_implementation))


@with_fast_linear  # fp32 linear layers on oneDNN for the run where it beats MKL (models/matmul.py)
def train(cfg: DPOConfig, resume_dir: str | Path | None = None,
          on_micro_batch: Callable[[int, int], None] | None = None) -> DPOResult:
    """Train, write the run folder, return where the model is.

    ``resume_dir``: continue that run from its newest complete checkpoint.
    ``on_micro_batch(step, micro_index)`` is called after every backward pass (tests use it to stop a
    run at a chosen point).
    """
    if not cfg.data.train:
        raise ConfigError("config key 'data.train' is required: a preference file (pairs, rankings, HH-RLHF "
                          "transcripts, the labelling app's pairs.jsonl, or unpaired examples for KTO)")
    # 1. accelerator; data first, so a bad file fails before any run folder exists
    acc = start_accelerator(cfg.run.seed)
    tokenizer = load_tokenizer(cfg.model.name)
    limits = Limits(cfg.data.max_length, cfg.data.max_prompt_length, cfg.data.too_long)
    train_units, eval_units, stats = load_preference_data(cfg.data.train, cfg.data.eval, cfg.data.eval_fraction,
                                                          cfg.run.seed, cfg.loss.is_paired, tokenizer, limits)
    plan = make_batch_plan(cfg.batch, len(train_units), acc.num_processes)
    # 2. the policy; run folder; reference log-probs, before any update (a resumed run reads its cache)
    model, tokenizer = load_causal_lm(cfg.model)
    model.train()
    keep = supports_logits_to_keep(model)
    run = open_run(cfg, "dpo", acc, resume_dir)
    unit = "pairs" if cfg.loss.is_paired else "examples"
    print_banner(acc, "dpo", f"{cfg.loss.value}, {len(train_units)} train / {len(eval_units)} eval {unit} "
                 f"({stats.dropped_ties} ties and {stats.dropped_too_long} too long left out), reference "
                 f"{cfg.reference.mode}", plan, run)
    reference, reference_seconds = _precompute_reference(cfg, acc, run, model, tokenizer, plan, train_units,
                                                         eval_units)
    # 3. optimizer, schedule; resume
    model, optimizer, scheduler = prepare_optimisation(model, cfg.optim, plan.total_steps, acc)
    state = NamedState({"model": model}, {"model": optimizer}, {"model": scheduler}, {"units_seen": 0})
    loop = start_loop(cfg, "dpo", acc, run, plan, state, resume_dir is not None, None,
                      description=f"dpo ({cfg.loss.value})")
    live = live_reference(model, acc, keep) if cfg.reference.mode == "lora_base" else None
    pad_id = tokenizer.pad_token_id
    s = _Setup(Batches(train_units, "train", reference, cfg, pad_id),
               Batches(eval_units, "eval", reference, cfg, pad_id), stats, keep, live, reference_seconds)

    def evaluate_now():
        return evaluate(acc.unwrap_model(model), s.eval, cfg, keep, acc.device, live)

    if cfg.eval_at_start and loop.start_step == 0 and loop.is_main:
        loop.tracker.log(0, evaluate_now(), "eval")
    for step in loop.steps():
        # 4. this process's micro-batches of the step (a pure function of seed and step)
        indices = step_micro_batches(plan, step, cfg.run.seed, len(s.train.units), acc.process_index)
        micro = [s.train.graded(i) for i in indices]
        # 5. KTO: the reference point z0 of the whole step, fixed before any gradient is taken
        reference_point, kl = _step_reference_point(acc, model, s, indices) if cfg.loss is DPOLoss.KTO \
            else (None, None)

        # 6. forward/backward, each summed loss divided by the step's global number of pairs (examples);
        #    clip, optimizer, schedule
        def loss_sum_fn(model, batch, z0=reference_point):
            return batch_loss_sum(model, batch.to(acc.device), cfg.loss, cfg.loss_params, keep, z0, live)

        totals, grad_norm, lr = update(loop, "model", micro, loss_sum_fn, lambda b: b.num_units, step,
                                       cfg.optim.max_grad_norm, on_micro_batch)
        # 7. log, evaluate, checkpoint on schedule
        state.plain["units_seen"] += int(totals.count)
        extra = {"kl/estimate": kl} if kl is not None else {}
        shown = {"acc": round(totals.metrics["rewards/accuracy"] / totals.count, 3)} \
            if "rewards/accuracy" in totals.metrics else {}
        loop.end_step(step, {"loss": totals.loss, **metric_means(totals.metrics), **extra, "lr": lr,
                             "grad_norm": grad_norm, "units_per_s": loop.per_second("units_seen")},
                      evaluate_now, {"loss": totals.loss, **shown})
    # 8. final evaluation, model folder, curves, summary
    summary = finish(loop, evaluate_now,
                     lambda folder: save_model(acc.unwrap_model(model), tokenizer, folder, cfg.model.lora),
                     {"stage": "dpo", "loss": cfg.loss.value, "units_per_s": loop.per_second("units_seen"),
                      "reference": {"mode": cfg.reference.mode, "seconds": reference_seconds},
                      "data": stats.summary()},
                     CURVE_PANELS, f"{run.path.name}: {cfg.loss.value}, {cfg.model.name}")
    return DPOResult(run.path, run.model, summary)


def _precompute_reference(cfg: DPOConfig, acc, run: RunDir, model, tokenizer, plan: BatchPlan, train_units: list,
                          eval_units: list) -> tuple[dict[str, torch.Tensor] | None, float]:
    """The cached reference log-probs of every unit the run visits (None: reference-free or live), and
    the seconds they took."""
    if not (cfg.loss.needs_reference and cfg.reference.mode == "precomputed"):
        return None, 0.0
    t0 = time.time()
    visited = visited_units(plan, cfg.run.seed, len(train_units), acc.num_processes)
    sets = reference_sets(train_units, eval_units, visited, cfg.loss.is_paired)
    reference = cached_reference(run.path / REFERENCE_FILE, sets, cfg.reference.model or cfg.model.name,
                                 lambda: _reference_model(cfg, model), acc, layout=cfg.data.layout,
                                 pad_id=tokenizer.pad_token_id, token_budget=cfg.reference.tokens_per_forward)
    seconds = time.time() - t0
    if acc.is_main_process:
        print(f"[tuneloop] dpo: reference log-probs ready ({seconds:.1f} s)", flush=True)
    return reference, seconds


def _step_reference_point(acc, model, s: _Setup, indices: list[list[int]]) -> tuple[torch.Tensor, float]:
    """KTO's z0 for one optimizer step, over every process's mismatched sequences of the step."""
    mismatched = [s.train.mismatched(i).to(acc.device) for i in indices]
    policy, reference = policy_and_reference_logps(model, mismatched, s.keep_response_only, s.live_reference)
    policy, reference = acc.gather(policy), acc.gather(reference)
    return kto_reference_point(policy, reference), (policy - reference).mean().item()


CURVE_PANELS = [
    ("loss", ["loss"]),
    ("implicit-reward accuracy", ["rewards/accuracy"]),
    ("reward margin", ["rewards/margin"]),
    ("implicit rewards", ["rewards/chosen", "rewards/rejected", "rewards/desirable", "rewards/undesirable"]),
    ("log-probs", ["logps/chosen", "logps/rejected", "logps/desirable", "logps/undesirable"]),
    ("KL estimate", ["kl/estimate", "kto/reference_point"]),
]


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
