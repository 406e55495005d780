"""Drawing the next token: temperature, top-k, top-p, and a random stream per sequence.

Shapes: B rows (sequences decoded together), V vocabulary.

``sample_next(logits, temperature, top_k, top_p, uniforms)`` follows transformers' order of processors
(temperature, then top-k, then top-p on the renormalised top-k distribution; at least one token kept)
and draws by inverting the cumulative distribution of the kept tokens with one uniform number per row.
The reported log-probability is always the one under the *unfiltered* temperature-scaled distribution,
log softmax(logits / T)[token] (T = 1 when greedy): the quantity a trainer recomputes by teacher
forcing. Top-k / top-p decide which tokens can be drawn, not their log-probability.

Randomness: every sequence (prompt i, candidate k) has its own ``torch.Generator`` seeded from
(seed, rank, i, k) (``sequence_seed``; i is the prompt index, or the caller's key for the prompt),
created per call. A sequence's draws therefore do not depend on which other sequences share its
batch, on the slot it occupies, on the backend, or on the process's global RNG, which is neither read
nor reseeded (issue 9, item 4); two ranks draw different samples.
"""

from __future__ import annotations

import hashlib

import torch

PARTIAL_SORT_SIZES = (256, 4096)  # top-p first looks for the nucleus among this many most likely tokens
CDF_BLOCK = 256  # candidates per block of the two-level inverse cdf


def sequence_seed(seed: int, rank: int, prompt_index: int, candidate_index: int) -> int:
    """A 63-bit seed for one sequence's generator: sha256 of the four numbers (no collisions in practice
    between neighbouring seeds, unlike ``seed * C + index`` schemes)."""
    digest = hashlib.sha256(f"{seed}/{rank}/{prompt_index}/{candidate_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def sequence_generator(seed: int, rank: int, prompt_index: int, candidate_index: int) -> torch.Generator:
    """A CPU generator of its own for sequence (prompt_index, candidate_index); CPU so that the stream is
    the same on every device."""
    return torch.Generator().manual_seed(sequence_seed(seed, rank, prompt_index, candidate_index))


def draw_uniforms(generators: list[torch.Generator]) -> torch.Tensor:
    """(B,) float64 in [0, 1): the next number of each row's stream."""
    return torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in generators])


