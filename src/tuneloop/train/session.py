"""Set-up and tear-down every training stage shares: the accelerator, the run folder on every
process, optimizer + schedule, resume from the newest checkpoint, periodic checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tuneloop.checkpoint import NamedState, latest_checkpoint, load_checkpoint, save_checkpoint
from tuneloop.runs import RunConfig, RunDir, new_run_dir
from tuneloop.runtime import keep_freed_memory
from tuneloop.train.optim import OptimConfig, build_optimizer, build_scheduler


def start_accelerator(seed: int):
    """An Accelerator (CPU when no GPU) with every RNG seeded."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    keep_freed_memory()
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    set_seed(seed)
    return accelerator


def open_run_dir(run_cfg: RunConfig, stage: str, accelerator, resume_dir: str | Path | None) -> RunDir:
    """The resumed run's folder, or a new one that the main process creates and every process learns."""
    if resume_dir is not None:
        return RunDir(Path(resume_dir))
    from accelerate.utils import broadcast_object_list

    holder = [str(new_run_dir(run_cfg, stage).path) if accelerator.is_main_process else None]
    broadcast_object_list(holder, from_process=0)
    return RunDir(Path(holder[0]))


def prepare_optimisation(model, cfg: OptimConfig, total_steps: int, accelerator):
    """AdamW + schedule, and the model/optimizer wrapped for the current distributed set-up."""
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, total_steps, cfg)
    model, optimizer = accelerator.prepare(model, optimizer)
    return model, optimizer, scheduler


def resume_if_any(run: RunDir, model, optimizer, scheduler, accelerator) -> dict[str, Any] | None:
    """Restore the newest complete checkpoint of ``run``; returns its plain state and step, or None."""
    path = latest_checkpoint(run.checkpoints)
    if path is None:
        return None
    resumed = load_checkpoint(accelerator, path, _named(model, optimizer, scheduler))
    if accelerator.is_main_process:
        print(f"[tuneloop] resuming {run.path} from {path.name}")
    return {**resumed.plain, "step": resumed.step}


def _named(model, optimizer, scheduler, plain: dict[str, Any] | None = None) -> NamedState:
    return NamedState({"model": model}, {"optimizer": optimizer}, {"scheduler": scheduler}, dict(plain or {}))


def checkpoint(run: RunDir, step: int, model, optimizer, scheduler, accelerator, state: dict[str, Any],
               keep: int) -> None:
    """Called by every process at an optimizer-step boundary."""
    save_checkpoint(accelerator, run.checkpoints, step, _named(model, optimizer, scheduler, state), keep)
