"""Reward-model training: a scalar score for (prompt, response), learned from human judgments.

Run: ``tuneloop reward --config rm.yaml [--data.train pairs.jsonl ...] [--resume [RUN_DIR]]``
or   ``from tuneloop.train.reward import RewardConfig, train; train(RewardConfig(...))``.

Data: preference pairs (text or messages, optional margin and tie), HH-RLHF transcripts, K-way
rankings with tie groups, and the labelling app's ``pairs.jsonl`` / ``rankings.jsonl`` exports, as is
(``train.reward_data``). Split by prompt with a fixed seed: no prompt is in both train and eval.

The loop, per optimizer step:
  1. take this process's micro-batches of units (pairs or rankings; a pure function of seed and step)
  2. score every candidate of a micro-batch once, in length-sorted chunks (little padding)
  3. per-unit losses — Bradley–Terry with margin and ties for pairs, all pairs of a ranking or its
     Plackett–Luce likelihood for rankings, plus optional reward centering — weighted per prompt,
     summed, and divided by the step's total weight over all processes
  4. clip, step the optimizer and the schedule
  5. log; evaluate and checkpoint on schedule
After the last step: the held-out report (accuracy, calibration, length bias; JSON + PNG in
``eval/``), the normalisation (gain, bias so that scores of a reference set of policy samples have
mean 0 and std 1; Ziegler et al. 2019) and the model folder ``model/`` with ``tuneloop_reward.json``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from tuneloop.batches import ComparisonBatch
from tuneloop.checkpoint import NamedState
from tuneloop.config import ConfigError
from tuneloop.data.split import EVAL_FRACTION, check_eval_fraction, split_by_prompt
from tuneloop.losses.preference import (
    bradley_terry_loss,
    plackett_luce_loss,
    ranking_pairwise_loss,
    reward_centering_penalty,
)
from tuneloop.metrics.preference import pair_accuracy
from tuneloop.models.bundled_encoder import BUNDLED_ENCODER
from tuneloop.models.loading import AttnImplementation, ModelConfig, load_tokenizer, resolve_model_name
from tuneloop.models.modes import eval_mode
from tuneloop.models.reward import (
    TEMPLATES,
    Encoded,
    Renderer,
    RewardModel,
    RewardModelInfo,
    build_reward_model,
    detect_kind,
    save_reward_model,
    score_encoded,
)
from tuneloop.report import reward_figures
from tuneloop.rewards.evaluation import ScoredPairs, write_report
from tuneloop.runs import RunConfig, RunDir
from tuneloop.train.batch_plan import BatchConfig, make_batch_plan, step_micro_batches
from tuneloop.train.loop import (
    LoopConfig,
    finish,
    open_run,
    prepare_optimisation,
    start_accelerator,
    start_loop,
    update,
)
from tuneloop.train.optim import OptimConfig
from tuneloop.train.reward_data import (
    Comparison,
    load_comparisons,
    load_reference,
    make_batch,
    set_prompt_weights,
)


@dataclass
class RewardDataConfig:
    train: str | None = None
    """Judgments: pairs, HH-RLHF transcripts, rankings or a labelling-app export (JSONL/Parquet/CSV/dataset folder)."""
    eval: str | None = None
    """Held-out judgments in the same forms; when null, eval_fraction of the training prompts is held out."""
    eval_fraction: float = EVAL_FRACTION
    """Share of distinct prompts held out for evaluation when no eval file is given (split by prompt, fixed seed)."""
    reference: str | None = None
    """Policy samples to normalise scores on (a `tuneloop sample` candidates file, or pairs); null: the eval responses."""
    max_length: int = 512
    """Tokens per (prompt, response); longer ones keep the whole response and the end of the prompt."""

    def __post_init__(self) -> None:
        check_eval_fraction(self.eval_fraction)


@dataclass
class RewardLossConfig:
    ranking: Literal["pairwise", "plackett_luce"] = "pairwise"
    """Loss of a K-way ranking: mean BT loss over all its pairs (InstructGPT), or its Plackett–Luce likelihood."""
    include_tie_pairs: bool = True
    """Rankings with the pairwise loss: also pull the scores of tied candidates together (soft label ½)."""
    use_margin: bool = True
    """Use each pair's 'margin' in the BT loss, −log σ(r_c − r_r − m) (Llama 2)."""
    per_prompt_weighting: bool = True
    """Weight each unit 1 / (units of its prompt), so a prompt judged many times counts once."""
    centering: float = 0.0
    """Reward-centering coefficient η·(r_c + r_r)² (Eisenstein et al. 2023 use 0.01); 0 disables."""


