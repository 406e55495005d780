"""The configuration of ``tuneloop dpo``: data, reference, loss and the loop's schedule.

Every section is checked when it is read (``config.load_config``), so an impossible setting -- a loss
parameter its loss does not use, a LoRA-base reference without LoRA -- fails before any data is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from tuneloop.losses.dpo import DPOLoss, DPOParams, PairLogps, UnpairedLogps, dpo_family_loss
from tuneloop.data.split import EVAL_FRACTION, check_eval_fraction
from tuneloop.models import ModelConfig
from tuneloop.runs import RunConfig
from tuneloop.train.batch_plan import BatchConfig
from tuneloop.train.dpo_data import Layout
from tuneloop.train.loop import LoopConfig
from tuneloop.train.optim import OptimConfig


@dataclass
class DPODataConfig:
    train: str | None = None
    """Preference data (required): pairs, HH-RLHF transcripts, rankings, the labelling app's pairs.jsonl,
    or for KTO unpaired {prompt, completion, label} records; JSONL/Parquet/CSV or a saved HF dataset."""
    eval: str | None = None
    """Held-out data in the same forms; when null, eval_fraction of the training prompts is held out."""
    eval_fraction: float = EVAL_FRACTION
    """Share of the distinct training prompts held out when no eval file is given (0 disables)."""
    max_length: int = 512
    """Maximum tokens of prompt + response."""
    max_prompt_length: int = 256
    """When prompt + response is too long, the prompt keeps its last max_prompt_length tokens; responses
    are then cut at the end to fit max_length."""
    too_long: Literal["truncate", "drop"] = "truncate"
    """What to do with a pair (or example) longer than max_length: truncate it, or leave it out."""
    layout: Layout = "shared_prompt"
    """How a micro-batch is fed: 'shared_prompt' (chosen and rejected follow ONE copy of their prompt,
    packed into rows as long as the longest pair: no cross-pair attention work), 'padding_free' (one
    row, each sequence with its own prompt: for variable-length attention kernels) or 'padded' (one
    padded row per sequence)."""

    def __post_init__(self) -> None:
        if not 1 <= self.max_prompt_length < self.max_length:
            raise ValueError(f"need 1 ≤ data.max_prompt_length < data.max_length, got "
                             f"{self.max_prompt_length} and {self.max_length}")
        check_eval_fraction(self.eval_fraction)


@dataclass
class ReferenceConfig:
    model: str | None = None
    """Reference model (name or folder); null: the model being trained, as loaded, before any update."""
    mode: Literal["precomputed", "lora_base"] = "precomputed"
    """'precomputed': log-probs computed once before training and cached in the run folder (no reference model
    held while training); 'lora_base': with LoRA, the adapter-disabled base scores each batch as it trains."""
    tokens_per_forward: int = 4096
    """Tokens per forward pass while precomputing (only speed and memory depend on it)."""


@dataclass
class DPOConfig(LoopConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy to train (and, unless reference.model is set, the reference)."""
    data: DPODataConfig = field(default_factory=DPODataConfig)
    """Preference data and lengths."""
    loss: DPOLoss = DPOLoss.DPO
    """The loss: dpo, cdpo, robust, ipo, hinge, simpo, orpo or kto (docs/dpo.md says when to use which)."""
    loss_params: DPOParams = field(default_factory=DPOParams)
    """Hyperparameters of the loss (β, label smoothing, SimPO's γ, ORPO's λ, KTO weights, RPO's α)."""
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    """Where the reference log-probs come from."""
    batch: BatchConfig = field(default_factory=BatchConfig)
    """Batch sizes (in pairs; in examples for KTO) and training length."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and learning-rate schedule."""
    run: RunConfig = field(default_factory=RunConfig)
    """Run folder and seed."""
    eval_at_start: bool = False
    """Also evaluate before the first update (for reference-based losses the implicit rewards are then 0)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_loss(self.loss, self.loss_params)
        if self.reference.mode == "lora_base" and not self.model.lora.enabled:
            raise ValueError("reference.mode 'lora_base' needs model.lora.enabled: true (the base is the "
                             "reference)")
        if self.reference.mode == "lora_base" and self.reference.model is not None:
            raise ValueError("reference.mode 'lora_base' uses the adapter-disabled base; reference.model "
                             "must be null")
        if self.reference.model is not None and not self.loss.needs_reference:
            raise ValueError(f"reference.model is set but loss '{self.loss.value}' uses no reference model")


def _check_loss(kind: DPOLoss, params: DPOParams) -> None:
    """Evaluate the loss once on a tiny example, so impossible settings fail when the config is read."""
    if kind.needs_reference and params.beta <= 0:
        raise ValueError(f"loss_params.beta must be > 0 for '{kind.value}', got {params.beta}")
    one = torch.tensor([-1.0])
    logps = UnpairedLogps(one, one, torch.tensor([True]), torch.tensor(0.0)) if kind is DPOLoss.KTO else \
        PairLogps(one, 2 * one, one, 2 * one, torch.tensor([1.0]), torch.tensor([2.0]))
    try:
        dpo_family_loss(kind, logps, params)
    except (ValueError, AssertionError) as err:
        raise ValueError(f"loss_params: {err}") from None
