"""The loop skeleton every training stage shares: the schedule keys, the run lifecycle, the finish.

Functions and one small dataclass, no trainer base class. A stage's ``train()`` reads as its own
numbered steps and calls these in this order (``train/sft.py`` is the shortest example)::

    accelerator = start_accelerator(cfg.run.seed)                      # 1. accelerator, seeded
    data = ...; plan = make_batch_plan(...)                             # 2. data (fails before any folder)
    model, optimizer, scheduler = prepare_optimisation(...)             # 3. model(s), optimizer(s)
    run = open_run(cfg, "sft", accelerator, resume_dir)                 # 4. run folder + config.yaml
    loop = start_loop(cfg, "sft", accelerator, run, plan, state, resume_dir is not None,
                      banner="...")                                      # 5. resume, banner, tracker
    for step in loop.steps():                                           # 6. the stage's own step
        totals, grad_norm, lr = update(...)
        loop.state.plain["tokens_seen"] += ...
        loop.end_step(step, {...metrics...}, evaluate=lambda: ...)      #    log / eval / save on schedule
    summary = finish(loop, final_eval, save_model, {...})               # 7. one finish for every stage

``finish`` does, in this order for every stage: final evaluation (main process), the model folder
(atomic), tracker close, ``curves.png``, ``summary.json`` (with ``train_seconds``), a barrier.
Evaluation always runs inside ``models.modes.eval_mode`` (restores train mode in ``finally``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.atomic import atomic_dir
from tuneloop.checkpoint import NamedState, latest_checkpoint, load_checkpoint, save_checkpoint
from tuneloop.curves import STEP_AXIS, plot_curves
from tuneloop.runs import RunConfig, RunDir, new_run_dir
from tuneloop.tracking import Tracker
from tuneloop.train.accumulate import StepTotals, accumulate_gradients, optimizer_step
from tuneloop.train.batch_plan import BatchPlan
from tuneloop.train.optim import OptimConfig, build_optimizer, build_scheduler


@dataclass
class LoopConfig:
    """The schedule keys of every stage's loop. A stage config inherits them, so they stay top-level
    keys (``--log_every 10``, ``save_every: 50``) and are declared once."""

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

    def __post_init__(self) -> None:
        if self.log_every < 1:
            raise ValueError(f"log_every must be ≥ 1, got {self.log_every}")
        for key in ("eval_every", "save_every", "keep_checkpoints"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be ≥ 0, got {getattr(self, key)}")


def start_accelerator(seed: int):
    """An Accelerator (CPU when no GPU) with every RNG seeded."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from tuneloop.runtime import keep_freed_memory

    keep_freed_memory()
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    set_seed(seed)
    return accelerator


def prepare_optimisation(model, cfg: OptimConfig, total_steps: int, accelerator):
    """AdamW + schedule (not prepared: accelerate would step it once per process), and the model and
    optimizer wrapped for the current distributed set-up."""
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, total_steps, cfg)
    model, optimizer = accelerator.prepare(model, optimizer)
    return model, optimizer, scheduler


def open_run_dir(run_cfg: RunConfig, stage: str, accelerator, resume_dir: str | Path | None) -> RunDir:
    """The resumed run's folder, or a new one that the main process creates and every process learns."""
    if resume_dir is not None:
        return RunDir(Path(resume_dir))
    from accelerate.utils import broadcast_object_list

    holder = [str(new_run_dir(run_cfg, stage).path) if accelerator.is_main_process else None]
    broadcast_object_list(holder, from_process=0)
    return RunDir(Path(holder[0]))


def open_run(cfg: Any, stage: str, accelerator, resume_dir: str | Path | None) -> RunDir:
    """``open_run_dir`` for ``cfg.run``, and the main process writes the effective ``config.yaml``."""
    run = open_run_dir(cfg.run, stage, accelerator, resume_dir)
    if accelerator.is_main_process:
        run.write_config(cfg)
    return run


def describe_plan(plan: BatchPlan) -> str:
    """'40 steps of 8 (2 × 4 × 1 processes)': the batch plan every banner shows."""
    return (f"{plan.total_steps} steps of {plan.batch_size} ({plan.accumulation_steps} × "
            f"{plan.micro_batch_size} × {plan.world_size} processes)")


