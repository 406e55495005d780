"""The configuration of ``tuneloop reward``: data (judgments and/or aspect scores), the loss, the
backbone and its heads, batch sizes, optimizer and the loop's schedule (``tuneloop reward --help-config``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tuneloop.data.split import EVAL_FRACTION, check_eval_fraction
from tuneloop.models.bundled_encoder import BUNDLED_ENCODER
from tuneloop.models.loading import AttnImplementation, ModelConfig
from tuneloop.runs import RunConfig
from tuneloop.train.batch_plan import BatchConfig
from tuneloop.train.loop import LoopConfig
from tuneloop.train.optim import OptimConfig


@dataclass
class RewardDataConfig:
    train: str | None = None
    """Judgments: pairs, HH-RLHF transcripts, rankings or a labelling-app export (JSONL/Parquet/CSV/dataset folder)."""
    eval: str | None = None
    """Held-out judgments in the same forms; when null, eval_fraction of the training prompts is held out."""
    eval_fraction: float = EVAL_FRACTION
    """Share of distinct prompts held out for evaluation when no eval file is given (split by prompt, fixed seed)."""
    reference: str | None = None
    """Policy samples to normalise scores on (a `tuneloop sample` candidates file, or pairs); null: the eval responses."""
    max_length: int = 512
    """Tokens per (prompt, response); longer ones keep the whole response and the end of the prompt."""
    scores: str | None = None
    """Aspect scores: a `tuneloop label export` scores.jsonl (or its export folder); one head per aspect learns them."""
    eval_scores: str | None = None
    """Held-out aspect scores in the same form; when null, eval_fraction of the scored prompts is held out."""
    score_field: Literal["scores", "adjusted"] = "scores"
    """What the aspect heads learn: the mean human scores, or the rater-adjusted means (export --adjust-raters)."""
    aspects: list[str] | None = None
    """The aspects to learn, in head order (null: every aspect in data.scores, sorted)."""

    def __post_init__(self) -> None:
        check_eval_fraction(self.eval_fraction)


@dataclass
class RewardLossConfig:
    ranking: Literal["pairwise", "plackett_luce"] = "pairwise"
    """Loss of a K-way ranking: mean BT loss over all its pairs (InstructGPT), or its Plackett–Luce likelihood."""
    include_tie_pairs: bool = True
    """Rankings with the pairwise loss: also pull the scores of tied candidates together (soft label ½)."""
    use_margin: bool = True
    """Use each pair's 'margin' in the BT loss, −log σ(r_c − r_r − m) (Llama 2)."""
    per_prompt_weighting: bool = True
    """Weight each unit 1 / (units of its prompt), so a prompt judged many times counts once."""
    centering: float = 0.0
    """Reward-centering coefficient η·(r_c + r_r)² (Eisenstein et al. 2023 use 0.01); 0 disables."""
    aspects: Literal["regression", "ordinal"] = "regression"
    """Aspect-score loss: squared error to the standardised mean score, or the all-threshold ordinal loss on the votes."""
    pairwise_weight: float = 1.0
    """With data.scores and data.train both given: weight of the pairwise (preference-head) loss against the aspect loss."""

    def __post_init__(self) -> None:
        if self.pairwise_weight < 0:
            raise ValueError(f"loss.pairwise_weight must be ≥ 0, got {self.pairwise_weight}")


@dataclass
class RewardModelConfig(ModelConfig):
    name: str = BUNDLED_ENCODER
    """Backbone: 'minilm-l6' (bundled encoder), a causal LM ('smollm2-135m-instruct', 'tiny-llama', a folder) or a hub id."""
    kind: Literal["auto", "causal_lm", "encoder"] = "auto"
    """Reward-model kind; 'auto' picks 'encoder' for BERT-like backbones, else 'causal_lm' (scalar head on the last token)."""
    trainable_layers: int | None = None
    """Train only the top N transformer blocks and the head (null: all); the backward pass stops at the lowest trained block."""
    attn_implementation: AttnImplementation = "sdpa"
    """Attention kernel passed to transformers ('sdpa', 'sdpa_documents', 'eager', 'flash_attention_2')."""
    aspect_weights: dict[str, float] | None = None
    """Multi-aspect models: the combination load_reward(folder) scores and evaluation's implied accuracy uses (null: each aspect 1)."""


@dataclass
class RewardBatchConfig(BatchConfig):
    batch_size: int = 32
    """Units (a pair, or a whole ranking) per optimizer step, summed over all processes and accumulation steps."""
    micro_batch_size: int = 8
    """Units per forward/backward pass on one process (their candidates are scored in length-sorted chunks)."""


@dataclass
class RewardOptimConfig(OptimConfig):
    lr: float = 5e-5
    """Peak learning rate."""
    warmup_ratio: float = 0.1
    """Warm-up length as a fraction of all optimizer steps, used when warmup_steps is 0."""


@dataclass
class RewardConfig(LoopConfig):
    model: RewardModelConfig = field(default_factory=RewardModelConfig)
    """The backbone and its scalar head."""
    data: RewardDataConfig = field(default_factory=RewardDataConfig)
    """Training, evaluation and normalisation data."""
    loss: RewardLossConfig = field(default_factory=RewardLossConfig)
    """Loss options."""
    batch: RewardBatchConfig = field(default_factory=RewardBatchConfig)
    """Batch sizes (in units: a pair or a whole ranking) and training length."""
    optim: RewardOptimConfig = field(default_factory=RewardOptimConfig)
    """Optimizer and learning-rate schedule."""
    run: RunConfig = field(default_factory=RunConfig)
    """Run folder and seed (the seed also fixes the train/eval split)."""
    disable_dropout: bool = True
    """Switch dropout off in the backbone (scores of a scalar head are noisy with it)."""
    max_batch_tokens: int = 2048
    """Candidates of a micro-batch are scored in length-sorted chunks of at most this many padded tokens
    (small chunks of similar lengths waste little on padding; the activations of all are kept for one backward)."""
    eval_tie_threshold: float = 0.5
    """A held-out tie 'agrees' when |r_1 − r_2| is below this (raw reward units)."""
    eval_score_gap: float = 0.5
    """Held-out pairs implied by scores: two responses to one prompt whose weighted mean human score differs by at least this."""
