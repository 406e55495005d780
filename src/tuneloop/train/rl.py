"""RL against the reward: PPO, A2C, GRPO, RLOO and REINFORCE++ on one rollout → experience → update loop.

Run: ``tuneloop ppo|a2c|grpo|rloo --config rl.yaml --reward RM_FOLDER [--section.key value ...] [--resume]``
or   ``from tuneloop.train.rl import train; from tuneloop.train.rl_config import PPOConfig; train(cfg)``.

Each round:
  1. generate: this process's share of the round's prompts, K responses each (``train.rl_rollout``)
  2. score: the reward on the decoded responses; missing-EOS penalty, running normalisation, clipping
  3. KL-penalised rewards: old policy, reference (and critic) forward passes; per-token KL; −β·KL in
     the reward or kept for the loss term
  4. advantages: the configured estimator (``losses.rl_advantages``), whitened over the global batch
     where configured; DAPO's filters set the loss mask
  5. update: epochs × mini-batches of optimizer steps for the policy and the critic (``train.rl_update``)
  6. log: metrics, the table of sampled responses, the adaptive KL coefficient, checkpoints
The variants are enums mapping to pure functions in ``losses/``; nothing here branches on their names
beyond choosing them. Papers, defaults and deviations of each preset: docs/rl.md.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tuneloop.atomic import atomic_write_text, jsonl_text
from tuneloop.batches import Rollout
from tuneloop.checkpoint import NamedState
from tuneloop.config import ConfigError
from tuneloop.curves import ROUND_AXIS
from tuneloop.losses.rl_advantages import (
    AdvantageEstimator,
    AdvantageInputs,
    AdvantageParams,
    compute_advantages,
    masked_moments,
    masked_whiten,
)
from tuneloop.losses.rl_policy import explained_variance
from tuneloop.losses.rl_rewards import (
    KLController,
    RunningMoments,
    clip_scores,
    kl_per_token,
    normalise_scores,
    penalise_missing_eos,
)
from tuneloop.models import load_causal_lm
from tuneloop.models.loading import load_tokenizer, save_model
from tuneloop.models.matmul import with_fast_linear
from tuneloop.models.value import build_value_model
from tuneloop.runs import RunDir
from tuneloop.train.optim import build_optimizer, build_scheduler
from tuneloop.train.rl_config import RLConfig, RLPlan, make_rl_plan, stage_name
from tuneloop.train.rl_rollout import (
    PromptSet,
    disable_dropout,
    initial_reference,
    load_prompts,
    policy_logps,
    reference_logps,
    _quiet,
    critic_values,
    round_prompts,
    sample_rollout,
)
from tuneloop.train.rl_update import Trainee, sampler_guard, update_on_rollout
from tuneloop.train.loop import Loop, finish, open_run, start_accelerator, start_loop

SAMPLES_FILE = "samples.jsonl"
SAMPLES_PER_LOG = 8  # rows of the sampled-responses table written at each log step
CURVE_PANELS = [
    ("score", ["objective/scores", "objective/rlhf_reward"]),
    ("KL to reference", ["objective/kl"]),
    ("KL coefficient", ["kl_coef"]),
    ("policy loss", ["loss/policy_avg"]),
    ("value loss", ["loss/value_avg"]),
    ("clip fraction", ["policy/clipfrac_avg"]),
    ("response length", ["completions/mean_length"]),
    ("sampler vs trainer |Δ log p|", ["sampling/sampling_logp_difference/mean"]),
    ("entropy", ["objective/entropy"]),
]


@dataclass
class RLResult:
    run_dir: Path
    model_dir: Path
    summary: dict


@dataclass
class _Session:
    accelerator: object
    tokenizer: object
    prompts: PromptSet
    reward: object
    plan: RLPlan
    policy: Trainee
    critic: Trainee | None
    reference: torch.nn.Module | None  # None: the policy with its LoRA adapter disabled
    loop: Loop

    @property
    def kl(self) -> KLController:
        return KLController(**self.loop.state.plain["kl"])

    @property
    def moments(self) -> RunningMoments:
        return RunningMoments(**self.loop.state.plain["score_moments"])


def _reward_spec(cfg: RLConfig):
    """The spec ``load_reward`` takes, after the reward-model gate on every folder it names."""
    from tuneloop.rewards import check_reward_model
    from tuneloop.rewards.aspects import split_spec

    if not cfg.reward:
        raise ConfigError("reward: no reward given; set --reward to a reward-model folder, vader, module:function, "
                          "file.py:function, an http(s) URL, or a {spec: weight} mapping")
    specs = cfg.reward if isinstance(cfg.reward, dict) else {cfg.reward: 1.0}
    for spec in specs:
        if Path(split_spec(str(spec))[0]).is_dir():  # a folder, or a multi-aspect folder?weights=… spec
            check_reward_model(spec, allow_weak=cfg.allow_weak_reward_model)
    return list(specs.items()) if isinstance(cfg.reward, dict) else cfg.reward


def _load_reward(cfg: RLConfig):
    from tuneloop.rewards import load_reward

    spec = _reward_spec(cfg)
    try:
        return load_reward(spec)
    except (FileNotFoundError, ValueError, ImportError, AttributeError) as err:
        raise ConfigError(f"reward: {spec!r} does not load: {err}") from None


def _trainee(model, optim_cfg, total_steps: int, accelerator) -> Trainee:
    optimizer = build_optimizer(model, optim_cfg)
    scheduler = build_scheduler(optimizer, total_steps, optim_cfg)
    model, optimizer = accelerator.prepare(model, optimizer)
    return Trainee(model, optimizer, scheduler, optim_cfg.max_grad_norm)


def _setup(cfg: RLConfig, resume_dir: str | Path | None) -> _Session:
    accelerator = start_accelerator(cfg.run.seed)
    # Prompts, reward and batch plan first: they fail here, before any model loads or folder exists.
    prompts = load_prompts(cfg.rollout.prompts, load_tokenizer(cfg.model.name), cfg.rollout.max_prompt_tokens)
    plan = make_rl_plan(cfg, accelerator.num_processes, len(prompts.messages))
    reward = _load_reward(cfg)
    policy, tokenizer = load_causal_lm(cfg.model)
    disable_dropout(policy)
    reference = initial_reference(policy)  # before any checkpoint loads: the reference is the initial policy
    trainees = {"policy": _trainee(policy, cfg.optim, plan.optimizer_steps, accelerator)}
    if AdvantageEstimator(cfg.algo.estimator).needs_critic:
        critic_model = build_value_model(cfg.critic.init, cfg.model,
                                         cfg.reward if isinstance(cfg.reward, str) else None)
        disable_dropout(critic_model)
        trainees["critic"] = _trainee(critic_model, cfg.critic.optim, plan.optimizer_steps, accelerator)
    stage = stage_name(cfg)
    run = open_run(cfg, stage, accelerator, resume_dir)
    plain = {"kl": dataclasses.asdict(KLController(cfg.algo.kl_coef, cfg.algo.kl_target, cfg.algo.kl_horizon)),
             "score_moments": dataclasses.asdict(RunningMoments()), "episodes": 0}
    state = NamedState({k: t.model for k, t in trainees.items()}, {k: t.optimizer for k, t in trainees.items()},
                       {k: t.scheduler for k, t in trainees.items()}, plain)
    a = cfg.algo
    banner = (f"{len(prompts.messages)} prompts; {plan.describe()}; estimator {a.estimator}, policy loss "
              f"{a.policy_loss}, KL {a.kl_estimator} in the {a.kl_in} (β {a.kl_coef:g}"
              f"{', adaptive' if a.kl_target else ''})")
    if accelerator.is_main_process:
        print(f"[tuneloop] {stage}: {banner}; run folder {run.path}", flush=True)
        sampling = cfg.rollout.sampling
        if sampling.top_p < 1 or sampling.top_k:
            print("[tuneloop] warning: top_p/top_k sample from a truncated distribution, but log-probs (the ratio "
                  "and the KL) are scored under the full one; expect the sampler/trainer guard to show it")
    loop = start_loop(cfg, stage, accelerator, run, plan, state, resume_dir is not None, banner=None)
    return _Session(accelerator, tokenizer, prompts, reward, plan, trainees["policy"], trainees.get("critic"),
                    reference, loop)


def _global_means(values: dict[str, torch.Tensor], accelerator) -> dict[str, float]:
    """Means over every row of every process of per-row values (B,)."""
    keys = sorted(values)
    local = torch.tensor([float(values[k].float().sum()) for k in keys] + [float(values[keys[0]].numel())],
                         dtype=torch.float64, device=accelerator.device)
    total = accelerator.reduce(local, reduction="sum").tolist()
    return {k: v / max(total[-1], 1.0) for k, v in zip(keys, total[:-1])}


def _score(s: _Session, cfg: RLConfig, rollout: Rollout, texts: list[str]) -> None:
    """Step 2: raw scores → penalties → running normalisation → clipping, into the rollout."""
    a = cfg.algo
    raw = s.reward.score([s.prompts.messages[p] for p in rollout.prompt_index.tolist()], texts).float()
    scores = penalise_missing_eos(raw, rollout.ended, a.missing_eos_penalty)
    if a.normalise_scores:
        moments = s.moments.update(s.accelerator.gather(scores.to(s.accelerator.device)).cpu())
        s.loop.state.plain["score_moments"] = dataclasses.asdict(moments)
        scores = normalise_scores(scores, moments, a.score_clip)
    else:
        scores = clip_scores(scores, a.score_clip)
    rollout.raw_scores, rollout.scores = raw, scores


def old_logps_from_update(cfg: RLConfig) -> bool:
    """Whether the update's own forward gives π_old: one epoch of one mini-batch (every micro-batch's
    forward runs before the only optimizer step, on the weights that sampled), the KL in the loss (the
    advantages do not need π_old) and no filter that can skip the step. Then the experience step skips
    its old-policy forward, as TRL's GRPO does; the KL metrics and the sampler guard follow the update."""
    a = cfg.algo
    return (a.epochs == 1 and a.mini_batches == 1 and a.kl_in == "loss" and not a.dynamic_sampling
            and not a.overlong_filter)


