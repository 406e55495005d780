"""Chat rendering into token ids and a loss mask, built from the structured messages.

The conversation is rendered with the tokenizer's chat template. For each assistant turn i the
template is rendered twice -- the turns before it with the generation prompt, and the turns through
it -- and the characters in between are that turn's answer (its text plus the end-of-turn marker;
trailing whitespace after the marker is not trained). The rendered text is cut at those boundaries
and each piece is tokenised on its own, so the prompt tokens are exactly what ``render_prompt`` gives
at generation time and the answer tokens are what the model would have to produce after them. No
response template is ever searched for in the token stream.

A template that is not prefix-stable (rendering turn i+1 rewrites turn i, as some "thinking"
templates do) is refused with a clear error rather than silently mis-masked.

Models without a chat template get ``FALLBACK_TEMPLATE``: ChatML markers, each turn closed by the
tokenizer's EOS token, so generation stops where training ended the answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneloop.data.formats import Message

FALLBACK_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class TemplateError(ValueError):
    """The chat template cannot be used to build structural loss masks."""


@dataclass
class Tokenized:
    input_ids: list[int]
    loss_mask: list[int]  # 1 where the token is an assistant answer token (trained), else 0
    group: str = ""  # hash of the prompt (the turns before the first answer): the unit of the eval split

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def trained_tokens(self) -> int:
        return sum(self.loss_mask)


def chat_template(tokenizer) -> str:
    return tokenizer.chat_template or FALLBACK_TEMPLATE


def render_text(tokenizer, messages: list[Message], add_generation_prompt: bool) -> str:
    # bos_token/eos_token may be None for some tokenizers; the fallback template checks bos_token.
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt,
        chat_template=chat_template(tokenizer),
    )


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def render_prompt(tokenizer, messages: list[Message]) -> list[int]:
    """Token ids of a conversation followed by the assistant generation prompt."""
    return _encode(tokenizer, render_text(tokenizer, messages, add_generation_prompt=True))


def answer_spans(tokenizer, messages: list[Message], first: int = 0) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span (start, end) of each assistant turn at index
    ≥ ``first``: it starts where the turns before it, rendered with the generation prompt, end, and
    stops at the end of the text rendered through it, trailing whitespace excluded (module doc).

    The one prefix-stability check of tuneloop: a template that rewrites an earlier turn when a later
    one is added raises ``TemplateError``."""
    full = render_text(tokenizer, messages, add_generation_prompt=False)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if i < first or message["role"] != "assistant":
            continue
        before = render_text(tokenizer, messages[:i], add_generation_prompt=True)
        through = render_text(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not through.startswith(before) or not full.startswith(through):
            raise TemplateError(
                "the chat template is not prefix-stable (rendering a later turn changes an earlier one), "
                "so answer tokens cannot be located from the message structure; give the model a "
                "prefix-stable template (tokenizer.chat_template)")
        start, end = len(before), len(through.rstrip())
        if end <= start:
            raise TemplateError(f"the chat template rendered assistant turn {i} as empty text")
        spans.append((start, end))
    return full, spans


def _pieces(tokenizer, text: str, spans: list[tuple[int, int]], cursor: int) -> tuple[list[int], list[int]]:
    """Token ids of ``text[cursor:last span end]``, each piece tokenised on its own, and a mask that is 1
    on the answer spans, 0 on the text between them (turn separators, user turns)."""
    ids: list[int] = []
    mask: list[int] = []
    for start, end in spans:
        between = _encode(tokenizer, text[cursor:start])
        answer = _encode(tokenizer, text[start:end])
        ids += between + answer
        mask += [0] * len(between) + [1] * len(answer)
        cursor = end
    return ids, mask


def render_with_mask(tokenizer, messages: list[Message]) -> Tokenized:
    """Token ids of a whole conversation and a mask that is 1 on every assistant answer token (SFT)."""
    full, spans = answer_spans(tokenizer, messages)
    ids, mask = _pieces(tokenizer, full, spans, 0)
    tail = _encode(tokenizer, full[spans[-1][1] if spans else 0:])
    return Tokenized(ids + tail, mask + [0] * len(tail))


def render_reply(tokenizer, prompt: list[Message], reply: list[Message]) -> tuple[list[int], list[int]]:
    """(reply ids, reply mask) of assistant turns ``reply`` following ``render_prompt(tokenizer, prompt)``:
    exactly the tokens ``render_with_mask`` gives the same conversation after its prompt, without the
    trailing whitespace after the last end-of-turn marker. A later turn is preceded by the template's
    separator (end of line, next turn's header), which is in the ids with mask 0 (DPO responses,
    reward-model inputs)."""
    full, spans = answer_spans(tokenizer, list(prompt) + list(reply), first=len(prompt))
    if len(spans) != len(reply):
        raise TemplateError(f"a reply must hold assistant turns only, got roles {[m['role'] for m in reply]}")
    return _pieces(tokenizer, full, spans, spans[0][0])
