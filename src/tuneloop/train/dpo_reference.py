"""Sequence log-probs of a ``PreferenceBatch``, and the reference log-probs cached before training.

The reference model of DPO is frozen, so log π_ref(y|x) of every response used in a run is a constant:
it is computed once before the first update, in eval mode, and written to
``<run>/reference_logps.safetensors``. Training then holds one model only, and a resumed run reads the
same numbers back (so resume stays bit-identical). Only the training units the batch plan will
actually visit are scored (``max_steps`` shorter than an epoch scores a part of the data); the others
hold NaN. The file carries a digest of the token ids it was computed for, so a cache that does not
match the run's data is refused rather than silently misused.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tuneloop.batches import PreferenceBatch
from tuneloop.models.logprobs import sequence_logps, supports_logits_to_keep
from tuneloop.models.modes import eval_mode
from tuneloop.models.reference import reference_model
from tuneloop.train.batch_plan import BatchPlan, step_micro_batches
from tuneloop.train.dpo_data import GRADED_NAMES, Layout, ScoredSequence, collate

REFERENCE_FILE = "reference_logps.safetensors"


@dataclass
class ReferenceSet:
    """Sequences scored together, one cache entry per key: e.g. ("train.chosen", "train.rejected")."""

    keys: tuple[str, ...]
    units: list[tuple[ScoredSequence, ...]]  # per unit, one sequence per key (a pair shares its prompt)
    needed: list[int]  # indices of the units that must be scored


def unit_chunks(units: Sequence[tuple[ScoredSequence, ...]], token_budget: int) -> list[list[int]]:
    """Consecutive unit indices of at most ``token_budget`` tokens each (a longer unit alone)."""
    chunks: list[list[int]] = []
    used = 0
    for i, unit in enumerate(units):
        size = sum(len(seq) for seq in unit)
        if chunks and used + size <= token_budget:
            chunks[-1].append(i)
            used += size
        else:
            chunks.append([i])
            used = size
    return chunks


@torch.no_grad()
def score_units(model, units: Sequence[tuple[ScoredSequence, ...]], *, layout: Layout, pad_id: int,
                token_budget: int, device, progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """(U, K) fp32 summed response log-probs of the K sequences of each unit, under ``model`` in eval mode."""
    keep = supports_logits_to_keep(model)
    out = []
    with eval_mode(model):
        for chunk in unit_chunks(units, token_budget):
            sequences = [seq for i in chunk for seq in units[i]]
            batch = collate(sequences, paired=False, layout=layout, pad_id=pad_id)
            out.append(sequence_logps(model, batch.to(device), keep).float().cpu().reshape(len(chunk), -1))
            if progress is not None:
                progress(len(chunk))
    return torch.cat(out) if out else torch.zeros(0, len(units[0]) if units else 0)


def data_digest(sets: Sequence[ReferenceSet], reference_name: str) -> str:
    """sha256 of the reference's name and every token id and mask of every set, in order."""
    digest = hashlib.sha256(reference_name.encode())
    for ref_set in sets:
        digest.update(json.dumps(ref_set.keys).encode())
        for unit in ref_set.units:
            tokens = [[s.prompt_ids, s.response_ids, s.response_mask] for s in unit]
            digest.update(json.dumps(tokens).encode())
    return digest.hexdigest()


def load_reference_cache(path: Path, digest: str, sets: Sequence[ReferenceSet]
                         ) -> dict[str, torch.Tensor] | None:
    """The cached values, or None when there is no usable cache; a cache for other data is an error."""
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        saved = (f.metadata() or {}).get("digest")
    if saved != digest:
        raise ValueError(f"{path} was computed for other data or another reference model (digest "
                         f"{saved} ≠ {digest}); delete it to recompute, or start a new run")
    values = load_file(path)
    for ref_set in sets:
        for key in ref_set.keys:
            missing = key not in values or not torch.isfinite(values[key][ref_set.needed]).all()
            if ref_set.needed and missing:
                return None  # computed for fewer steps than this run needs: recompute
    return values


