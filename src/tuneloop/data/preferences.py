"""Preference data, validated into typed records for reward models and the DPO family.

Accepted records (JSONL/Parquet/CSV/HF dataset, read with ``tuneloop.data.load_records``):

- Pairs: ``{"prompt", "chosen", "rejected"}``, each side text or a list of messages; optional
  ``margin`` (a number ≥ 0: how much better chosen is, for the Llama 2 margin loss) and ``tie`` (bool:
  judged equally good; a tie carries no margin). A text prompt is one user turn, a text response one
  assistant turn. A message-list prompt must end on a user turn; a response holds assistant turns only.
- Implicit-prompt pairs: ``{"chosen", "rejected"}`` without a prompt, both whole conversations that
  share every turn except the last assistant reply; either two message lists, or two HH-RLHF
  transcripts ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` (Bai et al. 2022). The prompt is the common
  prefix of turns; chosen and rejected are the two final assistant replies.
- Rankings: ``{"prompt", "completions": [...], "ranking": [[best, ...], [next, ...], ...]}``: tie groups
  from best to worst, every completion index exactly once (a bare index stands for a group of one).
  ``Ranking.pairs()`` expands them into pairs, all carrying the ranking's prompt group.
- Unpaired (KTO): ``{"prompt", "completion", "label": true|false}`` (desirable or not).

Deliberate choices:
- A response may be empty (""): replying nothing is a real action (end-of-sequence at once), and in
  HH-RLHF harmlessness data an empty reply is sometimes the preferred one. Prompts may not be empty.
- HH transcripts sometimes hold two "Assistant:" blocks in a row; consecutive turns of one role are
  merged into one message, joined by a blank line, so conversations alternate.
- Every pair, ranking and example carries ``group``, a hash of its prompt: it is the unit of the
  per-prompt weighting (InstructGPT §3.5, see ``pair_weights``) and of ``data.split.split_by_prompt``.
- Extra keys are ignored (exports carry metadata). CSV cells are strings, so for ``.csv`` files
  ``margin``/``tie``/``label`` also accept "1.5", "true"/"false", and an empty cell means "not given".
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tuneloop.data.formats import Message, messages_field, show_value, text_field
from tuneloop.data.loading import Record


@dataclass(frozen=True)
class PreferencePair:
    """One judgment: ``chosen`` preferred to ``rejected`` (or, with ``tie``, equally good)."""

    prompt: list[Message]  # the conversation up to the reply; ends on a user turn
    chosen: list[Message]  # the preferred reply: assistant turns only
    rejected: list[Message]  # the other reply: assistant turns only
    margin: float  # how much better chosen is (0 when not given); 0 for a tie
    tie: bool  # True when the two replies were judged equally good
    group: str  # hash of the prompt: pairs of one prompt share it
    source: str  # "file:line" the pair came from


@dataclass(frozen=True)
class Ranking:
    """K completions of one prompt, ranked best first in tie groups."""

    prompt: list[Message]
    completions: list[list[Message]]  # K replies, assistant turns only
    tie_groups: list[list[int]]  # completion indices, best group first; each index exactly once
    group: str
    source: str

    def rank_groups(self) -> list[int]:
        """Tie-group index of each completion (K,), 0 = best: the input of the ranking losses."""
        ranks = [0] * len(self.completions)
        for g, members in enumerate(self.tie_groups):
            for i in members:
                ranks[i] = g
        return ranks

    def pairs(self, *, include_tie_pairs: bool = False) -> list[PreferencePair]:
        """Every pair (better group, worse group); with ``include_tie_pairs`` also each pair inside a group."""
        out = []
        for a, better in enumerate(self.tie_groups):
            for worse in self.tie_groups[a + 1:]:
                out += [self._pair(i, j, tie=False) for i in better for j in worse]
            if include_tie_pairs:
                out += [self._pair(i, j, tie=True) for k, i in enumerate(better) for j in better[k + 1:]]
        return out

    def _pair(self, i: int, j: int, tie: bool) -> PreferencePair:
        return PreferencePair(self.prompt, self.completions[i], self.completions[j], 0.0, tie, self.group, self.source)


@dataclass(frozen=True)
class UnpairedExample:
    """One reply labelled desirable or undesirable (KTO)."""

    prompt: list[Message]
    completion: list[Message]  # assistant turns only
    desirable: bool
    group: str
    source: str


def prompt_key(prompt: list[Message]) -> str:
    """A stable 16-hex-digit id of a prompt conversation."""
    text = json.dumps(prompt, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _source(record: Record) -> str:
    return f"{record.path}:{record.line}" if record.where == "line" else f"{record.path} ({record.where} {record.line})"


def _require(record: Record, *keys: str) -> None:
    for key in keys:
        if key not in record.data:
            raise record.error(f"missing; this record format needs {', '.join(repr(k) for k in keys)}", key)


def _prompt(record: Record, value: Any, field: str) -> list[Message]:
    if isinstance(value, list):
        messages = messages_field(record, value, field)
        if messages[-1]["role"] != "user":
            raise record.error(f"must end on a user turn, ends on '{messages[-1]['role']}'", field)
        return messages
    return [{"role": "user", "content": text_field(record, value, field)}]


def _record_prompt(record: Record) -> list[Message]:
    """The record's prompt. The labelling app's exports carry the whole conversation in
    ``prompt_messages`` and only its last user turn in ``prompt``: the conversation wins."""
    if "prompt_messages" in record.data:
        return _prompt(record, record.data["prompt_messages"], "prompt_messages")
    return _prompt(record, record.data["prompt"], "prompt")


def _response(record: Record, value: Any, field: str) -> list[Message]:
    if not isinstance(value, list):
        return [{"role": "assistant", "content": text_field(record, value, field, allow_empty=True)}]
    messages = messages_field(record, value, field, allow_empty_content=True)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            raise record.error(f"a response holds assistant turns only, found '{message['role']}'; "
                               f"put earlier turns in 'prompt'", f"{field}[{i}].role")
    return messages


def _is_csv(record: Record) -> bool:
    return record.path.lower().endswith(".csv")


def _optional_bool(record: Record, key: str) -> bool | None:
    value = record.data.get(key)
    if value is None or (_is_csv(record) and value == ""):
        return None
    if _is_csv(record) and isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    if not isinstance(value, bool):
        raise record.error(f"expected true or false, got {show_value(value)}", key)
    return value


def _optional_number(record: Record, key: str) -> float | None:
    value = record.data.get(key)
    if value is None or (_is_csv(record) and value == ""):
        return None
    if _is_csv(record) and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise record.error(f"expected a number, got {show_value(value)}", key) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise record.error(f"expected a finite number, got {show_value(value)}", key)
    return float(value)


# --- HH-RLHF transcripts ---------------------------------------------------------------------

_SPEAKER = re.compile(r"(?:^|\n\n)(Human|Assistant): ?")
_ROLE_OF_SPEAKER = {"Human": "user", "Assistant": "assistant"}


def parse_transcript(record: Record, text: Any, field: str) -> list[Message]:
    """Messages of an HH-RLHF transcript ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``.

    A speaker label starts a turn only after a blank line (or at the very start), so "Human:" inside
    a reply stays text. Consecutive turns of one speaker are merged (joined by a blank line).
    """
    text = text_field(record, text, field)
    parts = _SPEAKER.split(text)  # [before, speaker, content, speaker, content, ...]
    if parts[0].strip() or len(parts) < 3:
        raise record.error("expected a transcript starting with '\\n\\nHuman: ' and alternating "
                           f"'\\n\\nHuman: ' / '\\n\\nAssistant: ' turns, got {show_value(text)}", field)
    turns = [{"role": _ROLE_OF_SPEAKER[speaker], "content": content}
             for speaker, content in zip(parts[1::2], parts[2::2])]
    return _merge_same_role(turns)


def _merge_same_role(turns: list[Message]) -> list[Message]:
    merged: list[Message] = []
    for turn in turns:
        if merged and merged[-1]["role"] == turn["role"]:
            merged[-1] = {"role": turn["role"], "content": merged[-1]["content"] + "\n\n" + turn["content"]}
        else:
            merged.append(dict(turn))
    return merged


def _split_shared_prompt(record: Record, chosen: list[Message], rejected: list[Message]
                         ) -> tuple[list[Message], list[Message], list[Message]]:
    """(prompt, chosen reply, rejected reply) of two conversations sharing all but the last reply."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise record.error("chosen and rejected share no prompt: their first turns differ; without a 'prompt' "
                           "field they must share every turn except the last assistant reply", "rejected")
    prompt, chosen_tail, rejected_tail = chosen[:shared], chosen[shared:], rejected[shared:]
    for field, tail in (("chosen", chosen_tail), ("rejected", rejected_tail)):
        if not tail:
            raise record.error("has no reply after the shared prompt (one conversation is a prefix of, "
                               "or equal to, the other)", field)
        if len(tail) > 1 or tail[0]["role"] != "assistant" or prompt[-1]["role"] != "user":
            raise record.error(f"chosen and rejected differ from turn {shared + 1} on, which is not only the "
                               "last assistant reply", field)
    for i, message in enumerate(prompt):
        if not message["content"].strip():
            raise record.error(f"prompt turn {i + 1} ({message['role']}) is empty", "chosen")
    return prompt, chosen_tail, rejected_tail


