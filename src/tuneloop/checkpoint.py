"""Atomic checkpoints of named training state, written and read through accelerate.

What a checkpoint holds (``NamedState``): any number of named models, optimizers and LR schedules,
plain JSON-able state (counters, a KL controller, running reward statistics …) and the RNG states
(python, numpy, torch CPU, CUDA where present) of every process. The folder
``checkpoints/step-N/`` contains:

  ``tuneloop_state.json``   step, world size, the names of the models/optimizers/schedules in the
                            order accelerate saved them, and the plain state
  ``schedulers.pt``         every named schedule's ``state_dict()``
  what ``Accelerator.save_state`` writes: ``model[_i].safetensors`` (or FSDP shards / DeepSpeed
  folders), ``optimizer[_i].bin``, ``random_states_<rank>.pkl`` (one per process)

Models and optimizers go through ``accelerator.save_state``/``load_state``, so sharded FSDP and
DeepSpeed ZeRO state is written by the library that sharded it. Outside FSDP/DeepSpeed a model file
holds only the trainable parameters and the persistent buffers (a LoRA checkpoint is the adapters,
not the frozen base), under the names of the unwrapped model, so a checkpoint written under
DistributedDataParallel loads into a plain model and back.

Atomic: every process writes into ``.step-N.partial``; when all are done, the main process adds
``tuneloop_state.json`` and renames the folder to ``step-N``. ``step-N`` is complete or absent, and a
kill during a save leaves the previous checkpoint as the newest.

Resuming on another number of processes (e.g. a 2-process DDP run continued by 1 process) is allowed.
What stays exact: the weights, optimizer and schedule state, the plain state, and the data position
-- the batch of every optimizer step is a pure function of (seed, step) over all processes
(``train.batch_plan``), so it is re-derived, not stored; only its split between processes changes.
What does not: floating-point sums are reduced in another order (results agree to rounding, not
bit for bit), and random draws during training (dropout, sampling) follow other streams: a process
restores the RNG state saved by the process of the same rank, and a rank the saving run did not have
keeps the seeded state it started with. Same number of processes: bit-identical (tested).
"""

from __future__ import annotations

import json
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuneloop.atomic import publish_dir

_STEP_DIR = re.compile(r"^step-(\d+)$")
STATE_FILE = "tuneloop_state.json"
SCHEDULERS_FILE = "schedulers.pt"
FORMAT = 2


@dataclass
class NamedState:
    """Everything a stage checkpoints, by name. Models and optimizers are the objects returned by
    ``accelerator.prepare`` (every prepared model and optimizer must be named, frozen ones too: a
    frozen model costs only its buffers); schedules are plain (not prepared) torch LR schedulers."""

    models: dict[str, torch.nn.Module] = field(default_factory=dict)
    optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)
    schedulers: dict[str, Any] = field(default_factory=dict)
    plain: dict[str, Any] = field(default_factory=dict)  # JSON-able: counters, KL controller, statistics


@dataclass
class Resumed:
    """What ``load_checkpoint`` restored besides the objects it loaded in place."""

    step: int  # optimizer steps done when the checkpoint was written
    plain: dict[str, Any]  # the plain state as saved
    world_size: int  # processes of the run that wrote it
    path: Path


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first (partial folders of interrupted saves are ignored)."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(folder: Path) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1] if found else None


def _order(kind: str, named: dict[str, Any], prepared: list, key: Callable = lambda obj: obj) -> list[str]:
    """Names of ``named`` in the order accelerate holds the objects (``prepared``); all must match.
    ``key`` maps both sides to what is compared (a model: its unwrapped module)."""
    names = {id(key(obj)): name for name, obj in named.items()}
    prepared = [key(obj) for obj in prepared]
    unnamed = [type(obj).__name__ for obj in prepared if id(obj) not in names]
    foreign = sorted(set(names.values()) - {names[id(obj)] for obj in prepared if id(obj) in names})
    if unnamed or foreign:
        raise ValueError(f"checkpoint {kind}: the accelerator prepared {len(prepared)} {kind} and "
                         f"{len(named)} are named; unnamed prepared ones: {unnamed}, named ones never prepared "
                         f"through this accelerator: {foreign}")
    return [names[id(obj)] for obj in prepared]


def _sharded(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED,
                                            DistributedType.MEGATRON_LM)


