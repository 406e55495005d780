"""Model folders from a run's ``checkpoints/step-N/`` (for the over-optimisation curve).

A checkpoint holds only the trainable tensors (all weights, or the LoRA adapters) of each named model
(``checkpoint.model_tensors``); the policy is the model named ``policy`` (RL stages) or ``model``
(SFT, DPO). To sample from it, the run's starting model is rebuilt from its ``config.yaml`` (``model``
section), the tensors are loaded by name, LoRA is merged, and the result is saved as a plain model folder (atomically, once: an existing
folder is reused).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from tuneloop.atomic import atomic_dir
from tuneloop.checkpoint import STATE_FILE, list_checkpoints, model_tensors
from tuneloop.config import load_config
from tuneloop.models import ModelConfig, load_causal_lm
from tuneloop.models.loading import LoraConfig, save_model

POLICY_NAMES = ("policy", "model")


def is_run_folder(path: str | Path) -> bool:
    return (Path(path) / "config.yaml").is_file() and (Path(path) / "checkpoints").is_dir()


def export_checkpoints(run_dir: str | Path, out_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, model folder) for every complete checkpoint of ``run_dir`` before its last step, oldest first
    (a checkpoint at the last step holds the weights of the run's final model, evaluated as the policy)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    if not isinstance(config, dict) or "model" not in config:
        raise ValueError(f"{run_dir / 'config.yaml'}: no 'model' section; cannot rebuild the checkpoints' model")
    model_cfg = load_config(ModelConfig, overrides=config["model"])
    summary = run_dir / "summary.json"
    last_step = json.loads(summary.read_text(encoding="utf-8")).get("steps") if summary.is_file() else None
    exported = []
    for folder in list_checkpoints(run_dir / "checkpoints"):
        step = int(folder.name.split("-")[1])
        if step == last_step:
            continue
        target = out_dir / f"{run_dir.name}-step-{step}"
        if not (target / "config.json").is_file():
            _export(folder, model_cfg, target)
        exported.append((step, target))
    return exported


def _export(folder: Path, model_cfg: ModelConfig, target: Path) -> None:
    model, tokenizer = load_causal_lm(model_cfg, trainable=True)
    names = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))["names"]["models"]
    policy = next((n for n in POLICY_NAMES if n in names), names[0])
    with torch.no_grad():
        result = model.load_state_dict(model_tensors(folder, policy), strict=False)
    if result.unexpected_keys:
        raise ValueError(f"checkpoint {folder} does not match its run's model: unexpected tensors "
                         f"{result.unexpected_keys[:3]}")
    with atomic_dir(target, replace=True) as tmp:
        save_model(model, tokenizer, tmp, LoraConfig(enabled=model_cfg.lora.enabled, save="merged"))
