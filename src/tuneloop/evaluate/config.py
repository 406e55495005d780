"""Typed config of ``tuneloop eval`` (YAML ↔ ``--section.key`` overrides, as every stage)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tuneloop.generation import SamplingConfig


@dataclass
class PolicySpec:
    name: str = ""
    """Short name shown in tables and plots (e.g. 'sft', 'dpo', 'ppo')."""
    model: str = ""
    """Model folder, bundled name or hub id to sample from."""
    checkpoints: list[str] = field(default_factory=list)
    """Earlier states of this policy for the over-optimisation curve, in training order: model folders, or
    a run folder whose checkpoints/step-N are exported to model folders first."""
    samples_per_prompt: int | None = None
    """Samples per prompt for this policy (default: eval.samples_per_prompt); ≥ 2 with a reward model gives its
    best-of-n curve."""
    method: str = "rl"
    """How the checkpoints were made, for Gao et al.'s fit: 'rl' (d(α − β log d)) or 'best_of_n' (d(α − βd))."""


@dataclass
class Comparison:
    a: str = ""
    """Policy name whose win rate is reported."""
    b: str = ""
    """Policy name it is compared with (on the same prompts, first sample of each)."""


@dataclass
class BootstrapConfig:
    resamples: int = 1000
    """Bootstrap resamples per interval."""
    confidence: float = 0.95
    """Two-sided confidence level of every interval."""


@dataclass
class EvalConfig:
    policies: list[PolicySpec] = field(default_factory=list)
    """The policies to evaluate, each {name, model[, checkpoints, method]}."""
    reference: str | None = None
    """Model the KL is measured to (the SFT policy, usually); default: the first policy's model. Must share its
    tokenizer with every policy."""
    prompts: str = "bundled:review-prompts"
    """Held-out prompts file ({'prompt'} or {'messages'} records) or bundled:<name>."""
    limit: int | None = None
    """Evaluate on this many prompts, drawn with ``seed`` (default: all)."""
    samples_per_prompt: int = 1
    """Samples per prompt and policy (K); with K ≥ 2 and a reward model, the best-of-n curve of each policy."""
    gold: list[str] = field(default_factory=lambda: ["vader"])
    """Gold scorers the policies never trained on: 'vader', 'readability', or any reward spec (module:function)."""
    reward: str | None = None
    """Reward-model folder (or any reward spec): the proxy score, and the selector for best-of-n."""
    judge: str | None = None
    """Pairwise judge 'module:function' with (prompt, response_a, response_b) → P(a better) in [0, 1]; asked in
    both orders and averaged, so position bias cancels."""
    compare: list[Comparison] = field(default_factory=list)
    """Win rates to report; default: every other policy against the first."""
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=1.0, top_p=1.0,
                                                                              max_new_tokens=48, batch_size=16))
    """How every policy samples (the same for all, so they are compared fairly)."""
    seed: int = 0
    """Seed of the prompt draw and of sampling (the same for every policy)."""
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    """Confidence intervals."""
    samples_in_report: int = 8
    """Prompts whose responses (all policies, side by side) are kept in eval.json for the report."""
    out: str = "runs/eval"
    """Output folder: eval.json (metrics, win rates, curves, samples) and samples-<policy>.jsonl."""

    def __post_init__(self) -> None:
        names = [p.name for p in self.policies]
        if any(not p.name or not p.model for p in self.policies):
            raise ValueError("every policy needs a name and a model")
        if len(set(names)) != len(names):
            raise ValueError(f"policy names must be unique, got {names}")
        for c in self.compare:
            for side in (c.a, c.b):
                if side not in names:
                    raise ValueError(f"compare names policy {side!r}; policies are {names}")
        for p in self.policies:
            if p.samples_per_prompt is not None and p.samples_per_prompt < 1:
                raise ValueError(f"policy {p.name}: samples_per_prompt must be ≥ 1, got {p.samples_per_prompt}")
            if p.method not in ("rl", "best_of_n"):
                raise ValueError(f"policy {p.name}: method must be 'rl' or 'best_of_n', got {p.method!r}")
        if self.samples_per_prompt < 1:
            raise ValueError(f"samples_per_prompt must be ≥ 1, got {self.samples_per_prompt}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be ≥ 1, got {self.limit}")
