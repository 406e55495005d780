"""The engine's KV cache: planned before the first forward pass, allocated once, one slot per sequence.

Shapes: S slots, L positions per slot, H key/value heads, D head dimension, B rows decoded this step.

Each layer holds keys and values of shape (S, H, L, D). A sequence occupies one slot from its prompt to
its last token; the engine keeps the live sequences in slots 0..B-1 (a finished sequence's slot takes
the last live one, ``move``), so every decode step reads the prefix ``[:B, :, :length]`` of the buffers:
no cache growth, no copies of the whole cache, no compute on finished rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class KVCacheTooLarge(MemoryError):
    """The planned KV cache does not fit in the memory allowed for it."""


@dataclass(frozen=True)
class KVPlan:
    slots: int  # S sequences decoded together (sampling.batch_size)
    positions: int  # L = longest prompt + max_new_tokens - 1 (the last token is never fed back)
    layers: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype

    @property
    def bytes_per_token(self) -> int:
        """Keys and values of one position in every layer."""
        return 2 * self.layers * self.kv_heads * self.head_dim * torch.empty((), dtype=self.dtype).element_size()

    @property
    def total_bytes(self) -> int:
        return self.slots * self.positions * self.bytes_per_token

    def describe(self, budget_bytes: int) -> str:
        return (f"KV cache {self.slots} slots × {self.positions} positions × {self.layers} layers × "
                f"{self.kv_heads} KV heads × {self.head_dim} dims × {str(self.dtype).removeprefix('torch.')} "
                f"(keys and values) = {self.total_bytes / 2**20:.1f} MiB of {budget_bytes / 2**30:.1f} GiB allowed")


def kv_geometry(config) -> tuple[int, int, int]:
    """(layers, key/value heads, head dimension) of a transformers decoder config."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, kv_heads, head_dim


def memory_budget(device: torch.device, kv_cache_gb: float) -> int:
    """Bytes the cache may take: ``kv_cache_gb`` when set, else 90% of the device's free memory."""
    if kv_cache_gb > 0:
        return int(kv_cache_gb * 2**30)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        import psutil

        free = psutil.virtual_memory().available
    return int(0.9 * free)


def plan_kv_cache(config, slots: int, positions: int, dtype: torch.dtype, budget_bytes: int) -> KVPlan:
    """The cache for ``slots`` sequences of up to ``positions`` tokens; raises KVCacheTooLarge, naming
    the batch size that would fit, when it exceeds ``budget_bytes``."""
    layers, kv_heads, head_dim = kv_geometry(config)
    plan = KVPlan(slots, positions, layers, kv_heads, head_dim, dtype)
    if plan.total_bytes > budget_bytes:
        fits = budget_bytes // (positions * plan.bytes_per_token)
        raise KVCacheTooLarge(
            f"the KV cache for sampling.batch_size={slots} sequences of up to {positions} tokens needs "
            f"{plan.total_bytes / 2**30:.2f} GiB ({plan.bytes_per_token / 1024:.1f} KiB per token) but "
            f"{budget_bytes / 2**30:.2f} GiB are allowed (sampling.kv_cache_gb, or free memory): "
            f"at most {fits} sequences fit; lower sampling.batch_size or sampling.max_new_tokens")
    return plan


class SlotKVCache:
    """Pre-allocated keys and values, (S, H, L, D) per layer."""

    def __init__(self, plan: KVPlan, device: torch.device):
        shape = (plan.slots, plan.kv_heads, plan.positions, plan.head_dim)
        self.plan = plan
        self.keys = [torch.zeros(shape, dtype=plan.dtype, device=device) for _ in range(plan.layers)]
        self.values = [torch.zeros(shape, dtype=plan.dtype, device=device) for _ in range(plan.layers)]

    def write_prompt(self, slot: int, prompt_kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Copy a prefilled prompt's keys and values, (H, P, D) per layer, to positions 0..P-1 of ``slot``."""
        for layer, (k, v) in enumerate(prompt_kv):
            length = k.shape[1]
            self.keys[layer][slot, :, :length] = k
            self.values[layer][slot, :, :length] = v

    def read_prompt(self, slot: int, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A copy of positions 0..length-1 of ``slot``: keys and values (H, length, D) per layer."""
        return [(k[slot, :, :length].clone(), v[slot, :, :length].clone()) for k, v in zip(self.keys, self.values)]

    def move(self, source: int, target: int, length: int) -> None:
        """Slot ``target`` takes the first ``length`` positions of slot ``source``."""
        self.copy([source], [target], length)

    def copy(self, sources: list[int], targets: list[int], length: int) -> None:
        """Slot ``targets[j]`` takes the first ``length`` positions of slot ``sources[j]``, for every j
        (one indexed copy per layer; a target must not also be a source)."""
        assert not set(sources) & set(targets), f"slots {sorted(set(sources) & set(targets))} both read and written"
        if len(targets) == 1:
            for keys, values in zip(self.keys, self.values):
                keys[targets[0], :, :length] = keys[sources[0], :, :length]
                values[targets[0], :, :length] = values[sources[0], :, :length]
            return
        source = torch.tensor(sources, device=self.keys[0].device)
        target = torch.tensor(targets, device=self.keys[0].device)
        for keys, values in zip(self.keys, self.values):
            keys[target, :, :length] = keys[source, :, :length]
            values[target, :, :length] = values[source, :, :length]

    def write_index_tokens(self, slots: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """(N * H,) rows of the flattened (S * H * L, D) buffers where token j of slot ``slots[j]`` (N,)
        stores its key/value for ``positions[j]`` (N,): the order of ``key.reshape(N * H, D)``."""
        heads, length = self.plan.kv_heads, self.plan.positions
        slot_heads = slots[:, None] * heads + torch.arange(heads, device=slots.device)  # (N, H)
        return (slot_heads * length + positions[:, None]).flatten()

    def store(self, layer: int, key: torch.Tensor, value: torch.Tensor, index: torch.Tensor) -> None:
        """Write keys and values (N, H, D) at ``index`` (``write_index`` or ``write_index_tokens``)."""
        head_dim = self.plan.head_dim
        self.keys[layer].view(-1, head_dim).index_copy_(0, index, key.reshape(-1, head_dim))
        self.values[layer].view(-1, head_dim).index_copy_(0, index, value.reshape(-1, head_dim))

    def write_index(self, positions: torch.Tensor) -> torch.Tensor:
        """(B * H,) rows of the flattened (S * H * L, D) buffers where slots 0..B-1 store ``positions`` (B,)."""
        return self.write_index_tokens(torch.arange(len(positions), device=positions.device), positions)

    def append(self, layer: int, key: torch.Tensor, value: torch.Tensor, index: torch.Tensor,
               width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one new position per row (key/value (B, H, D), at ``write_index(positions)``) and return
        the rows' keys and values (B, H, width, D), views of the buffers."""
        rows = key.shape[0]
        self.store(layer, key, value, index)
        return self.keys[layer][:rows, :, :width], self.values[layer][:rows, :, :width]
