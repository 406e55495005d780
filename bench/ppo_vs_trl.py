"""tuneloop PPO vs trl 1.12's ``trl.experimental.ppo.PPOTrainer``: episodes/s, peak memory, their ratios and
the first-step losses from identical weights on identical rollouts, in one run.

Run (from the repository root; each workload under the heavy-job lock on a shared machine):

    flock /tmp/tuneloop-heavy.lock env HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \\
        python bench/ppo_vs_trl.py --trl-dir /work/trl112                      # SmolLM2-135M + LoRA
    HF_HUB_OFFLINE=1 python bench/ppo_vs_trl.py --model tiny-llama --trl-dir /work/trl112   # check, ~1 min

trl 1.12.0 is the last release with PPO and conflicts with the trl in the environment, so it lives in its
own folder, first on ``sys.path`` in the child processes that use it and nowhere else. When the folder
has no trl the bench installs it there: ``pip install --target <dir> --no-deps trl==1.12.0``.

Same for both tools: the policy (``--model`` in fp32, LoRA r = ``--lora-r``, α = 2r on q/k/v/o/gate/up/
down), the critic (the same base with its own LoRA adapter and a scalar head: tuneloop's ``ValueModel``
and, for TRL, ``*ForSequenceClassification`` with the same adapter injected), the reference (the
policy's base with the adapter disabled), the reward (``--reward``, VADER by default, on the decoded
response; trl 1.12 only takes a token-level reward *model*, so it gets a module that decodes the response
tokens and calls the very same tuneloop reward, see ``TextReward``), the prompts (``--prompts`` × ``--rounds``
review prompts rendered once by tuneloop's chat renderer; each tool visits each once), temperature 0.7,
``--max-new-tokens``, episodes per round, 4 epochs × 2 mini-batches, micro-batch, learning rate for
policy and critic (one optimizer in TRL), k1 KL in the reward (β 0.05), clip 0.2, value clip 0.2,
vf_coef 0.1, γ 1, λ 0.95, advantage whitening, no gradient clipping (TRL's PPO loop does not clip),
fp32 (``bf16=False``). Both tools run the same forward and backward passes (4 epochs × episodes /
micro-batch, policy and critic each); trl 1.12 sizes its accumulation to the whole round
(``gradient_accumulation_steps`` = episodes / micro-batch), so its optimizer steps once per epoch rather
than once per mini-batch, an optimizer-only difference that costs nothing measurable with LoRA. TRL pads with ``<|endoftext|>``: with SmolLM2's pad = ``<|im_end|>`` its
``query_responses != pad`` masks would hide the chat template's own end-of-turn tokens.

1. Agreement (one process; tuneloop, then TRL). Identical rollouts: both tools' samplers are replaced
   for this one round by the same *forced* responses (``--max-new-tokens`` tokens of fixed review text
   per prompt, no stop token, so that no tool-specific end-of-response convention applies: TRL scores
   the token after the stop token and masks its values one token longer; tuneloop scores the stop
   token itself). The log-probs a sampler would return for those tokens are computed by teacher
   forcing (TRL: its own forward, logits / (T + 1e-7), as its ``generate`` scores; tuneloop: its one
   log-prob function). Identical weights: tuneloop's policy and critic adapters (B perturbed from zero,
   seeded) and value head (seeded, bias 0 and frozen, as TRL's head has none) are copied into TRL's.
   One round of 2 epochs × 1 mini-batch, one micro-batch, constant learning rate ``--agreement-lr``:
   step 1 runs at ratio 1 (its policy loss is −mean of whitened advantages, ≈ 0 in both by construction),
   step 2 after one identical Adam step, so ``loss/policy_avg`` and ``loss/value_avg`` (means over the
   two steps) test the rollout math, the losses and the optimizer step; they must agree to 1e-5.
2. Speed (one child process per tool, so that each peak RSS is its own): ``--rounds`` rounds of real
   sampling; episodes/s over rounds 2.. (the wall time from the end of round 1 to the end of the last
   round, everything each tool does in between); peak RSS (``ru_maxrss``) of the whole child.
   Each tool on its own matmul: TRL on torch's (MKL), tuneloop on ``models/matmul.py``'s choice (oneDNN
   where it is faster). ``TUNELOOP_LINEAR=torch`` in the environment puts both on MKL: the ratio on equal
   kernels. ``--trl-same-kernels`` routes TRL through tuneloop's torch-function mode, whose per-op Python
   dispatch slows transformers' ``generate()`` more than oneDNN speeds it (measured: GRPO's TRL 0.77
   against 0.88-0.92 episodes/s on MKL), so it does not measure "TRL on oneDNN".
   In the agreement's single process tuneloop's run uses its choice and TRL, after it, torch's: the
   agreement holds across the two kernels.
The machine's load average is printed: on a shared machine the ratio is "under load". Size: 8 episodes
per round took 39 min in all at load 6–11 (agreement 20, tuneloop 10.5, TRL 8.5); the default of 4 took
8 min at load 2–2.5 (1.10×, 0.91× the peak RSS); idle numbers in docs/perf/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch
from rl_speed import compare, run_worker, seconds_per_round, timed_calls  # bench/

TRL_VERSION = "1.12.0"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
FORCED_TEXT = ("A warm, funny and surprisingly moving film with a terrific cast. The story drags in the middle "
               "and the ending is a mess, but the music is lovely and I would happily watch it again. Dull, "
               "predictable and far too long; even the best actors cannot save this tired script.")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--reward", default="vader", help="a tuneloop reward spec scoring the response text")
    p.add_argument("--prompts", type=int, default=4, help="prompts (= episodes, K = 1) per round")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the speed runs (the first is not timed)")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--mini-batches", type=int, default=2)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--agreement-lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trl-dir", default=os.environ.get("TRL112_DIR",
                                                       str(Path.home() / ".cache" / "tuneloop" / "trl-1.12.0")))
    add_run_args(p)
    return p.parse_args(argv)


def add_run_args(p: argparse.ArgumentParser) -> None:
    """The options ``compare`` and ``run_worker`` read, the same in both RL benches."""
    p.add_argument("--skip", choices=["none", "agreement", "speed"], default="none")
    p.add_argument("--trl-same-kernels", action="store_true",
                   help="route TRL's speed child through tuneloop's torch-function mode too; its per-op Python "
                        "dispatch slows transformers' generate(), so this is not 'TRL on oneDNN' "
                        "(TUNELOOP_LINEAR=torch puts both tools on MKL); by default TRL runs as shipped")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--worker", choices=["agreement", "tuneloop", "trl"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)


# --- shared inputs ------------------------------------------------------------------------------------

def ensure_trl(folder: str) -> None:
    if not (Path(folder) / "trl" / "__init__.py").exists():
        print(f"installing trl=={TRL_VERSION} into {folder}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target", folder, "--no-deps",
                        f"trl=={TRL_VERSION}"], check=True)


def import_trl(folder: str):
    sys.path.insert(0, folder)
    import trl

    assert trl.__version__ == TRL_VERSION, f"{folder} holds trl {trl.__version__}, not {TRL_VERSION}"
    return trl


def prompt_set(args, folder: Path):
    """The ``prompts × rounds`` first review prompts: a JSONL file for tuneloop and their token ids."""
    from tuneloop.data import load_records
    from tuneloop.models.loading import load_tokenizer
    from tuneloop.train.rl_rollout import load_prompts

    records = load_records("bundled:review-prompts")[:args.prompts * args.rounds]
    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps(r.data) + "\n" for r in records), encoding="utf-8")
    return path, load_prompts(str(path), load_tokenizer(args.model), 256).token_ids


def load_base(name: str):
    """The causal LM as tuneloop loads it (same attention kernel), trainable."""
    from tuneloop.models import ModelConfig, load_causal_lm

    model, tokenizer = load_causal_lm(ModelConfig(name=name), trainable=False)
    return model.requires_grad_(True), tokenizer


def trl_tokenizer(name: str):
    """TRL's tokenizer: left padding, and a pad token that never occurs in a prompt or a response."""
    from tuneloop.models.loading import load_tokenizer

    tokenizer = load_tokenizer(name)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.pad_token = "<|endoftext|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    return tokenizer


