"""The speed half of the RL benches (``ppo_vs_trl.py``, ``grpo_vs_trl.py``): each tool in its own child
process (its own peak RSS), episodes/s over rounds 2.., where each tool's round goes (sampling and the
rest, the peer's sampler timed with ``timed_calls``), the result table and the exit status."""

from __future__ import annotations

import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args, worker: str, script: str) -> dict:
    """Run ``script`` as one worker in its own process; returns its JSON (with its peak RSS)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        argv, skip_next = [], False
        for a in sys.argv[1:]:  # the parent's arguments, less --json (the children write to --out)
            if not skip_next and not a.startswith("--json"):
                argv.append(a)
            skip_next = a == "--json"
        subprocess.run([sys.executable, script, *argv, "--worker", worker, "--out", out.name], check=True)
        return json.loads(Path(out.name).read_text())


def episodes_per_s(episodes: int, rounds: int, ends: list[float]) -> float:
    """Episodes per second from the end of round 1 to the end of the last round."""
    assert len(ends) == rounds, f"{len(ends)} round ends for {rounds} rounds"
    return episodes * (rounds - 1) / (ends[-1] - ends[0])


def print_speed(results: dict, title: str, peer: str, rounds: int) -> None:
    """The result table: speed and memory of both tools, their ratios, the agreement rows, the load."""
    results["load_avg_end"] = os.getloadavg()
    print(f"\n| {title} | tuneloop | {peer} | tuneloop / trl |\n|---|---|---|---|")
    if "tuneloop" in results and "trl" in results:
        ours, theirs = results["tuneloop"], results["trl"]
        results["ratio_episodes_per_s"] = ours["episodes_per_s"] / theirs["episodes_per_s"]
        results["ratio_peak_rss"] = ours["peak_rss_mb"] / theirs["peak_rss_mb"]
        print(f"| episodes/s (rounds 2–{rounds}) | {ours['episodes_per_s']:.3f} | {theirs['episodes_per_s']:.3f} "
              f"| {results['ratio_episodes_per_s']:.2f}× |")
        print(f"| peak RSS (MB) | {ours['peak_rss_mb']:.0f} | {theirs['peak_rss_mb']:.0f} | "
              f"{results['ratio_peak_rss']:.2f}× |")
        print(f"| mean response length per round | {[round(x, 1) for x in ours['mean_length']]} | "
              f"{[round(x, 1) for x in theirs['mean_length']]} | |")
        if "generate_s" in ours and "generate_s" in theirs:
            print_generation_bound(results, rounds)
    for key, v in results.get("agreement", {}).items():
        if isinstance(v, dict):
            print(f"| agreement: {key} | {v['tuneloop']:.7f} | {v['trl']:.7f} | |Δ| {v['abs_diff']:.1e} |")
    print(f"load average: start {tuple(round(x, 2) for x in results['load_avg_start'])}, "
          f"end {tuple(round(x, 2) for x in results['load_avg_end'])}; torch threads {results['threads']}")


def timed_calls(fn, calls: list[tuple[float, float]]):
    """``fn`` wrapped to append (end time, seconds) of each call to ``calls`` (a peer's sampler)."""
    def timed(*args, **kwargs):
        started = time.perf_counter()
        out = fn(*args, **kwargs)
        ended = time.perf_counter()
        calls.append((ended, ended - started))
        return out
    return timed


def seconds_per_round(calls: list[tuple[float, float]], ends: list[float]) -> list[float]:
    """The seconds of ``calls`` (from ``timed_calls``) that ended in each round, rounds ending at ``ends``."""
    return [sum(seconds for end, seconds in calls if lo < end <= hi) for lo, hi in zip([float("-inf"), *ends], ends)]


def round_split(tool: dict) -> tuple[float, float]:
    """(sampling, everything else) in seconds per round, means over rounds 2.. (the episodes/s window)."""
    ends, generate = tool["round_ends"], tool["generate_s"][1:]
    rounds = [b - a for a, b in itertools.pairwise(ends)]
    return sum(generate) / len(generate), sum(r - g for r, g in zip(rounds, generate)) / len(rounds)


def print_generation_bound(results: dict, rounds: int) -> None:
    """Where each tool's round goes, and the ratio tuneloop would reach if its sampling took no time at all:
    TRL's round over tuneloop's round less its sampling (the log-prob, reward and update passes)."""
    (ours_gen, ours_rest), (their_gen, their_rest) = round_split(results["tuneloop"]), round_split(results["trl"])
    results["round_split_s"] = {"tuneloop": [ours_gen, ours_rest], "trl": [their_gen, their_rest]}
    results["ratio_bound_free_sampling"] = (their_gen + their_rest) / ours_rest
    print(f"| sampling, s per round (rounds 2–{rounds}) | {ours_gen:.1f} | {their_gen:.1f} | "
          f"{their_gen / ours_gen:.2f}× faster |")
    print(f"| the rest of the round, s | {ours_rest:.1f} | {their_rest:.1f} | {their_rest / ours_rest:.2f}× faster |")
    print(f"| episodes/s ratio if tuneloop sampled in no time | | | ≤ {results['ratio_bound_free_sampling']:.2f}× |")


def run_worker(args, workers: dict) -> int:
    """In a child process: run the worker named by ``--worker``, write its JSON (with its peak RSS) to ``--out``."""
    started = time.perf_counter()
    if args.worker == "trl" and args.trl_same_kernels:
        from sft_measure import same_kernels  # bench/

        same_kernels()
    result = workers[args.worker](args)
    result.update(peak_rss_mb=peak_rss_mb(), wall_s=time.perf_counter() - started)
    Path(args.out).write_text(json.dumps(result, default=str))
    return 0


def compare(args, script: str, episodes: int, title: str, peer: str, agreed: str) -> int:
    """In the parent: the agreement child, then one speed child per tool, the table; exit 1 if the losses
    disagree by more than 1e-5."""
    results = {"args": vars(args), "threads": torch.get_num_threads(), "load_avg_start": os.getloadavg()}
    ok = True
    if args.skip != "agreement":
        agreement = results["agreement"] = child(args, "agreement", script)
        ok = all(v["abs_diff"] <= 1e-5 for k, v in agreement.items() if k.startswith("loss"))
    if args.skip != "speed":
        for tool in ("tuneloop", "trl"):
            results[tool] = child(args, tool, script)
            results[tool]["episodes_per_s"] = episodes_per_s(episodes, args.rounds, results[tool]["round_ends"])
    print_speed(results, title, peer, args.rounds)
    if "agreement" in results:
        print(f"{agreed} agree to 1e-5 on identical weights and rollouts: {'yes' if ok else 'NO'}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0 if ok else 1
