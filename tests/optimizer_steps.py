"""An optimizer step as the trainers take it, for tests of code that must notice weight updates."""

from __future__ import annotations

import torch


def fused_adamw_step(params) -> None:
    """One step of torch's fused AdamW (the trainers' optimizer) on random gradients. It updates the
    parameters without bumping their version counters, which a cache keyed on versions missed."""
    params = list(params)
    for p in params:
        p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()))
    versions = [p._version for p in params]
    torch.optim.AdamW(params, lr=0.05, fused=True).step()
    assert [p._version for p in params] == versions, "fused AdamW now bumps versions: revisit this test"
    for p in params:
        p.grad = None
