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


@pytest.fixture()
def sharp_model(tiny_model):
    """The tiny model with larger random weights: its greedy continuation changes from token to token
    (the stock initialisation repeats one token), so greedy comparisons can fail."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in tiny_model.parameters():
            if parameter.dim() == 2:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return tiny_model


@pytest.fixture()
def backend(monkeypatch):
    """Set TUNELOOP_LINEAR for one test (models/matmul.py; the cached choice is cleared before and after)."""
    from tuneloop.models import matmul

    def choose(value: str):
        monkeypatch.setenv("TUNELOOP_LINEAR", value)
        matmul.linear_backend.cache_clear()
        return matmul.linear_backend()

    yield choose
    matmul.linear_backend.cache_clear()
