"""Run folders: ``<out_dir>/<stage>-<time>/`` with config.yaml, metrics.jsonl, TensorBoard events,
``checkpoints/step-N/``, the final model folder and ``summary.json``."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.atomic import atomic_write_text
from tuneloop.config import dump_yaml


@dataclass
class RunConfig:
    out_dir: str = "runs"
    """Folder that holds the run folders."""
    name: str | None = None
    """Run folder name; default '<stage>-<YYYYmmdd-HHMMSS>'."""
    seed: int = 0
    """Seed for data order, initialisation and sampling."""


@dataclass
class RunDir:
    path: Path

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def model(self) -> Path:
        return self.path / "model"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    def write_config(self, cfg: Any) -> None:
        atomic_write_text(self.path / "config.yaml", dump_yaml(cfg))

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.path / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")


def new_run_dir(run: RunConfig, stage: str) -> RunDir:
    name = run.name or f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = Path(run.out_dir) / name
    suffix = 1
    while path.exists():  # two runs started in the same second
        suffix += 1
        path = Path(run.out_dir) / f"{name}-{suffix}"
    path.mkdir(parents=True)
    return RunDir(path)


def latest_run_dir(out_dir: str | Path, stage: str) -> Path | None:
    runs = sorted((p for p in Path(out_dir).glob(f"{stage}-*") if (p / "config.yaml").is_file()),
                  key=lambda p: p.stat().st_mtime)
    return runs[-1] if runs else None
