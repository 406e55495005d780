"""Reward-model losses on preference judgments: pure functions of reward tensors.

Implemented (each returns ``(per_item_loss, metrics)``; see "Reduction" below):

- ``bradley_terry_loss``: −log σ(r_c − r_r) (Bradley & Terry 1952; InstructGPT eq. 1), with an
  optional per-pair margin m, −log σ(r_c − r_r − m) (Llama 2, Touvron et al. 2023 eq. 2), and ties
  as a soft label of ½: −½ log σ(d) − ½ log σ(−d), whose minimum log 2 is at d = 0.
- ``ranking_pairwise_loss``: all C(K,2) ordered pairs of one K-way ranking from a single reward
  per candidate, averaged per ranking so each prompt counts as one element (InstructGPT §3.5).
- ``plackett_luce_loss``: the K-wise Plackett–Luce negative log-likelihood of a ranking with tie
  groups (ties treated as in Breslow 1974, see the function).
- ``reward_centering_penalty``: η·(r_c + r_r)² (Eisenstein et al. 2023, "Helping or Herding", §3),
  which keeps rewards centred on zero because the BT loss only sees differences.
- ``per_prompt_weights``: 1 / (number of pairs of the same prompt), so a prompt's pairs weigh one
  element in total when pairs are fed as flat rows.

Reduction (one convention for all of ``losses.preference`` and ``losses.dpo``): functions return the
loss of every item, shape (B,) for pairs or (N,) for rankings, never a mean. The training loop sums
``weight * loss`` over a micro-batch and divides by the number of items (or prompts) in the whole
optimizer step with ``losses.reductions.token_normalised``, so gradient accumulation and several
processes give the same gradient as one big batch.

Shapes: B pairs, N rankings, K candidates per ranking. Rewards are scalar model outputs (any dtype;
computed in fp32 here).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tuneloop.metrics.preference import pair_accuracy


def fp32_or_wider(x: torch.Tensor) -> torch.Tensor:
    """Upcast half-precision inputs to fp32 for the loss math; fp64 stays fp64 (gradcheck, references)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, *,
                       margin: torch.Tensor | float | None = None, tie: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, dict[str, float]]:
    """Bradley–Terry loss per pair, with optional margins and ties.

    With d = r_c − r_r and x = d − m (m = 0 when no margin; m is ignored on tie pairs)::

        loss = −p·log σ(x) − (1 − p)·log σ(−x),   p = 1 for a preference, p = ½ for a tie.

    p = 1 gives −log σ(r_c − r_r) (InstructGPT eq. 1) or, with m, −log σ(r_c − r_r − m) (Llama 2 eq. 2).

    Args:
        chosen_rewards: (B,) reward of the preferred response (for a tie, of either one).
        rejected_rewards: (B,) reward of the other response.
        margin: (B,) or a number: how much better chosen must score; None means 0.
        tie: (B,) bool, True where the two responses were judged equally good.
    Returns:
        (loss, metrics): loss is (B,), fp32 (fp64 for fp64 inputs); metrics holds batch means of the rewards and of the
        accuracy over non-tie pairs (equal rewards count ½).
    """
    assert chosen_rewards.shape == rejected_rewards.shape and chosen_rewards.dim() == 1, (
        f"expected two (B,) reward tensors, got {tuple(chosen_rewards.shape)} and {tuple(rejected_rewards.shape)}")
    diff = fp32_or_wider(chosen_rewards) - fp32_or_wider(rejected_rewards)
    tie = torch.zeros_like(diff, dtype=torch.bool) if tie is None else tie.to(device=diff.device, dtype=torch.bool)
    assert tie.shape == diff.shape, f"tie must be (B,)={tuple(diff.shape)}, got {tuple(tie.shape)}"
    shift = torch.zeros_like(diff) if margin is None else torch.as_tensor(margin, dtype=diff.dtype, device=diff.device)
    assert shift.dim() == 0 or shift.shape == diff.shape, (
        f"margin must be a number or (B,)={tuple(diff.shape)}, got {tuple(shift.shape)}")
    logits = torch.where(tie, diff, diff - shift)
    target = torch.where(tie, 0.5, 1.0).to(diff.dtype)
    # −p log σ(x) − (1−p) log σ(−x), written with logsigmoid for stability at large |x|.
    loss = -(target * F.logsigmoid(logits) + (1.0 - target) * F.logsigmoid(-logits))
    metrics = {
        "rewards/chosen": chosen_rewards.detach().float().mean().item(),
        "rewards/rejected": rejected_rewards.detach().float().mean().item(),
        "rewards/margin": diff.detach().mean().item(),
        "pairs": float(diff.numel()),
        "tie_pairs": float(tie.sum().item()),
    }
    preferred = ~tie
    if preferred.any():
        metrics["accuracy"] = pair_accuracy(diff.detach()[preferred]).mean().item()
    return loss, metrics


