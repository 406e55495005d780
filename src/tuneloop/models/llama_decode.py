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


def fused_layer_weights(model) -> list[tuple[torch.Tensor, ...]]:
    """Per layer: (input norm, q|k|v (H*D + 2*H_kv*D, hidden), o, post-attention norm, gate|up
    (2 * intermediate, hidden), down). The concatenations are copies; the rest are the parameters."""
    layers = []
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        layers.append((layer.input_layernorm.weight,
                       torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]),
                       attn.o_proj.weight, layer.post_attention_layernorm.weight,
                       torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), mlp.down_proj.weight))
    return layers


class LlamaForward(GenericForward):
    """Prefill through transformers (inherited), decode steps written against the weights
    (``layers``: ``fused_layer_weights(model)``, made here when not given)."""

    def __init__(self, model, layers: list[tuple[torch.Tensor, ...]] | None = None):
        super().__init__(model)
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
        self.layers = fused_layer_weights(model) if layers is None else layers

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
