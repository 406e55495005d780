"""tuneloop: the whole instruction-tuning and RLHF loop, from SFT to a human-labelled reward model,
RL (PPO, A2C, GRPO, RLOO) and DPO, to an evaluation report."""

__version__ = "0.1.0"
