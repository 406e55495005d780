"""Turn SFT records into token documents with loss masks, and summarise them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tuneloop.data.chat import Tokenized, render_with_mask
from tuneloop.data.formats import sft_messages
from tuneloop.data.loading import Record
from tuneloop.data.preferences import prompt_key


@dataclass
class TokenStats:
    documents: int
    dropped_too_long: int
    truncated: int
    tokens: int
    trained_tokens: int
    lengths: list[int]

    @property
    def trained_fraction(self) -> float:
        return self.trained_tokens / max(1, self.tokens)

    def summary(self) -> dict[str, float]:
        lengths = sorted(self.lengths) or [0]
        pct = lambda q: lengths[min(len(lengths) - 1, int(q * len(lengths)))]  # noqa: E731
        return {"documents": self.documents, "dropped_too_long": self.dropped_too_long, "truncated": self.truncated,
                "tokens": self.tokens, "trained_tokens": self.trained_tokens,
                "trained_fraction": round(self.trained_fraction, 4), "length_min": lengths[0],
                "length_median": pct(0.5), "length_p95": pct(0.95), "length_max": lengths[-1]}


def tokenize_sft(records: list[Record], tokenizer, max_length: int,
                 too_long: Literal["truncate", "drop"] = "truncate") -> tuple[list[Tokenized], TokenStats]:
    """Validate and tokenise every record (raising DataError on the first bad one)."""
    conversations = [sft_messages(r) for r in records]  # validate everything before tokenising anything
    docs: list[Tokenized] = []
    dropped = truncated = 0
    for messages in conversations:
        doc = render_with_mask(tokenizer, messages)
        first_answer = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
        doc.group = prompt_key(messages[:first_answer])
        if len(doc) > max_length:
            if too_long == "drop":
                dropped += 1
                continue
            doc = Tokenized(doc.input_ids[:max_length], doc.loss_mask[:max_length], doc.group)
            if doc.trained_tokens == 0:  # the answer was cut away entirely: nothing to learn from
                dropped += 1
                continue
            truncated += 1
        docs.append(doc)
    stats = TokenStats(len(docs), dropped, truncated, sum(len(d) for d in docs), sum(d.trained_tokens for d in docs),
                       [len(d) for d in docs])
    return docs, stats
