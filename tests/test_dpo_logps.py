"""Sequence log-probs for DPO: hand-checked reductions, the padding-free fast path against separate
forward passes, and the cached reference log-probs against a live reference model."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from safetensors.torch import load_file

from datafiles import write_jsonl
from test_dpo_data import WIDE, pair_rows
from tuneloop.config import load_config
from tuneloop.losses.sequence_logps import sum_by_sequence, token_logps
from tuneloop.train.dpo import DPOConfig, train
from tuneloop.train.dpo_data import collate, graded_sequences, load_preference_data
from tuneloop.models.logprobs import sequence_logps
from tuneloop.train.dpo_reference import REFERENCE_FILE


def test_token_logps_by_hand():
    """logits (0, log 3) → softmax (1/4, 3/4): log p(1) = log 0.75 = −0.2876821, log p(0) = log 0.25 = −1.3862944."""
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    torch.testing.assert_close(token_logps(logits, torch.tensor([1, 0])), torch.tensor([-0.2876821, -1.3862944]),
                               atol=1e-6, rtol=0)


def test_sum_by_sequence_by_hand():
    """values 1, 2, 4, 16 of sequences 0, 0, 1, 0: sums (1 + 2 + 16, 4, nothing) = (19, 4, 0)."""
    values = torch.tensor([1.0, 2.0, 4.0, 16.0])
    assert sum_by_sequence(values, torch.tensor([0, 0, 1, 0]), 3).tolist() == [19.0, 4.0, 0.0]


@pytest.fixture(scope="module")
def units(tiny_tokenizer, tmp_path_factory):
    path = write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", pair_rows(12))
    train_units, _, _ = load_preference_data(path, None, 0.0, 0, True, tiny_tokenizer, WIDE)
    return train_units


def _separately(model, sequences):
    """The naive way: each sequence alone (no packing, no padding, all logits), log-softmax in the
    model's dtype, the response tokens' log-probs picked and summed where the mask is 1."""
    out = []
    for seq in sequences:
        ids = torch.tensor([seq.prompt_ids + seq.response_ids])
        logps = model(input_ids=ids).logits[0].log_softmax(-1)  # (T, V)
        start = len(seq.prompt_ids)
        picked = [logps[start + k - 1, token] for k, (token, m) in enumerate(zip(seq.response_ids, seq.response_mask))
                  if m]
        out.append(torch.stack(picked).sum())
    return torch.stack(out)


# A sequence log-prob is a sum of ~20 token log-probs of ~−10 each (a random tiny model): about −200,
# where one fp32 ulp is 1.5e-5. So fp32 sums are compared with rtol 1e-6 (≈ 1e-4 absolute at −200),
# and the same comparison in fp64 checks the layout (positions, masks, sequence indices) to 1e-9.
TOLERANCE = {torch.float32: {"atol": 1e-5, "rtol": 1e-6}, torch.float64: {"atol": 1e-9, "rtol": 0}}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("layout", ["shared_prompt", "padding_free", "padded"])
@torch.no_grad()
def test_pair_logps_in_one_row_equal_separate_forward_passes(tiny_model, tiny_tokenizer, units, layout, dtype):
    model = tiny_model.to(dtype)
    sequences = [s for u in units for s in graded_sequences(u)]
    assert len({len(s) for s in sequences}) > 3, "sequences must differ in length for the test to bite"
    batch = collate(sequences, paired=True, layout=layout, pad_id=tiny_tokenizer.pad_token_id)
    rows, width = batch.input_ids.shape
    if layout == "padded":
        assert rows == len(sequences)
    elif layout == "padding_free":
        assert rows == 1 and batch.attention_mask is None
    else:  # trees: each run of sequences with one prompt holds it once; trees packed into rows
        runs = [list(g) for _, g in itertools.groupby(sequences, key=lambda s: tuple(s.prompt_ids))]
        assert len(runs) < len(units), "consecutive pairs sharing a prompt share it too"
        sizes = [len(r[0].prompt_ids) + sum(len(s.response_ids) for s in r) for r in runs]
        assert width == max(sizes) and 1 < rows < len(runs), "rows as long as the longest tree, some holding two"
        assert batch.attention_mask.shape == (rows, 1, width, width)
    assert batch.num_units == len(units) and batch.response_tokens.tolist() == [s.response_tokens for s in sequences]
    expected = _separately(model, sequences)
    assert expected.dtype == dtype
    for keep in (True, False):
        torch.testing.assert_close(sequence_logps(model, batch, keep), expected, **TOLERANCE[dtype])


@torch.no_grad()
def test_shared_prompt_with_eager_attention(tiny_tokenizer, units):
    """Eager attention adds the mask to the scores, so the tree mask is turned into a float mask."""
    from tuneloop.models import ModelConfig, load_causal_lm

    model, _ = load_causal_lm(ModelConfig(name="tiny-llama", attn_implementation="eager"), trainable=False)
    sequences = [s for u in units for s in graded_sequences(u)]
    batch = collate(sequences, paired=True, layout="shared_prompt", pad_id=tiny_tokenizer.pad_token_id)
    torch.testing.assert_close(sequence_logps(model, batch, True), _separately(model, sequences),
                               **TOLERANCE[torch.float32])


def test_cached_reference_equals_a_live_reference_model(units, tmp_path, tiny_model):
    """The run's cache, computed before training from the policy itself, equals a separately loaded
    reference model scoring each response alone; and the first DPO loss is log 2 (policy = reference)."""
    rows = pair_rows(12)
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    cfg = load_config(DPOConfig, overrides={
        "model": {"name": "tiny-llama"}, "data": {"train": path, "eval_fraction": 0.25, "max_length": 4096,
                                                   "max_prompt_length": 2048},
        "batch": {"batch_size": 4, "micro_batch_size": 2, "max_steps": 1}, "optim": {"lr": 1e-3},
        "run": {"out_dir": str(tmp_path / "runs"), "seed": 1}})
    result = train(cfg)
    cache = load_file(result.run_dir / REFERENCE_FILE)
    from tuneloop.models.loading import load_tokenizer

    train_units, eval_units, _ = load_preference_data(path, None, 0.25, 1, True, load_tokenizer("tiny-llama"), WIDE)
    assert set(cache) == {"train.chosen", "train.rejected", "eval.chosen", "eval.rejected", "eval.mismatched"}
    visited = torch.isfinite(cache["train.chosen"])
    assert int(visited.sum()) == 4, "only the pairs of the one planned step are scored"
    with torch.no_grad():
        for split, split_units, mask in (("train", train_units, visited),
                                         ("eval", eval_units, torch.ones(len(eval_units), dtype=torch.bool))):
            for name in ("chosen", "rejected"):
                wanted = [getattr(u, name) for u, m in zip(split_units, mask) if m]
                torch.testing.assert_close(cache[f"{split}.{name}"][mask], _separately(tiny_model, wanted),
                                           **TOLERANCE[torch.float32])
    first = next(line for line in (result.run_dir / "metrics.jsonl").read_text().splitlines() if '"train"' in line)
    import json

    assert abs(json.loads(first)["loss"] - math.log(2)) < 1e-5
