"""Pure statistics of policy samples: bootstrap intervals, win rates, KL estimators, text diversity.

Every function takes plain numbers (lists, tensors) and returns numbers; nothing here loads a model.

- ``bootstrap_interval``: percentile bootstrap (Efron & Tibshirani 1993, §13.3) of a statistic over
  items resampled with replacement, from a seeded generator (the same seed gives the same interval).
- ``pairwise_outcomes``: per-prompt outcome of A against B: 1 (A better), ½ (tie), 0 (B better);
  the win rate is their mean, so ties count half (as in AlpacaEval and Chatbot Arena).
- ``sequence_kl``: Monte-Carlo KL(π‖π_ref) from the sampled tokens' log-probs under the policy and
  the reference (Schulman, "Approximating KL divergence", 2020): k1 = log π − log π_ref (unbiased,
  can be negative for one sample), k3 = (r − 1) − log r with r = π_ref / π (unbiased, never negative).
  Per sequence: the sum over its tokens; per token: every token of every sequence weighted equally.
- ``distinct_n`` (Li et al. 2016): distinct n-grams / all n-grams over all responses (low: the
  policy says the same thing to everyone); ``repetition_n`` (Welleck et al. 2019, seq-rep-n):
  1 − distinct / all n-grams inside one response (high: it loops). Words are lower-cased
  whitespace tokens, so the numbers do not depend on a tokenizer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap confidence interval."""

    estimate: float
    low: float
    high: float
    confidence: float
    samples: int  # items the estimate is computed from (not bootstrap resamples)

    def as_dict(self) -> dict:
        return {"mean": self.estimate, "ci_low": self.low, "ci_high": self.high, "confidence": self.confidence,
                "n": self.samples}


def bootstrap_interval(values: Sequence[float], statistic: Callable[[np.ndarray], np.ndarray] | None = None,
                       resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
                       weights: Sequence[float] | None = None) -> Interval:
    """Percentile bootstrap CI of ``statistic`` over ``values`` (N,).

    Default statistic: the mean, or with ``weights`` (N,) the weighted mean Σ w v / Σ w (e.g. a
    per-token average from per-sequence averages weighted by token counts). A custom ``statistic``
    maps an (R, N) array of resampled rows to (R,) values along axis 1. With no values the estimate
    and bounds are NaN; with one value the interval is that value.
    """
    assert 0 < confidence < 1, f"confidence must lie in (0, 1), got {confidence}"
    assert resamples >= 1, f"resamples must be ≥ 1, got {resamples}"
    assert statistic is None or weights is None, "weights apply to the default (mean) statistic only"
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return Interval(math.nan, math.nan, math.nan, confidence, 0)
    w = np.ones_like(data) if weights is None else np.asarray(weights, dtype=np.float64)
    assert w.shape == data.shape, f"one weight per value, got {w.shape} and {data.shape}"
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, data.size, size=(resamples, data.size))  # (R, N)
    if statistic is None:
        estimate = float((data * w).sum() / w.sum())
        resampled = (data[picks] * w[picks]).sum(axis=1) / np.maximum(w[picks].sum(axis=1), 1e-300)
    else:
        estimate = float(statistic(data[None, :])[0])
        resampled = statistic(data[picks])
    tail = (1 - confidence) / 2
    low, high = np.quantile(resampled, [tail, 1 - tail])
    return Interval(estimate, float(low), float(high), confidence, int(data.size))


def pairwise_outcomes(scores_a: Sequence[float], scores_b: Sequence[float], tie_tolerance: float = 0.0) -> list[float]:
    """Per item: 1.0 if a − b > tol, 0.0 if b − a > tol, else 0.5 (a tie)."""
    assert len(scores_a) == len(scores_b), f"need paired scores, got {len(scores_a)} and {len(scores_b)}"
    out = []
    for a, b in zip(scores_a, scores_b):
        gap = float(a) - float(b)
        out.append(1.0 if gap > tie_tolerance else 0.0 if gap < -tie_tolerance else 0.5)
    return out


@dataclass(frozen=True)
class KLEstimates:
    """KL(π‖π_ref) estimates from S sampled sequences."""

    k1_sequence: list[float]  # (S,) Σ_t log π − log π_ref
    k3_sequence: list[float]  # (S,) Σ_t (r − 1) − log r, r = π_ref / π
    k1_token: float  # Σ over all tokens / number of tokens
    k3_token: float
    tokens: int


def sequence_kl(policy_logps: Sequence[torch.Tensor], reference_logps: Sequence[torch.Tensor]) -> KLEstimates:
    """k1 and k3 per sequence and per token from per-token log-probs, each (A_s,) for sequence s."""
    assert len(policy_logps) == len(reference_logps), "one reference row per policy row"
    k1_seq, k3_seq, k1_sum, k3_sum, tokens = [], [], 0.0, 0.0, 0
    for lp, lq in zip(policy_logps, reference_logps):
        assert lp.shape == lq.shape, f"log-prob shapes differ: {tuple(lp.shape)} vs {tuple(lq.shape)}"
        log_ratio = lq.double() - lp.double()  # log r = log π_ref − log π
        k1 = -log_ratio
        k3 = torch.expm1(log_ratio) - log_ratio
        k1_seq.append(k1.sum().item())
        k3_seq.append(k3.sum().item())
        k1_sum += k1.sum().item()
        k3_sum += k3.sum().item()
        tokens += lp.numel()
    per = (lambda total: total / tokens) if tokens else (lambda total: math.nan)
    return KLEstimates(k1_seq, k3_seq, per(k1_sum), per(k3_sum), tokens)


def _ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    words = text.lower().split()
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams across all texts / all n-grams (NaN when no text has n words)."""
    grams = [g for t in texts for g in _ngrams(t, n)]
    return len(set(grams)) / len(grams) if grams else math.nan


def repetition_n(text: str, n: int) -> float:
    """1 − distinct / all n-grams within one text (0 for a text shorter than n words)."""
    grams = _ngrams(text, n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0
