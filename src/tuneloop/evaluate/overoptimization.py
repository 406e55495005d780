"""Reward over-optimisation: gold and proxy scores against d = √KL, with Gao et al.'s functional forms.

Gao, Schulman & Hilton, "Scaling Laws for Reward Model Overoptimization" (2022), eq. 1–2: as a policy
moves away from its start (measured by d = √KL(π‖π_init)), the gold score follows

  best-of-n:  R_bon(d) = d (α − β d)
  RL:         R_rl(d)  = d (α − β log d)

(no intercept: scores are taken relative to the starting policy, so R(0) = 0). Both are linear in
(α, β), so ``fit_gao`` solves the least-squares problem in closed form.

Best-of-n needs no training: of n samples keep the one the proxy (the reward model) likes most. Its
KL to the sampling policy is analytic, KL_bon(n) = log n − (n − 1)/n (Stiennon et al. 2020, app. G.3;
Gao et al. eq. 3). From K ≥ n scored samples per prompt, ``best_of_n_expectation`` gives the expected
gold and proxy score of the best of n drawn without replacement, without the noise of picking one
random subset (Nakano et al. 2021, app. I): the i-th smallest proxy (1-based) is the maximum of a
random n-subset with probability C(i − 1, n − 1) / C(K, n).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


class GaoForm(enum.Enum):
    """Which of Gao et al.'s functional forms to fit."""

    BEST_OF_N = "best_of_n"  # d (α − β d)
    RL = "rl"  # d (α − β log d)


def _bon_features(d: torch.Tensor) -> torch.Tensor:
    return torch.stack([d, -d * d], dim=-1)


def _rl_features(d: torch.Tensor) -> torch.Tensor:
    # d log d → 0 as d → 0; torch.xlogy gives exactly 0 at d = 0 instead of NaN.
    return torch.stack([d, -torch.xlogy(d, d)], dim=-1)


FEATURES = {GaoForm.BEST_OF_N: _bon_features, GaoForm.RL: _rl_features}


@dataclass(frozen=True)
class GaoFit:
    form: GaoForm
    alpha: float
    beta: float
    residual: float  # root-mean-square error of the fit over the points

    def predict(self, d: Sequence[float]) -> list[float]:
        x = FEATURES[self.form](torch.tensor(list(d), dtype=torch.float64))
        return (x @ torch.tensor([self.alpha, self.beta], dtype=torch.float64)).tolist()

    def peak(self) -> float | None:
        """d > 0 at which the fitted score is highest (None when it never turns down, β ≤ 0, or never rises, α ≤ 0
        for best-of-n)."""
        if self.beta <= 0 or (self.form is GaoForm.BEST_OF_N and self.alpha <= 0):
            return None
        if self.form is GaoForm.BEST_OF_N:  # d/dd [αd − βd²] = α − 2βd
            return self.alpha / (2 * self.beta)
        return math.exp(self.alpha / self.beta - 1)  # d/dd [αd − βd log d] = α − β(log d + 1)

    def as_dict(self) -> dict:
        return {"form": self.form.value, "alpha": self.alpha, "beta": self.beta, "rmse": self.residual,
                "peak_sqrt_kl": self.peak()}


def fit_gao(sqrt_kl: Sequence[float], score_gain: Sequence[float], form: GaoForm) -> GaoFit:
    """Least-squares (α, β) of ``score_gain`` (P,) — score minus the starting policy's — against d (P,)."""
    assert len(sqrt_kl) == len(score_gain), f"need one score per point, got {len(sqrt_kl)} and {len(score_gain)}"
    d = torch.tensor(list(sqrt_kl), dtype=torch.float64)
    y = torch.tensor(list(score_gain), dtype=torch.float64)
    assert bool((d >= 0).all()), f"d = √KL must be ≥ 0, got {d.tolist()}"
    x = FEATURES[form](d)  # (P, 2)
    if int((d > 0).sum()) < 2:
        raise ValueError(f"a Gao et al. fit needs at least 2 points with KL > 0, got {int((d > 0).sum())}")
    coef = torch.linalg.lstsq(x, y.unsqueeze(-1)).solution.squeeze(-1)
    rmse = (x @ coef - y).pow(2).mean().sqrt().item()
    return GaoFit(form, coef[0].item(), coef[1].item(), rmse)


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n ‖ sampling policy) = log n − (n − 1)/n."""
    assert n >= 1, f"n must be ≥ 1, got {n}"
    return math.log(n) - (n - 1) / n


def best_of_n_expectation(proxy: torch.Tensor, gold: torch.Tensor, n: int) -> tuple[float, float]:
    """Expected (proxy, gold) score, averaged over prompts, of the best-by-proxy of n of the K samples.

    proxy, gold: (P, K). The i-th smallest proxy of a row has weight C(i − 1, n − 1) / C(K, n);
    ties in the proxy are broken by position (a stable sort).
    """
    assert proxy.shape == gold.shape and proxy.dim() == 2, f"need (P, K) scores, got {proxy.shape} and {gold.shape}"
    k = proxy.shape[1]
    assert 1 <= n <= k, f"best-of-{n} needs 1 ≤ n ≤ K = {k}"
    order = torch.sort(proxy.double(), dim=1, stable=True).indices  # ascending
    weights = torch.tensor([math.comb(i, n - 1) for i in range(k)], dtype=torch.float64) / math.comb(k, n)  # (K,)
    sorted_proxy = proxy.double().gather(1, order)
    sorted_gold = gold.double().gather(1, order)
    return (sorted_proxy @ weights).mean().item(), (sorted_gold @ weights).mean().item()


def best_of_n_choice(proxy: torch.Tensor, n: int) -> torch.Tensor:
    """Index (P,) of the best-by-proxy among each row's first n candidates (the first of equal maxima)."""
    assert proxy.dim() == 2 and 1 <= n <= proxy.shape[1], f"need (P, K ≥ {n}) scores, got {tuple(proxy.shape)}"
    return proxy[:, :n].argmax(dim=1)


def best_of_n_curve(proxy: torch.Tensor, gold: torch.Tensor, ns: Sequence[int] | None = None) -> list[dict]:
    """Points (n, KL, √KL, proxy, gold) of best-of-n for n = 1, 2, 4, … ≤ K (or ``ns``)."""
    k = proxy.shape[1]
    ns = list(ns) if ns is not None else [2 ** i for i in range(int(math.log2(k)) + 1)]
    points = []
    for n in ns:
        p, g = best_of_n_expectation(proxy, gold, n)
        kl = best_of_n_kl(n)
        points.append({"n": n, "kl": kl, "sqrt_kl": math.sqrt(kl), "proxy": p, "gold": g})
    return points
