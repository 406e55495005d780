"""The one typed config of the RL stage and its presets: ``tuneloop ppo | a2c | grpo | rloo``.

Every preset is this same ``RLConfig`` with other defaults in its ``algo`` and ``rollout`` sections
(``PPOConfig``, ``A2CConfig``, ``GRPOConfig``, ``RLOOConfig``); any key can still be overridden from
YAML or the command line. Papers, defaults and deliberate deviations: docs/rl.md.

- ``ppo``  Schulman et al. 2017 with the RLHF details of Huang et al. 2024 ("The N+ Implementation
  Details of RLHF with PPO") and Ziegler et al. 2019: critic + GAE(γ = 1, λ = 0.95), per-token k1 KL in
  the reward with the score on the last token, clipped surrogate (ε = 0.2) and clipped value loss
  (0.2), 4 epochs over 2 mini-batches, advantage whitening; see ``AlgoConfig`` for each.
- ``a2c``  Mnih et al. 2016 in the RLHF setting: the same critic and GAE, one update per rollout,
  vanilla policy gradient (no ratio, no clipping), unclipped value loss.
- ``grpo`` Shao et al. 2024: K = 4 samples per prompt, group mean/std advantages, no critic, k3 KL as a
  loss term (β = 0.04), sequence-mean-token-mean aggregation, one update per rollout.
- ``rloo`` Ahmadian et al. 2024: K = 4, leave-one-out baseline, k1 KL in the reward (β = 0.05), no
  critic, one update per rollout (vanilla policy gradient, as in the paper).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tuneloop.generation import SamplingConfig
from tuneloop.losses.reductions import LossAggregation
from tuneloop.losses.rl_advantages import AdvantageEstimator
from tuneloop.losses.rl_policy import PolicyLoss
from tuneloop.losses.rl_rewards import KLEstimator
from tuneloop.models import ModelConfig
from tuneloop.models.value import CriticInit
from tuneloop.runs import RunConfig
from tuneloop.train.loop import LoopConfig
from tuneloop.train.optim import OptimConfig

EstimatorName = Literal["gae", "grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"]
PolicyLossName = Literal["ppo_clip", "vanilla_pg", "gspo", "cispo"]
AggregationName = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]


@dataclass
class RolloutConfig:
    prompts: str = "bundled:review-prompts"
    """Prompts: {"prompt": ...} or {"messages": [...]} ending on a user turn (JSONL/Parquet/CSV), or bundled:<name>."""
    prompts_per_step: int = 8
    """Prompts sampled per optimizer-step round, over all processes (each process takes its share)."""
    samples_per_prompt: int = 1
    """K: responses sampled per prompt (≥ 2 for the group estimators)."""
    max_prompt_tokens: int = 256
    """Longer prompts keep their last max_prompt_tokens tokens."""
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=0.7, max_new_tokens=48))
    """Sampling of responses (temperature, top_p, top_k, max_new_tokens, batch_size)."""


@dataclass
class AlgoConfig:
    estimator: EstimatorName = "gae"
    """Advantage estimator: gae (critic), grpo, dr_grpo, rloo, reinforce_pp, reinforce_pp_baseline."""
    policy_loss: PolicyLossName = "ppo_clip"
    """Policy loss: ppo_clip, vanilla_pg (A2C), gspo, cispo."""
    aggregation: AggregationName = "token_mean"
    """How the per-token loss is averaged: token_mean, seq_mean_token_mean, seq_mean_token_sum_norm."""
    aggregation_constant: float | None = None
    """The constant of seq_mean_token_sum_norm (default: sampling.max_new_tokens)."""
    gamma: float = 1.0
    """γ, discount (Huang et al.: 1)."""
    lam: float = 0.95
    """λ of GAE (Huang et al.: 0.95)."""
    clip_low: float = 0.2
    """ε_low: ratio clipped below at 1 − ε_low."""
    clip_high: float = 0.2
    """ε_high: ratio clipped above at 1 + ε_high (DAPO's clip-higher: 0.28)."""
    dual_clip: float | None = None
    """c > 1: dual clip of ppo_clip on negative advantages (null: off)."""
    value_clip: float | None = 0.2
    """ε_v of the clipped value loss (null: unclipped)."""
    vf_coef: float = 0.1
    """Weight of the value loss (the critic is a separate model; this scales its gradient)."""
    kl_coef: float = 0.05
    """β: KL coefficient (initial value when adaptive)."""
    kl_target: float | None = None
    """Target response KL of the adaptive controller (Ziegler et al.); null: β fixed."""
    kl_horizon: float = 10000.0
    """Horizon (episodes) of the adaptive KL controller."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    """KL estimator used (all three are logged)."""
    kl_in: Literal["reward", "loss"] = "reward"
    """Where the KL penalty goes: per-token in the reward, or as a term added to the policy loss."""
    epochs: int = 4
    """Passes over each rollout (PPO epochs)."""
    mini_batches: int = 2
    """Optimizer steps per epoch: the rollout is split into this many mini-batches."""
    whiten_advantages: bool = True
    """Whiten advantages over the global batch (Huang et al.)."""
    normalise_scores: bool = False
    """Normalise scores with their running mean/std (saved in checkpoints)."""
    score_clip: float | None = None
    """Clip scores to [−c, c] after normalisation (null: off)."""
    missing_eos_penalty: float | None = None
    """Score given to a response cut at max_new_tokens without a stop token (null: keep its score)."""
    dynamic_sampling: bool = False
    """DAPO: drop groups whose K scores are all equal (they carry no signal for group estimators)."""
    overlong_filter: bool = False
    """DAPO: truncated responses do not contribute to the loss."""
    truncated_is_cap: float | None = None
    """C ≥ 1: multiply the policy loss by min(π_train/π_sampler, C) (a mismatched sampler); null: off."""

    def __post_init__(self) -> None:
        AdvantageEstimator(self.estimator), PolicyLoss(self.policy_loss), LossAggregation(self.aggregation)
        KLEstimator(self.kl_estimator)
        for key in ("epochs", "mini_batches"):
            if getattr(self, key) < 1:
                raise ValueError(f"algo.{key} must be ≥ 1, got {getattr(self, key)}")
        if self.clip_low < 0 or self.clip_high < 0 or self.clip_low >= 1:
            raise ValueError(f"algo.clip_low must be in [0, 1) and clip_high ≥ 0; got {self.clip_low}, "
                             f"{self.clip_high}")
        if self.kl_coef < 0:
            raise ValueError(f"algo.kl_coef must be ≥ 0, got {self.kl_coef}")


@dataclass
class CriticConfig:
    init: CriticInit = "policy"
    """Critic start: 'policy' (policy backbone, zero value head) or 'reward_model' (the RM's backbone and head)."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, warmup_ratio=0.0, schedule="linear"))
    """Optimizer and schedule of the critic."""


@dataclass
class RLConfig(LoopConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy (and, with LoRA, the reference: the same base with the adapter disabled)."""
    reward: str | dict[str, float] = ""
    """Reward: a reward-model folder, vader, readability, module:function, file.py:function, an http(s) URL,
    or a {spec: weight} mapping (a weighted mix)."""
    allow_weak_reward_model: bool = False
    """Go on (with a warning) when the reward model's held-out accuracy is not above chance."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Prompts and sampling."""
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    """Estimator, losses, KL and the PPO details."""
    critic: CriticConfig = field(default_factory=CriticConfig)
    """The value model (used by the gae estimator only)."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5, warmup_ratio=0.0, schedule="linear"))
    """Optimizer and schedule of the policy (linear decay: Huang et al.'s LR annealing)."""
    micro_batch_size: int = 4
    """Rows per forward/backward pass on one process."""
    steps: int = 20
    """Rollout rounds, each: generate, score, epochs × mini_batches optimizer steps (log_every, save_every count
    rounds)."""
    run: RunConfig = field(default_factory=RunConfig)
    """Run folder and seed."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eval_every:
            raise ValueError("eval_every: the RL stage has no periodic evaluation yet (run `tuneloop eval` on the "
                             "saved policy); leave it at 0")
        if self.steps < 1 or self.micro_batch_size < 1:
            raise ValueError(f"steps and micro_batch_size must be ≥ 1, got {self.steps}, {self.micro_batch_size}")


@dataclass
class PPOConfig(RLConfig):
    """``tuneloop ppo``: PPO with the RLHF details (the RLConfig defaults)."""


@dataclass
class OnePassAlgoConfig(AlgoConfig):
    """One optimizer step per rollout (A2C, GRPO, RLOO): one epoch, one mini-batch."""

    epochs: int = 1
    """Passes over each rollout (1: the policy that sampled is the one that trains, ratio 1)."""
    mini_batches: int = 1
    """Optimizer steps per epoch (1: one update per rollout)."""


@dataclass
class A2CAlgoConfig(OnePassAlgoConfig):
    """A2C's defaults: vanilla policy gradient, unclipped value loss."""

    policy_loss: PolicyLossName = "vanilla_pg"
    """Policy loss (A2C: vanilla_pg, no ratio, no clipping)."""
    value_clip: float | None = None
    """ε_v of the clipped value loss (A2C: null, plain squared error)."""


@dataclass
class A2CConfig(RLConfig):
    """``tuneloop a2c``: one vanilla policy-gradient update per rollout with a GAE critic."""

    algo: A2CAlgoConfig = field(default_factory=A2CAlgoConfig)
    """Estimator, losses, KL (A2C defaults: vanilla_pg, 1 epoch, 1 mini-batch, unclipped value loss)."""


@dataclass
class GroupRolloutConfig(RolloutConfig):
    """Rollouts of the group estimators: K = 4 samples per prompt by default."""

    samples_per_prompt: int = 4
    """K: responses sampled per prompt (≥ 2 for the group estimators)."""


@dataclass
class GRPOAlgoConfig(OnePassAlgoConfig):
    """GRPO's defaults (DeepSeekMath §4.1): group-normalised advantages, k3 KL as a loss term."""

    estimator: EstimatorName = "grpo"
    """Advantage estimator (GRPO: grpo; dr_grpo for Dr. GRPO)."""
    aggregation: AggregationName = "seq_mean_token_mean"
    """How the per-token loss is averaged (GRPO eq. 3: seq_mean_token_mean)."""
    kl_coef: float = 0.04
    """β (GRPO: 0.04)."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """KL estimator used (GRPO eq. 4: k3)."""
    kl_in: Literal["reward", "loss"] = "loss"
    """Where the KL penalty goes (GRPO: a loss term)."""
    whiten_advantages: bool = False
    """Whiten advantages over the batch (GRPO: off, they are normalised per group)."""


@dataclass
class GRPOConfig(RLConfig):
    """``tuneloop grpo``: group-relative advantages, KL as a k3 loss term, no critic."""

    rollout: GroupRolloutConfig = field(default_factory=GroupRolloutConfig)
    """Prompts and sampling (GRPO default: K = 4 samples per prompt)."""
    algo: GRPOAlgoConfig = field(default_factory=GRPOAlgoConfig)
    """Estimator, losses, KL (GRPO defaults: grpo, k3 KL loss β = 0.04, seq-mean-token-mean, 1 epoch)."""


@dataclass
class RLOOAlgoConfig(OnePassAlgoConfig):
    """RLOO's defaults (Ahmadian et al. 2024): leave-one-out baseline, REINFORCE update, KL in the reward."""

    estimator: EstimatorName = "rloo"
    """Advantage estimator (RLOO: rloo)."""
    policy_loss: PolicyLossName = "vanilla_pg"
    """Policy loss (RLOO: vanilla_pg, the REINFORCE gradient)."""
    whiten_advantages: bool = False
    """Whiten advantages over the batch (RLOO: off)."""


@dataclass
class RLOOConfig(RLConfig):
    """``tuneloop rloo``: leave-one-out baseline, KL in the reward, no critic."""

    rollout: GroupRolloutConfig = field(default_factory=GroupRolloutConfig)
    """Prompts and sampling (RLOO default: K = 4 samples per prompt)."""
    algo: RLOOAlgoConfig = field(default_factory=RLOOAlgoConfig)
    """Estimator, losses, KL (RLOO defaults: rloo, vanilla_pg, k1 KL in the reward, 1 epoch)."""


PRESETS: dict[str, type[RLConfig]] = {
    "ppo": PPOConfig, "a2c": A2CConfig, "grpo": GRPOConfig, "rloo": RLOOConfig}


@dataclass(frozen=True)
class RLPlan:
    """The batch plan of one rollout round, derived from the config and the number of processes."""

    prompts_per_step: int  # N, over all processes
    samples_per_prompt: int  # K
    world_size: int  # W
    mini_batches: int  # M optimizer steps per epoch
    epochs: int  # E
    micro_batch_size: int  # rows per forward/backward on one process
    rounds: int  # rollout rounds of the run
    num_prompts: int  # prompts in the prompt set

    @property
    def total_steps(self) -> int:
        """Rounds: the unit the loop counts (logging, checkpoints, resume)."""
        return self.rounds

    @property
    def steps_per_epoch(self) -> int:
        """Rounds per pass over the prompt set."""
        return max(1, self.num_prompts // self.prompts_per_step)

    @property
    def episodes(self) -> int:
        """B = N·K responses per round, over all processes."""
        return self.prompts_per_step * self.samples_per_prompt

    @property
    def rows_per_process(self) -> int:
        return self.episodes // self.world_size

    @property
    def accumulation_steps(self) -> int:
        """Micro-batches per mini-batch on one process."""
        return self.rows_per_process // (self.mini_batches * self.micro_batch_size)

    @property
    def optimizer_steps(self) -> int:
        return self.rounds * self.epochs * self.mini_batches

    def describe(self) -> str:
        return (f"{self.prompts_per_step} prompts × K={self.samples_per_prompt} = {self.episodes} episodes per round "
                f"over {self.world_size} process(es); {self.epochs} epoch(s) × {self.mini_batches} mini-batch(es) of "
                f"{self.episodes // self.mini_batches} episodes = {self.accumulation_steps} accumulation × "
                f"{self.micro_batch_size} rows × {self.world_size} process(es); {self.rounds} rounds, "
                f"{self.optimizer_steps} optimizer steps")


def make_rl_plan(cfg: RLConfig, world_size: int, num_prompts: int) -> RLPlan:
    """Validate the batch plan; errors name the numbers that disagree and the keys that set them."""
    from tuneloop.config import ConfigError

    r, a = cfg.rollout, cfg.algo
    if r.prompts_per_step < 1 or r.samples_per_prompt < 1:
        raise ConfigError(f"rollout.prompts_per_step and rollout.samples_per_prompt must be ≥ 1, got "
                          f"{r.prompts_per_step} and {r.samples_per_prompt}")
    if AdvantageEstimator(a.estimator).needs_groups and r.samples_per_prompt < 2:
        raise ConfigError(f"algo.estimator '{a.estimator}' compares the K samples of one prompt: it needs "
                          f"rollout.samples_per_prompt ≥ 2, got K={r.samples_per_prompt}")
    if r.prompts_per_step % world_size:
        raise ConfigError(f"impossible batch plan: rollout.prompts_per_step={r.prompts_per_step} is not a multiple "
                          f"of the {world_size} processes (each process samples whole groups of its own prompts)")
    rows = r.prompts_per_step * r.samples_per_prompt // world_size
    per_mini = a.mini_batches * cfg.micro_batch_size
    if rows % per_mini:
        raise ConfigError(
            f"impossible batch plan: each process holds prompts_per_step {r.prompts_per_step} × samples_per_prompt "
            f"{r.samples_per_prompt} / {world_size} processes = {rows} episodes, not a multiple of algo.mini_batches "
            f"{a.mini_batches} × micro_batch_size {cfg.micro_batch_size} = {per_mini}")
    return RLPlan(r.prompts_per_step, r.samples_per_prompt, world_size, a.mini_batches, a.epochs,
                  cfg.micro_batch_size, cfg.steps, num_prompts)


def stage_name(cfg: RLConfig) -> str:
    """'ppo', 'a2c', 'grpo' or 'rloo' for a preset's config; 'rl' for the plain RLConfig."""
    return next((name for name, cls in PRESETS.items() if type(cfg) is cls), "rl")
