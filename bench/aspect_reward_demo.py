"""Issue 13's must-shows for the multi-aspect reward model on the demo task, measured and printed.

A. Held-out per-aspect correlation of a multi-aspect reward model next to the panel's own inter-rater
   reliability: Krippendorff's α (interval) per aspect from the label store; the reliability of the
   mean of the responses' scores by Spearman–Brown, ρ_n = n·α / (1 + (n − 1)·α), and √ρ_n, the
   correlation a perfect predictor of the panel's underlying score would reach with the noisy means;
   and, because the panel is simulated, the measured correlation of its noise-free scorer values with
   the same held-out means (what the reward model could reach at best).
B. Best-of-n selection with aspect-weighted rewards on held-out prompts: from one pool of n candidates
   per prompt, each weighting keeps the candidate it scores highest; the kept candidates are measured
   by the aspect scorers (VADER for quality, MiniLM similarity for relevance, better-profanity for
   safety), which the reward model never saw, against the pool's mean (a random pick).

Run (paths as docs/reward.md sets them up)::

    python bench/aspect_reward_demo.py --db labels.db --scores export/scores.jsonl --run runs/aspects \\
        --pool heldout-candidates.jsonl --n 8 --out aspects-demo.json

Needs the label extra (better-profanity) for the safety scorer.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import statistics
from pathlib import Path

import torch

from tuneloop.data.scores import load_score_records
from tuneloop.data.split import split_by_prompt
from tuneloop.evaluate.best_of_n import select_best_of_n
from tuneloop.feedback.aspect_scorers import default_aspect_scorers
from tuneloop.feedback.quality import quality_report
from tuneloop.feedback.store import opened
from tuneloop.metrics.preference import pearson, spearman
from tuneloop.rewards import load_reward

WEIGHTINGS = {  # name → query of the reward spec
    "quality": "weights=quality:1",
    "relevance": "weights=relevance:1",
    "all aspects 1": "weights=quality:1,relevance:1,safety:1",
    "relevance 1, floor quality 3": "weights=relevance:1&floor=quality:3",
}


def ceiling(db: str, scores: str, run: Path, scorers: dict) -> dict:
    """Per aspect: α of the panel, the Spearman–Brown ceiling, the scorer's own correlation with the
    held-out means, and the reward model's held-out Pearson / Spearman (from its eval report)."""
    cfg = json.loads((run / "summary.json").read_text())
    report = json.loads((run / "eval" / "report.json").read_text())["aspects"]["per_aspect"]
    import yaml

    config = yaml.safe_load((run / "config.yaml").read_text())
    if config["data"]["eval_scores"]:  # the run's held-out responses: its eval file, or its split of the scores
        held = load_score_records(config["data"]["eval_scores"])
    else:
        _, held = split_by_prompt(load_score_records(scores), config["data"]["eval_fraction"], config["run"]["seed"])
    with opened(db, create=False) as store:
        alphas = {a["aspect"]: a["alpha_interval"] for a in quality_report(store)["aspects"]}
    out = {}
    for name, scorer in scorers.items():
        human = torch.tensor([r.human[name] for r in held], dtype=torch.float64)
        gold = torch.tensor([scorer(r.prompt[-1]["content"], r.response[0]["content"]) for r in held], dtype=torch.float64)
        votes = statistics.fmean(len(r.votes[name]) for r in held)
        alpha = alphas[name]
        rho = votes * alpha / (1 + (votes - 1) * alpha)
        out[name] = {"alpha_interval": alpha, "votes_per_response": votes, "reliability_of_mean": rho,
                     "ceiling_sqrt_reliability": math.sqrt(rho) if rho > 0 else 0.0,
                     "scorer_pearson": pearson(gold, human), "scorer_spearman": spearman(gold, human),
                     "rm_pearson": report[name]["pearson"], "rm_spearman": report[name]["spearman"],
                     "held_out_responses": report[name]["responses"]}
    out["_run"] = {"steps": cfg["steps"], "train_seconds": cfg["train_seconds"]}
    return out


def best_of_n(pool: str, run: Path, n: int, scorers: dict) -> dict:
    """Mean aspect-scorer values of the candidates each weighting keeps, and of the whole pool."""
    records = [json.loads(line) for line in Path(pool).read_text().splitlines() if line.strip()]
    gold = {name: [[scorer(r["prompt"], c) for c in r["completions"][:n]] for r in records]
            for name, scorer in scorers.items()}
    out = {"pool (random pick)": {name: statistics.fmean(v for row in values for v in row)
                                  for name, values in gold.items()}}
    trimmed = [{**r, "completions": r["completions"][:n]} for r in records]
    for label, query in WEIGHTINGS.items():
        kept = select_best_of_n(trimmed, load_reward(f"{run / 'model'}?{query}"), n)
        chosen = [k["best_of_n"]["chosen"][0] for k in kept]
        out[label] = {name: statistics.fmean(values[i][c] for i, c in enumerate(chosen)) for name, values in gold.items()}
        # the gain over a random pick, per prompt: kept value − the prompt's pool mean; mean ± standard error
        for name, values in gold.items():
            gains = [values[i][c] - statistics.fmean(values[i]) for i, c in enumerate(chosen)]
            out[label][f"{name}_gain"] = statistics.fmean(gains)
            out[label][f"{name}_gain_se"] = statistics.stdev(gains) / math.sqrt(len(gains))
        out[label]["_chosen"] = chosen
    q, r = out["quality"]["_chosen"], out["relevance"]["_chosen"]  # the two opposite weightings, prompt by prompt
    out["quality minus relevance weighting"] = {"_different_picks": sum(a != b for a, b in zip(q, r))}
    for name, values in gold.items():
        diffs = [values[i][q[i]] - values[i][r[i]] for i in range(len(records))]
        out["quality minus relevance weighting"][name] = statistics.fmean(diffs)
        out["quality minus relevance weighting"][f"{name}_se"] = statistics.stdev(diffs) / math.sqrt(len(diffs))
    for name in scorers:  # the oracle: best-of-n by the scorer itself (what a perfect reward model would pick)
        picks = [max(range(n), key=lambda j, row=row: row[j]) for row in gold[name]]
        out[f"oracle {name}"] = {a: statistics.fmean(gold[a][i][c] for i, c in enumerate(picks)) for a in scorers}
    out["_prompts"], out["_n"] = len(records), n
    return out


