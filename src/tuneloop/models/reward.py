"""Reward models: a backbone with a scalar head, how a (prompt, response) becomes its input, and the
folder it is saved in.

Two kinds (``RewardKind``):

- ``causal_lm``: any HF causal LM (Llama/SmolLM2, Qwen, Mistral, GPT-2 …) loaded as its
  ``*ForSequenceClassification`` class with one label: the backbone plus a linear ``score`` head. The
  reward is the head applied to the hidden state of the LAST REAL TOKEN of each row, located from the
  attention mask (``last_token_index``), never by looking for a pad token. So it is right for left-
  and right-padded rows and whatever the pad id is — often the EOS id, which also ends real
  sequences; that is exactly the case transformers' own ``*ForSequenceClassification.forward`` (which
  looks for the pad id) gets wrong. Input: the conversation rendered with the RM tokenizer's chat
  template (``data.chat.FALLBACK_TEMPLATE`` when it has none, saved with the model), trailing
  whitespace removed so the last token is the end-of-turn marker.
- ``encoder``: any HF encoder (BERT, RoBERTa, DeBERTa, the bundled MiniLM ``minilm-l6``) as a sequence
  classifier with one label and its own pooling and head. Input: the text pair (prompt, response)
  with the tokenizer's own special tokens ("[CLS] prompt [SEP] response [SEP]" for BERT), the prompt
  rendered by ``plain_prompt_text``. Rows are always right-padded: encoders use absolute positions
  from the first token and their head reads the first token.

Truncation keeps what a judgment is about: the response whole and the END of the prompt (its latest
turns); a response longer than ``max_length − PROMPT_KEEP_MIN`` tokens is itself cut at its end.

A saved reward model is a folder that ``AutoModelForSequenceClassification.from_pretrained`` loads
(LoRA merged), its tokenizer, and ``tuneloop_reward.json`` (``RewardModelInfo``: kind, template,
maximum length, normalisation gain and bias, recorded held-out accuracy). Score it through
``tuneloop.rewards.load_reward`` rather than transformers' forward, for the reasons above.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from tuneloop.atomic import atomic_write_text
from tuneloop.data.chat import FALLBACK_TEMPLATE, render_prompt, render_reply
from tuneloop.data.formats import Message, plain_prompt_text
from tuneloop.data.padding import pad_rows, padding_mask
from tuneloop.models.attention import attention_kernel
from tuneloop.models.loading import ModelConfig, apply_lora, load_tokenizer, resolve_model_name, save_merged

RewardKind = Literal["causal_lm", "encoder"]
INFO_FILE = "tuneloop_reward.json"
INFO_FORMAT = 2  # the newest format this code reads
MULTI_HEAD_FORMAT = 2  # a folder with several heads (aspects); one-head folders are still written as format 1
PROMPT_KEEP_MIN = 32  # prompt tokens always kept (its end) when a long response must be cut
TEMPLATES = {"causal_lm": "chat-template", "encoder": "text-pair"}


@dataclass
class RewardModelInfo:
    """What ``tuneloop_reward.json`` holds: everything needed to score the same way as in training."""

    kind: str  # "causal_lm" | "encoder"
    template: str  # "chat-template" (the saved tokenizer's) | "text-pair" (plain_prompt_text, response)
    max_length: int  # tokens per (prompt, response) after truncation
    backbone: str  # the model the RM was trained from
    gain: float = 1.0  # normalised score = gain · raw + bias
    bias: float = 0.0
    normalisation: dict = field(default_factory=dict)  # reference set: source, count, raw mean and std
    eval_accuracy: float | None = None  # held-out pairwise accuracy (strict pairs), None if not measured
    eval_pairs: int = 0  # strict held-out pairs that accuracy is measured on
    chance_accuracy: float = 0.5
    # Multi-aspect models (trained on aspect scores; ``rewards.aspects`` scores them):
    heads: list[str] = field(default_factory=list)  # output names in order, e.g. ["preference", "quality", …]; [] = one scalar head
    aspect_stats: dict = field(default_factory=dict)  # {aspect: {"mean", "std", "low", "high"}}: scale value = mean + std · output
    aspect_weights: dict = field(default_factory=dict)  # {head: weight}: the combination a plain load_reward(folder) scores
    head_reference: dict = field(default_factory=dict)  # {"mean": (H,), "cov": (H, H)} of head values on the reference set
    aspect_eval: dict = field(default_factory=dict)  # held-out per-aspect Pearson / Spearman and implied accuracy
    format: int = 1

    def save(self, folder: Path) -> None:
        if self.heads:
            self.format = max(self.format, MULTI_HEAD_FORMAT)  # older readers would score only the first head
        atomic_write_text(Path(folder) / INFO_FILE, json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> RewardModelInfo:
        path = Path(folder) / INFO_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is not a tuneloop reward model folder: it has no {INFO_FILE} "
                                    "(train one with `tuneloop reward`)")
        data = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def normalise(self, raw: torch.Tensor) -> torch.Tensor:
        return raw * self.gain + self.bias


# ---------------------------------------------------------------------------------------------
# Rendering (prompt, response) into model inputs


@dataclass
class Encoded:
    """One (prompt, response) as token ids for the reward model."""

    input_ids: list[int]
    token_type_ids: list[int] | None  # segment ids for encoders that use them, else None
    response_tokens: int  # tokens of the response kept after truncation (for length statistics)

    def __len__(self) -> int:
        return len(self.input_ids)


def truncation_lengths(prompt_len: int, response_len: int, budget: int) -> tuple[int, int]:
    """(prompt tokens, response tokens) to keep within ``budget``: the whole response and the end of the
    prompt; the response is cut (at its end) only when it leaves fewer than PROMPT_KEEP_MIN prompt tokens."""
    assert budget > 0, f"the token budget must be > 0, got {budget}"
    if prompt_len + response_len <= budget:
        return prompt_len, response_len
    keep_prompt = min(prompt_len, max(budget - response_len, min(PROMPT_KEEP_MIN, budget // 2)))
    return keep_prompt, min(response_len, budget - keep_prompt)


class Renderer:
    """Turns (prompt messages, response messages) into ``Encoded`` for one RM kind and tokenizer."""

    def __init__(self, tokenizer, kind: RewardKind, max_length: int):
        assert kind in TEMPLATES, f"kind must be one of {list(TEMPLATES)}, got {kind!r}"
        self.tokenizer, self.kind, self.max_length = tokenizer, kind, max_length
        if kind == "encoder":
            # The saved tokenizer.json may switch on padding/truncation; ours must not apply.
            self._backend = copy.deepcopy(tokenizer.backend_tokenizer)
            self._backend.no_padding()
            self._backend.no_truncation()
            self._specials = self._backend.num_special_tokens_to_add(is_pair=True)
            if max_length <= self._specials:
                raise ValueError(f"max_length={max_length} leaves no room next to {self._specials} special tokens")

    def encode(self, prompt: list[Message], response: list[Message]) -> Encoded:
        if self.kind == "encoder":
            return self._encode_pair(plain_prompt_text(prompt), "\n\n".join(m["content"] for m in response))
        return self._encode_chat(prompt, response)

    def _encode_pair(self, prompt_text: str, response_text: str) -> Encoded:
        p = self._backend.encode(prompt_text, add_special_tokens=False)
        r = self._backend.encode(response_text, add_special_tokens=False)
        keep_p, keep_r = truncation_lengths(len(p.ids), len(r.ids), self.max_length - self._specials)
        if keep_p < len(p.ids):
            p.truncate(keep_p, direction="left")
        if keep_r < len(r.ids):
            r.truncate(keep_r, direction="right")
        out = self._backend.post_process(p, r, add_special_tokens=True)
        uses_types = any(out.type_ids)
        return Encoded(list(out.ids), list(out.type_ids) if uses_types else None, keep_r)

    def _encode_chat(self, prompt: list[Message], response: list[Message]) -> Encoded:
        # the policy's tokens: the prompt as at generation time, the reply as SFT and DPO cut it
        p = render_prompt(self.tokenizer, prompt)
        r, _ = render_reply(self.tokenizer, prompt, response)
        keep_p, keep_r = truncation_lengths(len(p), len(r), self.max_length)
        return Encoded(p[len(p) - keep_p:] + r[:keep_r], None, keep_r)


# ---------------------------------------------------------------------------------------------
# The model


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row, from the mask alone (left or right padding).

    Args:
        attention_mask: (B, T) 1 on real tokens; every row holds at least one.
    Returns:
        (B,) long: T − 1 − (position of the first 1 in the row read backwards).
    """
    assert attention_mask.dim() == 2, f"attention_mask must be (B, T), got {tuple(attention_mask.shape)}"
    real = attention_mask.bool()
    assert real.any(dim=1).all(), "every row needs at least one real token"
    width = real.shape[1]
    return width - 1 - real.flip(dims=[1]).int().argmax(dim=1)