@dataclass
class Loop:
    """What a stage's loop holds: the run, its schedule and tracker, and the checkpointed state
    (``state.plain`` holds the stage's counters, e.g. ``tokens_seen``; it is saved and restored)."""

    accelerator: Any
    run: RunDir
    plan: BatchPlan
    schedule: LoopConfig
    tracker: Tracker
    state: NamedState
    start_step: int
    started: float  # time.time() when the loop (re)started
    plain_at_start: dict[str, Any]
    step_started: float = 0.0

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def steps(self) -> Iterator[int]:
        """0-based optimizer steps still to run (from the resumed step on)."""
        for step in range(self.start_step, self.plan.total_steps):
            self.step_started = time.time()
            yield step

    def per_second(self, counter: str) -> float:
        """Rate of ``state.plain[counter]`` since this process (re)started the loop."""
        done = self.state.plain[counter] - self.plain_at_start.get(counter, 0)
        return done / max(time.time() - self.started, 1e-9)

    def seconds(self) -> float:
        """Seconds in the loop over the whole run: those before the resumed checkpoint plus this session's."""
        return self.plain_at_start.get("train_seconds", 0.0) + time.time() - self.started

    def end_step(self, step: int, metrics: dict[str, float], evaluate: Callable[[], dict] | None = None,
                 shown: dict[str, Any] | None = None) -> None:
        """After optimizer step ``step`` (0-based): log (every ``log_every`` and the last step, with
        step time and epoch added), advance the progress bar, evaluate on the main process every
        ``eval_every`` (not at the last step: ``finish`` does), checkpoint every ``save_every``
        (every process)."""
        done = step + 1
        last = done == self.plan.total_steps
        if done % self.schedule.log_every == 0 or last:
            self.tracker.log(done, {**metrics, "step_time_s": time.time() - self.step_started,
                                    "epoch": step / self.plan.steps_per_epoch})
        self.tracker.progress(1, **(shown if shown is not None else {"loss": metrics.get("loss")}))
        if evaluate and self.schedule.eval_every and done % self.schedule.eval_every == 0 and not last \
                and self.is_main:
            self.tracker.log(done, evaluate(), "eval")
        if self.schedule.save_every and done % self.schedule.save_every == 0:
            self.state.plain["train_seconds"] = self.seconds()
            save_checkpoint(self.accelerator, self.run.checkpoints, done, self.state, self.schedule.keep_checkpoints)


def print_banner(accelerator, stage: str, text: str, plan: BatchPlan, run: RunDir) -> None:
    """``[tuneloop] <stage>: <text>, <batch plan>; run folder <path>`` on the main process."""
    if accelerator.is_main_process:
        print(f"[tuneloop] {stage}: {text}, {describe_plan(plan)}; run folder {run.path}", flush=True)


def start_loop(cfg: LoopConfig, stage: str, accelerator, run: RunDir, plan: BatchPlan, state: NamedState,
               resume: bool, banner: str | None, description: str | None = None) -> Loop:
    """Restore the newest checkpoint of ``run`` into ``state`` (when ``resume``), print the banner
    (``print_banner``; None: the stage printed it earlier) and open the tracker."""
    start_step = 0
    path = latest_checkpoint(run.checkpoints) if resume else None
    if path is not None:
        resumed = load_checkpoint(accelerator, path, state)
        state.plain.update(resumed.plain)
        start_step = resumed.step
    if accelerator.is_main_process and path is not None:
        print(f"[tuneloop] resuming {run.path} from {path.name}")
    if banner is not None:
        print_banner(accelerator, stage, banner, plan, run)
    tracker = Tracker(run.path, plan.total_steps, start_step, enabled=accelerator.is_main_process,
                      description=description or stage, use_wandb=cfg.wandb, config=cfg)
    return Loop(accelerator, run, plan, cfg, tracker, state, start_step, time.time(), dict(state.plain))


def update(loop: Loop, model_name: str, micro_batches: Sequence, loss_sum_fn: Callable, count_fn: Callable,
           step: int, max_grad_norm: float | None,
           on_micro_batch: Callable[[int, int], None] | None = None) -> tuple[StepTotals, float, float]:
    """One optimizer step of the model named ``model_name`` in ``loop.state`` (its optimizer and
    schedule carry the same name): accumulate gradients over this process's micro-batches (each
    summed loss divided by the step's global count, ``train.accumulate``), clip, step, schedule.
    Returns (totals, gradient norm before clipping, learning rate used)."""
    s = loop.state
    hook = (lambda i: on_micro_batch(step, i)) if on_micro_batch else None
    totals = accumulate_gradients(s.models[model_name], micro_batches, loss_sum_fn, count_fn, loop.accelerator, hook)
    grad_norm, lr = optimizer_step(s.models[model_name], s.optimizers[model_name], s.schedulers[model_name],
                                   loop.accelerator, max_grad_norm)
    return totals, grad_norm, lr


def finish(loop: Loop, final_eval: Callable[[], dict], save_model: Callable[[Path], None], summary: dict,
           curve_panels: list[tuple[str, list[str]]] | None = None, curve_title: str = "",
           curve_x_label: str = STEP_AXIS) -> dict:
    """The end of every stage, in one order: final evaluation and its log line (main process), the
    model folder written atomically (``save_model(tmp_folder)``), tracker close, ``curves.png``,
    ``summary.json`` (``summary`` + stage, steps, the plain counters, train_seconds (over the whole run,
    resumes included), eval, model_dir, curves). Every process calls it; returns the summary (empty on other processes)."""
    train_seconds = loop.seconds()
    out: dict = {}
    if loop.is_main:
        eval_metrics = final_eval()
        loop.tracker.log(loop.plan.total_steps, _numbers(eval_metrics), "eval")
        with atomic_dir(loop.run.model, replace=True) as tmp:
            save_model(tmp)
    loop.tracker.close()
    if loop.is_main:
        curves = plot_curves(loop.run.metrics, loop.run.path / "curves.png", curve_panels, curve_title,
                             curve_x_label) \
            if curve_panels else None
        out = {"stage": summary["stage"], "steps": loop.plan.total_steps, **loop.state.plain,
               "train_seconds": train_seconds, **summary,
               "eval": {k: v for k, v in eval_metrics.items() if not isinstance(v, (dict, list))},
               "model_dir": str(loop.run.model), "curves": str(curves) if curves else None}
        loop.run.write_summary(out)
    loop.accelerator.wait_for_everyone()
    return out


def _numbers(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