@torch.no_grad()
def _experience(s: _Session, cfg: RLConfig, rollout: Rollout) -> dict[str, float]:
    """Steps 3–4: log-probs, values, KL-penalised rewards, advantages and the loss mask, into the rollout."""
    a, acc = cfg.algo, s.accelerator
    temperature = cfg.rollout.sampling.temperature
    on_device = rollout.to(acc.device)
    if not old_logps_from_update(cfg):
        rollout.old_logps = policy_logps(s.policy.model, on_device, temperature).cpu()
    rollout.ref_logps = reference_logps(s.policy.model, s.reference, on_device, temperature).cpu()
    if s.critic is not None:
        rollout.values = critic_values(s.critic.model, on_device).cpu()
    mask = rollout.response_mask
    non_score = torch.zeros_like(mask)
    if a.kl_in == "reward":
        non_score = -s.kl.coef * kl_per_token(a.kl_estimator, rollout.old_logps, rollout.ref_logps, mask)[0]
    keep = torch.ones(rollout.num_rows)
    if a.overlong_filter:
        keep = keep * rollout.ended.float()
    if a.dynamic_sampling:  # DAPO: a group whose scores are all equal carries no signal
        groups = rollout.scores.view(-1, rollout.group_size)
        keep = keep * (groups.max(1).values > groups.min(1).values).float().repeat_interleave(rollout.group_size)
    rollout.loss_mask = mask * keep[:, None]
    inputs = AdvantageInputs(rollout.scores, non_score, mask, rollout.values, rollout.group_size)
    advantages, returns, adv_metrics = compute_advantages(a.estimator, inputs, AdvantageParams(a.gamma, a.lam))
    if a.whiten_advantages or AdvantageEstimator(a.estimator).whitens_batch:
        moments = acc.reduce(masked_moments(advantages, rollout.loss_mask).to(acc.device), reduction="sum").cpu()
        if moments[2] >= 2:
            advantages = masked_whiten(advantages, rollout.loss_mask, moments)
    rollout.advantages, rollout.returns = advantages, returns
    per_row = {"objective/entropy": -(rollout.sampling_logps * mask).sum(-1),
               "objective/scores": rollout.scores, "objective/raw_scores": rollout.raw_scores,
               "objective/non_score_reward": (non_score * mask).sum(-1),
               "objective/rlhf_reward": rollout.scores + (non_score * mask).sum(-1),
               "completions/mean_length": mask.sum(-1), "completions/clipped_ratio": (~rollout.ended).float(),
               "filtered/kept_fraction": keep}
    per_row.update({k: torch.full((rollout.num_rows,), v) for k, v in adv_metrics.items()})  # one per process
    metrics = _global_means(per_row, acc)
    if rollout.values is not None:
        metrics["val/vf_explained_var"] = explained_variance(rollout.values, returns, mask)
    if rollout.old_logps is not None:
        metrics.update(_old_policy_metrics(s, cfg, rollout))
    return metrics