class TextReward(torch.nn.Module):
    """A token-level 'reward model' for TRL that scores like tuneloop: it finds each row's prompt among the
    known prompts, decodes the response tokens (special tokens skipped, stripped: tuneloop's
    ``Generation.text``) and calls the same tuneloop reward. It has TRL's reward-model interface
    (``base_model_prefix`` backbone returning hidden states, a ``score`` head) and no weights."""

    base_model_prefix = "backbone"

    def __init__(self, spec: str, tokenizer, prompts: list[list[int]]):
        super().__init__()
        from tuneloop.rewards import load_reward

        reward, known = load_reward(spec), {tuple(p) for p in prompts}
        lengths = sorted({len(p) for p in prompts})

        class Backbone(torch.nn.Module):
            def forward(self, input_ids, attention_mask, **_):
                texts = []
                for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
                    real = [t for t, m in zip(ids, mask) if m]
                    n = next(n for n in lengths if tuple(real[:n]) in known)
                    texts.append(tokenizer.decode(real[n:], skip_special_tokens=True).strip())
                scores = reward.score([[{"role": "user", "content": ""}]] * len(texts), texts).float()
                hidden = scores[:, None, None].expand(-1, input_ids.shape[1], 1)
                from transformers.utils import ModelOutput

                return ModelOutput(hidden_states=(hidden,))

        self.backbone = Backbone()
        self.score = torch.nn.Identity()


