"""tuneloop GRPO vs trl's ``GRPOTrainer`` (the trl in the environment, 1.16): episodes/s, peak memory, their
ratios and the losses of the first two steps from identical weights on identical rollouts, in one run.

Run (from the repository root; each workload under the heavy-job lock on a shared machine):

    flock /tmp/tuneloop-heavy.lock env HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \\
        python bench/grpo_vs_trl.py                                # SmolLM2-135M + LoRA, 4 min at load 1.3-2
    HF_HUB_OFFLINE=1 python bench/grpo_vs_trl.py --model tiny-llama --perturb 0.2     # check, ~2 min

Same for both tools: the policy (``--model`` in fp32, LoRA r = ``--lora-r``, α = 2r on q/k/v/o/gate/up/
down), the reference (the base with the adapter disabled), the reward (``--reward``, VADER by default, a
tuneloop reward called on the decoded response: TRL gets it as a reward function), the prompts
(``--prompts`` × ``--rounds`` review prompts as chat messages; both render them with the model's chat
template), K = ``--k`` samples per prompt at temperature 0.7, ``--max-new-tokens``, one optimizer step per
rollout (TRL: ``num_iterations`` 1, the round's completions in ``--micro-batch`` rows × accumulation),
group-normalised advantages, clip 0.2, k3 KL as a loss term with β = 0.04, sequence-mean-token-mean
aggregation (TRL ``loss_type="grpo"``), learning rate (constant), gradient clipping 1.0, fp32
(``bf16=False``, ``use_vllm=False``, gradient checkpointing off: TRL turns it on by default).
One known difference: TRL adds 1e-4 to the group std, tuneloop 1e-6 (a relative 1e-4/std on advantages).

1. Agreement (one process; tuneloop, then TRL). Identical rollouts: both samplers are replaced by the
   same *forced* completions (``--max-new-tokens`` tokens of fixed review text, K different slices per
   prompt, no stop token; TRL through its ``rollout_func`` hook, tuneloop by replacing the ``generate``
   its rollout calls). Identical weights: tuneloop's LoRA B matrices are perturbed from zero (seeded), so
   the policy differs from the reference and the KL term is well above the 1e-5 tolerance, and copied
   into TRL's adapter. Two
   rounds over the same ``--prompts`` prompts, the round in one micro-batch: step 1 at ratio 1 (its loss
   is the β·KL term plus −mean advantage, 0 per group), step 2 after one identical optimizer step, plain SGD
   in both tools by default (``--agreement-optimizer``): an SGD step moves every parameter by −lr·g, so step 2
   checks step 1's gradients. The per-step losses must agree to 1e-5. Measured on an idle machine: SmolLM2
   with 0.02 agrees at both steps (4.8e-8 and 7.8e-8). With AdamW (``--agreement-optimizer adamw``, both
   tools' fused AdamW) step 2 does not agree (0.0633 against 0.0655). Since the SGD step agrees, the
   gradients do; the likely cause is that Adam's first step is about lr·sign(g) for every element, so an
   element whose gradient is at rounding level moves a full step in a direction its rounding picks. The tiny model with ``--perturb 0.2`` agreed at both
   steps with AdamW as well (4.5e-8, 1.5e-6 on losses of 2e-3, under load).
2. Speed (one child process per tool, so that each peak RSS is its own): ``--rounds`` rounds of real
   sampling; episodes/s over rounds 2.. (the wall time from the end of round 1 to the end of the last
   round, everything each tool does in between); peak RSS (``ru_maxrss``) of the whole child.
   Which matmul kernels each tool runs, ``TUNELOOP_LINEAR=torch`` and ``--trl-same-kernels``: as in
   bench/ppo_vs_trl.py's docstring (its TRL measurement of ``--trl-same-kernels`` came from this bench).
The machine's load average is printed: on a shared machine the ratio is "under load".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ppo_vs_trl import (  # noqa: E402  (the shared inputs of the two RL benches)
    TARGETS,
    add_run_args,
    forced_responses,
    load_base,
    perturb,
    prompt_set,
    trl_tokenizer,
)
from rl_speed import compare, run_worker, seconds_per_round, timed_calls  # noqa: E402

import torch  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--reward", default="vader", help="a tuneloop reward spec scoring the response text")
    p.add_argument("--prompts", type=int, default=2, help="prompts per round")
    p.add_argument("--k", type=int, default=4, help="samples per prompt")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the speed runs (the first is not timed)")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--agreement-lr", type=float, default=1e-3)
    p.add_argument("--agreement-optimizer", choices=["sgd", "adamw"], default="sgd",
                   help="optimizer of the agreement's first step (both tools): sgd checks the gradients themselves")
    p.add_argument("--perturb", type=float, default=0.02, help="std of the agreement's LoRA B entries")
    p.add_argument("--seed", type=int, default=0)
    add_run_args(p)
    return p.parse_args(argv)


def reward_function(spec: str):
    """The tuneloop reward as a TRL reward function (completions are decoded text; tuneloop strips them)."""
    from tuneloop.rewards import load_reward

    reward = load_reward(spec)

    def score(prompts, completions, **_):
        texts = [(c[0]["content"] if isinstance(c, list) else c).strip() for c in completions]
        return reward.score([[{"role": "user", "content": ""}]] * len(texts), texts).tolist()

    score.__name__ = f"tuneloop_{spec}"
    return score


def trl_trainer(args, prompt_records, rounds: int, micro: int, lr: float, callbacks=(), rollout_func=None,
                optim: str = "adamw_torch_fused"):
    from datasets import Dataset
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    policy, _ = load_base(args.model)
    tokenizer = trl_tokenizer(args.model)
    episodes = args.prompts * args.k
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-grpo-"), per_device_train_batch_size=micro,
        gradient_accumulation_steps=episodes // micro, num_generations=args.k, max_completion_length=args.max_new_tokens,
        temperature=0.7, top_p=1.0, top_k=0, beta=0.04, loss_type="grpo", scale_rewards="group", epsilon=0.2,
        num_iterations=1, learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, bf16=False, fp16=False, use_vllm=False, gradient_checkpointing=False, max_steps=rounds,
        logging_steps=1, save_strategy="no", report_to="none", seed=args.seed, disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, log_completions=False, optim=optim)
    lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0, target_modules=TARGETS,
                      task_type="CAUSAL_LM")
    dataset = Dataset.from_list([{"prompt": r["messages"]} for r in prompt_records])
    return GRPOTrainer(model=policy, reward_funcs=reward_function(args.reward), args=config, train_dataset=dataset,
                       processing_class=tokenizer, peft_config=lora, callbacks=list(callbacks),
                       rollout_func=rollout_func)


def message_records(args, folder: Path, count: int):
    """``count`` review prompts as {"messages": [...]} (a JSONL file for tuneloop) and their token ids."""
    from tuneloop.data import load_records
    from tuneloop.data.formats import prompt_messages

    args.rounds, rounds = count // args.prompts, args.rounds
    path, token_ids = prompt_set(args, folder)
    args.rounds = rounds
    records = [{"messages": prompt_messages(r)} for r in load_records(str(path))]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path, records, token_ids


def tuneloop_config(args, prompts_file: Path, out_dir: str, rounds: int, micro: int, lr: float):
    from tuneloop.config import load_config
    from tuneloop.train.rl_config import GRPOConfig

    return load_config(GRPOConfig, overrides={
        "model": {"name": args.model, "lora": {"enabled": True, "r": args.lora_r, "alpha": 2 * args.lora_r}},
        "reward": args.reward,
        "rollout": {"prompts": str(prompts_file), "prompts_per_step": args.prompts, "samples_per_prompt": args.k,
                    "sampling": {"temperature": 0.7, "max_new_tokens": args.max_new_tokens,
                                 "batch_size": args.prompts * args.k}},
        "algo": {"kl_coef": 0.04, "clip_low": 0.2, "clip_high": 0.2},
        "optim": {"lr": lr, "warmup_ratio": 0.0, "schedule": "constant", "max_grad_norm": 1.0, "weight_decay": 0.0},
        "micro_batch_size": micro, "steps": rounds, "save_every": 0, "log_every": 1,
        "run": {"out_dir": out_dir, "seed": args.seed}})


# --- 1. agreement -------------------------------------------------------------------------------------

def run_agreement(args) -> dict:
    """Both tools' first two steps on the same forced rollouts from the same perturbed adapter."""
    folder = Path(tempfile.mkdtemp(prefix="grpo-agree-"))
    prompts_file, records, prompts = message_records(args, folder, args.prompts)
    tokenizer = trl_tokenizer(args.model)
    slices = forced_responses(tokenizer, [p for p in prompts for _ in range(args.k)], args.max_new_tokens)
    forced = {tuple(p): [slices[i * args.k + k] for k in range(args.k)] for i, p in enumerate(prompts)}
    ours, snapshot = _tuneloop_agreement(args, folder, prompts_file, tokenizer, forced)
    losses, rewards = _trl_agreement(args, records, prompts, forced, snapshot)
    out = {"episodes": args.prompts * args.k, "tensors_copied": len(snapshot)}
    for step in range(2):
        out[f"loss, step {step + 1}"] = {"tuneloop": ours[step]["loss/policy_avg"], "trl": losses[step],
                                         "abs_diff": abs(ours[step]["loss/policy_avg"] - losses[step])}
        out[f"mean score, step {step + 1}"] = {"tuneloop": ours[step]["objective/raw_scores"], "trl": rewards[step],
                                               "abs_diff": abs(ours[step]["objective/raw_scores"] - rewards[step])}
    return out


