"""Reward-model heads and rendering: last-token extraction, padding/batch invariance, truncation,
save/load, LoRA, partial freezing. Tiny models: tiny-llama and a tiny BERT on the MiniLM tokenizer."""

from __future__ import annotations

import pytest
import torch

from reward_helpers import tiny_bert  # noqa: F401  (fixture)
from tuneloop.models.reward import (
    Renderer,
    build_reward_model,
    collate_encoded,
    last_token_index,
    length_chunks,
    load_reward_model,
    plain_prompt_text,
    save_reward_model,
    score_encoded,
    truncation_lengths,
)
from tuneloop.train.reward import RewardModelConfig

PROMPTS = ["hi", "Tell me about the weather in Paris in the spring, please.", "What is 2+2?", "ok"]
RESPONSES = ["hello there!", "It is mild and often rainy; bring a coat.", "4", ""]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models are dominated by thread synchronisation; one thread is much faster on a busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _rows(renderer, prompts=PROMPTS, responses=RESPONSES):
    return [renderer.encode([{"role": "user", "content": p}], [{"role": "assistant", "content": r}])
            for p, r in zip(prompts, responses)]


def test_last_token_index_reads_the_mask_not_the_pad_id():
    """Right padding → last 1; left padding → the final column; one real token → its index."""
    mask = torch.tensor([[1, 1, 1, 0, 0],
                         [0, 0, 1, 1, 1],
                         [1, 1, 1, 1, 1],
                         [1, 0, 0, 0, 0],
                         [0, 0, 0, 1, 0]])
    assert last_token_index(mask).tolist() == [2, 4, 4, 0, 3]


def test_truncation_keeps_the_response_and_the_end_of_the_prompt():
    assert truncation_lengths(10, 5, 20) == (10, 5)  # fits
    assert truncation_lengths(100, 20, 64) == (44, 20)  # prompt cut to what the response leaves
    assert truncation_lengths(100, 200, 64) == (32, 32)  # a huge response still leaves 32 prompt tokens
    assert truncation_lengths(5, 200, 64) == (5, 59)


def test_length_chunks_sort_and_respect_the_budget():
    chunks = length_chunks([5, 1, 9, 3, 9], max_tokens=10)
    assert chunks == [[1, 3], [0], [2], [4]]  # 2 rows × 3 ≤ 10; 5 alone (2 × 9 > 10)...
    assert sorted(i for c in chunks for i in c) == [0, 1, 2, 3, 4]


def test_causal_rendering_ends_on_the_end_of_turn_marker(tiny_name):
    model, tok = build_reward_model(RewardModelConfig(name=tiny_name))
    row = _rows(Renderer(tok, "causal_lm", 256))[0]
    assert tok.decode(row.input_ids).endswith("hello there!<|im_end|>")
    assert row.response_tokens == len(tok("hello there!<|im_end|>", add_special_tokens=False)["input_ids"])
    long = Renderer(tok, "causal_lm", 24).encode([{"role": "user", "content": "word " * 100}],
                                                 [{"role": "assistant", "content": "the answer"}])
    assert len(long) == 24 and tok.decode(long.input_ids).endswith("the answer<|im_end|>")


def test_encoder_rendering_is_a_text_pair(tiny_bert):
    _, tok = build_reward_model(RewardModelConfig(name=tiny_bert))
    row = Renderer(tok, "encoder", 64).encode([{"role": "user", "content": "Hi there"}],
                                             [{"role": "assistant", "content": "Hello"}])
    assert tok.decode(row.input_ids) == "[CLS] hi there [SEP] hello [SEP]"
    assert row.token_type_ids == [0, 0, 0, 0, 1, 1]
    convo = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    assert plain_prompt_text(convo) == "User: a\n\nAssistant: b\n\nUser: c"
    cut = Renderer(tok, "encoder", 40).encode([{"role": "user", "content": "one two three " * 30 + "last words"}],
                                             [{"role": "assistant", "content": "reply"}])
    assert len(cut) == 40 and tok.decode(cut.input_ids).endswith("last words [SEP] reply [SEP]")


def test_causal_score_is_the_same_left_or_right_padded_and_alone(tiny_name):
    model, tok = build_reward_model(RewardModelConfig(name=tiny_name))
    model.eval()
    rows = _rows(Renderer(tok, "causal_lm", 128))
    with torch.no_grad():
        right = score_encoded(model, rows, padding_side="right")
        left = score_encoded(model, rows, padding_side="left")
        alone = torch.cat([score_encoded(model, [r]) for r in rows])
        one_chunk = score_encoded(model, rows, max_batch_tokens=10_000)
    assert len({len(r) for r in rows}) > 1, "rows must differ in length for padding to matter"
    torch.testing.assert_close(left, right, atol=1e-5, rtol=0)
    torch.testing.assert_close(alone, right, atol=1e-5, rtol=0)
    torch.testing.assert_close(one_chunk, right, atol=1e-5, rtol=0)


