"""Step 5 of the RL loop: epochs × mini-batches of optimizer steps on one rollout, for the policy and
(with the gae estimator) the critic.

Each mini-batch is split into micro-batches; each micro-batch's *summed* loss is divided by the global
number of units of its mini-batch over all processes (``losses.reductions.token_normalised``, the one
normalisation every stage uses): tokens for ``token_mean`` and the value loss, sequences for the
sequence modes. Accumulation 2× on one process therefore equals 2 processes (tested).
Each epoch shuffles whole groups (``group_order``): a prompt's K rows stay together, so that a micro-batch
scores each prompt once for its samples (``rl_rollout.policy_logps``); with K = 1 it is a plain shuffle.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

import torch

from tuneloop.batches import Rollout
from tuneloop.losses.reductions import aggregate_loss, token_normalised
from tuneloop.losses.rl_policy import (
    PolicyLossInputs,
    PolicyLossParams,
    logprob_mismatch,
    policy_loss,
    truncated_is_weights,
    value_loss,
)
from tuneloop.losses.rl_rewards import kl_per_token
from tuneloop.train.accumulate import optimizer_step
from tuneloop.train.rl_config import RLConfig, RLPlan
from tuneloop.train.rl_rollout import critic_values, policy_logps

EXTREMES = ("policy/ratio_min", "policy/ratio_max")


@dataclass
class Trainee:
    """A model that trains in step 5 with its optimizer and schedule (prepared by accelerate)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    max_grad_norm: float | None


def _micro_losses(policy, critic, mb: Rollout, cfg: RLConfig, kl_coef: float
                  ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, float], torch.Tensor]:
    """(policy loss sum, value loss sum or None, token-mean metrics, π_old (B, A)) of one micro-batch.
    Without ``mb.old_logps`` (see ``rl.old_logps_from_update``) π_old is this forward's, detached."""
    a = cfg.algo
    mask = mb.loss_mask
    logps = policy_logps(policy, mb, cfg.rollout.sampling.temperature)
    if mb.old_logps is None:
        mb.old_logps = logps.detach()
    inputs = PolicyLossInputs(logps, mb.old_logps, mb.advantages, mask)
    params = PolicyLossParams(clip_low=a.clip_low, clip_high=a.clip_high, dual_clip=a.dual_clip)
    loss, metrics = policy_loss(a.policy_loss, inputs, params)
    if a.truncated_is_cap is not None:
        loss = loss * truncated_is_weights(mb.old_logps, mb.sampling_logps, a.truncated_is_cap)
    if a.kl_in == "loss":
        kl, _ = kl_per_token(a.kl_estimator, logps, mb.ref_logps, mask)
        loss = loss + kl_coef * kl
    constant = (a.aggregation_constant or float(cfg.rollout.sampling.max_new_tokens)
                if a.aggregation == "seq_mean_token_sum_norm" else None)
    policy_sum, _ = aggregate_loss(loss, mask, a.aggregation, constant)
    value_sum = None
    if critic is not None:
        values = critic_values(critic, mb)
        v_loss, v_metrics = value_loss(values, mb.values, mb.returns, mask, a.value_clip)
        value_sum, _ = aggregate_loss(v_loss, mask, "token_mean")
        metrics.update({k: v for k, v in v_metrics.items() if k != "tokens"})
    return policy_sum, value_sum, metrics, mb.old_logps


def _units(mb: Rollout, cfg: RLConfig) -> tuple[float, float]:
    """(policy units, value tokens) of a micro-batch, the counts its sums are normalised by."""
    dummy = torch.zeros_like(mb.loss_mask)
    constant = 1.0 if cfg.algo.aggregation == "seq_mean_token_sum_norm" else None
    return aggregate_loss(dummy, mb.loss_mask, cfg.algo.aggregation, constant)[1], float(mb.loss_mask.sum())


