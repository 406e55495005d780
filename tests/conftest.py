"""Test setup: offline, a per-session cache for tiny models, small shared fixtures."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("TUNELOOP_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "tuneloop-tests"))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_name() -> str:
    return "tiny-llama"


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_name):
    from tuneloop.models.loading import load_tokenizer

    return load_tokenizer(tiny_name)


@pytest.fixture()
def tiny_model(tiny_name):
    from tuneloop.models import ModelConfig, load_causal_lm

    model, _ = load_causal_lm(ModelConfig(name=tiny_name), trainable=False)
    return model
