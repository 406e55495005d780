"""Loss masks are built from message structure: every assistant turn, nothing else."""

from __future__ import annotations

import copy

import pytest

from tuneloop.data.chat import FALLBACK_TEMPLATE, TemplateError, render_prompt, render_with_mask

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another one?"},
    {"role": "assistant", "content": "Green, like grass."},
]


def _trained_spans(tokenizer, doc):
    spans, current = [], []
    for token, trained in zip(doc.input_ids, doc.loss_mask):
        if trained:
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    if current:
        spans.append(tokenizer.decode(current))
    return spans


def test_every_assistant_turn_and_only_it_is_trained(tiny_tokenizer):
    doc = render_with_mask(tiny_tokenizer, CONVERSATION)
    assert _trained_spans(tiny_tokenizer, doc) == ["Blue.<|im_end|>", "Green, like grass.<|im_end|>"]
    assert tiny_tokenizer.decode(doc.input_ids) == tiny_tokenizer.apply_chat_template(CONVERSATION, tokenize=False)


def test_prompt_tokens_match_generation_time_tokens(tiny_tokenizer):
    """The tokens before each answer are exactly what the model sees when asked to generate it."""
    doc = render_with_mask(tiny_tokenizer, CONVERSATION)
    first_answer = doc.loss_mask.index(1)
    assert doc.input_ids[:first_answer] == render_prompt(tiny_tokenizer, CONVERSATION[:2])
    second_prompt = render_prompt(tiny_tokenizer, CONVERSATION[:4])
    assert doc.input_ids[:len(second_prompt)] == second_prompt
    assert doc.loss_mask[len(second_prompt)] == 1 and doc.loss_mask[len(second_prompt) - 1] == 0


def test_fallback_template_ends_answers_with_eos(tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = None
    doc = render_with_mask(tokenizer, CONVERSATION[1:3])
    assert _trained_spans(tokenizer, doc) == ["Blue." + tokenizer.eos_token]
    text = tokenizer.decode(doc.input_ids)
    assert text == "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\nBlue.<|im_end|>\n"
    assert FALLBACK_TEMPLATE  # documented constant, used above because chat_template is None


def test_template_that_rewrites_earlier_turns_is_refused(tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    # Drops every assistant turn but the last, like some "thinking" templates drop old reasoning.
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] != 'assistant' or loop.last %}"
        "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    with pytest.raises(TemplateError, match="not prefix-stable"):
        render_with_mask(tokenizer, CONVERSATION)