def _tuneloop_agreement(args, folder: Path, prompts_file: Path, tokenizer, forced: dict):
    """tuneloop's two logged steps, its sampler replaced by the forced responses and its fresh adapter perturbed;
    returns the metric rows and the perturbed trainable tensors (for TRL)."""
    import tuneloop.train.rl as rl
    import tuneloop.train.rl_rollout as rl_rollout
    from tuneloop.generation import Generation
    from tuneloop.models.logprobs import answer_logprobs

    texts = {tuple(ids): tokenizer.decode(ids, skip_special_tokens=True).strip()
             for group in forced.values() for ids in group}

    def forced_generate(model, tok, token_ids, sampling, k, **_):  # tuneloop's sampler, replaced
        out = []
        for p in token_ids:
            with torch.no_grad():
                logps = answer_logprobs(model, [(p, ids) for ids in forced[tuple(p)]], tok.pad_token_id,
                                        temperature=0.7)
            out.append([Generation(list(p), ids, lp.tolist(), texts[tuple(ids)], "length")
                        for ids, lp in zip(forced[tuple(p)], logps)])
        return out

    snapshot: dict[str, torch.Tensor] = {}
    original_setup = rl._setup

    def setup(*a, **kw):  # perturb the fresh adapter (seeded), keep a copy for TRL
        session = original_setup(*a, **kw)
        policy = session.policy.model
        perturb([(n, p) for n, p in policy.named_parameters() if "lora_B" in n],
                torch.Generator().manual_seed(args.seed), args.perturb)
        snapshot.update({n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad})
        return session

    rl._setup, rl_rollout.generate = setup, forced_generate
    if args.agreement_optimizer == "sgd":  # plain SGD in both tools: step 2 then checks step 1's gradients
        rl.build_optimizer = lambda model, cfg: torch.optim.SGD([p for p in model.parameters() if p.requires_grad],
                                                                lr=cfg.lr)
    result = rl.train(tuneloop_config(args, prompts_file, str(folder / "runs"), 2, args.prompts * args.k,
                                      args.agreement_lr))
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss/policy_avg" in r], snapshot