def reward_centering_penalty(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, coefficient: float
                             ) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-pair reward-centering regulariser η·(r_c + r_r)² (Eisenstein et al. 2023, §3).

    Its batch mean is the paper's η·E[(r_c + r_r)²]; add it to the per-pair BT loss before reducing.

    Args:
        chosen_rewards: (B,), rejected_rewards: (B,) as for ``bradley_terry_loss``.
        coefficient: η ≥ 0 (the paper uses 0.01).
    """
    assert coefficient >= 0, f"the centering coefficient must be ≥ 0, got {coefficient}"
    total = fp32_or_wider(chosen_rewards) + fp32_or_wider(rejected_rewards)
    penalty = coefficient * total.pow(2)
    return penalty, {"rewards/center": (total.detach() / 2).mean().item()}


def per_prompt_weights(group_ids: torch.Tensor) -> torch.Tensor:
    """Weight 1/n_g for each of the n_g pairs of prompt g (InstructGPT §3.5).

    The weights of one prompt sum to 1, so Σ w·loss / (number of prompts) treats each prompt's
    C(K,2) pairs as one element; with one pair per prompt it is the plain mean. Compute the weights
    over every pair of a prompt (a whole dataset or optimizer step), not over a part of them.

    Args:
        group_ids: (B,) integer id of each pair's prompt.
    Returns:
        (B,) fp32 weights.
    """
    assert group_ids.dim() == 1, f"group_ids must be (B,), got {tuple(group_ids.shape)}"
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    return 1.0 / counts[inverse].float()


def _check_ranking(rewards: torch.Tensor, rank_groups: torch.Tensor) -> torch.Tensor:
    assert rewards.dim() == 2 and rewards.shape == rank_groups.shape, (
        f"expected rewards and rank_groups of the same (N, K) shape, got {tuple(rewards.shape)} "
        f"and {tuple(rank_groups.shape)}")
    return rank_groups >= 0  # (N, K) candidates that take part


def ranking_pairwise_loss(rewards: torch.Tensor, rank_groups: torch.Tensor, *, include_tie_pairs: bool = False
                          ) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean Bradley–Terry loss over all pairs of each ranking (InstructGPT eq. 1 and §3.5).

    Each candidate is scored once; every pair (i, j) with i in a better tie group than j contributes
    −log σ(r_i − r_j). The pairs of one ranking are averaged, so a ranking with K = 9 candidates (36
    pairs) weighs the same as one with K = 2. With ``include_tie_pairs`` each pair inside one tie group
    also contributes the soft-label tie loss −½ log σ(d) − ½ log σ(−d) and is counted as a pair.

    Args:
        rewards: (N, K) reward of each candidate.
        rank_groups: (N, K) int tie-group index of each candidate, 0 = best; −1 marks padding
            (rankings with fewer than K candidates).
    Returns:
        (loss, metrics): loss (N,) fp32, 0 for a ranking without any pair; metrics hold the pair
        accuracy (strictly ordered pairs only, equal rewards count ½) and the pair count.
    """
    valid = _check_ranking(rewards, rank_groups)
    r = fp32_or_wider(rewards)
    diff = r.unsqueeze(2) - r.unsqueeze(1)  # (N, K, K) r_i − r_j
    both = valid.unsqueeze(2) & valid.unsqueeze(1)
    better = both & (rank_groups.unsqueeze(2) < rank_groups.unsqueeze(1))  # i ranked above j
    tied = both & (rank_groups.unsqueeze(2) == rank_groups.unsqueeze(1))
    tied = tied & torch.ones_like(tied[0]).triu(diagonal=1)  # each unordered tie pair once
    zero = torch.zeros_like(diff)  # where(), not a product, so padding rewards cannot leak NaN/inf
    pair_loss = torch.where(better, -F.logsigmoid(diff), zero)
    count = better.sum(dim=(1, 2)).float()
    if include_tie_pairs:
        pair_loss = pair_loss + torch.where(tied, -0.5 * (F.logsigmoid(diff) + F.logsigmoid(-diff)), zero)
        count = count + tied.sum(dim=(1, 2)).float()
    loss = pair_loss.sum(dim=(1, 2)) / count.clamp(min=1.0)
    ordered = diff.detach()[better]
    metrics = {"pairs": float(better.sum().item()), "rankings": float(r.shape[0])}
    if ordered.numel():
        metrics["accuracy"] = pair_accuracy(ordered).mean().item()
    return loss, metrics


