"""The critic of PPO and A2C: a causal-LM backbone with a scalar value head, V(s_t) at every response token.

A separate model by default (Huang et al., "The N+ Implementation Details of RLHF with PPO": the value
network is its own copy, not a second head on the policy), built one of two ways (``CriticInit``):

- ``policy``: the policy's backbone with a value head whose weights and bias start at zero, so every
  value starts at 0 (the first advantages are then the plain returns);
- ``reward_model``: a causal-LM reward model's backbone and its scalar ``score`` head (Ouyang et al.
  2022 §C.3: "we initialize the value function from the RM"), so V starts near the score.

V(s_t) is read at the position that predicts response token t (column P + t − 1 in the Rollout
layout): the value of the state before the token is chosen. Positions count real tokens only, so a
row's values do not depend on its padding.
"""

from __future__ import annotations

from typing import Literal

import torch

from tuneloop.models.loading import ModelConfig, apply_lora

CriticInit = Literal["policy", "reward_model"]


class ValueModel(torch.nn.Module):
    """A transformer backbone (no LM head) and a linear head to one value per position."""

    def __init__(self, backbone: torch.nn.Module, head: torch.nn.Linear):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Values (B, T) fp32 of rows (B, T) padded on either side."""
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                               use_cache=False).last_hidden_state
        return self.head(hidden).squeeze(-1).float()


def _backbone(hf) -> torch.nn.Module:
    return getattr(hf, hf.base_model_prefix)


def build_value_model(init: CriticInit, policy: ModelConfig, reward_model: str | None = None) -> ValueModel:
    """A fresh critic (fp32, CPU, train mode) as described in the module docstring.

    ``policy``: the policy's model config (name, LoRA); ``reward_model``: the reward-model folder when
    ``init`` is ``reward_model`` (it must be a causal-LM reward model sharing the policy's tokenizer).
    """
    if init == "policy":
        from tuneloop.models.loading import load_causal_lm

        hf, _ = load_causal_lm(ModelConfig(name=policy.name, attn_implementation=policy.attn_implementation,
                                           gradient_checkpointing=policy.gradient_checkpointing))
        backbone = _backbone(hf)
        head = torch.nn.Linear(hf.config.hidden_size, 1)
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
    elif init == "reward_model":
        from tuneloop.models.reward import RewardModelInfo, load_reward_model

        if reward_model is None:
            raise ValueError("critic.init: reward_model needs a reward-model folder as the reward")
        kind = RewardModelInfo.load(reward_model).kind
        if kind != "causal_lm":
            raise ValueError(f"critic.init: reward_model needs a causal-LM reward model; {reward_model} is "
                             f"'{kind}' (its tokenizer differs from the policy's): use critic.init: policy")
        rm, _, _ = load_reward_model(reward_model)
        core = rm.core
        backbone, score = _backbone(core), core.score
        head = torch.nn.Linear(score.in_features, 1, bias=True)
        with torch.no_grad():
            head.weight.copy_(score.weight)
            head.bias.copy_(score.bias if score.bias is not None else torch.zeros(1))
        backbone.requires_grad_(True)
    else:
        raise ValueError(f"critic.init must be 'policy' or 'reward_model', got {init!r}")
    if policy.lora.enabled:
        backbone = apply_lora(backbone, policy.lora, task_type=None)  # a bare backbone: no task head
    model = ValueModel(backbone, head)
    model.train()
    return model


def response_values(critic: ValueModel, query_responses: torch.Tensor, attention_mask: torch.Tensor,
                    prompt_width: int, response_width: int) -> torch.Tensor:
    """V(s_t) (B, A) for the Rollout layout: the values at columns P − 1 … P + A − 2."""
    values = critic(query_responses, attention_mask)
    return values[:, prompt_width - 1:prompt_width - 1 + response_width]