def _trl_agreement(args, records, prompts, forced: dict, snapshot: dict[str, torch.Tensor]):
    """TRL's two steps on the same forced responses from tuneloop's perturbed adapter: (losses, mean rewards)."""
    by_text = {json.dumps(r["messages"]): ids for r, ids in zip(records, prompts)}

    def rollout_func(batch_prompts, trainer):  # TRL's sampler, replaced: the k-th repeat of a prompt gets slice k
        seen: dict[str, int] = {}
        prompt_ids, completion_ids = [], []
        for messages in batch_prompts:
            key = json.dumps(messages)
            k = seen[key] = seen.get(key, -1) + 1
            prompt_ids.append(by_text[key])
            completion_ids.append(forced[tuple(by_text[key])][k])
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids,
                "logprobs": [[0.0] * len(c) for c in completion_ids]}

    losses: list[float] = []
    trainer = trl_trainer(args, records, 2, args.prompts * args.k, args.agreement_lr, rollout_func=rollout_func,
                          optim="sgd" if args.agreement_optimizer == "sgd" else "adamw_torch_fused")
    inner = trainer.compute_loss

    def compute_loss(*a, **kw):  # record each step's loss (one micro-batch per step here)
        loss = inner(*a, **kw)
        losses.append(float(loss.detach()))
        return loss

    trainer.compute_loss = compute_loss
    copied = 0
    with torch.no_grad():
        for name, param in trainer.model.named_parameters():
            if param.requires_grad:
                param.copy_(snapshot[name])
                copied += 1
    assert copied == len(snapshot), f"copied {copied} of {len(snapshot)} trainable tensors into TRL"
    trainer.train()
    return losses, [h["reward"] for h in trainer.state.log_history if "reward" in h]


