"""The record formats tuneloop reads, validated into plain message lists.

SFT records:
  ``{"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}, ...]}``
  ``{"prompt": "...", "completion": "..."}`` (either side may also be a list of messages)
Prompt records (for sampling and RL):
  ``{"prompt": "..."}`` or ``{"messages": [...]}`` ending on a user turn.
Preference, ranking and unpaired records are validated in ``data.preferences``; ``detect_format``
names every format (``FORMATS``) for ``tuneloop inspect data``.

Roles are ``system``, ``user`` and ``assistant``. Every content is a non-empty string. An SFT
record must contain at least one assistant turn: it is what the loss trains on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tuneloop.data.errors import DataError
from tuneloop.data.loading import Record

Message = dict[str, str]  # {"role": ..., "content": ...}
ROLES = ("system", "user", "assistant")


def messages_field(record: Record, value: Any, field: str, *, allow_empty_content: bool = False
                   ) -> list[Message]:
    """Validate a non-empty list of ``{"role", "content"}`` messages; errors name ``field[i].key``.

    ``allow_empty_content`` accepts "" as a content (an empty reply is a real response in
    preference data); otherwise every content must hold non-whitespace text.
    """
    if isinstance(value, str):
        raise record.error("expected a list of messages, got a string", field)
    if not isinstance(value, list) or not value:
        raise record.error(f"expected a non-empty list of messages, got {_show(value)}", field)
    out = []
    for i, msg in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(msg, dict):
            raise record.error(f"expected an object with 'role' and 'content', got {_show(msg)}", where)
        for key in ("role", "content"):
            if key not in msg:
                raise record.error("missing", f"{where}.{key}")
        role, content = msg["role"], msg["content"]
        if role not in ROLES:
            raise record.error(f"unknown role {role!r}; expected one of {', '.join(ROLES)}", f"{where}.role")
        out.append({"role": role, "content": text_field(record, content, f"{where}.content",
                                                        allow_empty=allow_empty_content)})
    return out


def text_field(record: Record, value: Any, field: str, *, allow_empty: bool = False) -> str:
    """Validate a string field; unless ``allow_empty``, it must hold non-whitespace text."""
    if not isinstance(value, str):
        raise record.error(f"expected a string, got {_show(value)}", field)
    if not allow_empty and not value.strip():
        raise record.error("is empty", field)
    return value


_messages = messages_field  # historical private names, kept for existing callers
_text = text_field


def show_value(value: Any) -> str:
    """A short ``type repr`` of a bad value for an error message."""
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'…' if len(text) > 60 else ''}"


_show = show_value


def plain_prompt_text(prompt: list[Message]) -> str:
    """A prompt as plain text: a single user turn as is; a conversation as "Role: text" blocks joined by
    blank lines (e.g. "User: hi\\n\\nAssistant: hello\\n\\nUser: bye"). Encoder reward models read
    it, and the HTTP reward sends it beside the messages."""
    if len(prompt) == 1 and prompt[0]["role"] == "user":
        return prompt[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in prompt)


def sft_messages(record: Record) -> list[Message]:
    """Validate an SFT record and return its conversation."""
    data = record.data
    if "messages" in data:
        messages = _messages(record, data["messages"], "messages")
    elif "prompt" in data or "completion" in data:
        for key in ("prompt", "completion"):
            if key not in data:
                raise record.error("missing (a prompt/completion record needs both)", key)
        prompt, completion = data["prompt"], data["completion"]
        head = _messages(record, prompt, "prompt") if isinstance(prompt, list) else [
            {"role": "user", "content": _text(record, prompt, "prompt")}]
        tail = _messages(record, completion, "completion") if isinstance(completion, list) else [
            {"role": "assistant", "content": _text(record, completion, "completion")}]
        messages = head + tail
    else:
        raise record.error(f"expected 'messages' or 'prompt' + 'completion'; found keys {sorted(data)}")
    if not any(m["role"] == "assistant" for m in messages):
        raise record.error("has no assistant turn to train on", "messages")
    return messages


def prompt_messages(record: Record) -> list[Message]:
    """Validate a prompt record and return the conversation up to the turn the model answers."""
    data = record.data
    if "messages" in data:
        messages = _messages(record, data["messages"], "messages")
        if messages[-1]["role"] != "user":
            raise record.error(f"must end on a user turn, ends on '{messages[-1]['role']}'", "messages")
        return messages
    if "prompt" in data:
        value = data["prompt"]
        if isinstance(value, list):
            messages = _messages(record, value, "prompt")
            if messages[-1]["role"] != "user":
                raise record.error(f"must end on a user turn, ends on '{messages[-1]['role']}'", "prompt")
            return messages
        return [{"role": "user", "content": _text(record, value, "prompt")}]
    raise record.error(f"expected 'prompt' or 'messages'; found keys {sorted(data)}")


FORMATS = {
    "sft-messages": "SFT conversations ('messages' with assistant turns)",
    "sft-prompt-completion": "SFT pairs ('prompt', 'completion')",
    "prompt": "prompts ('prompt')",
    "prompt-messages": "prompts ('messages' ending on a user turn)",
    "preference": "preference pairs ('prompt', 'chosen', 'rejected')",
    "preference-implicit": "preference pairs without a prompt ('chosen', 'rejected' conversations or "
                           "transcripts sharing every turn but the last reply)",
    "ranking": "rankings ('prompt', 'completions', 'ranking')",
    "unpaired": "unpaired judgments ('prompt', 'completion', 'label')",
    "candidates": "sampled candidates ('prompt', 'completions')",
}


def detect_format(records: Sequence[Record]) -> str:
    """Name the format of a file from its first record's keys (a key of ``FORMATS``).

    A record with either preference field (``chosen`` or ``rejected``) is a preference pair, with or
    without a prompt; one with ``ranking`` is a ranking. So a record that lacks a field its format
    needs ({"prompt", "chosen"}) is recognised, and validating it names the missing field.
    """
    keys = set(records[0].data)
    if keys & {"chosen", "rejected"}:
        return "preference" if keys & {"prompt", "prompt_messages"} else "preference-implicit"
    if "ranking" in keys:
        return "ranking"
    if "completions" in keys:
        return "candidates"
    if "label" in keys:
        return "unpaired"
    if "messages" in keys:
        messages = records[0].data["messages"]
        if isinstance(messages, list) and messages and isinstance(messages[-1], dict) \
                and messages[-1].get("role") == "user":
            return "prompt-messages"
        return "sft-messages"
    if {"prompt", "completion"} <= keys:
        return "sft-prompt-completion"
    if "prompt" in keys:
        return "prompt"
    raise DataError(records[0].path, f"unrecognised record format; keys {sorted(keys)}; expected one of: "
                    + "; ".join(FORMATS.values()), line=records[0].line, where=records[0].where)
