"""The reference model π_ref of DPO and of RL's KL penalty: a frozen copy, or the policy's own base
with its LoRA adapter disabled (no second copy of the weights in memory).

    reference = frozen_copy(policy)           # full fine-tuning: a frozen copy before any update
    reference = load_frozen(ModelConfig(...)) # another model as the reference
    reference = None                          # LoRA: the adapter-disabled base is the reference

    with reference_model(policy, reference) as ref:   # eval mode, no gradients, adapter disabled
        logps = token_logprobs(ref, ...)               # (models.logprobs)

Inside the block the reference is in eval mode (dropout off) and gradients are off; on exit the
policy's adapter and every module's train/eval flag are back as they were, also after an error.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch

from tuneloop.models.loading import ModelConfig, load_causal_lm
from tuneloop.models.modes import eval_mode


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy without gradients, in eval mode (the policy as it is now, e.g. before training)."""
    reference = copy.deepcopy(_unwrap(model))
    return reference.requires_grad_(False).eval()


def load_frozen(cfg: ModelConfig) -> torch.nn.Module:
    """A causal LM loaded as a reference: no LoRA, no gradients, eval mode."""
    return load_causal_lm(cfg, trainable=False)[0]


def has_adapter(model: torch.nn.Module) -> bool:
    return hasattr(_unwrap(model), "disable_adapter")


@contextmanager
def reference_model(policy: torch.nn.Module, reference: torch.nn.Module | None = None) -> Iterator[torch.nn.Module]:
    """Yield the module that scores as π_ref: ``reference`` when given, else ``policy`` (a peft model)
    with its adapter disabled; in eval mode and under ``torch.no_grad``."""
    if reference is None and not has_adapter(policy):
        raise ValueError("no reference model: give a frozen model (frozen_copy / load_frozen), or train the "
                         "policy with LoRA so that its adapter-disabled base is the reference")
    scorer = reference if reference is not None else _unwrap(policy)
    with ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        stack.enter_context(eval_mode(scorer))
        if reference is None:
            stack.enter_context(scorer.disable_adapter())
        yield scorer


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)  # DistributedDataParallel