# --- 2. speed -----------------------------------------------------------------------------------------

def run_tuneloop(args) -> dict:
    from tuneloop.train import rl

    folder = Path(tempfile.mkdtemp(prefix="grpo-speed-"))
    prompts_file, _, _ = message_records(args, folder, args.prompts * args.rounds)
    ends: list[float] = []
    result = rl.train(tuneloop_config(args, prompts_file, str(folder / "runs"), args.rounds, args.micro_batch,
                                      args.lr), on_round=lambda done: ends.append(time.perf_counter()))
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "completions/mean_length" in r]
    return {"round_ends": ends, "mean_length": [r["completions/mean_length"] for r in rows],
            "generate_s": [r["timing/generate_s"] for r in rows]}


def run_trl(args) -> dict:
    from transformers import TrainerCallback

    ends: list[float] = []

    class RoundEnd(TrainerCallback):
        def on_step_end(self, *_, **__):
            ends.append(time.perf_counter())

    folder = Path(tempfile.mkdtemp(prefix="grpo-speed-"))
    _, records, token_ids = message_records(args, folder, args.prompts * args.rounds)
    trainer = trl_trainer(args, records, args.rounds, args.micro_batch, args.lr, callbacks=[RoundEnd()])
    rendered = trainer._tokenize_prompts([records[0]["messages"]])[0][0]
    assert list(rendered) == list(token_ids[0]), "TRL renders the prompts differently from tuneloop"
    generated: list[tuple[float, float]] = []  # (end time, seconds) of each call of TRL's sampler
    trainer._generate = timed_calls(trainer._generate, generated)
    trainer.train()
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    return {"round_ends": ends, "mean_length": lengths, "generate_s": seconds_per_round(generated, ends)}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_worker(args, {"agreement": run_agreement, "tuneloop": run_tuneloop, "trl": run_trl})
    import trl

    episodes = args.prompts * args.k
    assert args.rounds >= 2 and episodes % args.micro_batch == 0
    print(f"GRPO bench: {args.model}, LoRA r={args.lora_r}, reward {args.reward}, {args.prompts} prompts × K={args.k} "
          f"= {episodes} episodes/round, {args.max_new_tokens} new tokens, micro-batch {args.micro_batch}; "
          f"load average {os.getloadavg()}", flush=True)
    return compare(args, __file__, episodes, f"GRPO, {args.model}", f"trl {trl.__version__}",
                   "losses of steps 1 and 2")


if __name__ == "__main__":
    sys.exit(main())