def _conversation(record: Record, value: Any, field: str) -> list[Message]:
    if isinstance(value, list):
        return _merge_same_role(messages_field(record, value, field, allow_empty_content=True))
    return parse_transcript(record, value, field)


# --- record readers --------------------------------------------------------------------------

def preference_pair(record: Record) -> PreferencePair:
    """Validate a pair record (explicit prompt, or implicit-prompt conversations/transcripts)."""
    _require(record, "chosen", "rejected")
    data = record.data
    if "prompt" in data:
        prompt = _record_prompt(record)
        chosen = _response(record, data["chosen"], "chosen")
        rejected = _response(record, data["rejected"], "rejected")
    else:
        if isinstance(data["chosen"], list) != isinstance(data["rejected"], list):
            raise record.error("chosen and rejected must both be transcripts (text) or both message lists "
                               "when there is no 'prompt'", "rejected")
        prompt, chosen, rejected = _split_shared_prompt(record, _conversation(record, data["chosen"], "chosen"),
                                                        _conversation(record, data["rejected"], "rejected"))
    tie = bool(_optional_bool(record, "tie"))
    margin = _optional_number(record, "margin")
    if margin is not None and margin < 0:
        raise record.error(f"must be ≥ 0 (it says how much better chosen is), got {margin}", "margin")
    if tie and margin:
        raise record.error(f"a tie cannot carry a margin, got margin {margin}", "margin")
    if chosen == rejected and not tie:
        raise record.error("chosen and rejected are the same reply; mark the pair \"tie\": true or drop it",
                           "rejected")
    return PreferencePair(prompt, chosen, rejected, margin or 0.0, tie, prompt_key(prompt), _source(record))