def trl_models(args, tokenizer):
    """TRL's policy (peft LoRA), critic (ForSequenceClassification, the same LoRA injected, head trainable)."""
    from peft import LoraConfig, inject_adapter_in_model
    from transformers import AutoModelForSequenceClassification

    from tuneloop.models.loading import resolve_model_name

    policy, _ = load_base(args.model)
    lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0, target_modules=TARGETS,
                      task_type="CAUSAL_LM")
    critic = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_name(args.model), num_labels=1, dtype=torch.float32,
        attn_implementation=policy.config._attn_implementation)
    critic.config.pad_token_id = tokenizer.pad_token_id
    critic = inject_adapter_in_model(LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0,
                                                target_modules=TARGETS), critic)
    for name, param in critic.named_parameters():
        param.requires_grad_("lora_" in name or name.startswith("score."))
    return policy, critic, lora


def trl_trainer(args, tokenizer, prompts, rounds: int, epochs: int, mini_batches: int, micro: int, lr: float,
                callbacks=()):
    from datasets import Dataset
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    policy, critic, lora = trl_models(args, tokenizer)
    dataset = Dataset.from_list([{"input_ids": ids} for ids in prompts[:args.prompts * rounds]])
    config = PPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-ppo-"), per_device_train_batch_size=micro,
        gradient_accumulation_steps=args.prompts // micro, num_mini_batches=mini_batches, num_ppo_epochs=epochs,
        total_episodes=args.prompts * rounds, local_rollout_forward_batch_size=args.prompts,
        response_length=args.max_new_tokens, temperature=0.7, stop_token="eos", kl_coef=0.05, kl_estimator="k1",
        cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, gamma=1.0, lam=0.95, whiten_rewards=False,
        learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, bf16=False, fp16=False,
        num_sample_generations=0, save_strategy="no", report_to="none", logging_steps=1, seed=args.seed,
        use_cpu=not torch.cuda.is_available(), disable_tqdm=True, dataloader_num_workers=0)
    return PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=None,
                      reward_model=TextReward(args.reward, tokenizer, prompts), train_dataset=dataset,
                      eval_dataset=dataset, value_model=critic, peft_config=lora, callbacks=list(callbacks))


def tuneloop_config(args, prompts_file: Path, out_dir: str, rounds: int, epochs: int, mini_batches: int,
                    micro: int, lr: float):
    from tuneloop.config import load_config
    from tuneloop.train.rl_config import PPOConfig

    optim = {"lr": lr, "warmup_ratio": 0.0, "schedule": "constant", "max_grad_norm": None, "weight_decay": 0.0}
    return load_config(PPOConfig, overrides={
        "model": {"name": args.model, "lora": {"enabled": True, "r": args.lora_r, "alpha": 2 * args.lora_r}},
        "reward": args.reward,
        "rollout": {"prompts": str(prompts_file), "prompts_per_step": args.prompts, "samples_per_prompt": 1,
                    "sampling": {"temperature": 0.7, "max_new_tokens": args.max_new_tokens,
                                 "batch_size": args.prompts}},
        "algo": {"epochs": epochs, "mini_batches": mini_batches, "kl_coef": 0.05, "kl_estimator": "k1",
                 "clip_low": 0.2, "clip_high": 0.2, "value_clip": 0.2, "vf_coef": 0.1, "gamma": 1.0, "lam": 0.95,
                 "whiten_advantages": True},
        "critic": {"optim": optim}, "optim": optim, "micro_batch_size": micro, "steps": rounds,
        "save_every": 0, "log_every": 1, "run": {"out_dir": out_dir, "seed": args.seed}})