def _old_policy_metrics(s: _Session, cfg: RLConfig, rollout: Rollout) -> dict[str, float]:
    """The KL to the reference (the configured estimator and k1/k2/k3) and the sampler/trainer guard, from
    π_old: after the experience step, or after the update when it computed π_old."""
    mask = rollout.response_mask
    kl, kl_metrics = kl_per_token(cfg.algo.kl_estimator, rollout.old_logps, rollout.ref_logps, mask)
    per_row = {"objective/kl": (kl * mask).sum(-1)}
    batch_level = {**kl_metrics, **sampler_guard(rollout)}  # one value per process: each row holds it
    per_row.update({k: torch.full((rollout.num_rows,), v) for k, v in batch_level.items()})
    return _global_means(per_row, s.accelerator)


def _drop_replayed_samples(run: RunDir, rounds_done: int) -> None:
    """A resumed run replays the rounds after its checkpoint: their rows from before the stop are dropped from
    samples.jsonl (rewritten atomically), so each round's samples appear once, as in an uninterrupted run."""
    path = run.path / SAMPLES_FILE
    if path.is_file():
        kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line)["step"] <= rounds_done]
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))


def _write_samples(run: RunDir, round_done: int, s: _Session, rollout: Rollout, texts: list[str]) -> None:
    rows = []
    for b in range(min(SAMPLES_PER_LOG, rollout.num_rows)):
        log_ratio = (rollout.old_logps[b] - rollout.ref_logps[b]) * rollout.response_mask[b]
        rows.append({"step": round_done, "prompt": s.prompts.messages[int(rollout.prompt_index[b])][-1]["content"],
                     "response": texts[b], "score": float(rollout.scores[b]),
                     "raw_score": float(rollout.raw_scores[b]), "kl": float(log_ratio.sum()),
                     "tokens": int(rollout.response_mask[b].sum()), "ended": bool(rollout.ended[b])})
    with open(run.path / SAMPLES_FILE, "a", encoding="utf-8") as f:
        f.write(jsonl_text(rows))
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return
    table = "| prompt | response | score |\n|---|---|---|\n" + "".join(
        f"| {r['prompt'][:120]!r} | {r['response'][:200]!r} | {r['score']:.3f} |\n" for r in rows)
    with SummaryWriter(log_dir=str(run.path / "tensorboard")) as writer:
        writer.add_text("samples", table, round_done)


