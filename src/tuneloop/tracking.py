"""Metrics sinks (JSONL always, TensorBoard when installed, wandb optionally) and a progress bar."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any


class Tracker:
    """Append metrics to ``metrics.jsonl`` and TensorBoard; show a progress bar with ETA.

    Only the main process should create one with ``enabled=True``; others get a silent tracker.
    wandb (``use_wandb``) receives the run's effective config: the ``config.yaml`` the run folder holds
    (the whole stage config, as saved), else ``config`` (a config dataclass or a plain dict).
    """

    def __init__(self, run_path: Path | None, total_steps: int, start_step: int = 0, enabled: bool = True,
                 description: str = "train", use_wandb: bool = False, config: Any = None):
        self.enabled = enabled and run_path is not None
        self._jsonl = None
        self._tb = None
        self._wandb = None
        self._bar = None
        if not self.enabled:
            return
        self._jsonl = open(run_path / "metrics.jsonl", "a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_path / "tensorboard"))
        except ImportError:
            self._tb = None
        if use_wandb:
            import wandb

            self._wandb = wandb.init(project="tuneloop", name=run_path.name, config=effective_config(run_path, config),
                                     dir=str(run_path))
        from tqdm import tqdm

        self._bar = tqdm(total=total_steps, initial=start_step, desc=description, unit="step", dynamic_ncols=True,
                         file=sys.stderr, disable=None)
        self._t0 = time.time()

    def log(self, step: int, metrics: dict[str, Any], split: str = "train") -> None:
        if not self.enabled:
            return
        clean = {k: (float(v) if isinstance(v, (int, float)) else v) for k, v in metrics.items()}
        record = {"step": step, "split": split, "time": round(time.time() - self._t0, 3), **clean}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for key, value in clean.items():
                if isinstance(value, float) and math.isfinite(value):
                    self._tb.add_scalar(f"{split}/{key}", value, step)
        if self._wandb is not None:
            self._wandb.log({f"{split}/{k}": v for k, v in clean.items()}, step=step)

    def progress(self, steps: int = 1, **postfix: Any) -> None:
        if self._bar is not None:
            self._bar.update(steps)
            if postfix:
                self._bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()},
                                      refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()
        if self._wandb is not None:
            self._wandb.finish()


def effective_config(run_path: Path, config: Any = None) -> dict | None:
    """The run's config as a plain nested dict: the run folder's ``config.yaml``, else ``config``."""
    saved = run_path / "config.yaml"
    if saved.is_file():
        import yaml

        return yaml.safe_load(saved.read_text(encoding="utf-8"))
    if config is None or isinstance(config, dict):
        return config
    from tuneloop.config import to_dict

    return to_dict(config)
