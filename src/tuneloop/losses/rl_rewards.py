"""Rewards of the RL stage before advantages: KL estimators, KL-shaped per-token rewards, score
normalisation and clipping, the missing-EOS penalty, and the KL coefficient controllers.

KL estimators of KL(π ‖ π_ref) from samples of π at each response token (Schulman 2020, "Approximating
KL divergence"), with ℓ = log π(y_t) − log π_ref(y_t):

- ``k1``  ℓ                      unbiased, high variance, can be negative per sample
- ``k2``  ℓ² / 2                 biased, low variance, ≥ 0
- ``k3``  e^{−ℓ} − 1 + ℓ          unbiased, low variance, ≥ 0 (GRPO's KL term, DeepSeekMath eq. 4)

All three are always logged; the configured one is used. KL in the reward (Ziegler et al. 2019, eq. 2;
Huang et al. detail 'per-token KL penalty'): r_t = −β·k_t at every response token plus the score on the
last one (``token_rewards``). KL as a loss term (GRPO): β·k_t is added to the per-token policy loss.

Adaptive coefficient (Ziegler et al. 2019, §2.2): e = clip(KL / KL_target − 1, −0.2, 0.2),
β ← β·(1 + e·n / horizon) after each batch of n episodes. The controller is a frozen dataclass so
that the loop checkpoints it as plain state.

Shapes: B sequences, A response tokens (response left-aligned at column 0, ``mask`` 1 on its tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

import torch


class KLEstimator(str, Enum):
    K1 = "k1"
    K2 = "k2"
    K3 = "k3"


def kl_estimates(logps: torch.Tensor, ref_logps: torch.Tensor) -> dict[KLEstimator, torch.Tensor]:
    """Per-token k1, k2, k3 of KL(π ‖ π_ref) at the sampled tokens; logps, ref_logps (B, A) → each (B, A).

    Differentiable in ``logps`` (for the KL loss term); detach the inputs for the reward penalty.
    """
    assert logps.shape == ref_logps.shape, (
        f"logps {tuple(logps.shape)} and ref_logps {tuple(ref_logps.shape)} differ")
    log_ratio = logps.float() - ref_logps.float()
    return {
        KLEstimator.K1: log_ratio,
        KLEstimator.K2: 0.5 * log_ratio.square(),
        KLEstimator.K3: torch.expm1(-log_ratio) + log_ratio,
    }


def kl_per_token(kind: KLEstimator | str, logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor
                 ) -> tuple[torch.Tensor, dict[str, float]]:
    """The per-token KL estimate ``kind`` (B, A), 0 off-mask, and metrics of all three estimators.

    Metrics ``kl/k1``, ``kl/k2``, ``kl/k3``: the mean over sequences of Σ_t k_t (the KL of a whole response).
    """
    estimates = kl_estimates(logps, ref_logps)
    m = mask.to(estimates[KLEstimator.K1].dtype)
    metrics = {f"kl/{k.value}": (v.detach() * m).sum(-1).mean().item() for k, v in estimates.items()}
    return estimates[KLEstimator(kind)] * m, metrics


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """(B,) column of each row's last counted token; mask (B, A) with ≥ 1 counted token per row."""
    counted = mask.sum(-1)
    empty = (counted == 0).nonzero().flatten().tolist()
    assert not empty, f"every response needs ≥ 1 token; empty rows: {empty}"
    return mask.shape[-1] - 1 - mask.flip(-1).to(torch.int64).argmax(-1)


def token_rewards(scores: torch.Tensor, non_score: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """r_t = non_score_t on every response token, plus the score on the last one (Ziegler et al. eq. 2).

    scores (B,), non_score (B, A) (−β·KL_t, or zeros), mask (B, A) → (B, A), 0 off-mask.
    """
    rewards = (non_score * mask).clone()
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last_token_index(mask)] += scores.to(rewards.dtype)
    return rewards


def penalise_missing_eos(scores: torch.Tensor, ended: torch.Tensor, penalty: float | None) -> torch.Tensor:
    """Replace the score of responses that did not end (no EOS within the length limit) by ``penalty``
    (Huang et al. detail 'missing EOS penalty'); None keeps every score. scores (B,), ended (B,) bool."""
    if penalty is None:
        return scores
    return torch.where(ended.bool(), scores, torch.full_like(scores, penalty))


@dataclass(frozen=True)
class RunningMoments:
    """Running mean and (population) variance of every score seen so far; plain state for checkpoints."""

    mean: float = 0.0
    var: float = 1.0
    count: float = 0.0

    def update(self, batch: torch.Tensor) -> RunningMoments:
        """Merge a batch (Chan et al. 1979, parallel variance): exact for any split of the data."""
        batch = batch.detach().to(torch.float64).flatten()
        n = float(batch.numel())
        if n == 0:
            return self
        b_mean = batch.mean().item()
        b_var = batch.var(unbiased=False).item()
        total = self.count + n
        delta = b_mean - self.mean
        mean = self.mean + delta * n / total
        m2 = self.var * self.count + b_var * n + delta * delta * self.count * n / total
        return RunningMoments(mean=mean, var=m2 / total, count=total)


def normalise_scores(scores: torch.Tensor, moments: RunningMoments, clip: float | None, eps: float = 1e-8
                     ) -> torch.Tensor:
    """(s − μ) / sqrt(σ² + ε) with running moments, then clipped to [−clip, clip] (None: no clipping)."""
    out = (scores - moments.mean) / (moments.var + eps) ** 0.5
    return clip_scores(out, clip)


def clip_scores(scores: torch.Tensor, clip: float | None) -> torch.Tensor:
    """Clamp scores to [−clip, clip]; None leaves them."""
    if clip is None:
        return scores
    assert clip > 0, f"reward clip must be > 0, got {clip}"
    return scores.clamp(-clip, clip)


@dataclass(frozen=True)
class KLController:
    """The KL coefficient β: fixed (``target`` None) or adaptive (Ziegler et al. 2019, §2.2)."""

    coef: float
    target: float | None = None  # KL_target (nats per response); None: β is fixed
    horizon: float = 10000.0  # episodes over which β may change by a factor of about e^{±0.2}

    def update(self, observed_kl: float, n_episodes: int) -> KLController:
        """β after a batch of ``n_episodes`` whose mean response KL was ``observed_kl``."""
        if self.target is None:
            return self
        error = min(max(observed_kl / self.target - 1.0, -0.2), 0.2)
        return replace(self, coef=self.coef * (1.0 + error * n_episodes / self.horizon))