@with_fast_linear  # fp32 linear layers on oneDNN for the run where it beats MKL (models/matmul.py)
def train(cfg: RLConfig, resume_dir: str | Path | None = None,
          on_round: Callable[[int], None] | None = None) -> RLResult:
    """Train the policy against the reward; ``on_round(rounds_done)`` is called after each round's
    log and checkpoint (tests use it to stop a run at a chosen point)."""
    s = _setup(cfg, resume_dir)
    acc, plan, loop, k = s.accelerator, s.plan, s.loop, cfg.rollout.samples_per_prompt
    if loop.start_step and loop.is_main:
        _drop_replayed_samples(loop.run, loop.start_step)
    share, rank = plan.prompts_per_step // plan.world_size, acc.process_index
    metrics: dict[str, float] = {}
    for round_index in loop.steps():
        t0 = time.time()
        # 1. generate: this process's share of the round's prompts, K responses each
        positions = round_prompts(len(s.prompts.token_ids), plan.prompts_per_step, round_index, cfg.run.seed)
        mine = range(rank * share, (rank + 1) * share)
        rollout, gens = sample_rollout(acc.unwrap_model(s.policy.model), s.tokenizer, s.prompts,
                                       [positions[i] for i in mine], list(mine), k, cfg.rollout.sampling,
                                       cfg.run.seed, round_index,
                                       log=print if round_index == loop.start_step and loop.is_main else _quiet)
        texts = [g.text for g in gens]
        t1 = time.time()
        # 2. score
        _score(s, cfg, rollout, texts)
        t2 = time.time()
        # 3-4. KL-penalised rewards and advantages
        metrics = _experience(s, cfg, rollout)
        t3 = time.time()
        # 5. update
        metrics.update(update_on_rollout(s.policy, s.critic, rollout, cfg, plan, s.kl.coef, acc, cfg.run.seed,
                                         round_index))
        if old_logps_from_update(cfg):  # the update filled π_old in
            metrics.update(_old_policy_metrics(s, cfg, rollout))
        t4 = time.time()
        # 6. log, adapt β, checkpoint
        loop.state.plain["episodes"] += plan.episodes
        metrics.update({"kl_coef": s.kl.coef, "episodes": float(loop.state.plain["episodes"]),
                        "timing/generate_s": t1 - t0, "timing/score_s": t2 - t1, "timing/experience_s": t3 - t2,
                        "timing/update_s": t4 - t3, "timing/round_s": t4 - t0,
                        "timing/episodes_per_s": plan.episodes / max(t4 - t0, 1e-9)})
        loop.state.plain["kl"] = dataclasses.asdict(s.kl.update(metrics["objective/kl"], plan.episodes))
        loop.end_step(round_index, metrics,
                      shown={"score": metrics["objective/scores"], "kl": metrics["objective/kl"]})
        done = round_index + 1
        if acc.is_main_process and (done % cfg.log_every == 0 or done == plan.rounds):
            _write_samples(loop.run, done, s, rollout, texts)
        if on_round is not None:
            on_round(done)
    unwrapped = acc.unwrap_model(s.policy.model)
    summary = finish(loop, dict, lambda folder: save_model(unwrapped, s.tokenizer, folder, cfg.model.lora),
                     {"stage": stage_name(cfg), "plan": plan.describe(), "final": metrics,
                      "episodes_per_s": loop.per_second("episodes")},
                     CURVE_PANELS, f"{loop.run.path.name}: {stage_name(cfg)}, {cfg.model.name}", ROUND_AXIS)
    return RLResult(loop.run.path, loop.run.model, summary)
