"""Tiny models for tests and ``tuneloop demo --quick``: a byte-level BPE tokenizer trained in-process
on the bundled chatterbot corpus, with ChatML special tokens and template, and a randomly initialised
Llama of a few million parameters. Deterministic for a given size and seed; cached on disk.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tuneloop.atomic import atomic_dir
from tuneloop.models.bundled import cache_dir

TINY_PREFIX = "tiny-llama"
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _corpus() -> list[str]:
    from tuneloop.data.bundled import chatterbot_pairs

    texts = []
    for prompt, answer in chatterbot_pairs():
        texts += [prompt, answer]
    return texts


def build_tiny_tokenizer(vocab_size: int = 1024):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token=None)
    fast.chat_template = CHATML_TEMPLATE
    return fast


def tiny_model_path(name: str) -> Path:
    """Folder of the tiny model called ``tiny-llama`` or ``tiny-llama-<hidden>x<layers>``, built once."""
    hidden, layers = 64, 2
    suffix = name[len(TINY_PREFIX):].lstrip("-")
    if suffix:
        try:
            hidden, layers = (int(x) for x in suffix.split("x"))
        except ValueError:
            raise ValueError(f"tiny model names look like 'tiny-llama' or 'tiny-llama-128x4', got {name!r}") from None
    target = cache_dir() / "models" / f"{TINY_PREFIX}-{hidden}x{layers}"
    if (target / "config.json").is_file():
        return target
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 32), num_key_value_heads=max(1, hidden // 64),
        max_position_embeddings=2048, tie_word_embeddings=True, rms_norm_eps=1e-5,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target