def _tie_groups(record: Record, value: Any, count: int) -> list[list[int]]:
    if not isinstance(value, list) or not value:
        raise record.error(f"expected a non-empty list of tie groups, best first, got {show_value(value)}", "ranking")
    groups, seen = [], {}
    for g, group in enumerate(value):
        members = [group] if isinstance(group, int) and not isinstance(group, bool) else group
        if not isinstance(members, list) or not members:
            raise record.error(f"expected a completion index or a non-empty list of them, got {show_value(group)}",
                               f"ranking[{g}]")
        for index in members:
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
                raise record.error(f"{show_value(index)} is not a completion index (0 to {count - 1})",
                                   f"ranking[{g}]")
            if index in seen:
                raise record.error(f"completion {index} appears twice (groups {seen[index]} and {g})", "ranking")
            seen[index] = g
        groups.append(list(members))
    missing = sorted(set(range(count)) - set(seen))
    if missing:
        raise record.error(f"completions {missing} are not ranked; every index 0 to {count - 1} must appear once",
                           "ranking")
    return groups


def ranking(record: Record) -> Ranking:
    """Validate a ranking record ``{"prompt", "completions", "ranking"}``."""
    _require(record, "prompt", "completions", "ranking")
    prompt = _record_prompt(record)
    raw = record.data["completions"]
    if not isinstance(raw, list) or len(raw) < 2:
        raise record.error(f"expected a list of at least 2 completions, got {show_value(raw)}", "completions")
    completions = [_response(record, c, f"completions[{i}]") for i, c in enumerate(raw)]
    groups = _tie_groups(record, record.data["ranking"], len(completions))
    return Ranking(prompt, completions, groups, prompt_key(prompt), _source(record))


def unpaired_example(record: Record) -> UnpairedExample:
    """Validate a KTO record ``{"prompt", "completion", "label": true|false}``."""
    _require(record, "prompt", "completion", "label")
    prompt = _record_prompt(record)
    completion = _response(record, record.data["completion"], "completion")
    label = _optional_bool(record, "label")
    if label is None:
        raise record.error("expected true (desirable) or false (undesirable), got nothing", "label")
    return UnpairedExample(prompt, completion, label, prompt_key(prompt), _source(record))


def is_ranking(record: Record) -> bool:
    return "completions" in record.data or "ranking" in record.data


def preference_pairs(records: Sequence[Record], *, include_tie_pairs: bool = False) -> list[PreferencePair]:
    """Pairs from pair records and ranking records (expanded; see ``Ranking.pairs``), in file order."""
    out: list[PreferencePair] = []
    for record in records:
        out += ranking(record).pairs(include_tie_pairs=include_tie_pairs) if is_ranking(record) \
            else [preference_pair(record)]
    return out


def unpaired_examples(records: Sequence[Record]) -> list[UnpairedExample]:
    """KTO examples from unpaired records; a pair record gives a desirable chosen and an undesirable
    rejected example (a tie pair gives none: it says nothing about either reply alone)."""
    out: list[UnpairedExample] = []
    for record in records:
        if "label" in record.data:
            out.append(unpaired_example(record))
            continue
        pair = preference_pair(record)
        if not pair.tie:
            out += [UnpairedExample(pair.prompt, pair.chosen, True, pair.group, pair.source),
                    UnpairedExample(pair.prompt, pair.rejected, False, pair.group, pair.source)]
    return out


def pair_weights(pairs: Sequence[PreferencePair]) -> list[float]:
    """1 / (number of pairs with the same prompt), over all ``pairs`` (InstructGPT §3.5).

    The weights of one prompt sum to 1; divide the weighted loss sum by the number of prompts.
    """
    counts = Counter(p.group for p in pairs)
    return [1.0 / counts[p.group] for p in pairs]