def test_pad_equal_to_eos_fools_transformers_but_not_us(tiny_name):
    """When pad id == EOS id (common), a sequence that ends on EOS looks padded to transformers'
    pad-search; the mask-based extraction still reads the real last token."""
    model, tok = build_reward_model(RewardModelConfig(name=tiny_name))
    model.eval()
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    model.pad_id = eos
    model.core.config.pad_token_id = eos
    rows = _rows(Renderer(tok, "causal_lm", 128))[:2]
    assert rows[0].input_ids[-1] == eos
    batch = collate_encoded(rows, eos, "right")
    with torch.no_grad():
        ours = model(**batch)
        alone = torch.cat([model(**collate_encoded([r], eos)) for r in rows])
        theirs = model.core(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    torch.testing.assert_close(ours, alone, atol=1e-5, rtol=0)
    assert (theirs - ours).abs().max() > 1e-4, "transformers' pad search should pick the token before EOS here"


def test_encoder_score_is_batch_invariant(tiny_bert):
    model, tok = build_reward_model(RewardModelConfig(name=tiny_bert))
    model.eval()
    rows = _rows(Renderer(tok, "encoder", 64))
    with torch.no_grad():
        batched = score_encoded(model, rows)
        alone = torch.cat([score_encoded(model, [r]) for r in rows])
        reordered = score_encoded(model, rows[::-1])
    torch.testing.assert_close(alone, batched, atol=1e-5, rtol=0)
    torch.testing.assert_close(reordered.flip(0), batched, atol=1e-5, rtol=0)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_saved_folder_loads_in_transformers_and_scores_the_same(tiny_name, tmp_path, lora):
    from transformers import AutoModelForSequenceClassification

    from tuneloop.models.loading import LoraConfig
    from tuneloop.models.reward import RewardModelInfo

    cfg = RewardModelConfig(name=tiny_name, lora=LoraConfig(enabled=lora, r=4, alpha=8))
    model, tok = build_reward_model(cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if lora:
        assert any("lora_" in n for n in trainable) and any("score" in n for n in trainable)
        assert not any("embed_tokens" in n for n in trainable)
    with torch.no_grad():  # make the LoRA update non-zero so merging matters
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.eval()
    rows = _rows(Renderer(tok, "causal_lm", 128))
    with torch.no_grad():
        before = score_encoded(model, rows)
    save_reward_model(model, tok, tmp_path, RewardModelInfo("causal_lm", "chat-template", 128, tiny_name),
                      keep_adapter=True)
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path).config.num_labels == 1
    assert (tmp_path / "adapter" / "adapter_config.json").is_file() == lora  # lora.save 'both' 
    loaded, tok2, info = load_reward_model(tmp_path)
    assert info.kind == "causal_lm" and info.max_length == 128
    with torch.no_grad():
        after = score_encoded(loaded, _rows(Renderer(tok2, "causal_lm", 128)))
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)


def test_reward_models_use_plain_sdpa_by_default(tiny_bert):
    model, _ = build_reward_model(RewardModelConfig(name=tiny_bert))
    assert model.hf.config._attn_implementation == "sdpa"


def test_tuneloops_own_kernel_loads_in_a_fresh_process(tiny_bert):
    """'sdpa_documents' is registered with transformers by whichever loader sees it first; in a fresh
    process (no policy loaded before) an encoder reward model built with it scores as plain SDPA does."""
    import subprocess
    import sys

    script = f"""
import torch
from tuneloop.models.reward import build_reward_model
from tuneloop.train.reward import RewardModelConfig
torch.manual_seed(0)
ours, tok = build_reward_model(RewardModelConfig(name={tiny_bert!r}, attn_implementation="sdpa_documents"))
plain, _ = build_reward_model(RewardModelConfig(name={tiny_bert!r}))
plain.load_state_dict(ours.state_dict())
enc = tok(["a short one", "a somewhat longer sentence here"], padding=True, return_tensors="pt")
with torch.no_grad():
    torch.testing.assert_close(ours(enc["input_ids"], enc["attention_mask"]),
                               plain(enc["input_ids"], enc["attention_mask"]), atol=1e-6, rtol=0)
assert ours.hf.config._attn_implementation == "sdpa_documents"
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_trainable_layers_freezes_the_bottom(tiny_bert):
    model, _ = build_reward_model(RewardModelConfig(name=tiny_bert, trainable_layers=1))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".layer.1." in n or "pooler" in n or "classifier" in n for n in trainable)
    assert any("classifier" in n for n in trainable) and any(".layer.1." in n for n in trainable)