@dataclass
class RewardModelConfig(ModelConfig):
    name: str = BUNDLED_ENCODER
    """Backbone: 'minilm-l6' (bundled encoder), a causal LM ('smollm2-135m-instruct', 'tiny-llama', a folder) or a hub id."""
    kind: Literal["auto", "causal_lm", "encoder"] = "auto"
    """Reward-model kind; 'auto' picks 'encoder' for BERT-like backbones, else 'causal_lm' (scalar head on the last token)."""
    trainable_layers: int | None = None
    """Train only the top N transformer blocks and the head (null: all); the backward pass stops at the lowest trained block."""
    attn_implementation: AttnImplementation = "sdpa"
    """Attention kernel passed to transformers ('sdpa', 'sdpa_documents', 'eager', 'flash_attention_2')."""


@dataclass
class RewardBatchConfig(BatchConfig):
    batch_size: int = 32
    """Units (a pair, or a whole ranking) per optimizer step, summed over all processes and accumulation steps."""
    micro_batch_size: int = 8
    """Units per forward/backward pass on one process (their candidates are scored in length-sorted chunks)."""


@dataclass
class RewardOptimConfig(OptimConfig):
    lr: float = 5e-5
    """Peak learning rate."""
    warmup_ratio: float = 0.1
    """Warm-up length as a fraction of all optimizer steps, used when warmup_steps is 0."""


@dataclass
class RewardConfig(LoopConfig):
    model: RewardModelConfig = field(default_factory=RewardModelConfig)
    """The backbone and its scalar head."""
    data: RewardDataConfig = field(default_factory=RewardDataConfig)
    """Training, evaluation and normalisation data."""
    loss: RewardLossConfig = field(default_factory=RewardLossConfig)
    """Loss options."""
    batch: RewardBatchConfig = field(default_factory=RewardBatchConfig)
    """Batch sizes (in units: a pair or a whole ranking) and training length."""
    optim: RewardOptimConfig = field(default_factory=RewardOptimConfig)
    """Optimizer and learning-rate schedule."""
    run: RunConfig = field(default_factory=RunConfig)
    """Run folder and seed (the seed also fixes the train/eval split)."""
    disable_dropout: bool = True
    """Switch dropout off in the backbone (scores of a scalar head are noisy with it)."""
    max_batch_tokens: int = 2048
    """Candidates of a micro-batch are scored in length-sorted chunks of at most this many padded tokens
    (small chunks of similar lengths waste little on padding; the activations of all are kept for one backward)."""
    eval_tie_threshold: float = 0.5
    """A held-out tie 'agrees' when |r_1 − r_2| is below this (raw reward units)."""


@dataclass
class RewardResult:
    run_dir: Path
    model_dir: Path
    summary: dict


@dataclass
class _Data:
    train: list[Comparison]
    eval: list[Comparison]
    reference: list[Encoded] | None  # from data.reference, else None (use the eval responses)
    kind: str


def prepare_data(cfg: RewardConfig, tokenizer) -> _Data:
    """Load, validate, render and split; raises DataError/ConfigError before anything is written."""
    from transformers import AutoConfig

    d = cfg.data
    if not d.train:
        raise ConfigError("config key 'data.train' is required: a file of preference pairs or rankings")
    if cfg.model.lora.enabled and cfg.model.lora.save == "adapter":
        raise ConfigError("config key 'model.lora.save': a reward model folder always holds the merged weights "
                          "(every scorer loads it as is); use 'both' to keep the adapter too, in adapter/")
    kind = cfg.model.kind if cfg.model.kind != "auto" else detect_kind(AutoConfig.from_pretrained(resolve_model_name(cfg.model.name)))
    renderer = Renderer(tokenizer, kind, d.max_length)
    units = load_comparisons(d.train, renderer)
    if d.eval:
        train_units, eval_units = units, load_comparisons(d.eval, renderer)
    else:
        train_units, eval_units = split_by_prompt(units, d.eval_fraction, cfg.run.seed)
    set_prompt_weights(train_units, cfg.loss.per_prompt_weighting)
    set_prompt_weights(eval_units, cfg.loss.per_prompt_weighting)
    reference = load_reference(d.reference, renderer) if d.reference else None
    return _Data(train_units, eval_units, reference, kind)