def more_data_files(sft: str, sample_prompts: str, eval_prompts: str, out: Path, responses: int = 400,
                    seed: int = 0) -> None:
    """The "+ 400 more rated reviews" row: ``out/rt-candidates.jsonl`` holds the first 4 reviews of movies of
    the SFT data that are neither sample nor eval prompts (movies shuffled with ``seed``) until ``responses``;
    after the panel rated them (``out/rt-export``), ``merge_more_data`` writes the training and eval files."""
    taken = {json.loads(line)["prompt"] for f in (sample_prompts, eval_prompts) for line in open(f) if line.strip()}
    by_movie: dict[str, list[str]] = {}
    for line in open(sft):
        row = json.loads(line)
        if row["prompt"] not in taken:
            by_movie.setdefault(row["prompt"], []).append(row["completion"])
    movies = [(p, c[:4]) for p, c in by_movie.items() if len(c) >= 2]
    random.Random(seed).shuffle(movies)
    rows, count = [], 0
    for prompt, reviews in movies:
        if count >= responses:
            break
        rows.append({"prompt_id": "rt-" + hashlib.sha1(prompt.encode()).hexdigest()[:12], "prompt": prompt,
                     "messages": [{"role": "user", "content": prompt}], "completions": reviews,
                     "provenance": {"model": "Rotten Tomatoes reviews (the demo's SFT data)"}})
        count += len(reviews)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rt-candidates.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def merge_more_data(scores: str, eval_fraction: float, seed: int, out: Path) -> None:
    """``out/train-scores.jsonl`` (the rated reviews + the demo's training split) and ``out/eval-scores.jsonl``
    (the demo's held-out split, the same 48 responses as the tuned run's)."""
    lines = [line for line in Path(scores).read_text().splitlines(keepends=True) if line.strip()]
    records = load_score_records(scores)
    _, held = split_by_prompt(records, eval_fraction, seed)
    held_sources = {r.source for r in held}
    extra = [line for line in (out / "rt-export" / "scores.jsonl").read_text().splitlines(keepends=True) if line.strip()]
    (out / "train-scores.jsonl").write_text("".join(extra + [x for r, x in zip(records, lines) if r.source not in held_sources]))
    (out / "eval-scores.jsonl").write_text("".join(x for r, x in zip(records, lines) if r.source in held_sources))


def main() -> None:
    import sys

    if sys.argv[1:2] == ["more-data"]:  # more-data SFT SAMPLE_PROMPTS EVAL_PROMPTS OUT
        more_data_files(*sys.argv[2:5], Path(sys.argv[5]))
        return
    if sys.argv[1:2] == ["merge-more-data"]:  # merge-more-data SCORES OUT (eval fraction 0.25, seed 0)
        merge_more_data(sys.argv[2], 0.25, 0, Path(sys.argv[3]))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", required=True)
    p.add_argument("--scores", required=True)
    p.add_argument("--run", required=True, type=Path)
    p.add_argument("--pool", required=True, help="candidates of held-out prompts, at least --n per prompt")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--out", default="aspects-demo.json")
    args = p.parse_args()
    scorers = default_aspect_scorers()
    result = {"ceiling": ceiling(args.db, args.scores, args.run, scorers),
              "best_of_n": best_of_n(args.pool, args.run, args.n, scorers)}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("aspect | panel α | ceiling √ρ | scorer r | RM Pearson | RM Spearman")
    for name, m in result["ceiling"].items():
        if not name.startswith("_"):
            print(f"{name} | {m['alpha_interval']:.3f} | {m['ceiling_sqrt_reliability']:.3f} | {m['scorer_pearson']:.3f} | "
                  f"{m['rm_pearson']:.3f} | {m['rm_spearman']:.3f}")
    print(f"\nbest-of-{args.n} on {result['best_of_n']['_prompts']} held-out prompts | quality | relevance | safety")
    for label, m in result["best_of_n"].items():
        if not label.startswith("_"):
            cells = [f"{m[a]:.4f}" + (f" ({m[a + '_gain']:+.4f} ± {m[a + '_gain_se']:.4f})" if a + "_gain" in m else "")
                     + (f" ± {m[a + '_se']:.4f}" if a + "_se" in m else "") for a in ("quality", "relevance", "safety")]
            print(f"{label} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
