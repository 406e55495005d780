"""``tuneloop eval``: several policies on the same held-out prompts, sampled with one seed.

Steps (``evaluate``):
  1. draw the prompts (seeded) and load the reference model, the gold scorers, the reward model, the judge
  2. for each policy: sample K responses per prompt, teacher-force them through the policy and the
     reference (temperature 1) for KL, score them, and summarise with bootstrap intervals
  3. win rates of A over B by every gold scorer, the reward model and the judge (first sample per prompt)
  4. best-of-n curves (K ≥ 2 and a reward model) and the over-optimisation curve over each policy's
     checkpoints, with Gao et al.'s fits (``evaluate.overoptimization``)
  5. write ``eval.json`` (+ one samples file per policy) and print a table

KL is measured with the model's own distribution (temperature 1, no top-p truncation), on tokens
sampled with ``sampling``; with top-p < 1 or temperature ≠ 1 the samples do not come from that
distribution exactly, and eval.json records the sampling settings next to the numbers.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from tuneloop.atomic import atomic_write_jsonl
from tuneloop.data import load_records
from tuneloop.data.chat import render_prompt
from tuneloop.data.formats import prompt_messages
from tuneloop.evaluate import overoptimization as oo
from tuneloop.evaluate.config import EvalConfig
from tuneloop.evaluate.stats import (
    bootstrap_interval,
    distinct_n,
    pairwise_outcomes,
    repetition_n,
    sequence_kl,
)
from tuneloop.generation import generate
from tuneloop.models import ModelConfig, load_causal_lm
from tuneloop.models.logprobs import answer_logprobs

REPETITION_N = 3  # seq-rep-3: a response looping on a three-word phrase
DISTINCT_NS = (1, 2)


@dataclass
class PolicySamples:
    """K samples for each of P prompts from one policy, flattened prompt-major: row = p · K + k."""

    name: str
    model: str
    k: int  # samples per prompt
    prompt_index: list[int]  # (P·K,)
    responses: list[str]  # (P·K,)
    tokens: list[int]  # (P·K,) generated tokens, the stop token included
    finished: list[bool]  # (P·K,) True: stopped at EOS, False: cut at max_new_tokens
    kl_k1: list[float]  # (P·K,) Σ_t log π − log π_ref
    kl_k3: list[float]  # (P·K,)
    scores: dict[str, list[float]]  # scorer name → (P·K,)


def draw_prompts(path: str, limit: int | None, seed: int) -> list[list[dict]]:
    """All prompts of the file, or ``limit`` of them drawn without replacement with ``seed`` (file order kept)."""
    conversations = [prompt_messages(r) for r in load_records(path)]
    if limit is not None and limit < len(conversations):
        keep = sorted(random.Random(seed).sample(range(len(conversations)), limit))
        conversations = [conversations[i] for i in keep]
    return conversations


def teacher_forced_logprobs(model, pairs: list[tuple[list[int], list[int]]], pad_id: int,
                            batch_size: int) -> list[torch.Tensor]:
    """log π(answer tokens) at temperature 1, in batches (no gradients)."""
    out: list[torch.Tensor] = []
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            out.extend(t.float().cpu() for t in answer_logprobs(model, pairs[start:start + batch_size], pad_id))
    return out


def _same_vocabulary(tokenizer, reference_tokenizer, policy: str) -> None:
    if tokenizer.get_vocab() != reference_tokenizer.get_vocab():
        raise ValueError(f"policy {policy} and the reference model have different tokenizers; KL needs the same "
                         f"vocabulary (set eval.reference to a model of the same family)")


def sample_and_score(spec_name: str, model_name: str, prompts: list[list[dict]], cfg: EvalConfig, reference,
                     scorers: dict, k: int = 1) -> PolicySamples:
    """Step 2 for one policy (or one checkpoint): sample, KL to the reference, scores."""
    ref_model, ref_tokenizer = reference
    model, tokenizer = load_causal_lm(ModelConfig(name=model_name), trainable=False)
    _same_vocabulary(tokenizer, ref_tokenizer, spec_name)
    prompt_ids = [render_prompt(tokenizer, m) for m in prompts]
    generations = [g for row in generate(model, tokenizer, prompt_ids, cfg.sampling, k, cfg.seed) for g in row]
    pairs = [(g.prompt_ids, g.token_ids) for g in generations]
    pad = tokenizer.pad_token_id
    policy_lp = teacher_forced_logprobs(model, pairs, pad, cfg.sampling.batch_size)
    del model
    reference_lp = teacher_forced_logprobs(ref_model, pairs, pad, cfg.sampling.batch_size)
    kl = sequence_kl(policy_lp, reference_lp)
    index = [p for p in range(len(prompts)) for _ in range(k)]
    texts = [g.text for g in generations]
    flat_prompts = [prompts[p] for p in index]
    scores = {name: scorer.score(flat_prompts, texts).tolist() for name, scorer in scorers.items()}
    return PolicySamples(spec_name, model_name, k, index, texts, [len(g.token_ids) for g in generations],
                         [g.finish_reason == "eos" for g in generations], kl.k1_sequence, kl.k3_sequence, scores)


def summarise(s: PolicySamples, cfg: EvalConfig) -> dict[str, dict]:
    """Every metric of one policy's samples as {mean, ci_low, ci_high, confidence, n}."""
    b = cfg.bootstrap

    def ci(values, weights=None):
        return bootstrap_interval(values, resamples=b.resamples, confidence=b.confidence, seed=cfg.seed,
                                  weights=weights).as_dict()

    tokens = [max(t, 1) for t in s.tokens]
    out = {name: ci(values) for name, values in s.scores.items()}
    out.update({
        "kl/k1_sequence": ci(s.kl_k1), "kl/k3_sequence": ci(s.kl_k3),
        # per token: Σ_s KL_s / Σ_s A_s, i.e. per-sequence per-token KL weighted by token count
        "kl/k1_token": ci([k / t for k, t in zip(s.kl_k1, tokens)], tokens),
        "kl/k3_token": ci([k / t for k, t in zip(s.kl_k3, tokens)], tokens),
        "length/tokens": ci(s.tokens),
        "length/words": ci([len(r.split()) for r in s.responses]),
        "eos_rate": ci([float(f) for f in s.finished]),
        "truncation_rate": ci([float(not f) for f in s.finished]),
        f"repetition/rep_{REPETITION_N}": ci([repetition_n(r, REPETITION_N) for r in s.responses]),
    })
    for n in DISTINCT_NS:
        # No interval: a bootstrap resample repeats responses, whose n-grams then count as repeats, so
        # resampled distinct-n is biased low and a percentile interval would not contain the estimate.
        out[f"distinct/{n}"] = {"mean": distinct_n(s.responses, n), "ci_low": None, "ci_high": None,
                                "confidence": b.confidence, "n": len(s.responses)}
    return out