def loss_sum(scores: torch.Tensor, batch: ComparisonBatch, cfg: RewardLossConfig) -> tuple[torch.Tensor, dict]:
    """Σ weight·loss over the units of a micro-batch, from the rewards (R,) of its rows.

    Metrics are sums (so they add up over micro-batches and processes): ``correct`` and ``ordered``
    count strictly ordered pairs and how many the rewards order right (ties in rewards count ½).
    """
    total = scores.new_zeros((), dtype=torch.float32)
    correct, ordered = 0.0, 0.0
    if batch.pair_chosen.numel():
        c, r = scores[batch.pair_chosen], scores[batch.pair_rejected]
        margin = batch.pair_margin.to(scores.device) if cfg.use_margin else None
        losses, _ = bradley_terry_loss(c, r, margin=margin, tie=batch.pair_tie.to(scores.device))
        if cfg.centering:
            losses = losses + reward_centering_penalty(c, r, cfg.centering)[0]
        total = total + (batch.pair_weight.to(scores.device) * losses).sum()
        strict = ~batch.pair_tie.to(scores.device)
        correct += pair_accuracy((c - r).detach()[strict]).sum().item()
        ordered += float(strict.sum().item())
    if batch.rank_index.numel():
        valid = batch.rank_groups.to(scores.device) >= 0
        rewards = torch.where(valid, scores[batch.rank_index.clamp(min=0).to(scores.device)], 0.0)  # (Q, K)
        groups = batch.rank_groups.to(scores.device)
        if cfg.ranking == "plackett_luce":
            losses, _ = plackett_luce_loss(rewards, groups)
        else:
            losses, _ = ranking_pairwise_loss(rewards, groups, include_tie_pairs=cfg.include_tie_pairs)
        if cfg.centering:
            mean = (rewards * valid).sum(dim=1) / valid.sum(dim=1)  # (Q,) η·(2·mean)² is η·(r_c + r_r)² at K = 2
            losses = losses + reward_centering_penalty(mean, mean, cfg.centering)[0]
        total = total + (batch.rank_weight.to(scores.device) * losses).sum()
        with torch.no_grad():
            _, m = ranking_pairwise_loss(rewards, groups)
        correct += m.get("accuracy", 0.0) * m["pairs"]
        ordered += m["pairs"]
    return total, {"correct": correct, "ordered": ordered, "units": float(len(batch.pair_chosen) + len(batch.rank_weight)),
                   "sequences": float(len(batch.rows)), "tokens": float(batch.tokens)}


@torch.no_grad()
def score_units(model: RewardModel, units: list[Comparison], max_batch_tokens: int) -> list[torch.Tensor]:
    """Raw rewards of every candidate of every unit (one (K,) tensor per unit), in eval mode."""
    rows = [row for u in units for row in u.rows]
    with eval_mode(model):
        flat = score_encoded(model, rows, max_batch_tokens).cpu() if rows else torch.zeros(0)
    out, start = [], 0
    for u in units:
        out.append(flat[start:start + len(u.rows)])
        start += len(u.rows)
    return out


def scored_pairs(units: list[Comparison], scores: list[torch.Tensor]) -> ScoredPairs:
    """Every pair a held-out judgment orders (and its tie pairs), with rewards and lengths."""
    c, r, tie, cl, rl = [], [], [], [], []
    for u, s in zip(units, scores):
        for i, j, is_tie in u.ordered_pairs():
            c.append(s[i].item()), r.append(s[j].item()), tie.append(is_tie)
            cl.append(u.rows[i].response_tokens), rl.append(u.rows[j].response_tokens)
    f = torch.tensor
    return ScoredPairs(f(c, dtype=torch.float32), f(r, dtype=torch.float32), f(tie, dtype=torch.bool),
                       f(cl, dtype=torch.float32), f(rl, dtype=torch.float32))


