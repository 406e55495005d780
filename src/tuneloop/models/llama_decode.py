"""The engine's decode step for Llama-architecture models (SmolLM2, the tiny test models), written
against the weights.

Shapes: B rows, W = longest row + 1 positions attended, H query heads, H_kv key/value heads,
G = H / H_kv, D head dimension, V vocabulary; in a prefill n prompts of P_i tokens, N tokens in all.

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
- scale and mask are applied by the scores' batched matmul (``baddbmm``), the residual adds in place
  after the output matmuls (``add_linear_``), RMSNorm is one fused op, queries and keys are rotated together;
- the linear layers run on ``models/matmul.py``'s backend: oneDNN where it beats torch's MKL matmul
  (2.0-2.3× on this project's AMD EPYC with AVX-512), torch's otherwise;
- no per-call mask building, output records or cache objects.

Prefill (``LlamaForward.prefill``): all prompts admitted together run as one packed batch of tokens
(N = their total length, no padding in the matmuls), their keys and values written straight into their
slots; attention runs per prompt over its slot (queries padded to the longest prompt, only there), and
the head runs at each prompt's last token only. A prefix that every prompt of the batch shares (a chat
template's system prompt: 36 of ~90 tokens of the bundled review prompts) is run once into the first
slot and copied into the others. The fused weights are copies made when the engine starts a
``generate()`` call, so a model that trains between calls is always decoded with its current weights;
a LoRA model prefills and decodes with its adapters merged (W + s·B·A).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from tuneloop.generation.forward import GenericForward
from tuneloop.generation.kv import SlotKVCache
from tuneloop.models.matmul import add_linear_, linear


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


def _without_torch_function(method):
    """Run ``method`` with torch-function handling off: its tensors are plain and its linear layers call
    ``models.matmul.linear`` directly, so a ``FastLinear`` mode around the caller (an RL run) would only
    add Python work to each of a decode step's ~500 ops (~12% of an 8-row step)."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with torch._C.DisableTorchFunction():
            return method(*args, **kwargs)
    return wrapper


