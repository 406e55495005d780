"""The engine's decode step for Llama-architecture models (SmolLM2, the tiny test models), written
against the weights.

Shapes: B rows, W = longest row + 1 positions attended, H query heads, H_kv key/value heads,
G = H / H_kv, D head dimension, V vocabulary.

The same arithmetic as transformers' ``LlamaForCausalLM`` (its RMSNorm formula, its rotary module for
cos/sin, softmax attention with scale 1/sqrt(D)); what changes is the shape of the work:

- q, k, v come from one matmul (their weights concatenated), gate and up from another: fewer, wider
  matmuls, which a small batch runs closer to the CPU's peak;
- a decode step has one query per row, so the G query heads that share a key/value head are laid out as
  G queries of that head: attention then needs no copy of the cache per query head (grouped-query
  attention without ``repeat_kv``); it is two batched matmuls and a softmax with an additive mask built
  once per step (on this CPU 1.1-1.4 ms a layer at B = 64 and 140 positions against 1.5-5.4 ms for
  ``scaled_dot_product_attention`` on the same views; equal to 6e-7);
- the new key/value of each row goes straight into its slot (one ``index_copy_`` per layer);
- no per-call mask building, output records or cache objects.

Prefill (several tokens per prompt) goes through the generic path (``generation.forward``): it is a
small share of the time. The fused weights are copies made when the engine starts a ``generate()``
call, so a model that trains between calls is always decoded with its current weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tuneloop.generation.forward import GenericForward
from tuneloop.generation.kv import SlotKVCache


def supports_llama_fast_path(model) -> bool:
    """A plain (not peft-wrapped) transformers Llama with the standard blocks this path implements."""
    from transformers import LlamaForCausalLM

    if not isinstance(model, LlamaForCausalLM):
        return False
    config = model.config
    rope = getattr(config, "rope_parameters", None) or {}
    return (not config.attention_bias and not config.mlp_bias and config.hidden_act == "silu"
            and getattr(config, "pretraining_tp", 1) == 1 and rope.get("rope_type", "default") == "default")


def supports_lora_fast_path(model) -> bool:
    """A peft LoRA model (adapters unmerged and enabled, no DoRA, embeddings and head not adapted) around a Llama
    that ``supports_llama_fast_path``: decoded with each adapted weight merged on the fly, W + s·B·A."""
    from peft.tuners.lora import LoraLayer

    if not hasattr(model, "get_base_model") or not hasattr(model, "peft_config"):
        return False
    base = model.get_base_model()
    if not supports_llama_fast_path(base):
        return False
    adapted = [m for m in base.modules() if isinstance(m, LoraLayer)]
    inside_layers = {id(m) for layer in base.model.layers for m in layer.modules()}
    return all(id(m) in inside_layers and isinstance(m.base_layer, torch.nn.Linear)
               and not any(m.use_dora.values()) and not m.merged and not m.disable_adapters for m in adapted)


def _effective_weight(linear: torch.nn.Module) -> torch.Tensor:
    """A linear layer's weight as its forward applies it: the parameter, or for a peft LoRA layer its
    base weight plus the active adapters' deltas (a new tensor)."""
    if not hasattr(linear, "base_layer"):
        return linear.weight
    weight = linear.base_layer.weight
    if linear.disable_adapters:
        return weight
    for name in linear.active_adapters:
        if name in linear.lora_A:
            weight = weight + linear.get_delta_weight(name)
    return weight


def fused_layer_weights(model) -> list[tuple[torch.Tensor, ...]]:
    """Per layer: (input norm, q|k|v (H*D + 2*H_kv*D, hidden), o, post-attention norm, gate|up
    (2 * intermediate, hidden), down). The concatenations are copies; the rest are the parameters,
    or for a LoRA model (``supports_lora_fast_path``) the merged weights W + s·B·A (copies)."""
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    w = _effective_weight
    layers = []
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        layers.append((layer.input_layernorm.weight,
                       torch.cat([w(attn.q_proj), w(attn.k_proj), w(attn.v_proj)]),
                       w(attn.o_proj), layer.post_attention_layernorm.weight,
                       torch.cat([w(mlp.gate_proj), w(mlp.up_proj)]), w(mlp.down_proj)))
    return layers


class LlamaForward(GenericForward):
    """Prefill through transformers (inherited), decode steps written against the weights
    (``layers``: ``fused_layer_weights(model)``, made here when not given). A peft LoRA model
    (``supports_lora_fast_path``) prefills through its own forward (adapters applied) and decodes with
    the merged weights."""

    def __init__(self, model, layers: list[tuple[torch.Tensor, ...]] | None = None):
        super().__init__(model)
        layers = fused_layer_weights(model) if layers is None else layers
        model = model.get_base_model() if hasattr(model, "get_base_model") else model
        config = model.config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        inner = model.model
        self.embed = inner.embed_tokens.weight
        self.rotary = inner.rotary_emb
        self.final_norm = inner.norm.weight
        self.head = model.lm_head.weight
        self.layers = layers

    def _rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """transformers' LlamaRMSNorm: statistics in fp32, scaled back in the model's dtype."""
        x32 = x.float()
        variance = x32.pow(2).mean(-1, keepdim=True)
        return weight * (x32 * torch.rsqrt(variance + self.eps)).to(x.dtype)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    def decode(self, slots: SlotKVCache, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) after feeding ``tokens`` (B,) at ``positions`` (B,) of slots 0..B-1."""
        tokens, positions = tokens.to(self.device), positions.to(self.device)
        rows, heads, kv_heads, dim = len(tokens), self.heads, self.kv_heads, self.head_dim
        groups = heads // kv_heads
        width = int(positions.max()) + 1
        index = slots.write_index(positions)
        hidden = torch.arange(width, device=self.device)[None, :] > positions[:, None]  # (B, W) beyond the row
        mask = torch.zeros(hidden.shape, device=self.device).masked_fill_(hidden, float("-inf"))[:, None, None]
        scale = dim ** -0.5
        x = self.embed[tokens]  # (B, hidden)
        cos, sin = self.rotary(x, positions[None])  # (1, B, D)
        cos, sin = cos[0, :, None], sin[0, :, None]  # (B, 1, D): broadcast over heads
        q_size, kv_size = heads * dim, kv_heads * dim
        for layer, (norm1, qkv_weight, o_weight, norm2, gate_up_weight, down_weight) in enumerate(self.layers):
            qkv = F.linear(self._rms_norm(x, norm1), qkv_weight)
            q = self._rotate(qkv[:, :q_size].view(rows, heads, dim), cos, sin)
            k = self._rotate(qkv[:, q_size:q_size + kv_size].view(rows, kv_heads, dim), cos, sin)
            v = qkv[:, q_size + kv_size:].view(rows, kv_heads, dim)
            keys, values = slots.append(layer, k, v, index, width)  # (B, H_kv, W, D)
            # The G query heads of a key/value head act as G queries of it: scores (B, H_kv, G, W).
            scores = torch.matmul(q.view(rows, kv_heads, groups, dim), keys.transpose(-1, -2)) * scale + mask
            attended = torch.matmul(torch.softmax(scores, dim=-1), values)  # (B, H_kv, G, D)
            x = x + F.linear(attended.reshape(rows, q_size), o_weight)
            gate, up = F.linear(self._rms_norm(x, norm2), gate_up_weight).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, down_weight)
        return F.linear(self._rms_norm(x, self.final_norm), self.head)