def evaluate(model: RewardModel, units: list[Comparison], cfg: RewardConfig,
             scores: list[torch.Tensor] | None = None) -> dict[str, float]:
    """Held-out loss (per-prompt weighted) and pairwise accuracy (``scores``: reuse rewards already computed)."""
    if not units:
        return {}
    scores = score_units(model, units, cfg.max_batch_tokens) if scores is None else scores
    batch = make_batch(units)
    loss, m = loss_sum(torch.cat(scores), batch, cfg.loss)
    out = {"loss": loss.item() / batch.weight_sum, "units": m["units"]}
    if m["ordered"]:
        out["accuracy"] = m["correct"] / m["ordered"]
    return out


CURVE_PANELS = [("loss", ["loss"]), ("pairwise accuracy", ["accuracy"]), ("learning rate", ["lr"]),
                ("gradient norm", ["grad_norm"]), ("units per second", ["units_per_s"])]


def train(cfg: RewardConfig, resume_dir: str | Path | None = None,
          on_micro_batch: Callable[[int, int], None] | None = None) -> RewardResult:
    """Train a reward model, write the run folder, return where the model is.

    ``resume_dir``: continue that run from its newest complete checkpoint. ``on_micro_batch(step,
    micro_index)`` is called after every backward pass (tests use it to stop a run at a chosen point).
    """
    # 1. accelerator; data first, so a bad file fails before any run folder exists
    acc = start_accelerator(cfg.run.seed)
    data = prepare_data(cfg, load_tokenizer(cfg.model.name))
    plan = make_batch_plan(cfg.batch, len(data.train), acc.num_processes)
    # 2. backbone + scalar head, optimizer, schedule; run folder; resume
    model, tokenizer = build_reward_model(cfg.model, data.kind, cfg.disable_dropout)
    model.train()
    model, optimizer, scheduler = prepare_optimisation(model, cfg.optim, plan.total_steps, acc)
    run = open_run(cfg, "reward", acc, resume_dir)
    state = NamedState({"model": model}, {"model": optimizer}, {"model": scheduler}, {"units_seen": 0})
    rankings = sum(not u.is_pair for u in data.train)
    loop = start_loop(cfg, "reward", acc, run, plan, state, resume_dir is not None,
                      f"{cfg.model.name} as {data.kind}; {len(data.train)} train units ({rankings} rankings) over "
                      f"{len({u.group for u in data.train})} prompts, {len(data.eval)} eval units")

    def loss_sum_fn(model, batch: ComparisonBatch):
        return loss_sum(score_encoded(model, batch.rows, cfg.max_batch_tokens), batch, cfg.loss)

    for step in loop.steps():
        # 3. this process's micro-batches of the step (a pure function of seed and step)
        micro = [make_batch([data.train[i] for i in idx])
                 for idx in step_micro_batches(plan, step, cfg.run.seed, len(data.train), acc.process_index)]
        # 4. score, weighted losses, each sum divided by the step's global weight; clip, optimizer, schedule
        totals, grad_norm, lr = update(loop, "model", micro, loss_sum_fn, lambda b: b.weight_sum, step,
                                       cfg.optim.max_grad_norm, on_micro_batch)
        # 5. log, evaluate, checkpoint on schedule
        m = totals.metrics
        state.plain["units_seen"] += int(m["units"])
        loop.end_step(step, {"loss": totals.loss, "accuracy": m["correct"] / max(m["ordered"], 1.0), "lr": lr,
                             "grad_norm": grad_norm, "units": m["units"], "tokens": m["tokens"],
                             "units_per_s": loop.per_second("units_seen")},
                      lambda: evaluate(acc.unwrap_model(model), data.eval, cfg),
                      {"loss": totals.loss, "units_s": round(loop.per_second("units_seen"), 1)})
    # 6. held-out report and normalisation, model folder with tuneloop_reward.json, curves, summary
    extra = {"stage": "reward", "units_per_s": loop.per_second("units_seen"), "kind": data.kind,
             "eval_report": str(run.path / "eval" / "report.json")}
    final = _Final(cfg, acc.unwrap_model(model), data, run, extra)
    summary = finish(loop, final.evaluate,
                     lambda folder: save_reward_model(final.model, tokenizer, folder, final.info,
                                                      keep_adapter=cfg.model.lora.save == "both"),
                     extra, CURVE_PANELS, f"{run.path.name}: reward, {cfg.model.name}")
    if loop.is_main:
        report = final.report
        acc_text = f"{report['accuracy']:.3f}" if "accuracy" in report else "n/a"
        print(f"[tuneloop] reward: held-out accuracy {acc_text} on {int(report.get('pairs', 0))} pairs; "
              f"model in {run.model}")
    return RewardResult(run.path, run.model, summary)