class LlamaForward(GenericForward):
    """Prefill and decode steps written against the weights (``layers``: ``fused_layer_weights(model)``,
    made here when not given); a peft LoRA model (``supports_lora_fast_path``) runs with the merged weights."""

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
        # The last shared prefix run (its tokens, keys and values (H_kv, c, D) per layer), reused by later
        # prefills of this forward (one generate() call) whose prompts start with it.
        self.kept_prefix: tuple[list[int], list[tuple[torch.Tensor, torch.Tensor]]] | None = None

    def _rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """transformers' LlamaRMSNorm (statistics in fp32) as one fused op."""
        return F.rms_norm(x.float(), (x.shape[-1],), None, self.eps).to(x.dtype) * weight

    def _rotary(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin (N, 1, D) of ``positions`` (N,), broadcast over heads (the model's rotary module)."""
        cos, sin = self.rotary(x, positions[None])  # (1, N, D)
        return cos[0, :, None], sin[0, :, None]

    def _qkv(self, x: torch.Tensor, norm: torch.Tensor, qkv_weight: torch.Tensor, cos: torch.Tensor,
             sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries (N, H, D), keys and values (N, H_kv, D) of the tokens ``x`` (N, hidden), rotated.
        Queries and keys are rotated together: one set of elementwise ops for both."""
        rows, dim = x.shape[0], self.head_dim
        qkv = linear(self._rms_norm(x, norm), qkv_weight)
        rotated_heads = self.heads + self.kv_heads
        qk = qkv[:, :rotated_heads * dim].view(rows, rotated_heads, dim)
        half = dim // 2
        qk = qk * cos + torch.cat((-qk[..., half:], qk[..., :half]), dim=-1) * sin
        v = qkv[:, rotated_heads * dim:].view(rows, self.kv_heads, dim)
        return qk[:, :self.heads], qk[:, self.heads:], v

    def _finish_layer(self, x: torch.Tensor, attended: torch.Tensor, o_weight: torch.Tensor, norm: torch.Tensor,
                      gate_up_weight: torch.Tensor, down_weight: torch.Tensor) -> torch.Tensor:
        """The residual stream after the attention output ``attended`` (N, H*D) and the MLP; in place on x."""
        x = add_linear_(x, attended, o_weight)
        gate, up = linear(self._rms_norm(x, norm), gate_up_weight).chunk(2, dim=-1)
        return add_linear_(x, F.silu(gate).mul_(up), down_weight)

    @_without_torch_function
    def decode(self, slots: SlotKVCache, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) after feeding ``tokens`` (B,) at ``positions`` (B,) of slots 0..B-1."""
        tokens, positions = tokens.to(self.device), positions.to(self.device)
        rows, kv_heads, dim = len(tokens), self.kv_heads, self.head_dim
        groups = self.heads // kv_heads
        width = int(positions.max()) + 1
        index = slots.write_index(positions)
        hidden = torch.arange(width, device=self.device)[None, :] > positions[:, None]  # (B, W) beyond the row
        mask = torch.zeros(hidden.shape, device=self.device).masked_fill_(hidden, float("-inf"))
        mask = mask[:, None, None].expand(rows, kv_heads, groups, width).reshape(rows * kv_heads, groups, width)
        x = self.embed[tokens]  # (B, hidden), a copy: updated in place below
        cos, sin = self._rotary(x, positions)
        for layer, (norm1, qkv_weight, o_weight, norm2, gate_up_weight, down_weight) in enumerate(self.layers):
            q, k, v = self._qkv(x, norm1, qkv_weight, cos, sin)
            keys, values = slots.append(layer, k, v, index, width)  # (B, H_kv, W, D) views of the cache
            # The G query heads of a key/value head act as G queries of it: scores (B * H_kv, G, W),
            # scale and mask applied by the same batched matmul.
            scores = torch.baddbmm(mask, q.reshape(rows * kv_heads, groups, dim),
                                   keys.reshape(rows * kv_heads, width, dim).transpose(-1, -2), alpha=dim ** -0.5)
            attended = torch.bmm(torch.softmax(scores, dim=-1), values.reshape(rows * kv_heads, width, dim))
            x = self._finish_layer(x, attended.view(rows, -1), o_weight, norm2, gate_up_weight, down_weight)
        return linear(self._rms_norm(x, self.final_norm), self.head)

    @_without_torch_function
    def prefill(self, slots: SlotKVCache, targets: list[int], prompts: list[list[int]]) -> torch.Tensor:
        """Run ``prompts`` into slots ``targets`` (keys and values at positions 0..P_i-1); logits (n, V)
        after each prompt's last token. A prefix that every prompt shares (SHARED_PREFIX_MIN tokens or
        more, e.g. a chat template's system prompt) is run once and copied into the other slots, and kept:
        a later prefill whose prompts all start with it (a prompt admitted alone) copies it in as well."""
        done = self._write_kept_prefix(slots, targets, prompts)
        shared = shared_prefix_length(prompts)
        if not done and shared:
            self._run_tokens(slots, targets[:1], [prompts[0][:shared]], [0], logits=False)
            slots.copy([targets[0]] * (len(targets) - 1), targets[1:], shared)
            self.kept_prefix = (prompts[0][:shared], slots.read_prompt(targets[0], shared))
            done = shared
        # Packed batches of at most PREFILL_TOKENS new tokens (one prompt at least): activations stay small.
        chunks, tokens = [[]], 0
        for j, prompt in enumerate(prompts):
            if chunks[-1] and tokens + len(prompt) - done > PREFILL_TOKENS:
                chunks, tokens = [*chunks, []], 0
            chunks[-1].append(j)
            tokens += len(prompt) - done
        return torch.cat([self._run_tokens(slots, [targets[i] for i in chunk], [prompts[i] for i in chunk],
                                           [done] * len(chunk)) for chunk in chunks])

    def _write_kept_prefix(self, slots: SlotKVCache, targets: list[int], prompts: list[list[int]]) -> int:
        """Positions written into every target from ``kept_prefix`` (the tokens all prompts share with it;
        0 when they are fewer than SHARED_PREFIX_MIN)."""
        if self.kept_prefix is None:
            return 0
        tokens, kv = self.kept_prefix
        usable = common_prefix_length([*prompts, [*tokens, -1]])  # -1: never a token, keeps all of ``tokens``
        if usable < SHARED_PREFIX_MIN:
            return 0
        for slot in targets:
            slots.write_prompt(slot, [(k[:, :usable], v[:, :usable]) for k, v in kv])
        return usable

    def _run_tokens(self, slots: SlotKVCache, targets: list[int], prompts: list[list[int]], cached: list[int],
                    logits: bool = True) -> torch.Tensor | None:
        """Positions cached[i]..P_i-1 of prompt i, all prompts packed into one (N, hidden) batch (no padding
        in the matmuls), attending to positions 0..P_i-1 of slot targets[i] (0..cached[i]-1 already there).
        Attention runs per prompt on queries padded to Q = the most new tokens of a prompt."""
        device, dim = self.device, self.head_dim
        counts = torch.tensor([len(p) - c for p, c in zip(prompts, cached)], device=device)  # (n,) new tokens
        assert bool((counts > 0).all()), f"every prompt needs a new token, got {counts.tolist()}"
        starts = torch.tensor(cached, device=device)
        row = torch.repeat_interleave(torch.arange(len(prompts), device=device), counts)  # (N,) prompt of a token
        query = torch.arange(len(row), device=device) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
        positions = starts[row] + query  # (N,)
        ids = torch.tensor([t for p, c in zip(prompts, cached) for t in p[c:]], device=device)
        width, queries = max(len(p) for p in prompts), int(counts.max())
        # (n, 1, Q, P): query j of prompt i (position cached[i] + j) sees the positions up to its own.
        visible = torch.arange(width, device=device)[None, None, :] <= (starts[:, None] + torch.arange(
            queries, device=device)[None, :])[:, :, None]
        slot_ids = torch.tensor(targets, device=device)
        index = slots.write_index_tokens(slot_ids[row], positions)
        x = self.embed[ids]  # (N, hidden)
        cos, sin = self._rotary(x, positions)
        for layer, (norm1, qkv_weight, o_weight, norm2, gate_up_weight, down_weight) in enumerate(self.layers):
            q, k, v = self._qkv(x, norm1, qkv_weight, cos, sin)
            slots.store(layer, k, v, index)
            padded = q.new_zeros(len(prompts), queries, self.heads, dim)
            padded[row, query] = q
            attended = F.scaled_dot_product_attention(
                padded.transpose(1, 2), slots.keys[layer][slot_ids, :, :width], slots.values[layer][slot_ids, :, :width],
                attn_mask=visible[:, None], enable_gqa=True)  # (n, H, Q, D)
            attended = attended.transpose(1, 2)[row, query].reshape(len(row), -1)  # (N, H*D)
            x = self._finish_layer(x, attended, o_weight, norm2, gate_up_weight, down_weight)
        if not logits:
            return None
        last = counts.cumsum(0) - 1
        return linear(self._rms_norm(x[last], self.final_norm), self.head)


SHARED_PREFIX_MIN = 16  # tokens a prefix shared by all prompts of a prefill needs before it is run once
PREFILL_TOKENS = 4096  # new tokens per packed prefill forward at most (its activations: ~50 MB for SmolLM2)


def common_prefix_length(prompts: list[list[int]]) -> int:
    """Tokens that every prompt starts with, at most the shortest prompt's length - 1 (each prompt keeps
    a token of its own, whose logits the prefill returns)."""
    shortest = min(len(p) for p in prompts)
    for position in range(shortest - 1):
        token = prompts[0][position]
        if any(p[position] != token for p in prompts):
            return position
    return shortest - 1


def shared_prefix_length(prompts: list[list[int]]) -> int:
    """The prefix a prefill of ``prompts`` runs once for all of them: their ``common_prefix_length`` when
    there are several and it is SHARED_PREFIX_MIN tokens or more, else 0."""
    shared = common_prefix_length(prompts) if len(prompts) > 1 else 0
    return shared if shared >= SHARED_PREFIX_MIN else 0
