"""Switch models to eval mode for a block and back, whatever happens inside it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def eval_mode(*models: torch.nn.Module) -> Iterator[None]:
    """``model.eval()`` for every model inside the block; each model's own train/eval flag (of every
    submodule) is restored on exit, also when the block raises."""
    saved = [[(module, module.training) for module in model.modules()] for model in models]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for flags in saved:
            for module, training in flags:
                module.training = training
