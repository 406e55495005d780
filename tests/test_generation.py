"""Generation: logprobs match teacher forcing, padding side does not matter, stops at EOS per sequence."""

from __future__ import annotations

import torch

from tuneloop.data.chat import render_prompt
from tuneloop.generation import SamplingConfig, generate
from tuneloop.models.logprobs import answer_logprobs

PROMPTS = [[{"role": "user", "content": "Tell me a joke"}],
           [{"role": "user", "content": "What is the capital of a country that has a very long name?"}],
           [{"role": "user", "content": "hi"}]]


def _ids(tokenizer):
    return [render_prompt(tokenizer, p) for p in PROMPTS]


def test_left_and_right_padding_give_the_same_logprobs(tiny_model, tiny_tokenizer):
    prompts = _ids(tiny_tokenizer)
    answers = [[10, 11, 12, 13], [20, 21], [30, 31, 32, 33, 34, 35]]
    pairs = list(zip(prompts, answers))
    with torch.no_grad():
        right = answer_logprobs(tiny_model, pairs, tiny_tokenizer.pad_token_id, "right")
        left = answer_logprobs(tiny_model, pairs, tiny_tokenizer.pad_token_id, "left")
        alone = [answer_logprobs(tiny_model, [pair], tiny_tokenizer.pad_token_id)[0] for pair in pairs]
    for r, l, a in zip(right, left, alone):
        torch.testing.assert_close(l, r, atol=1e-5, rtol=0)
        torch.testing.assert_close(a, r, atol=1e-5, rtol=0)
    assert [len(r) for r in right] == [4, 2, 6]


def test_sampled_logprobs_equal_teacher_forced_logprobs(tiny_model, tiny_tokenizer):
    """The KV-cached, left-padded sampling pass and a fresh forward pass agree on log softmax(logits / T)."""
    cfg = SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=12, batch_size=4)
    results = generate(tiny_model, tiny_tokenizer, _ids(tiny_tokenizer), cfg, num_candidates=2, seed=1)
    pairs = [(g.prompt_ids, g.token_ids) for per_prompt in results for g in per_prompt]
    with torch.no_grad():
        forced = answer_logprobs(tiny_model, pairs, tiny_tokenizer.pad_token_id, temperature=0.7)
    sampled = [torch.tensor(g.logprobs) for per_prompt in results for g in per_prompt]
    for s, f in zip(sampled, forced):
        torch.testing.assert_close(s, f, atol=1e-5, rtol=0)


def test_candidates_are_reproducible_and_seeded(tiny_model, tiny_tokenizer):
    cfg = SamplingConfig(temperature=1.0, max_new_tokens=8)
    first = generate(tiny_model, tiny_tokenizer, _ids(tiny_tokenizer), cfg, num_candidates=3, seed=5)
    again = generate(tiny_model, tiny_tokenizer, _ids(tiny_tokenizer), cfg, num_candidates=3, seed=5)
    other = generate(tiny_model, tiny_tokenizer, _ids(tiny_tokenizer), cfg, num_candidates=3, seed=6)
    tokens = lambda res: [[g.token_ids for g in per] for per in res]  # noqa: E731
    assert tokens(first) == tokens(again)
    assert tokens(first) != tokens(other)
    assert all(len(per) == 3 for per in first)
    assert len({tuple(g.token_ids) for g in first[0]}) > 1, "K samples of one prompt should differ"


def test_greedy_candidates_are_identical(tiny_model, tiny_tokenizer):
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=6)
    (per_prompt,) = generate(tiny_model, tiny_tokenizer, _ids(tiny_tokenizer)[:1], cfg, num_candidates=3)
    assert len({tuple(g.token_ids) for g in per_prompt}) == 1


def test_each_sequence_stops_at_its_own_stop_token(tiny_model, tiny_tokenizer):
    """Declare a token that the seeded sample of prompt 0 produces, and no other prompt does, a stop
    token: that sequence ends right there (finish 'eos', stop token kept in token_ids, not in text)
    while the others run on unchanged to max_new_tokens ('length') in the same batch."""
    prompts = _ids(tiny_tokenizer)
    cfg = SamplingConfig(temperature=1.0, max_new_tokens=8)
    baseline = generate(tiny_model, tiny_tokenizer, prompts, cfg, seed=3)
    others = {t for per in baseline[1:] for t in per[0].token_ids}
    position, stop = next((j, t) for j, t in enumerate(baseline[0][0].token_ids) if t not in others)
    tiny_model.generation_config.eos_token_id = [tiny_tokenizer.eos_token_id, stop]
    stopped = generate(tiny_model, tiny_tokenizer, prompts, cfg, seed=3)
    first = stopped[0][0]
    assert first.finish_reason == "eos"
    assert first.token_ids == baseline[0][0].token_ids[:position + 1]
    assert len(first.logprobs) == len(first.token_ids)
    for per, base in zip(stopped[1:], baseline[1:]):
        assert per[0].finish_reason == "length" and per[0].token_ids == base[0].token_ids
