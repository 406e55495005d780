"""generate() on both CPU backends (the engine 'tuneloop' and the reference 'hf'): log-probs equal teacher
forcing, greedy equals transformers' generate(), samples depend on (seed, rank, prompt, candidate) only,
each sequence stops at its own stop token, the caller's RNG is untouched."""

from __future__ import annotations

import pytest
import torch

from generation_helpers import assert_sampled_logprobs_are_teacher_forced
from tuneloop.data.chat import render_prompt
from tuneloop.generation import SamplingConfig, generate
from tuneloop.models.logprobs import answer_logprobs

PROMPTS = [[{"role": "user", "content": "Tell me a joke"}],
           [{"role": "user", "content": "What is the capital of a country that has a very long name?"}],
           [{"role": "user", "content": "hi"}]]
BACKENDS = ["tuneloop", "hf"]


def _ids(tokenizer):
    return [render_prompt(tokenizer, p) for p in PROMPTS]


def _tokens(results):
    return [[g.token_ids for g in per] for per in results]


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


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("temperature", "top_p", "top_k"), [(0.7, 0.9, 0), (1.0, 1.0, 0), (1.3, 1.0, 20), (0.0, 1.0, 0)])
def test_sampled_logprobs_equal_teacher_forced_logprobs(sharp_model, tiny_tokenizer, backend, temperature, top_p,
                                                        top_k):
    """The cached decode loop and one fresh forward pass (models/logprobs.py) agree on
    log softmax(logits / T) of every generated token to 1e-5 (T = 1 when greedy)."""
    cfg = SamplingConfig(temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=12, batch_size=4,
                         backend=backend)
    results = generate(sharp_model, tiny_tokenizer, _ids(tiny_tokenizer), cfg, num_candidates=2, seed=1)
    assert_sampled_logprobs_are_teacher_forced(sharp_model, tiny_tokenizer.pad_token_id, results, temperature or 1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_equals_transformers_generate(sharp_model, tiny_tokenizer, backend):
    prompts = _ids(tiny_tokenizer)
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=10, batch_size=2, backend=backend)
    results = generate(sharp_model, tiny_tokenizer, prompts, cfg, num_candidates=2)
    for ids, per_prompt in zip(prompts, results):
        with torch.no_grad():
            reference = sharp_model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                             do_sample=False, max_new_tokens=10, eos_token_id=tiny_tokenizer.eos_token_id,
                                             pad_token_id=tiny_tokenizer.pad_token_id)[0, len(ids):].tolist()
        assert len(set(reference)) > 3, "the test model must not repeat one token"
        assert [g.token_ids for g in per_prompt] == [reference, reference]


def test_engine_and_hf_backend_draw_the_same_samples(sharp_model, tiny_tokenizer):
    """Both backends draw with the same per-sequence generators: same seed, same tokens."""
    runs = [generate(sharp_model, tiny_tokenizer, _ids(tiny_tokenizer),
                     SamplingConfig(temperature=0.9, top_p=0.95, max_new_tokens=10, batch_size=size, backend=backend),
                     num_candidates=3, seed=4) for backend, size in (("tuneloop", 4), ("hf", 4), ("hf", 9))]
    assert _tokens(runs[0]) == _tokens(runs[1]) == _tokens(runs[2])


