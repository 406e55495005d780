"""wandb receives the run's effective config (what config.yaml holds), not None."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field

import pytest

from tuneloop.config import load_config
from tuneloop.runs import RunDir
from tuneloop.tracking import Tracker


@dataclass
class OptimSection:
    lr: float = 1e-3
    """Learning rate."""


@dataclass
class TinyStageConfig:
    optim: OptimSection = field(default_factory=OptimSection)
    """Optimizer."""
    weights: dict[str, float] = field(default_factory=lambda: {"rm": 1.0})
    """Reward weights."""


@pytest.fixture()
def fake_wandb(monkeypatch):
    calls: dict = {"init": [], "log": [], "finish": 0}

    class Run:
        def log(self, data, step):
            calls["log"].append((step, data))

        def finish(self):
            calls["finish"] += 1

    def init(**kwargs):
        calls["init"].append(kwargs)
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    return calls


def test_wandb_gets_the_config_the_run_folder_holds(tmp_path, fake_wandb):
    cfg = load_config(TinyStageConfig, None, ["--optim.lr", "5e-4", "--weights.vader", "0.5"])
    RunDir(tmp_path).write_config(cfg)
    tracker = Tracker(tmp_path, total_steps=2, use_wandb=True)
    tracker.log(1, {"loss": 0.25})
    tracker.close()
    (init,) = fake_wandb["init"]
    assert init["config"] == {"optim": {"lr": 5e-4}, "weights": {"rm": 1.0, "vader": 0.5}}
    assert init["name"] == tmp_path.name
    assert fake_wandb["log"] == [(1, {"train/loss": 0.25})]
    assert fake_wandb["finish"] == 1


def test_the_saved_config_wins_over_a_section_passed_in(tmp_path, fake_wandb):
    """A stage may pass one section (its loop schedule); wandb still gets the whole saved config."""
    cfg = load_config(TinyStageConfig, None, ["--optim.lr", "5e-4"])
    RunDir(tmp_path).write_config(cfg)
    Tracker(tmp_path, total_steps=1, use_wandb=True, config=cfg.optim).close()
    assert fake_wandb["init"][0]["config"] == {"optim": {"lr": 5e-4}, "weights": {"rm": 1.0}}


def test_wandb_gets_a_config_passed_in_when_the_folder_has_none(tmp_path, fake_wandb):
    cfg = load_config(TinyStageConfig, None, ["--weights", "{a: 2}"])
    Tracker(tmp_path, total_steps=1, use_wandb=True, config=cfg).close()
    assert fake_wandb["init"][0]["config"] == {"optim": {"lr": 1e-3}, "weights": {"a": 2.0}}