def sample_next(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                uniforms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next token of every row and its log-probability.

    logits (B, V) raw model outputs; uniforms (B,) in [0, 1), ignored when greedy (temperature 0).
    Returns tokens (B,) long and logprobs (B,) float32 = log softmax(logits / T)[token].
    """
    logits = logits.float()
    if temperature == 0:
        tokens = logits.argmax(-1)
        logprobs = logits.gather(-1, tokens[:, None])[:, 0] - torch.logsumexp(logits, -1)
        return tokens, logprobs
    scaled = logits / temperature if temperature != 1.0 else logits  # (B, V)
    if 0 < top_k < logits.shape[-1] or top_p < 1.0:
        log_norm = torch.logsumexp(scaled, -1, keepdim=True)  # (B, 1)
        kept_logits, kept_ids = _candidates(scaled, log_norm, top_k, top_p)
        # Top-k renormalises among the k kept tokens (transformers' order: top-p then applies to that
        # distribution); without top-k the probabilities are the full distribution's, also for a partial sort.
        if 0 < top_k < logits.shape[-1]:
            probs = torch.softmax(kept_logits, -1)
        else:
            probs = (kept_logits - log_norm).exp()
    else:  # the whole vocabulary: one exp pass gives both the weights to draw from and the normaliser
        top = scaled.amax(-1, keepdim=True)
        probs = (scaled - top).exp_()  # (B, V) unnormalised
        log_norm = top + probs.sum(-1, keepdim=True).log()
        kept_ids = None
    if top_p < 1.0:
        mass_before = probs.cumsum(-1) - probs  # mass of the more likely candidates
        probs = probs.masked_fill(mass_before >= top_p, 0.0)  # the first candidate always stays
    position = _invert_cdf(probs, uniforms.to(probs.device))
    tokens = position if kept_ids is None else kept_ids.gather(-1, position[:, None])[:, 0]
    logprobs = scaled.gather(-1, tokens[:, None])[:, 0] - log_norm[:, 0]
    return tokens, logprobs


def _candidates(scaled: torch.Tensor, log_norm: torch.Tensor, top_k: int,
                top_p: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The tokens that can be drawn, most likely first when a filter needs the order.

    Returns (logits (B, C), ids (B, C)), or (scaled, None) for the whole vocabulary in its own order.
    Top-p alone needs the tokens in order of probability; sorting the whole vocabulary is the slow part
    (~2-4 ms a row for 49k tokens on this CPU), so each row's nucleus is first sought among its
    PARTIAL_SORT_SIZES most likely tokens: when their probability already reaches top_p the nucleus lies
    among them, exactly. Only the rows where it does not go on to a larger set, then to a full sort.
    Rows that stop early are padded with -inf logits (probability 0, never drawn).
    """
    vocab = scaled.shape[-1]
    if 0 < top_k < vocab:
        return scaled.topk(top_k, dim=-1)  # sorted, most likely first
    if top_p >= 1.0:
        return scaled, None
    sizes = [size for size in PARTIAL_SORT_SIZES if size < vocab] + [vocab]
    logits = torch.full_like(scaled, float("-inf"))
    ids = torch.zeros(scaled.shape, dtype=torch.long, device=scaled.device)
    rows = torch.arange(scaled.shape[0], device=scaled.device)  # rows still looking for their nucleus
    for size in sizes:
        values, order = scaled[rows].topk(size, dim=-1) if size < vocab else scaled[rows].sort(-1, descending=True)
        found = (values - log_norm[rows]).exp().sum(-1) >= top_p if size < vocab else torch.ones_like(rows, dtype=torch.bool)
        logits[rows[found], :size] = values[found]
        ids[rows[found], :size] = order[found]
        rows = rows[~found]
        if len(rows) == 0:
            return logits[:, :size], ids[:, :size]
    raise AssertionError("unreachable: the full sort finds every row's nucleus")


def _invert_cdf(probs: torch.Tensor, uniforms: torch.Tensor, block: int = CDF_BLOCK) -> torch.Tensor:
    """Index j of every row with cdf[j - 1] <= u * total < cdf[j] (probs (B, C) ≥ 0, not normalised).

    Two levels, in float64 so that the tail of a 49k vocabulary keeps its resolution: the block of
    ``block`` candidates holding u * total (cumulative sum over block masses), then the candidate
    inside it. One pass over the probabilities instead of a cumulative sum over all of them. Tokens
    of zero probability are never chosen (their cdf step is empty; rounding at a block's end falls
    back to the block's last candidate of positive probability)."""
    rows, size = probs.shape
    pad = (-size) % block
    blocks = torch.nn.functional.pad(probs, (0, pad)).view(rows, -1, block)  # (B, N, block)
    mass = blocks.sum(-1, dtype=torch.float64)  # (B, N)
    cdf = mass.cumsum(-1)
    target = uniforms.double() * cdf[:, -1]  # (B,)
    last_block = (cdf < cdf[:, -1:]).sum(-1)  # the last block of positive mass
    chosen = torch.minimum(torch.searchsorted(cdf, target[:, None], right=True)[:, 0], last_block)
    rest = target - (cdf.gather(-1, chosen[:, None]) - mass.gather(-1, chosen[:, None]))[:, 0]
    inner = blocks[torch.arange(rows, device=probs.device), chosen].double().cumsum(-1)  # (B, block)
    last = (inner < inner[:, -1:]).sum(-1)  # the block's last candidate of positive probability
    position = torch.minimum(torch.searchsorted(inner, rest[:, None], right=True)[:, 0], last)
    return chosen * block + position