@pytest.mark.parametrize("backend", BACKENDS)
def test_candidates_are_reproducible_and_seeded(tiny_model, tiny_tokenizer, backend):
    cfg = SamplingConfig(temperature=1.0, max_new_tokens=8, backend=backend)
    first = generate(tiny_model, tiny_tokenizer, _ids(tiny_tokenizer), cfg, num_candidates=3, seed=5)
    again = generate(tiny_model, tiny_tokenizer, _ids(tiny_tokenizer), cfg, num_candidates=3, seed=5)
    other = generate(tiny_model, tiny_tokenizer, _ids(tiny_tokenizer), cfg, num_candidates=3, seed=6)
    assert _tokens(first) == _tokens(again)
    assert _tokens(first) != _tokens(other)
    assert all(len(per) == 3 for per in first)
    assert len({tuple(g.token_ids) for g in first[0]}) > 1, "K samples of one prompt should differ"


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_ranks_draw_different_samples_and_the_callers_rng_is_untouched(tiny_model, tiny_tokenizer, backend):
    """Issue 9, item 4: a generator per sequence seeded from (seed, rank, prompt, candidate); the global
    torch RNG is neither reseeded nor advanced."""
    cfg = SamplingConfig(temperature=1.0, max_new_tokens=8, backend=backend)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    rank0 = generate(tiny_model, tiny_tokenizer, _ids(tiny_tokenizer), cfg, num_candidates=2, seed=5, rank=0)
    rank1 = generate(tiny_model, tiny_tokenizer, _ids(tiny_tokenizer), cfg, num_candidates=2, seed=5, rank=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(a != b for a, b in zip(sum(_tokens(rank0), []), sum(_tokens(rank1), [])))
    assert _tokens(rank0) == _tokens(generate(tiny_model, tiny_tokenizer, _ids(tiny_tokenizer), cfg, num_candidates=2,
                                              seed=5)), "outside torch.distributed the rank is 0"


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_candidates_are_identical(tiny_model, tiny_tokenizer, backend):
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=6, backend=backend)
    (per_prompt,) = generate(tiny_model, tiny_tokenizer, _ids(tiny_tokenizer)[:1], cfg, num_candidates=3)
    assert len({tuple(g.token_ids) for g in per_prompt}) == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_sequence_stops_at_its_own_stop_token(tiny_model, tiny_tokenizer, backend):
    """Declare a token that the seeded sample of prompt 0 produces, and no other prompt does, a stop
    token: that sequence ends right there (finish 'eos', stop token kept in token_ids, not in text)
    while the others run on unchanged to max_new_tokens ('length') in the same batch."""
    prompts = _ids(tiny_tokenizer)
    cfg = SamplingConfig(temperature=1.0, max_new_tokens=8, backend=backend)
    baseline = generate(tiny_model, tiny_tokenizer, prompts, cfg, seed=3)
    others = {t for per in baseline[1:] for t in per[0].token_ids}
    position, stop = next((j, t) for j, t in enumerate(baseline[0][0].token_ids) if t not in others)
    tiny_model.generation_config.eos_token_id = [tiny_tokenizer.eos_token_id, stop]
    stopped = generate(tiny_model, tiny_tokenizer, prompts, cfg, seed=3)
    first = stopped[0][0]
    assert first.finish_reason == "eos"
    assert first.token_ids == baseline[0][0].token_ids[:position + 1]
    assert len(first.logprobs) == len(first.token_ids)
    assert first.text == tiny_tokenizer.decode(first.token_ids[:-1], skip_special_tokens=True).strip()
    for per, base in zip(stopped[1:], baseline[1:]):
        assert per[0].finish_reason == "length" and per[0].token_ids == base[0].token_ids
        assert len(per[0].token_ids) == 8


@pytest.mark.parametrize("backend", BACKENDS)
def test_on_token_streams_each_sequence_up_to_its_stop_token(tiny_model, tiny_tokenizer, backend):
    """What chat prints: every drawn token of every sequence, in order, nothing after a stop token."""
    prompts = _ids(tiny_tokenizer)
    cfg = SamplingConfig(temperature=1.0, max_new_tokens=8, batch_size=3, backend=backend)
    baseline = generate(tiny_model, tiny_tokenizer, prompts, cfg, num_candidates=2, seed=3)
    tiny_model.generation_config.eos_token_id = [tiny_tokenizer.eos_token_id, baseline[0][1].token_ids[2]]
    streamed = {}
    results = generate(tiny_model, tiny_tokenizer, prompts, cfg, num_candidates=2, seed=3,
                       on_token=lambda i, k, token: streamed.setdefault((i, k), []).append(token))
    assert results[0][1].finish_reason == "eos"
    assert streamed == {(i, k): g.token_ids for i, per in enumerate(results) for k, g in enumerate(per)}


@pytest.mark.parametrize("backend", BACKENDS)
def test_prompt_keys_make_samples_independent_of_how_prompts_are_split_into_calls(tiny_model, tiny_tokenizer, backend):
    """RL cuts a round's prompts into calls per process: with the prompt's key in place of its index,
    prompt 2 sampled alone draws what it draws among all three."""
    prompts = _ids(tiny_tokenizer)
    cfg = SamplingConfig(temperature=1.0, max_new_tokens=8, backend=backend)
    together = generate(tiny_model, tiny_tokenizer, prompts, cfg, num_candidates=2, seed=5, prompt_keys=[10, 11, 12])
    alone = generate(tiny_model, tiny_tokenizer, prompts[2:], cfg, num_candidates=2, seed=5, prompt_keys=[12])
    by_index = generate(tiny_model, tiny_tokenizer, prompts[2:], cfg, num_candidates=2, seed=5)
    assert _tokens(alone) == _tokens(together)[2:]
    assert _tokens(by_index) != _tokens(alone), "without keys the lone prompt is prompt 0"