def save_reference_cache(path: Path, values: dict[str, torch.Tensor], digest: str,
                         info: dict[str, str]) -> None:
    """One file, written under a temporary name and renamed: complete with its digest, or absent."""
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in values.items()}, str(tmp), metadata={"digest": digest, **info})
    tmp.replace(path)


def compute_reference(model, sets: Sequence[ReferenceSet], *, layout: Layout, pad_id: int, token_budget: int,
                      device) -> dict[str, torch.Tensor]:
    """For each key, a (units,) tensor: the reference log-prob at the needed units, NaN elsewhere."""
    from tqdm import tqdm

    values = {}
    total = sum(len(r.needed) for r in sets)
    with tqdm(total=total, desc="reference log-probs", unit="unit", disable=None) as bar:
        for ref_set in sets:
            units = [ref_set.units[i] for i in ref_set.needed]
            scored = score_units(model, units, layout=layout, pad_id=pad_id, token_budget=token_budget,
                                 device=device, progress=bar.update)
            for k, key in enumerate(ref_set.keys):
                full = torch.full((len(ref_set.units),), math.nan, dtype=torch.float32)
                full[ref_set.needed] = scored[:, k]
                values[key] = full
    return values


def visited_units(plan: BatchPlan, seed: int, num_units: int, world_size: int) -> list[int]:
    """Indices of the training units some optimizer step of the plan uses, over all processes."""
    seen: set[int] = set()
    for step in range(plan.total_steps):
        for rank in range(world_size):
            for micro in step_micro_batches(plan, step, seed, num_units, rank):
                seen.update(micro)
        if len(seen) == num_units:
            break
    return sorted(seen)


def reference_sets(train_units: list, eval_units: list, visited: list[int], paired: bool
                   ) -> list[ReferenceSet]:
    """The graded sequences of both splits (a pair's chosen and rejected scored together, sharing the
    prompt); the mismatched ones for KTO's z0 in training and for the KL estimate in evaluation (when
    every unit has one)."""
    sets = []
    every_eval_unit = list(range(len(eval_units)))
    for split, units, needed in (("train", train_units, visited), ("eval", eval_units, every_eval_unit)):
        if not units:
            continue
        names = GRADED_NAMES[paired]
        sets.append(ReferenceSet(tuple(f"{split}.{n}" for n in names),
                                 [tuple(getattr(u, n) for n in names) for u in units], needed))
        if (split == "eval" or not paired) and all(u.mismatched is not None for u in units):
            sets.append(ReferenceSet((f"{split}.mismatched",), [(u.mismatched,) for u in units], needed))
    return sets


def cached_reference(path: Path, sets: Sequence[ReferenceSet], reference_name: str,
                     load_scorer: Callable[[], torch.nn.Module], accelerator, *, layout: Layout, pad_id: int,
                     token_budget: int) -> dict[str, torch.Tensor]:
    """Reference log-probs from the cache at ``path``; the main process computes and writes it when absent."""
    digest = data_digest(sets, reference_name)
    values = load_reference_cache(path, digest, sets) if accelerator.is_main_process else None
    if accelerator.is_main_process and values is None:
        scorer = load_scorer().to(accelerator.device)
        values = compute_reference(scorer, sets, layout=layout, pad_id=pad_id, token_budget=token_budget,
                                   device=accelerator.device)
        save_reference_cache(path, values, digest, {"reference": reference_name})
    accelerator.wait_for_everyone()
    return values if values is not None else load_reference_cache(path, digest, sets)


def live_reference(model, accelerator, keep_response_only: bool) -> Callable[[PreferenceBatch], torch.Tensor]:
    """The LoRA base (adapters disabled) scoring a batch without gradient: (S,) fp32."""
    def score(batch: PreferenceBatch) -> torch.Tensor:
        with reference_model(accelerator.unwrap_model(model)) as base:
            return sequence_logps(base, batch, keep_response_only).float()
    return score