def saved_tensor_names(model: torch.nn.Module) -> list[str]:
    """State-dict names a checkpoint keeps of an unwrapped model: trainable parameters (a tied weight
    once, under its first name) and persistent buffers."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    buffers = {name for name, _ in model.named_buffers()}
    return [name for name in model.state_dict() if name in trainable or name in buffers]


def _save_hook(accelerator) -> Callable:
    def hook(models: list, weights: list, output_dir: str) -> None:
        # Called on every process before accelerate writes ``weights``: one state dict per model,
        # except under FSDP/DeepSpeed, which save their (sharded) models themselves (``weights`` empty).
        # Kept: unwrapped names, trainable tensors and buffers only.
        if not weights:
            return
        for i, model in enumerate(models):
            inner = accelerator.unwrap_model(model)
            full = inner.state_dict()
            weights[i] = {name: full[name] for name in saved_tensor_names(inner)}
    return hook


def _load_hook(accelerator) -> Callable:
    def hook(models: list, input_dir: str) -> None:
        models[:] = [accelerator.unwrap_model(m) for m in models]  # the names the save hook wrote
    return hook


def save_checkpoint(accelerator, folder: Path, step: int, state: NamedState, keep: int = 2) -> Path:
    """Write ``folder/step-<step>`` atomically (every process calls this) and keep the newest ``keep``."""
    order = {"models": _order("models", state.models, accelerator._models, accelerator.unwrap_model),
             "optimizers": _order("optimizers", state.optimizers, accelerator._optimizers),
             "schedulers": list(state.schedulers)}
    try:
        plain_json = json.dumps(state.plain, indent=2)
    except TypeError as err:
        raise TypeError(f"checkpoint plain state must be JSON-able: {err}") from None
    target = folder / f"step-{step}"
    partial = folder / f".step-{step}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    handle = accelerator.register_save_state_pre_hook(_save_hook(accelerator))
    try:
        accelerator.save_state(str(partial))
    finally:
        handle.remove()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        torch.save({name: s.state_dict() for name, s in state.schedulers.items()}, partial / SCHEDULERS_FILE)
        info = {"format": FORMAT, "step": step, "world_size": accelerator.num_processes, "names": order,
                "plain": json.loads(plain_json)}
        (partial / STATE_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        publish_dir(partial, target, replace=True)
        for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return target


def load_checkpoint(accelerator, path: Path, state: NamedState) -> Resumed:
    """Restore a checkpoint into the (prepared) objects of ``state``, in place, and this process's RNG."""
    path = Path(path)
    info_path = path / STATE_FILE
    if not info_path.is_file():
        raise ValueError(f"{path} is not a tuneloop checkpoint of this version (no {STATE_FILE}); start a new run")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    current = {"models": _order("models", state.models, accelerator._models, accelerator.unwrap_model),
               "optimizers": _order("optimizers", state.optimizers, accelerator._optimizers),
               "schedulers": list(state.schedulers)}
    for kind, names in current.items():
        if names != info["names"][kind]:
            raise ValueError(f"checkpoint {path} holds {kind} {info['names'][kind]}, the run has {names} "
                             "(same names, prepared in the same order, are needed)")
    if not _sharded(accelerator):
        _check_model_files(path, [accelerator.unwrap_model(accelerator._models[i])
                                  for i in range(len(accelerator._models))])
    handle = accelerator.register_load_state_pre_hook(_load_hook(accelerator))
    try:
        # strict=False: frozen parameters are not in the file (checked above, by name)
        accelerator.load_state(str(path), **({} if _sharded(accelerator) else {"strict": False}))
    finally:
        handle.remove()
    saved = torch.load(path / SCHEDULERS_FILE, weights_only=True)
    for name, scheduler in state.schedulers.items():
        scheduler.load_state_dict(saved[name])
    _restore_rng(path, accelerator.process_index)
    return Resumed(info["step"], info["plain"], info["world_size"], path)


def model_tensors(path: Path, name: str) -> dict[str, torch.Tensor]:
    """The saved tensors of model ``name`` (trainable parameters and buffers, unwrapped names) of a
    checkpoint written outside FSDP/DeepSpeed: e.g. to rebuild a model folder from ``step-N``."""
    info = json.loads((Path(path) / STATE_FILE).read_text(encoding="utf-8"))
    names = info["names"]["models"]
    if name not in names:
        raise ValueError(f"checkpoint {path} holds models {names}, not {name!r}")
    i = names.index(name)
    from safetensors.torch import load_file

    return load_file(Path(path) / ("model.safetensors" if i == 0 else f"model_{i}.safetensors"))


def _check_model_files(path: Path, models: list[torch.nn.Module]) -> None:
    from safetensors import safe_open

    for i, model in enumerate(models):
        file = path / ("model.safetensors" if i == 0 else f"model_{i}.safetensors")
        with safe_open(str(file), framework="pt") as f:
            stored = set(f.keys())
        expected = set(saved_tensor_names(model))
        if stored != expected:
            missing, extra = sorted(expected - stored)[:3], sorted(stored - expected)[:3]
            raise ValueError(f"checkpoint {file} does not match model {i}: missing {missing}, unexpected {extra} "
                             "(another model, or another LoRA / trainable-layers setting?)")


def _restore_rng(path: Path, rank: int) -> None:
    """Set this process's RNGs from the state its rank saved (accelerate's file; its own loader only
    logs a failure, so it is read again here and a failure raises). A rank the saving run did not
    have keeps its seeded state (module docstring)."""
    file = path / f"random_states_{rank}.pkl"
    if not file.is_file():
        return
    states = torch.load(file, weights_only=False)  # written by this run's own processes
    random.setstate(states["random_state"])
    np.random.set_state(states["numpy_random_seed"])
    torch.set_rng_state(states["torch_manual_seed"])
    if torch.cuda.is_available() and "torch_cuda_manual_seed" in states:
        torch.cuda.set_rng_state_all(states["torch_cuda_manual_seed"])


def rng_fingerprint() -> dict[str, Any]:
    """The next draw of every RNG of this process, without consuming any (for tests and logs)."""
    py, np_state, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    out = {"python": random.random(), "numpy": float(np.random.rand()), "torch": float(torch.rand(()))}
    random.setstate(py), np.random.set_state(np_state), torch.set_rng_state(cpu)
    if torch.cuda.is_available():
        cuda = torch.cuda.get_rng_state_all()
        out["cuda"] = float(torch.rand((), device="cuda"))
        torch.cuda.set_rng_state_all(cuda)
    return out


__all__ = ["NamedState", "Resumed", "latest_checkpoint", "list_checkpoints", "load_checkpoint", "model_tensors",
           "rng_fingerprint", "save_checkpoint", "saved_tensor_names"]
