"""Packing: best-fit decreasing by hand; packed documents cannot see each other."""

from __future__ import annotations

import torch

from tuneloop.data.chat import Tokenized, render_with_mask
from tuneloop.data.packing import collate_padded, collate_padding_free, pack_best_fit
from tuneloop.losses.sft import masked_nll_sum


def test_best_fit_decreasing_by_hand():
    """Lengths 5, 4, 3, 3, 2, 1 into bins of 8, longest first, each into the fullest bin it fits:
    5 → new bin A (3 left); 4 → new bin B (4 left); 3 → A (fits exactly, 0 left); 3 → B (1 left);
    2 → fits nowhere → new bin C (6 left); 1 → B (the fullest that fits, 0 left).
    """
    assert pack_best_fit([5, 4, 3, 3, 2, 1], 8) == [[0, 2], [1, 3, 5], [4]]


def _docs(tokenizer):
    convs = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
             for q, a in [("hi", "hello there"), ("what is two plus two", "four"), ("bye", "see you later, friend")]]
    return [render_with_mask(tokenizer, c) for c in convs]


def test_packed_row_targets_and_positions_restart(tiny_tokenizer):
    docs = [Tokenized([5, 6, 7], [0, 1, 1]), Tokenized([8, 9], [0, 1])]
    batch = collate_padding_free(docs)
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1]]
    # the last token of document 1 predicts nothing: document 2 is not its continuation
    assert batch.loss_mask.tolist() == [[1.0, 1.0, 0.0, 1.0, 0.0]]
    assert batch.targets[0, :2].tolist() == [6, 7] and batch.targets[0, 3].item() == 9
    assert batch.attention_mask is None


def test_packed_logits_equal_separate_logits(tiny_model, tiny_tokenizer):
    docs = _docs(tiny_tokenizer)
    packed = collate_padding_free(docs)
    with torch.no_grad():
        packed_logits = tiny_model(input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=False).logits[0]
        offset = 0
        for doc in docs:
            alone = tiny_model(input_ids=torch.tensor([doc.input_ids])).logits[0]
            torch.testing.assert_close(packed_logits[offset:offset + len(doc)], alone, atol=1e-5, rtol=0)
            offset += len(doc)


def test_packed_loss_equals_unpacked_loss(tiny_model, tiny_tokenizer):
    docs = _docs(tiny_tokenizer)
    with torch.no_grad():
        packed = collate_padding_free(docs)
        out = tiny_model(input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=False)
        packed_loss, _ = masked_nll_sum(out.logits, packed.targets, packed.loss_mask)
        padded = collate_padded(docs, tiny_tokenizer.pad_token_id)
        out = tiny_model(input_ids=padded.input_ids, attention_mask=padded.attention_mask,
                         position_ids=padded.position_ids)
        padded_loss, _ = masked_nll_sum(out.logits, padded.targets, padded.loss_mask)
        separate = sum(masked_nll_sum(tiny_model(input_ids=b.input_ids).logits, b.targets, b.loss_mask)[0]
                       for b in (collate_padding_free([d]) for d in docs))
    torch.testing.assert_close(packed_loss, separate, atol=1e-5, rtol=0)
    torch.testing.assert_close(padded_loss, separate, atol=1e-5, rtol=0)


def test_document_attention_matches_block_diagonal_mask(tiny_name, tiny_tokenizer):
    """The per-document kernel (one causal SDPA call per document) gives the loss and the gradients of
    plain SDPA with transformers' block-diagonal mask, and of each document run alone."""
    from tuneloop.models import ModelConfig, load_causal_lm
    from tuneloop.models.attention import uses_document_attention
    from tuneloop.train.sft import batch_loss_sum

    docs = _docs(tiny_tokenizer)
    packed = collate_padding_free(docs)
    results = {}
    for kernel in ("sdpa_documents", "sdpa"):
        model, _ = load_causal_lm(ModelConfig(name=tiny_name, attn_implementation=kernel))
        assert uses_document_attention(model) == (kernel == "sdpa_documents")
        loss, _ = batch_loss_sum(model, packed, keep_trained_only=True)
        loss.backward()
        results[kernel] = (loss.detach(), [p.grad.clone() for p in model.parameters()])
    separate = sum(batch_loss_sum(model, collate_padding_free([d]), keep_trained_only=False)[0].detach() for d in docs)
    torch.testing.assert_close(results["sdpa_documents"][0], separate, atol=1e-5, rtol=0)
    torch.testing.assert_close(results["sdpa_documents"][0], results["sdpa"][0], atol=1e-5, rtol=0)
    for ours, plain in zip(results["sdpa_documents"][1], results["sdpa"][1]):
        torch.testing.assert_close(ours, plain, atol=1e-5, rtol=1e-4)