def update_on_rollout(policy: Trainee, critic: Trainee | None, rollout: Rollout, cfg: RLConfig, plan: RLPlan,
                      kl_coef: float, accelerator, seed: int, round_index: int) -> dict[str, float]:
    """Run E epochs × M mini-batches of optimizer steps; returns the round's update metrics. A rollout
    without π_old gets it from the micro-batches' forwards (one epoch of one mini-batch only)."""
    device, world = accelerator.device, accelerator.num_processes
    rows = rollout.num_rows
    old_from_forward = rollout.old_logps is None
    assert not old_from_forward or plan.epochs == plan.mini_batches == 1, (
        f"π_old from the update's forward needs 1 epoch × 1 mini-batch, got {plan.epochs} × {plan.mini_batches}")
    old_logps = torch.zeros_like(rollout.response_mask)
    sums: dict[str, float] = {}
    extremes: dict[str, list[float]] = {k: [] for k in EXTREMES}
    losses = {"loss/policy_avg": 0.0, "loss/value_avg": 0.0}
    steps = 0
    models = [t.model for t in (policy, critic) if t is not None]
    for epoch in range(plan.epochs):
        g = torch.Generator().manual_seed((seed * 1_000_003 + round_index) * 1_000_003 + epoch)
        order = group_order(rows, rollout.group_size, g)  # the same on every process: rows are local, order is not
        for mini in order.chunk(plan.mini_batches):
            pieces = mini.split(plan.micro_batch_size)
            micro = [rollout.rows(idx).to(device) for idx in pieces]
            local = torch.tensor([sum(_units(mb, cfg)[i] for mb in micro) for i in (0, 1)], dtype=torch.float64,
                                 device=device)
            global_units, global_tokens = accelerator.reduce(local, reduction="sum").tolist()
            if global_tokens == 0:  # every row filtered out (dynamic sampling / overlong filter)
                continue
            policy_total, value_total = 0.0, 0.0
            for i, mb in enumerate(micro):
                with ExitStack() as stack:
                    if i < len(micro) - 1:
                        for m in models:
                            stack.enter_context(accelerator.no_sync(m))
                    p_sum, v_sum, metrics, mb_old = _micro_losses(policy.model, critic.model if critic else None, mb,
                                                                  cfg, kl_coef)
                    old_logps[pieces[i]] = mb_old.cpu()
                    total = token_normalised(p_sum, global_units, world)
                    if v_sum is not None:
                        total = total + cfg.algo.vf_coef * token_normalised(v_sum, global_tokens, world)
                    accelerator.backward(total)
                policy_total += p_sum.item()
                value_total += v_sum.item() if v_sum is not None else 0.0
                tokens = metrics.pop("tokens")
                for key, value in metrics.items():
                    if key in extremes:
                        extremes[key].append(value)
                    else:
                        sums[key] = sums.get(key, 0.0) + value * tokens
                sums["tokens"] = sums.get("tokens", 0.0) + tokens
            packed = torch.tensor([policy_total, value_total], dtype=torch.float64, device=device)
            policy_total, value_total = accelerator.reduce(packed, reduction="sum").tolist()
            losses["loss/policy_avg"] += policy_total / global_units
            losses["loss/value_avg"] += value_total / global_tokens
            grad_norm, lr = optimizer_step(policy.model, policy.optimizer, policy.scheduler, accelerator,
                                           policy.max_grad_norm)
            sums["policy/grad_norm"] = sums.get("policy/grad_norm", 0.0) + grad_norm
            if critic is not None:
                optimizer_step(critic.model, critic.optimizer, critic.scheduler, accelerator, critic.max_grad_norm)
            steps += 1
    if old_from_forward:
        rollout.old_logps = old_logps
    return _reduce_metrics(sums, extremes, losses, steps, accelerator, critic is not None, lr if steps else 0.0)


def group_order(rows: int, group_size: int, generator: torch.Generator) -> torch.Tensor:
    """A random order of the rows (B,) that keeps each group's K rows together and in order: the groups
    are shuffled, so that a micro-batch's samples of one prompt share it in ``policy_logps``."""
    groups = torch.randperm(rows // group_size, generator=generator)
    return (groups[:, None] * group_size + torch.arange(group_size)).reshape(-1)


def _reduce_metrics(sums, extremes, losses, steps, accelerator, has_critic, lr) -> dict[str, float]:
    keys = sorted(k for k in sums if k not in ("tokens", "policy/grad_norm"))
    packed = torch.tensor([sums.get("tokens", 0.0)] + [sums[k] for k in keys], dtype=torch.float64,
                          device=accelerator.device)
    totals = accelerator.reduce(packed, reduction="sum").tolist()
    tokens = max(totals[0], 1.0)
    out = {k.replace("policy/clipfrac", "policy/clipfrac_avg").replace("policy/approxkl", "policy/approxkl_avg"):
           v / tokens for k, v in zip(keys, totals[1:])}
    for key, values in extremes.items():
        if values:
            local = torch.tensor([min(values) if key.endswith("min") else -max(values)], device=accelerator.device)
            gathered = accelerator.gather(local)
            out[key] = float(gathered.min()) if key.endswith("min") else -float(gathered.min())
    taken = max(steps, 1)
    out["loss/policy_avg"] = losses["loss/policy_avg"] / taken
    if has_critic:
        out["loss/value_avg"] = losses["loss/value_avg"] / taken
    out["policy/grad_norm"] = sums.get("policy/grad_norm", 0.0) / taken
    out["lr"] = lr
    out["optimizer_steps"] = float(steps)
    return out


def sampler_guard(rollout: Rollout) -> dict[str, float]:
    """Training forward vs sampler log-probs of the sampled tokens (before any update)."""
    return logprob_mismatch(rollout.old_logps, rollout.sampling_logps, rollout.response_mask)