def fit_normalisation(raw: torch.Tensor) -> tuple[float, float, dict]:
    """(gain, bias) with gain·raw + bias of mean 0 and (population) std 1 on ``raw`` (N,)."""
    mean, std = raw.double().mean().item(), raw.double().std(unbiased=False).item()
    if std < 1e-8:
        print(f"[tuneloop] reward: the reference scores are constant ({mean:.4g}); normalising by the mean only")
        std = 1.0
    return 1.0 / std, -mean / std, {"count": int(raw.numel()), "raw_mean": mean, "raw_std": std}


class _Final:
    """The final evaluation of the reward stage: the held-out report, then the normalisation fitted on
    the reference scores, which the model folder's ``tuneloop_reward.json`` and the summary record."""

    def __init__(self, cfg: RewardConfig, model: RewardModel, data: _Data, run: RunDir, summary: dict):
        self.cfg, self.model, self.data, self.run, self.summary = cfg, model, data, run, summary
        self.report: dict = {}
        self.info: RewardModelInfo | None = None

    def evaluate(self) -> dict:
        cfg, data = self.cfg, self.data
        eval_scores = score_units(self.model, data.eval, cfg.max_batch_tokens)
        self.report = _eval_report(cfg, self.model, data.eval, self.run, eval_scores)
        raw, source = _reference_scores(cfg, self.model, data, eval_scores)
        gain, bias, stats = fit_normalisation(raw) if raw.numel() >= 2 else (1.0, 0.0, {"count": int(raw.numel())})
        self.info = RewardModelInfo(kind=data.kind, template=TEMPLATES[data.kind], max_length=cfg.data.max_length,
                                    backbone=cfg.model.name, gain=gain, bias=bias,
                                    normalisation={"source": source, **stats},
                                    eval_accuracy=self.report.get("accuracy"),
                                    eval_pairs=int(self.report.get("pairs", 0)))
        self.summary["normalisation"] = self.info.normalisation
        return self.report


def _eval_report(cfg: RewardConfig, model: RewardModel, units: list[Comparison], run: RunDir,
                 scores: list[torch.Tensor]) -> dict:
    if not units:
        return {}
    lengths = torch.tensor([row.response_tokens for u in units for row in u.rows], dtype=torch.float32)
    return write_report(run.path / "eval", scored_pairs(units, scores), torch.cat(scores), lengths,
                        cfg.eval_tie_threshold, extra={"eval_units": len(units), **evaluate(model, units, cfg, scores)},
                        figures=reward_figures.draw)


def _reference_scores(cfg: RewardConfig, model: RewardModel, data: _Data, eval_scores: list[torch.Tensor]
                      ) -> tuple[torch.Tensor, str]:
    """Raw scores of the normalisation reference set: data.reference, else the eval (else train) responses."""
    if data.reference is None and data.eval:
        return torch.cat(eval_scores), "eval responses"
    rows = data.reference if data.reference is not None else [row for u in data.train for row in u.rows]
    with torch.no_grad(), eval_mode(model):
        raw = score_encoded(model, rows, cfg.max_batch_tokens).cpu()
    return raw, str(cfg.data.reference) if data.reference is not None else "train responses"
