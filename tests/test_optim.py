"""The shared optimizer and learning-rate schedule (train/optim.py): warm-up and decay shapes by hand,
the scheduler applying them step by step, and weight decay on matrices only."""

from __future__ import annotations

import pytest
import torch

from tuneloop.train.optim import OptimConfig, build_optimizer, build_scheduler, lr_multiplier


def _multipliers(total: int, **cfg) -> list[float]:
    config = OptimConfig(**cfg)
    return [lr_multiplier(step, total, config) for step in range(total)]


def test_cosine_after_linear_warmup_hand_values():
    """warmup 2 of 10 steps: steps 0, 1 ramp (k+1)/(warmup+1) = 1/3, 2/3; then progress p = (k−2)/8 and
    ½(1 + cos πp): k=2 p=0 → 1; k=4 p=¼ → ½(1 + √½) = 0.8535534; k=6 p=½ → ½; k=8 p=¾ → 0.1464466."""
    m = _multipliers(10, warmup_steps=2, schedule="cosine")
    expected = {0: 1 / 3, 1: 2 / 3, 2: 1.0, 4: 0.8535534, 6: 0.5, 8: 0.1464466}
    for step, value in expected.items():
        assert m[step] == pytest.approx(value, abs=1e-6), step
    assert all(a >= b for a, b in zip(m[2:], m[3:])), "cosine decay never rises"


def test_linear_decay_to_a_floor_and_constant():
    """linear, warmup 2 of 10, min_lr_ratio 0.1: k=6 → progress ½ → 0.1 + 0.9·½ = 0.55; k=9 → progress 7/8
    → 0.1 + 0.9·⅛ = 0.2125; at the end of the schedule (k = total) exactly the floor 0.1."""
    cfg = OptimConfig(warmup_steps=2, schedule="linear", min_lr_ratio=0.1)
    assert lr_multiplier(6, 10, cfg) == pytest.approx(0.55, abs=1e-7)
    assert lr_multiplier(9, 10, cfg) == pytest.approx(0.2125, abs=1e-7)
    assert lr_multiplier(10, 10, cfg) == pytest.approx(0.1, abs=1e-7)
    assert lr_multiplier(50, 10, cfg) == pytest.approx(0.1, abs=1e-7)  # past the end: stays at the floor
    assert _multipliers(6, warmup_steps=1, schedule="constant") == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]


def test_warmup_ratio_is_used_only_without_warmup_steps():
    """warmup_ratio 0.25 of 8 steps → int(2) warm-up steps: 1/3, 2/3, then 1 (constant);
    warmup_steps 1 wins over the ratio: ½, then 1."""
    assert _multipliers(8, warmup_ratio=0.25, schedule="constant")[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert _multipliers(8, warmup_steps=1, warmup_ratio=0.25, schedule="constant")[:2] == [0.5, 1.0]
    assert _multipliers(4, warmup_ratio=0.0, schedule="cosine")[0] == 1.0  # no warm-up: the peak at once


def test_scheduler_sets_the_lr_of_every_optimizer_step():
    """The lr in force during optimizer step k is lr · multiplier(k): 0.1 · (½, 1, ½(1 + cos π/3), ½(1 + cos 2π/3))
    = 0.05, 0.1, 0.075, 0.025 for warmup 1 of 4 cosine steps (progress (k−1)/3)."""
    model = torch.nn.Linear(2, 2)
    cfg = OptimConfig(lr=0.1, warmup_steps=1, schedule="cosine")
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, 4, cfg)
    seen = []
    for _ in range(4):
        seen.append(optimizer.param_groups[0]["lr"])
        model(torch.ones(1, 2)).sum().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    assert seen == pytest.approx([0.05, 0.1, 0.075, 0.025], abs=1e-9)
    assert all(g["lr"] == optimizer.param_groups[0]["lr"] for g in optimizer.param_groups)


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(4, 3)
        self.proj = torch.nn.Linear(3, 3)  # weight (matrix) and bias
        self.norm = torch.nn.LayerNorm(3)  # gain and bias
        self.frozen = torch.nn.Linear(3, 3, bias=False)
        self.frozen.weight.requires_grad_(False)


def test_weight_decay_groups_matrices_only_and_skips_frozen_parameters():
    net = _Net()
    optimizer = build_optimizer(net, OptimConfig(lr=0.1, weight_decay=0.5))
    names = {id(p): n for n, p in net.named_parameters()}
    groups = {g["weight_decay"]: sorted(names[id(p)] for p in g["params"]) for g in optimizer.param_groups}
    assert groups == {0.5: ["embed.weight", "proj.weight"], 0.0: ["norm.bias", "norm.weight", "proj.bias"]}


def test_decoupled_weight_decay_shrinks_matrices_and_leaves_the_rest():
    """AdamW with a zero gradient moves nothing but the decay: w ← w·(1 − lr·wd) = 2·(1 − 0.1·0.5) = 1.9
    for a matrix entry; a bias or norm gain keeps its value (2.0)."""
    net = _Net()
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(2.0)
    optimizer = build_optimizer(net, OptimConfig(lr=0.1, weight_decay=0.5))
    for p in net.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    assert torch.all(net.proj.weight == torch.tensor(1.9)) and torch.all(net.embed.weight == torch.tensor(1.9))
    for p in (net.proj.bias, net.norm.weight, net.norm.bias, net.frozen.weight):
        assert torch.all(p == 2.0)


def test_without_weight_decay_nothing_decays_and_a_frozen_model_is_refused():
    net = _Net()
    assert {g["weight_decay"] for g in build_optimizer(net, OptimConfig(weight_decay=0.0)).param_groups} == {0.0}
    for p in net.parameters():
        p.requires_grad_(False)
    with pytest.raises(AssertionError, match="no trainable parameters"):
        build_optimizer(net, OptimConfig())


def test_bad_schedule_settings_name_the_key():
    with pytest.raises(ValueError, match="optim.lr must be > 0"):
        OptimConfig(lr=0.0)
    with pytest.raises(ValueError, match=r"optim.warmup_ratio must be in \[0, 1\)"):
        OptimConfig(warmup_ratio=1.0)
