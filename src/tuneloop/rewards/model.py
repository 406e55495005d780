"""A trained reward model behind the reward protocol.

Text is re-rendered with the RM's own tokenizer and template (``models.reward.Renderer``), so the
policy and the RM may use different tokenizers. Scoring runs in length-sorted chunks of at most
``max_batch_tokens`` padded tokens; a (prompt, response) gets the same score (to fp32 rounding,
≤1e-5) alone or in any batch. Scores are normalised with the stored gain and bias (mean 0, std 1 on
the reference set of policy samples) unless ``normalise=False``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from tuneloop.models.reward import Renderer, load_reward_model, score_encoded
from tuneloop.rewards.base import Prompt, as_messages, check_batch


class RewardModelScorer:
    def __init__(self, folder: str | Path, normalise: bool = True, max_batch_tokens: int = 2048,
                 device: str | torch.device = "cpu"):
        self.folder = Path(folder)
        self.model, self.tokenizer, self.info = load_reward_model(self.folder)
        self.model.to(device)
        self.renderer = Renderer(self.tokenizer, self.info.kind, self.info.max_length)
        self.normalise, self.max_batch_tokens = normalise, max_batch_tokens
        self.name = f"rm:{self.folder}"

    @torch.no_grad()
    def outputs(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
        """Raw model outputs: (B,) for a one-head model, (B, H) for a multi-aspect one."""
        check_batch(prompts, responses)
        if not responses:
            return torch.zeros(0)
        rows = [self.renderer.encode(as_messages(p), [{"role": "assistant", "content": r}])
                for p, r in zip(prompts, responses)]
        return score_encoded(self.model, rows, self.max_batch_tokens).float().cpu()

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
        if self.info.heads:
            raise ValueError(f"{self.folder} scores aspects ({', '.join(self.info.heads)}); load it with "
                             "tuneloop.rewards.load_reward, which combines them")
        raw = self.outputs(prompts, responses)
        return self.info.normalise(raw) if self.normalise else raw
