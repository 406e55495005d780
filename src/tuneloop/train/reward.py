"""Reward-model training: a scalar score for (prompt, response), learned from human judgments.

Run: ``tuneloop reward --config rm.yaml [--data.train pairs.jsonl ...] [--resume [RUN_DIR]]``
or   ``from tuneloop.train.reward import RewardConfig, train; train(RewardConfig(...))``.

Data: preference pairs (text or messages, optional margin and tie), HH-RLHF transcripts, K-way
rankings with tie groups, and the labelling app's ``pairs.jsonl`` / ``rankings.jsonl`` exports, as is
(``train.reward_data``); and/or aspect scores (``data.scores``, the app's ``scores.jsonl``), learned by
one head per aspect (``train.reward_aspects``). Split by prompt with a fixed seed: no prompt is in both
train and eval.

The loop, per optimizer step:
  1. take this process's micro-batches of units (pairs or rankings; a pure function of seed and step)
  2. score every candidate of a micro-batch once, in length-sorted chunks (little padding)
  3. per-unit losses — Bradley–Terry with margin and ties for pairs, all pairs of a ranking or its
     Plackett–Luce likelihood for rankings, plus optional reward centering; the aspect loss
     (regression or ordinal) for scored responses, the pairwise part times ``loss.pairwise_weight`` —
     weighted per prompt, summed, and divided by the step's total weight over all processes
  4. clip, step the optimizer and the schedule
  5. log; evaluate and checkpoint on schedule
After the last step: the held-out report (accuracy, calibration, length bias; JSON + PNG in
``eval/``), the normalisation (gain, bias so that scores of a reference set of policy samples have
mean 0 and std 1; Ziegler et al. 2019) and the model folder ``model/`` with ``tuneloop_reward.json``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tuneloop.batches import ComparisonBatch
from tuneloop.checkpoint import NamedState
from tuneloop.config import ConfigError
from tuneloop.data.scores import AspectScaling
from tuneloop.data.split import split_by_prompt
from tuneloop.losses.aspects import AspectLoss
from tuneloop.losses.preference import (
    bradley_terry_loss,
    plackett_luce_loss,
    ranking_pairwise_loss,
    reward_centering_penalty,
)
from tuneloop.metrics.preference import pair_accuracy
from tuneloop.models.loading import load_tokenizer, resolve_model_name
from tuneloop.models.matmul import with_fast_linear
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
from tuneloop.runs import RunDir
from tuneloop.train.batch_plan import make_batch_plan, step_micro_batches
from tuneloop.train.loop import (
    finish,
    open_run,
    prepare_optimisation,
    start_accelerator,
    start_loop,
    update,
)
from tuneloop.train import reward_aspects
from tuneloop.train.reward_aspects import PREFERENCE_HEAD, HeadLayout, aspect_loss_sum
from tuneloop.train.reward_config import RewardConfig, RewardLossConfig, RewardModelConfig  # noqa: F401 (importable from here)
from tuneloop.train.reward_data import (
    Comparison,
    load_comparisons,
    load_reference,
    load_scored_units,
    make_batch,
    set_prompt_weights,
)


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
    layout: HeadLayout  # which model output is which head ([] names: one scalar head)
    scaling: AspectScaling | None  # the aspects and their standardisation; None without data.scores
    aspect_weights: dict[str, float]  # the default combination of the aspects ({} without data.scores)


def prepare_data(cfg: RewardConfig, tokenizer) -> _Data:
    """Load, validate, render and split; raises DataError/ConfigError before anything is written."""
    from transformers import AutoConfig

    d = cfg.data
    _check_keys(cfg)
    kind = cfg.model.kind if cfg.model.kind != "auto" else detect_kind(AutoConfig.from_pretrained(resolve_model_name(cfg.model.name)))
    renderer = Renderer(tokenizer, kind, d.max_length)
    judged = load_comparisons(d.train, renderer) if d.train else []
    scored = (load_scored_units(d.scores, renderer, d.score_field, d.aspects, AspectLoss(cfg.loss.aspects).needs_votes)
              if d.scores else [])
    held_judged = load_comparisons(d.eval, renderer) if d.eval else None
    held_scored = (load_scored_units(d.eval_scores, renderer, d.score_field, d.aspects) if d.eval_scores else None)
    # what has no eval file is split in one go, so that no prompt is in train for one kind and eval for the other
    to_split = (judged if held_judged is None else []) + (scored if held_scored is None else [])
    train_split, eval_split = split_by_prompt(to_split, d.eval_fraction, cfg.run.seed)
    train_units = train_split + (judged if held_judged is not None else []) + \
        (scored if held_scored is not None else [])
    eval_units = eval_split + (held_judged or []) + (held_scored or [])
    set_prompt_weights(train_units, cfg.loss.per_prompt_weighting)
    set_prompt_weights(eval_units, cfg.loss.per_prompt_weighting)
    scaling, weights = _aspects(cfg, [u.score for u in train_units if u.is_scored])
    layout = HeadLayout.build(bool(judged), scaling.names if scaling else [])
    reference = load_reference(d.reference, renderer) if d.reference else None
    return _Data(train_units, eval_units, reference, kind, layout, scaling, weights)


def _check_keys(cfg: RewardConfig) -> None:
    d = cfg.data
    if not d.train and not d.scores:
        raise ConfigError("config key 'data.train' is required: a file of preference pairs or rankings "
                          "(or give 'data.scores', a file of aspect scores, instead)")
    if cfg.model.lora.enabled and cfg.model.lora.save == "adapter":
        raise ConfigError("config key 'model.lora.save': a reward model folder always holds the merged weights "
                          "(every scorer loads it as is); use 'both' to keep the adapter too, in adapter/")
    unused = [key for key, value in (("data.eval_scores", d.eval_scores), ("data.aspects", d.aspects),
                                     ("model.aspect_weights", cfg.model.aspect_weights),
                                     ("loss.aspects", cfg.loss.aspects != "regression"),
                                     ("data.score_field", d.score_field != "scores")) if value]
    if not d.scores and unused:
        raise ConfigError(f"config key '{unused[0]}' applies to aspect scores; set data.scores or drop it")
    if cfg.loss.pairwise_weight != 1.0 and not (d.train and d.scores):
        raise ConfigError("config key 'loss.pairwise_weight' weighs the pairwise loss against the aspect loss; "
                          "it needs both data.train and data.scores")
    if cfg.loss.aspects == "ordinal" and d.score_field == "adjusted":
        raise ConfigError("config key 'loss.aspects': the ordinal loss learns from the integer votes, and "
                          "data.score_field 'adjusted' has means only; use 'regression' or score_field 'scores'")
    if PREFERENCE_HEAD in (d.aspects or []):
        raise ConfigError(f"config key 'data.aspects': '{PREFERENCE_HEAD}' names the pairwise head; rename the aspect")


def _aspects(cfg: RewardConfig, records: list) -> tuple[AspectScaling | None, dict[str, float]]:
    """The aspects learned (``data.aspects`` or every aspect in the training scores) and the default weights."""
    from tuneloop.data.scores import aspect_names

    if not cfg.data.scores:
        return None, {}
    names = list(cfg.data.aspects) if cfg.data.aspects else aspect_names(records)
    if not records:
        raise ConfigError("config key 'data.scores': no scored response is left for training after the split; "
                          "lower data.eval_fraction or give data.eval_scores")
    if PREFERENCE_HEAD in names:
        raise ConfigError(f"config key 'data.scores': an aspect is called '{PREFERENCE_HEAD}', which names the "
                          "pairwise head; rename it in the export")
    try:
        scaling = AspectScaling.fit(records, names)
    except ValueError as err:
        raise ConfigError(f"config key 'data.aspects': {err}") from None
    weights = dict(cfg.model.aspect_weights) if cfg.model.aspect_weights else {name: 1.0 for name in names}
    unknown = sorted(set(weights) - set(names))
    if unknown or not any(weights.values()):
        raise ConfigError(f"config key 'model.aspect_weights': expected weights of the aspects {names}, not all 0; "
                          f"got {weights}")
    return scaling, weights


ONE_HEAD = HeadLayout([], 0, [])  # the classic reward model: one scalar output


def loss_sum(outputs: torch.Tensor, batch: ComparisonBatch, cfg: RewardLossConfig, layout: HeadLayout = ONE_HEAD,
             scaling: AspectScaling | None = None) -> tuple[torch.Tensor, dict]:
    """Σ weight·loss over the units of a micro-batch, from the outputs of its rows: (R,) for a one-head
    model, (R, H) with aspect heads (``layout``; ``scaling`` standardises their targets). With aspect
    heads, the judgments' part is multiplied by ``cfg.pairwise_weight``.

    Metrics are sums (so they add up over micro-batches and processes): ``correct`` and ``ordered``
    count strictly ordered pairs and how many the rewards order right (ties in rewards count ½);
    ``aspect_se`` / ``aspect_cells`` the squared error of the aspect heads (standardised units).
    """
    if layout.names:
        outputs = outputs.reshape(len(batch.rows), len(layout.names))  # a one-aspect model's (R,) too
    total, metrics = _judgment_loss_sum(layout.judged(outputs) if layout.preference is not None else None, batch, cfg)
    if layout.names:
        total = cfg.pairwise_weight * total
        aspect_total, aspect_metrics = aspect_loss_sum(outputs, batch, cfg.aspects, layout, scaling)
        total = total + aspect_total
        metrics.update(aspect_metrics)
    metrics.update({"units": float(len(batch.pair_chosen) + len(batch.rank_weight) + len(batch.score_rows)),
                    "sequences": float(len(batch.rows)), "tokens": float(batch.tokens)})
    return total, metrics


def _judgment_loss_sum(scores: torch.Tensor | None, batch: ComparisonBatch, cfg: RewardLossConfig
                       ) -> tuple[torch.Tensor, dict]:
    """The pairs' and rankings' part of ``loss_sum``, from their rewards (R,) (None: no preference head)."""
    if scores is None:
        assert not batch.pair_chosen.numel() and not batch.rank_index.numel(), "judgments need a preference head"
        return torch.zeros(()), {"correct": 0.0, "ordered": 0.0}
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
    return total, {"correct": correct, "ordered": ordered}


@torch.no_grad()
def score_units(model: RewardModel, units: list[Comparison], max_batch_tokens: int,
                layout: HeadLayout = ONE_HEAD) -> list[torch.Tensor]:
    """Raw outputs for every candidate of every unit, in eval mode: one (K,) tensor per unit, (K, H)
    with aspect heads."""
    rows = [row for u in units for row in u.rows]
    with eval_mode(model):
        flat = score_encoded(model, rows, max_batch_tokens).cpu() if rows else torch.zeros(0)
    if layout.names:
        flat = flat.reshape(len(rows), len(layout.names))
    out, start = [], 0
    for u in units:
        out.append(flat[start:start + len(u.rows)])
        start += len(u.rows)
    return out


def scored_pairs(units: list[Comparison], scores: list[torch.Tensor]) -> ScoredPairs:
    """Every pair a held-out judgment orders (and its tie pairs), with rewards ((K,) per unit) and lengths."""
    c, r, tie, cl, rl = [], [], [], [], []
    for u, s in zip(units, scores):
        if u.is_scored:
            continue
        for i, j, is_tie in u.ordered_pairs():
            c.append(s[i].item()), r.append(s[j].item()), tie.append(is_tie)
            cl.append(u.rows[i].response_tokens), rl.append(u.rows[j].response_tokens)
    f = torch.tensor
    return ScoredPairs(f(c, dtype=torch.float32), f(r, dtype=torch.float32), f(tie, dtype=torch.bool),
                       f(cl, dtype=torch.float32), f(rl, dtype=torch.float32))


def evaluate(model: RewardModel, units: list[Comparison], cfg: RewardConfig,
             scores: list[torch.Tensor] | None = None, layout: HeadLayout = ONE_HEAD,
             scaling: AspectScaling | None = None) -> dict[str, float]:
    """Held-out loss (per-prompt weighted), pairwise accuracy and the aspect heads' mean squared error
    (standardised units) (``scores``: reuse outputs already computed)."""
    if not units:
        return {}
    scores = score_units(model, units, cfg.max_batch_tokens, layout) if scores is None else scores
    batch = make_batch(units, scaling)
    loss, m = loss_sum(torch.cat(scores), batch, cfg.loss, layout, scaling)
    out = {"loss": loss.item() / batch.weight_sum, "units": m["units"]}
    if m["ordered"]:
        out["accuracy"] = m["correct"] / m["ordered"]
    if m.get("aspect_cells"):
        out["aspect_mse"] = m["aspect_se"] / m["aspect_cells"]
    return out


CURVE_PANELS = [("loss", ["loss"]), ("pairwise accuracy", ["accuracy"]), ("learning rate", ["lr"]),
                ("gradient norm", ["grad_norm"]), ("units per second", ["units_per_s"])]


@with_fast_linear  # fp32 linear layers on oneDNN for the run where it beats MKL (models/matmul.py)
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
    # 2. backbone + scalar head (or one head per aspect), optimizer, schedule; run folder; resume
    model, tokenizer = build_reward_model(cfg.model, data.kind, cfg.disable_dropout, data.layout.num_heads)
    model.train()
    model, optimizer, scheduler = prepare_optimisation(model, cfg.optim, plan.total_steps, acc)
    run = open_run(cfg, "reward", acc, resume_dir)
    state = NamedState({"model": model}, {"model": optimizer}, {"model": scheduler}, {"units_seen": 0})
    rankings = sum(not u.is_pair and not u.is_scored for u in data.train)
    scored = sum(u.is_scored for u in data.train)
    heads = f"; heads {', '.join(data.layout.names)} ({cfg.loss.aspects})" if data.layout.names else ""
    loop = start_loop(cfg, "reward", acc, run, plan, state, resume_dir is not None,
                      f"{cfg.model.name} as {data.kind}{heads}; {len(data.train)} train units ({rankings} rankings, "
                      f"{scored} scored responses) over {len({u.group for u in data.train})} prompts, "
                      f"{len(data.eval)} eval units")

    def loss_sum_fn(model, batch: ComparisonBatch):
        return loss_sum(score_encoded(model, batch.rows, cfg.max_batch_tokens), batch, cfg.loss, data.layout,
                        data.scaling)

    for step in loop.steps():
        # 3. this process's micro-batches of the step (a pure function of seed and step)
        micro = [make_batch([data.train[i] for i in idx], data.scaling)
                 for idx in step_micro_batches(plan, step, cfg.run.seed, len(data.train), acc.process_index)]
        # 4. score, weighted losses, each sum divided by the step's global weight; clip, optimizer, schedule
        totals, grad_norm, lr = update(loop, "model", micro, loss_sum_fn, lambda b: b.weight_sum, step,
                                       cfg.optim.max_grad_norm, on_micro_batch)
        # 5. log, evaluate, checkpoint on schedule
        m = totals.metrics
        state.plain["units_seen"] += int(m["units"])
        logged = {"loss": totals.loss, "lr": lr, "grad_norm": grad_norm, "units": m["units"], "tokens": m["tokens"],
                  "units_per_s": loop.per_second("units_seen")}
        if m["ordered"] or not data.layout.names:
            logged["accuracy"] = m["correct"] / max(m["ordered"], 1.0)
        if m.get("aspect_cells"):
            logged["aspect_mse"] = m["aspect_se"] / m["aspect_cells"]
        loop.end_step(step, logged,
                      lambda: evaluate(acc.unwrap_model(model), data.eval, cfg, layout=data.layout, scaling=data.scaling),
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
        aspects = "".join(f"; {name} Pearson {m['pearson']:.3f}, Spearman {m['spearman']:.3f}"
                          for name, m in report.get("aspects", {}).get("per_aspect", {}).items())
        implied = report.get("aspects", {}).get("score_pairs", {})
        aspects += (f"; weighted scores order {implied['accuracy']:.3f} of {int(implied['pairs'])} held-out score pairs"
                    if "accuracy" in implied else "")
        print(f"[tuneloop] reward: held-out accuracy {acc_text} on {int(report.get('pairs', 0))} pairs{aspects}; "
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
        cfg, data, layout = self.cfg, self.data, self.data.layout
        eval_outputs = score_units(self.model, data.eval, cfg.max_batch_tokens, layout)
        self.report = _eval_report(cfg, self.model, data, self.run, eval_outputs)
        raw, source = _reference_scores(cfg, self.model, data, eval_outputs)
        judged = layout.judged(raw) if layout.preference is not None else None
        gain, bias, stats = (fit_normalisation(judged) if judged is not None and judged.numel() >= 2
                             else (1.0, 0.0, {"count": int(raw.shape[0])}))
        self.info = RewardModelInfo(kind=data.kind, template=TEMPLATES[data.kind], max_length=cfg.data.max_length,
                                    backbone=cfg.model.name, gain=gain, bias=bias,
                                    normalisation={"source": source, **stats},
                                    eval_accuracy=self.report.get("accuracy"),
                                    eval_pairs=int(self.report.get("pairs", 0)))
        if layout.names:  # what load_reward(folder) scores by default is the aspect combination: gate that
            aspects = self.report.get("aspects", {})
            self.info.eval_accuracy, self.info.eval_pairs = reward_aspects.implied_gate_accuracy(aspects)
            self.info.heads, self.info.aspect_stats = layout.names, data.scaling.as_dict()
            self.info.aspect_weights, self.info.aspect_eval = data.aspect_weights, aspects
            self.info.head_reference = reward_aspects.reference_moments(raw, layout, data.scaling, gain, bias)
            self.summary["aspects"] = aspects
        self.summary["normalisation"] = self.info.normalisation
        return self.report


def _eval_report(cfg: RewardConfig, model: RewardModel, data: _Data, run: RunDir, outputs: list[torch.Tensor]) -> dict:
    """report.json: the judgments' report (accuracy, calibration, length bias) on the rewards the pairwise
    loss trains — with aspect heads, the preference head, else the default aspect combination — plus,
    with aspect heads, ``aspects`` (``reward_aspects.aspect_report``) and its headline numbers as flat keys."""
    units, layout = data.eval, data.layout
    if not units:
        return {}
    extra = {"eval_units": len(units), **evaluate(model, units, cfg, outputs, layout, data.scaling)}
    rewards = outputs
    if layout.names:
        aspects = reward_aspects.aspect_report(units, outputs, layout, data.scaling, data.aspect_weights,
                                               cfg.eval_score_gap)
        extra.update({"aspects": aspects, **reward_aspects.flat_summary(aspects)})
        weights = reward_aspects.weight_vector(data.scaling.names, data.aspect_weights)
        rewards = [layout.judged(o) if layout.preference is not None
                   else (reward_aspects.on_scale(o, layout, data.scaling) @ weights).float() for o in outputs]
    lengths = torch.tensor([row.response_tokens for u in units for row in u.rows], dtype=torch.float32)
    pairs = scored_pairs(units, rewards)
    return write_report(run.path / "eval", pairs, torch.cat(rewards), lengths, cfg.eval_tie_threshold, extra=extra,
                        figures=reward_figures.draw if pairs.chosen.numel() else None)


def _reference_scores(cfg: RewardConfig, model: RewardModel, data: _Data, eval_scores: list[torch.Tensor]
                      ) -> tuple[torch.Tensor, str]:
    """Raw scores of the normalisation reference set: data.reference, else the eval (else train) responses."""
    if data.reference is None and data.eval:
        return torch.cat(eval_scores), "eval responses"
    rows = data.reference if data.reference is not None else [row for u in data.train for row in u.rows]
    with torch.no_grad(), eval_mode(model):
        raw = score_encoded(model, rows, cfg.max_batch_tokens).cpu()
    if data.layout.names:
        raw = raw.reshape(len(rows), len(data.layout.names))
    return raw, str(cfg.data.reference) if data.reference is not None else "train responses"