class RewardModel(torch.nn.Module):
    """A ``*ForSequenceClassification`` (one label; maybe LoRA-wrapped) that returns one reward per row."""

    def __init__(self, hf_model, kind: RewardKind, pad_id: int):
        super().__init__()
        assert kind in TEMPLATES, f"kind must be one of {list(TEMPLATES)}, got {kind!r}"
        self.hf, self.kind, self.pad_id = hf_model, kind, pad_id
        self.num_heads = int(self.core.config.num_labels)  # 1: a scalar reward; H > 1: one output per head (aspects)
        if kind == "causal_lm" and not hasattr(self.core, "score"):
            raise ValueError(f"{type(self.core).__name__} has no 'score' head; is this a causal LM? "
                             "(set reward_model.kind: encoder for encoders)")

    @property
    def core(self):
        """The transformers model (with LoRA layers injected in place when LoRA is on)."""
        return self.hf.get_base_model() if hasattr(self.hf, "peft_config") else self.hf

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Rewards of rows (B, T) padded on either side (encoders: right only), fp32: (B,) for a model with
        one head, (B, H) for a model with H heads (one per aspect, see ``RewardModelInfo.heads``)."""
        core = self.core
        if self.kind == "encoder":
            kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
            logits = core(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits.float()
            return logits[:, 0] if self.num_heads == 1 else logits
        # Positions count real tokens only, so a row's positions do not depend on its padding.
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        hidden = core.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                                 use_cache=False).last_hidden_state  # (B, T, H)
        last = last_token_index(attention_mask)  # (B,)
        picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, H)
        logits = core.score(picked).float()  # (B, H)
        return logits[:, 0] if self.num_heads == 1 else logits


def collate_encoded(rows: list[Encoded], pad_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad rows to the longest: input_ids (B, T), attention_mask (B, T), token_type_ids (B, T) if any."""
    out = {"input_ids": pad_rows([r.input_ids for r in rows], pad_id, padding_side),
           "attention_mask": padding_mask([len(r) for r in rows], padding_side)}
    if any(r.token_type_ids for r in rows):
        out["token_type_ids"] = pad_rows([r.token_type_ids or [0] * len(r) for r in rows], 0, padding_side)
    return out


