"""Checkpoints of named state: two models, two optimizers, two schedules, plain state and every RNG
resume bit-identically; what a file holds; mismatches are refused with the names that disagree."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from tuneloop.checkpoint import (
    NamedState,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    model_tensors,
    rng_fingerprint,
    save_checkpoint,
)


def _accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def _build(accelerator, seed: int = 0) -> NamedState:
    """A 'policy' with dropout and a 'value' model with a frozen layer, each with AdamW and a schedule."""
    torch.manual_seed(seed)
    policy = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 3))
    value = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    value[0].requires_grad_(False)
    opt_p = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    opt_v = torch.optim.AdamW([p for p in value.parameters() if p.requires_grad], lr=5e-3, weight_decay=0.1)
    sched_p = torch.optim.lr_scheduler.LambdaLR(opt_p, lambda s: 1.0 / (1 + s))
    sched_v = torch.optim.lr_scheduler.StepLR(opt_v, step_size=2, gamma=0.5)
    policy, value, opt_p, opt_v = accelerator.prepare(policy, value, opt_p, opt_v)
    return NamedState({"policy": policy, "value": value}, {"policy": opt_p, "value": opt_v},
                      {"policy": sched_p, "value": sched_v}, {"kl_coef": 0.1, "reward_sum": 0.0, "seen": 0})


def _step(state: NamedState) -> None:
    """One update of both models that draws from the torch (dropout), numpy and python RNGs."""
    x = torch.randn(5, 4)
    noise = float(np.random.randn()) + random.random()
    policy, value = state.models["policy"], state.models["value"]
    loss = (policy(x) ** 2).mean() + ((value(x) - noise) ** 2).mean()
    loss.backward()
    for name in ("policy", "value"):
        state.optimizers[name].step()
        state.schedulers[name].step()
        state.optimizers[name].zero_grad(set_to_none=True)
    state.plain["kl_coef"] *= 1.0 + noise / 10
    state.plain["reward_sum"] += loss.item()
    state.plain["seen"] += 5


def _snapshot(state: NamedState) -> dict:
    return {"weights": {f"{m}.{n}": t.detach().clone() for m, model in state.models.items()
                        for n, t in model.state_dict().items()},
            "optim": {name: opt.state_dict() for name, opt in state.optimizers.items()},
            "lr": {name: s.get_last_lr() for name, s in state.schedulers.items()},
            "plain": dict(state.plain), "rng": rng_fingerprint()}


def _assert_identical(a, b, path=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{path} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{path}: keys {sorted(a)} vs {sorted(b)}"
        for key in a:
            _assert_identical(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _seed_all(seed):
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)


def test_two_models_two_optimizers_two_schedules_and_plain_state_resume_bit_identically(tmp_path):
    _seed_all(1)
    straight = _build(_accelerator())
    _seed_all(1)
    for _ in range(6):
        _step(straight)
    expected = _snapshot(straight)

    _seed_all(1)
    acc = _accelerator()
    first = _build(acc)
    _seed_all(1)
    for _ in range(3):
        _step(first)
    save_checkpoint(acc, tmp_path, 3, first)
    for _ in range(2):  # the run goes on and then dies: none of this may leak into the resumed run
        _step(first)

    _seed_all(99)  # a fresh process: other RNG states; the models built from the same source (the
    acc = _accelerator()  # frozen layer is not in a checkpoint), their trainable weights and optimizer
    resumed_state = _build(acc)  # states not those of step 3
    with torch.no_grad():
        for model in resumed_state.models.values():
            for p in model.parameters():
                if p.requires_grad:
                    p.fill_(0.5)
    resumed_state.plain = {}
    resumed = load_checkpoint(acc, latest_checkpoint(tmp_path), resumed_state)
    assert resumed.step == 3 and resumed.world_size == 1
    resumed_state.plain = resumed.plain
    for _ in range(3):
        _step(resumed_state)
    _assert_identical(expected, _snapshot(resumed_state))


def test_a_checkpoint_holds_trainable_tensors_under_their_unwrapped_names(tmp_path):
    from safetensors.torch import load_file

    acc = _accelerator()
    state = _build(acc)
    path = save_checkpoint(acc, tmp_path, 1, state)
    assert set(load_file(path / "model.safetensors")) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert set(load_file(path / "model_1.safetensors")) == {"1.weight", "1.bias"}  # value[0] is frozen
    torch.testing.assert_close(model_tensors(path, "value")["1.weight"], state.models["value"][1].weight,
                               atol=0, rtol=0)
    info = json.loads((path / "tuneloop_state.json").read_text())
    assert info["names"] == {"models": ["policy", "value"], "optimizers": ["policy", "value"],
                             "schedulers": ["policy", "value"]}
    assert info["plain"] == {"kl_coef": 0.1, "reward_sum": 0.0, "seen": 0} and info["world_size"] == 1
    assert (path / "random_states_0.pkl").is_file()


def test_keep_and_partial_folders(tmp_path):
    acc = _accelerator()
    state = _build(acc)
    for step in (1, 2, 3):
        save_checkpoint(acc, tmp_path, step, state, keep=2)
    (tmp_path / ".step-4.partial").mkdir()  # what a kill during a save leaves behind
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-2", "step-3"]
    assert latest_checkpoint(tmp_path).name == "step-3"


def test_other_names_or_an_unnamed_prepared_model_are_refused(tmp_path):
    acc = _accelerator()
    state = _build(acc)
    path = save_checkpoint(acc, tmp_path, 1, state)
    renamed = NamedState({"actor": state.models["policy"], "value": state.models["value"]}, state.optimizers,
                         state.schedulers)
    with pytest.raises(ValueError, match=r"holds models \['policy', 'value'\], the run has \['actor', 'value'\]"):
        load_checkpoint(acc, path, renamed)
    partial = NamedState({"policy": state.models["policy"]}, state.optimizers, state.schedulers)
    with pytest.raises(ValueError, match="unnamed prepared ones: \\['Sequential'\\]"):
        save_checkpoint(acc, tmp_path, 2, partial)
    with pytest.raises(TypeError, match="JSON-able"):
        save_checkpoint(acc, tmp_path, 2, NamedState(state.models, state.optimizers, state.schedulers,
                                                     {"bad": torch.zeros(1)}))


def test_a_model_with_other_trainable_parameters_is_refused(tmp_path):
    acc = _accelerator()
    state = _build(acc)
    path = save_checkpoint(acc, tmp_path, 1, state)
    acc = _accelerator()
    other = _build(acc)
    other.models["value"][0].requires_grad_(True)  # a frozen layer is now trained: the file lacks it
    with pytest.raises(ValueError, match=r"model_1.safetensors does not match model 1: missing \['0.bias'"):
        load_checkpoint(acc, path, other)
