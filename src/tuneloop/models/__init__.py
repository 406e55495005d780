"""Model loading (local folder, hub id, the bundled SmolLM2, tiny test models), LoRA and saving."""

from tuneloop.models.loading import LoraConfig, ModelConfig, load_causal_lm, resolve_model_name

__all__ = ["LoraConfig", "ModelConfig", "load_causal_lm", "resolve_model_name"]