def length_chunks(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Row indices grouped shortest first into chunks whose padded size (rows × longest) ≤ max_tokens
    (a longer row goes alone). Rows of a chunk have similar lengths, so little is spent on padding
    (a random batch of HH-RLHF pairs padded to its longest row is 1.4-3× its real tokens, depending on
    the maximum length); the order is deterministic."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    chunks: list[list[int]] = []
    for i in order:
        if chunks and (len(chunks[-1]) + 1) * lengths[i] <= max_tokens:
            chunks[-1].append(i)
        else:
            chunks.append([i])
    return chunks


def score_encoded(model: RewardModel, rows: list[Encoded], max_batch_tokens: int = 2048,
                  padding_side: str = "right") -> torch.Tensor:
    """Rewards (N,) of ``rows`` in input order ((N, H) for a model with H heads), computed in
    length-sorted chunks (gradients flow when called outside ``torch.no_grad``)."""
    if model.kind == "encoder":
        padding_side = "right"
    device = next(model.parameters()).device
    parts, index = [], []
    for chunk in length_chunks([len(r) for r in rows], max_batch_tokens):
        batch = collate_encoded([rows[i] for i in chunk], model.pad_id, padding_side)
        parts.append(model(**{k: v.to(device) for k, v in batch.items()}))
        index += chunk
    scores = torch.cat(parts)
    inverse = torch.empty(len(index), dtype=torch.long, device=scores.device)
    inverse[torch.tensor(index, device=scores.device)] = torch.arange(len(index), device=scores.device)
    return scores[inverse]


# ---------------------------------------------------------------------------------------------
# Building, saving, loading


def detect_kind(config) -> RewardKind:
    """``encoder`` for model types with a masked-LM head in transformers (BERT family), else ``causal_lm``."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return "encoder" if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES else "causal_lm"


@contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _disable_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def build_reward_model(cfg: ModelConfig, kind: str = "auto", disable_dropout: bool = True, num_heads: int = 1
                       ) -> tuple[RewardModel, object]:
    """A fresh reward model (random head with ``num_heads`` outputs) on the backbone ``cfg.name``;
    returns (model, tokenizer).

    Honours ``cfg.lora``, ``cfg.gradient_checkpointing``, ``cfg.attn_implementation`` and, when ``cfg``
    has it, ``trainable_layers`` (train only the top N blocks and the head).
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    source = resolve_model_name(cfg.name)
    tokenizer = load_tokenizer(cfg.name)
    resolved: RewardKind = detect_kind(AutoConfig.from_pretrained(source)) if kind == "auto" else kind
    if resolved == "causal_lm" and not tokenizer.chat_template:
        tokenizer.chat_template = FALLBACK_TEMPLATE  # saved with the model, so scoring renders the same
    with _quiet_transformers():  # "score.weight newly initialised": yes, it is the head we train
        hf = AutoModelForSequenceClassification.from_pretrained(source, num_labels=num_heads, dtype=torch.float32,
                                                                attn_implementation=attention_kernel(cfg.attn_implementation))
    hf.config.pad_token_id = tokenizer.pad_token_id
    if disable_dropout:
        _disable_dropout(hf)
    if cfg.gradient_checkpointing:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layers = getattr(cfg, "trainable_layers", None)
    if layers is not None:
        freeze_lower_layers(hf, layers)
    if cfg.lora.enabled:
        hf = apply_lora(hf, cfg.lora, task_type="SEQ_CLS")  # the fresh head stays fully trainable
    return RewardModel(hf, resolved, tokenizer.pad_token_id), tokenizer


def transformer_blocks(hf) -> torch.nn.ModuleList:
    """The stack of transformer blocks of a transformers model: the ModuleList under its base model
    holding ``num_hidden_layers`` modules (``encoder.layer`` in BERT, ``layers`` in Llama, ``h`` in GPT-2)."""
    count = hf.config.get_text_config().num_hidden_layers
    for module in hf.base_model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"cannot find the {count} transformer blocks of {type(hf).__name__}; "
                     "set model.trainable_layers to null")