def win_rates(samples: dict[str, PolicySamples], cfg: EvalConfig, prompts: list[list[dict]], judge) -> list[dict]:
    """Step 3: per comparison and scorer, the mean per-prompt outcome (1 win, ½ tie, 0 loss) with its CI."""
    b = cfg.bootstrap
    names = list(samples)
    comparisons = [(c.a, c.b) for c in cfg.compare] or [(n, names[0]) for n in names[1:]]
    out = []
    for a_name, b_name in comparisons:
        a, bb = samples[a_name], samples[b_name]
        judged: dict[str, list[float]] = {
            scorer: pairwise_outcomes(a.scores[scorer][::a.k], bb.scores[scorer][::bb.k]) for scorer in a.scores}
        if judge is not None:
            ra, rb = a.responses[::a.k], bb.responses[::bb.k]
            judged["judge"] = [0.5 * (float(judge(p, x, y)) + 1.0 - float(judge(p, y, x)))
                               for p, x, y in zip(prompts, ra, rb)]
        for scorer, outcomes in judged.items():
            interval = bootstrap_interval(outcomes, resamples=b.resamples, confidence=b.confidence, seed=cfg.seed)
            out.append({"a": a_name, "b": b_name, "by": scorer, **interval.as_dict()})
    return out


def best_of_n(s: PolicySamples, cfg: EvalConfig, proxy: str, gold: str) -> dict | None:
    """Step 4a: expected proxy and gold score of best-of-n for n = 1, 2, 4 … ≤ K, with the BoN fit."""
    k = s.k
    if k < 2:
        return None
    shape = (len(s.responses) // k, k)
    points = oo.best_of_n_curve(torch.tensor(s.scores[proxy]).view(shape), torch.tensor(s.scores[gold]).view(shape))
    out: dict = {"proxy": proxy, "gold": gold, "points": points}
    if len(points) >= 3:  # n = 1 is the origin; a fit needs two more points
        d = [p["sqrt_kl"] for p in points]
        for key in ("gold", "proxy"):
            gain = [p[key] - points[0][key] for p in points]
            out[f"{key}_fit"] = oo.fit_gao(d, gain, oo.GaoForm.BEST_OF_N).as_dict()
    return out


def overoptimization(points: list[dict], method: str, proxy: str | None, gold: str) -> dict:
    """Step 4b: gold and proxy gain against d = √KL (k3, per sequence) over a policy's checkpoints."""
    out: dict = {"gold": gold, "proxy": proxy, "method": method, "points": points}
    start = points[0]
    d = [p["sqrt_kl"] for p in points]
    if sum(x > 0 for x in d) >= 2:
        form = oo.GaoForm(method)
        for key, name in (("gold", gold), ("proxy", proxy)):
            if name is not None:
                out[f"{key}_fit"] = oo.fit_gao(d, [p[name] - start[name] for p in points], form).as_dict()
    return out


def _point(label: str, s: PolicySamples) -> dict:
    kl = sum(s.kl_k3) / max(len(s.kl_k3), 1)
    return {"label": label, "model": s.model, "kl": kl, "sqrt_kl": math.sqrt(max(kl, 0.0)),
            **{name: sum(v) / len(v) for name, v in s.scores.items()}}


def _side_by_side(samples: dict[str, PolicySamples], prompts: list[list[dict]], count: int) -> list[dict]:
    rows = []
    for p in range(min(count, len(prompts))):
        rows.append({"prompt": prompts[p][-1]["content"],
                     "responses": {name: {"text": s.responses[p * s.k], "finished": s.finished[p * s.k],
                                          **{sc: v[p * s.k] for sc, v in s.scores.items()}}
                                   for name, s in samples.items()}})
    return rows


def _write_samples(folder: Path, s: PolicySamples, prompts: list[list[dict]]) -> None:
    rows = [{"prompt": prompts[p][-1]["content"], "response": s.responses[i], "tokens": s.tokens[i],
             "finish_reason": "eos" if s.finished[i] else "length", "kl_k1": s.kl_k1[i], "kl_k3": s.kl_k3[i],
             **{name: v[i] for name, v in s.scores.items()}}
            for i, p in enumerate(s.prompt_index)]
    atomic_write_jsonl(folder / f"samples-{s.name}.jsonl", rows)