# --- 1. agreement -------------------------------------------------------------------------------------

def forced_responses(tokenizer, prompts: list[list[int]], length: int) -> list[list[int]]:
    """A fixed response of ``length`` ordinary tokens for each entry of ``prompts`` (a different slice of
    FORCED_TEXT each, in order)."""
    words = tokenizer(FORCED_TEXT, add_special_tokens=False).input_ids
    special = set(tokenizer.all_special_ids)
    assert not special & set(words) and len(words) > length
    return [(words * 2)[(7 * i) % len(words):][:length] for i in range(len(prompts))]


def perturb(named, generator, scale: float) -> None:
    with torch.no_grad():
        for _, param in named:
            param.copy_(scale * torch.randn(param.shape, generator=generator))


def run_agreement(args) -> dict:
    import_trl(args.trl_dir)
    import trl.experimental.ppo.ppo_trainer as trl_ppo

    import tuneloop.train.rl as rl
    import tuneloop.train.rl_rollout as rl_rollout
    from tuneloop.generation import Generation
    from tuneloop.models.logprobs import answer_logprobs

    folder = Path(tempfile.mkdtemp(prefix="ppo-agree-"))
    args.rounds = 1
    prompts_file, prompts = prompt_set(args, folder)
    tokenizer = trl_tokenizer(args.model)
    forced = {tuple(p): ids for p, ids in zip(prompts, forced_responses(tokenizer, prompts, args.max_new_tokens))}
    temperature = 0.7

    def forced_generate(model, tok, token_ids, sampling, k, **_):  # tuneloop's sampler, replaced
        with torch.no_grad():
            logps = answer_logprobs(model, [(p, forced[tuple(p)]) for p in token_ids], tok.pad_token_id,
                                    temperature=temperature)
        return [[Generation(list(p), forced[tuple(p)], lp.tolist(),
                            tok.decode(forced[tuple(p)], skip_special_tokens=True).strip(), "length")]
                for p, lp in zip(token_ids, logps)]

    snapshot: dict[str, torch.Tensor] = {}
    original_setup = rl._setup

    def setup(*a, **kw):  # perturb the fresh adapters and head (seeded), keep a copy for TRL
        session = original_setup(*a, **kw)
        g = torch.Generator().manual_seed(args.seed)
        policy, critic = session.policy.model, session.critic.model
        perturb([(n, p) for n, p in policy.named_parameters() if "lora_B" in n], g, 0.02)
        perturb([(n, p) for n, p in critic.named_parameters() if "lora_B" in n or n == "head.weight"], g, 0.02)
        with torch.no_grad():
            critic.head.bias.zero_()
        critic.head.bias.requires_grad_(False)  # TRL's score head has no bias
        for prefix, model in (("policy.", policy), ("critic.", critic)):
            snapshot.update({prefix + n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
        return session

    rl._setup, rl_rollout.generate = setup, forced_generate
    cfg = tuneloop_config(args, prompts_file, str(folder / "runs"), 1, 2, 1, args.prompts, args.agreement_lr)
    result = rl.train(cfg)
    ours = json.loads((result.run_dir / "metrics.jsonl").read_text().splitlines()[0])

    def trl_batch_generation(model, queries, _batch, pad_token_id, generation_config):  # TRL's sampler, replaced
        rows = [forced[tuple(t for t in q if t != pad_token_id)] for q in queries.tolist()]
        query_responses = torch.cat([queries, torch.tensor(rows)], 1)
        logits = trl_ppo.forward(model, query_responses, pad_token_id).logits[:, queries.shape[1] - 1:-1]
        return query_responses, logits / generation_config.temperature

    trl_ppo.batch_generation = trl_batch_generation
    trainer = trl_trainer(args, tokenizer, prompts, 1, 2, 1, args.prompts, args.agreement_lr)
    copied = 0
    with torch.no_grad():
        for name, param in trainer.model.policy.named_parameters():
            if param.requires_grad:
                param.copy_(snapshot["policy." + name])
                copied += 1
        critic_ours = {n.split("layers.", 1)[1]: v for n, v in snapshot.items()
                       if n.startswith("critic.") and "layers." in n}
        for name, param in trainer.model.value_model.named_parameters():
            if param.requires_grad:
                param.copy_(snapshot["critic.head.weight"] if name == "score.weight"
                            else critic_ours[name.split("layers.", 1)[1]])
                copied += 1
    assert copied == len(snapshot), f"copied {copied} of {len(snapshot)} trainable tensors into TRL"
    trainer.train()
    theirs = next(h for h in trainer.state.log_history if "loss/policy_avg" in h)
    out = {"episodes": args.prompts, "tensors_copied": copied}
    for key in ("loss/policy_avg", "loss/value_avg", "objective/kl", "objective/scores"):
        out[key] = {"tuneloop": ours[key], "trl": theirs[key], "abs_diff": abs(ours[key] - theirs[key])}
    return out


# --- 2. speed -----------------------------------------------------------------------------------------

def run_tuneloop(args) -> dict:
    from tuneloop.train import rl

    folder = Path(tempfile.mkdtemp(prefix="ppo-speed-"))
    prompts_file, _ = prompt_set(args, folder)
    ends: list[float] = []
    cfg = tuneloop_config(args, prompts_file, str(folder / "runs"), args.rounds, args.epochs, args.mini_batches,
                          args.micro_batch, args.lr)
    result = rl.train(cfg, on_round=lambda done: ends.append(time.perf_counter()))
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "completions/mean_length" in r]
    return {"round_ends": ends, "mean_length": [r["completions/mean_length"] for r in rows],
            "generate_s": [r["timing/generate_s"] for r in rows],
            "phases_s": {k: [r[k] for r in rows] for k in rows[0] if k.startswith("timing/") and k.endswith("_s")}}


def run_trl(args) -> dict:
    import_trl(args.trl_dir)
    import trl.experimental.ppo.ppo_trainer as trl_ppo
    from transformers import TrainerCallback

    ends: list[float] = []
    lengths: list[float] = []
    generated: list[tuple[float, float]] = []  # (end time, seconds) of each call of TRL's sampler
    timed_sample = timed_calls(trl_ppo.batch_generation, generated)

    def batch_generation(model, queries, *rest):  # TRL's own sampler, its response lengths and time recorded
        query_responses, logits = timed_sample(model, queries, *rest)
        responses = query_responses[:, queries.shape[1]:]
        ended = trl_ppo.first_true_indices(responses == tokenizer.eos_token_id) + 1
        lengths.append(float(ended.clamp(max=responses.shape[1]).float().mean()))
        return query_responses, logits

    trl_ppo.batch_generation = batch_generation

    class RoundEnd(TrainerCallback):
        def on_step_end(self, *_, **__):
            ends.append(time.perf_counter())

    folder = Path(tempfile.mkdtemp(prefix="ppo-speed-"))
    _, prompts = prompt_set(args, folder)
    tokenizer = trl_tokenizer(args.model)
    trainer = trl_trainer(args, tokenizer, prompts, args.rounds, args.epochs, args.mini_batches, args.micro_batch,
                          args.lr, callbacks=[RoundEnd()])
    trainer.train()
    return {"round_ends": ends, "mean_length": lengths, "generate_s": seconds_per_round(generated, ends)}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_worker(args, {"agreement": run_agreement, "tuneloop": run_tuneloop, "trl": run_trl})
    assert args.rounds >= 2 and args.prompts % args.micro_batch == 0
    ensure_trl(args.trl_dir)
    print(f"PPO bench: {args.model}, LoRA r={args.lora_r}, reward {args.reward}, {args.prompts} episodes/round, "
          f"{args.max_new_tokens} new tokens, {args.epochs} epochs × {args.mini_batches} mini-batches of micro "
          f"{args.micro_batch}; load average {os.getloadavg()}", flush=True)
    return compare(args, __file__, args.prompts, f"PPO, {args.model}", f"trl {TRL_VERSION}",
                   "first-round losses")


if __name__ == "__main__":
    sys.exit(main())
