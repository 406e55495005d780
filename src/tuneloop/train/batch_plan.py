"""How a global batch becomes micro-batches on each process, and the data order of every epoch.

``batch_size`` is the number of sequences (documents, or packs when packing) in one optimizer step
over all processes; each process runs ``accumulation_steps`` forward/backward passes of
``micro_batch_size`` sequences. accumulation_steps = batch_size / (micro_batch_size × world_size) is
derived, never configured, and must be a whole number.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tuneloop.config import ConfigError


@dataclass
class BatchConfig:
    batch_size: int = 8
    """Sequences per optimizer step, summed over all processes and accumulation steps."""
    micro_batch_size: int = 4
    """Sequences per forward/backward pass on one process."""
    epochs: int = 1
    """Passes over the training data."""
    max_steps: int | None = None
    """Train for exactly this many optimizer steps, overriding epochs (the data repeats as needed)."""

    def __post_init__(self) -> None:
        for key in ("batch_size", "micro_batch_size", "epochs"):
            if getattr(self, key) < 1:
                raise ValueError(f"batch.{key} must be ≥ 1, got {getattr(self, key)}")


@dataclass(frozen=True)
class BatchPlan:
    batch_size: int
    micro_batch_size: int
    world_size: int
    steps_per_epoch: int
    total_steps: int

    @property
    def accumulation_steps(self) -> int:
        return self.batch_size // (self.micro_batch_size * self.world_size)

    @property
    def per_process(self) -> int:
        return self.batch_size // self.world_size


def make_batch_plan(cfg: BatchConfig, num_sequences: int, world_size: int) -> BatchPlan:
    per_step = cfg.micro_batch_size * world_size
    if cfg.batch_size % per_step:
        raise ConfigError(
            f"impossible batch plan: batch.batch_size={cfg.batch_size} is not a multiple of "
            f"batch.micro_batch_size={cfg.micro_batch_size} × processes={world_size} = {per_step}")
    if num_sequences < cfg.batch_size:
        raise ConfigError(f"impossible batch plan: batch.batch_size={cfg.batch_size} but the training data "
                          f"holds only {num_sequences} sequences")
    steps_per_epoch = num_sequences // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        if cfg.max_steps < 1:
            raise ConfigError(f"batch.max_steps must be ≥ 1 or null, got {cfg.max_steps}")
        total = cfg.max_steps
    return BatchPlan(cfg.batch_size, cfg.micro_batch_size, world_size, steps_per_epoch, total)


def epoch_order(num_sequences: int, seed: int, epoch: int) -> list[int]:
    """The shuffled order of epoch ``epoch``: a pure function of (seed, epoch), so resume needs only the step."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_sequences, generator=generator).tolist()


def step_micro_batches(plan: BatchPlan, step: int, seed: int, num_sequences: int, rank: int) -> list[list[int]]:
    """Indices of this process's micro-batches for optimizer step ``step`` (0-based, over all epochs)."""
    epoch, index = divmod(step, plan.steps_per_epoch)
    order = epoch_order(num_sequences, seed, epoch)
    chosen = order[index * plan.batch_size:(index + 1) * plan.batch_size]
    mine = chosen[rank::plan.world_size]
    m = plan.micro_batch_size
    return [mine[i:i + m] for i in range(0, len(mine), m)]