def freeze_lower_layers(hf, trainable: int) -> None:
    """Freeze the base model except its top ``trainable`` blocks and what follows them (final norm,
    pooler); the head stays trainable. Lower blocks then run forward only (no backward through them)."""
    blocks = transformer_blocks(hf)
    if not 0 <= trainable <= len(blocks):
        raise ValueError(f"model.trainable_layers must be between 0 and {len(blocks)}, got {trainable}")
    base = hf.base_model
    base.requires_grad_(False)
    for block in list(blocks)[len(blocks) - trainable:]:
        block.requires_grad_(True)
    if trainable:
        after = False
        for child in base.children():
            if after:
                child.requires_grad_(True)
            after = after or any(m is blocks for m in child.modules())


def save_reward_model(model: RewardModel, tokenizer, folder: Path, info: RewardModelInfo,
                      keep_adapter: bool = False) -> None:
    """Write a transformers sequence-classification folder (LoRA merged) + tokenizer + tuneloop_reward.json;
    with ``keep_adapter`` a LoRA model's adapter (and trained head) also goes to ``adapter/``."""
    save_merged(model.hf, folder, "also" if keep_adapter else "no")
    tokenizer.save_pretrained(folder)
    info.save(folder)


def load_reward_model(folder: str | Path) -> tuple[RewardModel, object, RewardModelInfo]:
    """(model in eval mode without gradients, tokenizer, info) of a folder written by ``save_reward_model``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    info = RewardModelInfo.load(folder)
    if info.format > INFO_FORMAT:
        raise ValueError(f"{folder}: reward model format {info.format} is newer than this tuneloop reads ({INFO_FORMAT})")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    hf = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32)
    model = RewardModel(hf, info.kind, tokenizer.pad_token_id)
    model.requires_grad_(False).eval()
    return model, tokenizer, info