def plackett_luce_loss(rewards: torch.Tensor, rank_groups: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Plackett–Luce negative log-likelihood of each ranking, ties handled as in Breslow (1974).

    Without ties, a ranking π is the sequence of choices "best of the rest" (Plackett 1975)::

        loss = −Σ_k [ r_π(k) − log Σ_{j ≥ k} exp r_π(j) ]

    Ties: every member of a tie group is scored as the choice from the same set — its own group and
    all worse groups — without removing its tied partners (Breslow's approximation of the tied
    partial likelihood, as in Cox regression). So the loss is

        loss = −Σ_i [ r_i − log Σ_{j : g_j ≥ g_i} exp r_j ],

    summed over candidates i with tie group g_i. Properties: for K = 2 without a tie it is exactly the
    Bradley–Terry loss −log σ(r_1 − r_2); a lone last candidate contributes 0; a tie group is pushed
    above the worse groups and its members towards equal rewards; a two-way tie gives twice the
    soft-label BT tie loss (2 log 2 at equal rewards). Reduce per ranking (one element per prompt).

    Args:
        rewards: (N, K) reward of each candidate.
        rank_groups: (N, K) int tie-group index of each candidate, 0 = best; −1 marks padding.
    Returns:
        (loss, metrics): loss (N,) fp32.
    """
    valid = _check_ranking(rewards, rank_groups)
    r = fp32_or_wider(rewards)
    # at_or_below[n, i, j]: candidate j is in the choice set of candidate i.
    at_or_below = valid.unsqueeze(1) & valid.unsqueeze(2) & (rank_groups.unsqueeze(1) >= rank_groups.unsqueeze(2))
    # A padding candidate's own row would be all −inf, whose logsumexp backward is NaN even when
    # masked out afterwards; give it itself as choice set (its term is discarded below).
    eye = torch.eye(r.shape[1], dtype=torch.bool, device=r.device)
    at_or_below = at_or_below | ((~valid).unsqueeze(2) & eye)
    expanded = r.unsqueeze(1).expand_as(at_or_below).masked_fill(~at_or_below, float("-inf"))
    log_normaliser = torch.logsumexp(expanded, dim=2)  # (N, K)
    terms = torch.where(valid, r - log_normaliser, torch.zeros_like(r))
    loss = -terms.sum(dim=1)
    top = torch.where(valid & (rank_groups == 0), r, torch.full_like(r, float("nan")))
    return loss, {"rankings": float(r.shape[0]), "rewards/best": top.detach().nanmean().item()}
