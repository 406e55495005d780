"""The one optimizer-step plumbing every training stage shares.

``accumulate_gradients`` runs forward/backward over one process's micro-batches of a step, dividing
each micro-batch's *summed* loss by the global count of units (trained tokens, pairs, …) in the
whole step over all processes (``losses.reductions.token_normalised``). Gradient synchronisation is
skipped on all but the last micro-batch. ``optimizer_step`` clips, steps and schedules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from tuneloop.losses.reductions import token_normalised


@dataclass
class StepTotals:
    loss: float  # the step's loss: Σ loss sums / global count, over all processes
    count: float  # global count of normalisation units (e.g. trained tokens) in the step
    metrics: dict[str, float]  # every other per-micro-batch metric, summed over micro-batches and processes


def accumulate_gradients(model, micro_batches: Sequence, loss_sum_fn: Callable, count_fn: Callable,
                         accelerator, on_micro_batch: Callable[[int], None] | None = None) -> StepTotals:
    """Backward over ``micro_batches``; ``loss_sum_fn(model, batch) -> (loss_sum, metrics)``,
    ``count_fn(batch) -> float`` gives the units ``loss_sum`` is summed over."""
    device = accelerator.device
    local_count = torch.tensor(float(sum(count_fn(b) for b in micro_batches)), dtype=torch.float64, device=device)
    global_count = accelerator.reduce(local_count, reduction="sum").item()
    world = accelerator.num_processes
    loss_total = torch.zeros((), dtype=torch.float64, device=device)
    metric_totals: dict[str, float] = {}
    for i, batch in enumerate(micro_batches):
        is_last = i == len(micro_batches) - 1
        with nullcontext() if is_last else accelerator.no_sync(model):
            loss_sum, metrics = loss_sum_fn(model, batch)
            accelerator.backward(token_normalised(loss_sum, global_count, world))
        loss_total += loss_sum.detach().double()
        for key, value in metrics.items():
            metric_totals[key] = metric_totals.get(key, 0.0) + float(value)
        if on_micro_batch is not None:
            on_micro_batch(i)
    keys = sorted(metric_totals)
    packed = torch.tensor([loss_total.item()] + [metric_totals[k] for k in keys], dtype=torch.float64, device=device)
    summed = accelerator.reduce(packed, reduction="sum").tolist()
    return StepTotals(summed[0] / global_count, global_count, dict(zip(keys, summed[1:])))


def optimizer_step(model, optimizer, scheduler, accelerator, max_grad_norm: float | None) -> tuple[float, float]:
    """Clip (when ``max_grad_norm``), step and schedule; returns (gradient norm before clipping, lr used)."""
    if max_grad_norm:
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    else:
        grads = [p.grad.detach().norm() for p in model.parameters() if p.grad is not None]
        grad_norm = torch.linalg.vector_norm(torch.stack(grads)) if grads else torch.zeros(())
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(grad_norm), lr
