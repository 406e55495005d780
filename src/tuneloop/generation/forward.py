"""Forward passes of the engine through any transformers causal LM (the generic path).

Shapes: n prompts prefilled together, P the longest of them, B rows decoded, W = longest row + 1,
V vocabulary, H key/value heads, D head dimension.

The model runs its own layers; tuneloop hands it a ``Cache`` whose ``update`` (called by every attention
layer with the new keys and values) stores them in the engine's slots and returns the rows' cached
keys and values, and a ready 4-D boolean attention mask (True = may attend), which transformers uses
as given. Position ids are explicit, so left padding in a prefill does not shift positions. The head
runs at the last position only (``logits_to_keep=1``).

Works for decoder models whose attention layers call ``cache.update(key, value, layer_idx)`` with
(batch, heads, tokens, dim) tensors and attend over everything they get back (Llama, Mistral, Qwen2,
Phi-3, ...). Models with sliding-window layers are refused (the mask here is full causal).
"""

from __future__ import annotations

import inspect

import torch
from transformers.cache_utils import Cache

from tuneloop.data.padding import pad_rows, padding_mask
from tuneloop.generation.kv import SlotKVCache
from tuneloop.models.logprobs import positions_from_mask


class _PrefillCache(Cache):
    """Keeps every layer's keys and values of the prefill; attention sees exactly those."""

    def __init__(self):
        super().__init__(layers=[])
        self.collected: list[tuple[torch.Tensor, torch.Tensor]] = []

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        assert layer_idx == len(self.collected), f"layers called out of order: {layer_idx} after {len(self.collected)}"
        self.collected.append((key_states, value_states))
        return key_states, value_states

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0


class _DecodeCache(Cache):
    """Routes each layer's new key/value of every row into the engine's slot cache."""

    def __init__(self, slots: SlotKVCache, positions: torch.Tensor, width: int):
        super().__init__(layers=[])
        self.slots, self.index, self.width = slots, slots.write_index(positions), width

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        # key_states, value_states: (B, H, 1, D), the one new position of every row
        return self.slots.append(layer_idx, key_states[:, :, 0], value_states[:, :, 0], self.index, self.width)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.width - 1


def check_generic_support(model) -> None:
    """Refuse models whose attention this path would get wrong."""
    config = model.config
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        raise ValueError(f"{type(model).__name__} uses sliding-window attention, which tuneloop's engine does "
                         "not mask; use sampling.backend='hf'")
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError("tuneloop's engine decodes causal LMs only; use sampling.backend='hf'")


class GenericForward:
    """Prefill and decode steps through the model's own forward (any supported transformers causal LM)."""

    def __init__(self, model):
        check_generic_support(model)
        self.model = model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        params = inspect.signature(base.forward).parameters
        self.cache_argument = "cache" if "cache" in params else "past_key_values"
        self.device = next(model.parameters()).device

    def prefill(self, slots: SlotKVCache, targets: list[int], prompts: list[list[int]]) -> torch.Tensor:
        """Run ``prompts`` into slots ``targets`` (keys and values at positions 0..P_i-1); logits (n, V)
        after each prompt's last token."""
        logits, per_prompt = self.prefill_prompts(prompts)
        for slot, kv in zip(targets, per_prompt):
            slots.write_prompt(slot, kv)
        return logits

    def prefill_prompts(self, prompts: list[list[int]]) -> tuple[torch.Tensor, list[list[tuple[torch.Tensor, torch.Tensor]]]]:
        """Logits (n, V) after each prompt's last token and its keys/values, (H, P_i, D) per layer."""
        ids = pad_rows(prompts, 0, "left")  # left padding: every prompt ends at the last column
        valid = padding_mask([len(p) for p in prompts], "left").bool()  # (n, P)
        width = ids.shape[1]
        positions = positions_from_mask(valid)
        causal = torch.ones((width, width), dtype=torch.bool).tril()
        # (n, 1, P, P): causal among a prompt's own tokens; a padding query sees itself (no empty softmax row).
        mask = (causal & valid[:, None, :]) | torch.eye(width, dtype=torch.bool)
        cache = _PrefillCache()
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask[:, None].to(self.device),
                         position_ids=positions.to(self.device), use_cache=True, logits_to_keep=1,
                         **{self.cache_argument: cache})
        per_prompt = [[(k[row, :, width - len(p):], v[row, :, width - len(p):]) for k, v in cache.collected]
                      for row, p in enumerate(prompts)]
        return out.logits[:, -1], per_prompt

    def decode(self, slots: SlotKVCache, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) after feeding ``tokens`` (B,) at ``positions`` (B,) of slots 0..B-1."""
        tokens, positions = tokens.to(self.device), positions.to(self.device)
        width = int(positions.max()) + 1
        mask = torch.arange(width, device=self.device)[None, :] <= positions[:, None]  # (B, W)
        cache = _DecodeCache(slots, positions, width)
        out = self.model(input_ids=tokens[:, None], attention_mask=mask[:, None, None], position_ids=positions[:, None],
                         use_cache=True, logits_to_keep=1, **{self.cache_argument: cache})
        return out.logits[:, -1]
