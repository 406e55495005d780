"""The sampler: which token a uniform number picks, under temperature / top-k / top-p, worked out by hand;
log-probs always under the unfiltered temperature-scaled distribution; per-sequence random streams."""

from __future__ import annotations

import math

import pytest
import torch
from handvalues import assert_near

import tuneloop.generation.sampling as sampling
from tuneloop.generation.sampling import draw_uniforms, sample_next, sequence_generator, sequence_seed

# Vocabulary order [0.2, 0.5, 0.3]: by probability token 1 (0.5), token 2 (0.3), token 0 (0.2).
PROBS = [0.2, 0.5, 0.3]
LOGITS = torch.tensor([math.log(p) for p in PROBS])


def draw(uniform: float, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> tuple[int, float]:
    token, logprob = sample_next(LOGITS[None], temperature, top_k, top_p, torch.tensor([uniform], dtype=torch.float64))
    return int(token), float(logprob)


@pytest.mark.parametrize(("uniform", "token"), [(0.1, 0), (0.19, 0), (0.21, 1), (0.69, 1), (0.71, 2), (0.99, 2)])
def test_no_filter_inverts_the_cdf_in_vocabulary_order(uniform, token):
    """cdf in vocabulary order = [0.2, 0.7, 1.0]: u < 0.2 → 0, 0.2 ≤ u < 0.7 → 1, else 2."""
    assert draw(uniform)[0] == token


@pytest.mark.parametrize(("uniform", "token"), [(0.1, 1), (0.62, 1), (0.63, 2), (0.99, 2)])
def test_top_p_keeps_the_nucleus_and_renormalises(uniform, token):
    """top_p = 0.7: by probability 0.5 (mass before 0) and 0.3 (mass before 0.5 < 0.7) stay, 0.2 (mass
    before 0.8 ≥ 0.7) goes. Renormalised: token 1 0.5/0.8 = 0.625, token 2 0.375: u < 0.625 → 1, else 2."""
    assert draw(uniform, top_p=0.7)[0] == token


def test_a_small_top_p_keeps_the_most_likely_token_only():
    """top_p = 0.45: the mass before token 2 is 0.5 ≥ 0.45, so only token 1 remains; however small top_p
    is, the nucleus never empties (the first token's mass before is 0)."""
    assert {draw(u, top_p=0.45)[0] for u in (0.0, 0.5, 0.999)} == {1}
    assert {draw(u, top_p=0.01)[0] for u in (0.0, 0.999)} == {1}


@pytest.mark.parametrize(("uniform", "token"), [(0.1, 1), (0.62, 1), (0.63, 2)])
def test_top_k_keeps_the_k_most_likely(uniform, token):
    """top_k = 2 keeps tokens 1 and 2, renormalised 0.625 / 0.375 as above."""
    assert draw(uniform, top_k=2)[0] == token


def test_top_k_then_top_p_applies_top_p_to_the_renormalised_top_k():
    """top_k = 2 → {1: 0.625, 2: 0.375}; top_p = 0.6 then keeps token 1 alone (mass before token 2 is
    0.625 ≥ 0.6). On the unrenormalised distribution (0.5 < 0.6) token 2 would have stayed."""
    assert {draw(u, top_k=2, top_p=0.6)[0] for u in (0.0, 0.7, 0.999)} == {1}


def test_logprob_is_under_the_unfiltered_temperature_scaled_distribution():
    """T = 2: probabilities ∝ sqrt(p): sqrt(.2) = .44721, sqrt(.5) = .70711, sqrt(.3) = .54772, sum 1.70204;
    token 2 has .54772 / 1.70204 = .32180, log = -1.13382, whatever top-p removed; cdf in vocabulary
    order [.26275, .67820, 1]: u = 0.7 → token 2."""
    token, logprob = draw(0.7, temperature=2.0)
    assert token == 2
    assert_near(logprob, -1.13382)
    token, logprob = draw(0.0, top_p=0.45)  # token 1, probability 0.5 unfiltered (1 after top-p)
    assert token == 1
    assert_near(logprob, math.log(0.5))


def test_greedy_takes_the_argmax_with_its_untempered_logprob():
    tokens, logprobs = sample_next(torch.stack([LOGITS, LOGITS.flip(0)]), 0.0, 0, 1.0, torch.zeros(2))
    assert tokens.tolist() == [1, 1]  # flip keeps 0.5 in the middle
    assert_near(logprobs, [math.log(0.5), math.log(0.5)])


def test_partial_sort_finds_the_same_nucleus_as_a_full_sort(monkeypatch):
    """Rows of very different entropy (so some find their nucleus among 256 tokens, some among 4096,
    some need the full sort) draw exactly the tokens a full sort of every row gives."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 8000, generator=generator) * torch.linspace(0.05, 12, 12)[:, None]
    uniforms = torch.rand(12, generator=generator, dtype=torch.float64)
    monkeypatch.setattr(sampling, "PARTIAL_SORT_SIZES", (256, 4096))
    fast = sample_next(logits, 1.0, 0, 0.9, uniforms)
    monkeypatch.setattr(sampling, "PARTIAL_SORT_SIZES", ())
    full = sample_next(logits, 1.0, 0, 0.9, uniforms)
    assert torch.equal(fast[0], full[0]) and torch.equal(fast[1], full[1])


def test_sequence_streams_are_keyed_on_seed_rank_prompt_and_candidate():
    keys = [(0, 0, 0, 0), (1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1), (0, 0, 1, 1)]
    assert len({sequence_seed(*key) for key in keys}) == len(keys)
    assert all(0 <= sequence_seed(*key) < 2**63 for key in keys)
    first = draw_uniforms([sequence_generator(*key) for key in keys])
    again = draw_uniforms([sequence_generator(*key) for key in reversed(keys)])
    assert torch.equal(first, again.flip(0)), "a row's draw must not depend on its neighbours or its slot"


def test_drawing_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    draw_uniforms([sequence_generator(3, 0, i, 0) for i in range(4)])
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize(("uniform", "index"), [(0.1, 1), (0.5, 3), (0.95, 4), (1 - 2**-53, 4)])
def test_two_level_inverse_cdf_by_hand(uniform, index):
    """probs [0, .2 | 0, .5 | .3, 0] in blocks of 2: block masses .2, .5, .3, cdf .2, .7, 1.
    u = .1 → block 0, .1 left, inner cdf [0, .2] → index 1; u = .5 → block 1, .3 left, [0, .5] → 3;
    u = .95 → block 2, .25 left, [.3, .3] → 4; u just below 1 (u × total may round to 1) still gives 4,
    never the zero-probability index 5."""
    probs = torch.tensor([[0.0, 0.2, 0.0, 0.5, 0.3, 0.0]])
    assert sampling._invert_cdf(probs, torch.tensor([uniform], dtype=torch.float64), block=2).item() == index


def test_two_level_inverse_cdf_equals_one_cumulative_sum():
    """Rows with zero blocks, zero tails and a size that is not a multiple of the block: the same index
    as searching one float64 cumulative sum over the whole row."""
    generator = torch.Generator().manual_seed(1)
    probs = torch.rand(64, 1000, generator=generator) ** 8
    probs[:, 300:560] = 0.0
    probs[::2, 900:] = 0.0
    uniforms = torch.rand(64, generator=generator, dtype=torch.float64)
    cdf = probs.double().cumsum(-1)
    expected = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None], right=True)[:, 0]
    assert torch.equal(sampling._invert_cdf(probs, uniforms, block=128), expected)
