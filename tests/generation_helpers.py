"""The one exactness check the generation tests share: sampled log-probs are the trainer's."""

from __future__ import annotations

import torch

from tuneloop.models.logprobs import answer_logprobs


def assert_sampled_logprobs_are_teacher_forced(model, pad_id: int, results, temperature: float) -> None:
    """Every generated token's sampler log-prob equals one fresh teacher-forced forward's
    log softmax(logits / T) of it, to 1e-5, and each sequence has one log-prob per token."""
    gens = [g for per_prompt in results for g in per_prompt]
    with torch.no_grad():
        forced = answer_logprobs(model, [(g.prompt_ids, g.token_ids) for g in gens], pad_id, temperature=temperature)
    assert [len(g.logprobs) for g in gens] == [len(f) for f in forced]
    for g, f in zip(gens, forced):
        torch.testing.assert_close(torch.tensor(g.logprobs), f, atol=1e-5, rtol=0)
