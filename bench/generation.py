"""Generation speed: transformers' generate() against tuneloop's engine, side by side in one run.

Run (from the repository root):

    HF_HUB_OFFLINE=1 python bench/generation.py           # SmolLM2-135M, fp32, parts 1-2 (10 min at 1 thread, load 5-7)
    HF_HUB_OFFLINE=1 python bench/generation.py --demo-stage   # also part 3, the demo's sampling stage
    HF_HUB_OFFLINE=1 python bench/generation.py --model tiny-llama --batches 1,8 --skip-sample   # smoke run
    python bench/generation.py --json results.json

Parts, each on the same model, prompts and settings for every backend, one after another:

1. ``tuneloop sample``'s workload (the issue's acceptance command): the first 16 bundled review prompts
   (``bundled:review-prompts``), K = 4 candidates each, 48 new tokens at most, batch 32, temperature 1,
   top-p 1, top-k 0, stopping at EOS. ``transformers`` is the code path ``sample`` used before the
   engine: prompts × candidates sorted by length, cut into chunks of 32, left-padded,
   ``model.generate(do_sample=True, output_logits=True)`` per chunk; ``hf`` is tuneloop's hf backend;
   ``tuneloop`` the engine. Printed: tokens/s (generated tokens, stop tokens included, ÷ wall time of the
   call) and the engine's ratio to transformers.
2. Throughput at batch 1, 8, 32, 64 (``--batches``) with every sequence forced to 48 new tokens (no
   stop token; transformers: ``min_new_tokens``), one candidate per prompt, plus K = 4 at batch 32:
   tokens/s per backend, and the engine's share of the FLOP limit: model FLOPs per generated token
   (2 × the parameters of the matmuls, the output head included; attention over the cache is not
   counted) × tokens/s ÷ the measured fp32 matmul peak (best 2048² matmul in this process, of ``torch.mm``
   and of oneDNN's: on AMD CPUs with AVX-512 oneDNN's is ~2× MKL's, and the engine uses it there).
   ``flop_share`` counts the whole call with generated tokens as the only work (the prefill of the
   prompts, ~90 tokens each against 48 generated, is time without counted work);
   ``decode_flop_share`` the engine's decode steps alone (tokens they produced ÷ their time);
   ``task_flop_share`` counts the prompts' tokens as work too (each prompt once, whatever K: the same
   work for both backends, which transformers does K times) -- the model FLOPs utilisation of the task.
   For K = 1 a ceiling from the matmuls alone (``matmul_ceiling``): the same two shares if the call did
   nothing but the engine's matmuls (the prefill's on the prompts' tokens and the head at their last
   tokens, then one B-row pass for each further token) at this process's measured speed of those shapes.
   No engine running this model on these kernels can pass it; the gap between a share and its ceiling is
   the engine's own overhead (attention, sampling, norms, Python).
3. (``--demo-stage``) the demo's ``sample`` stage settings (src/tuneloop/demo.yaml): 48 review prompts
   × 4 candidates, ≤ 40 new tokens, T = 1, top-p 0.95, through ``generate()``: the stage before (the
   ``hf`` backend at batch 16) against the stage now (the engine at batch 64), and both backends at
   batch 64 (the engine at 16 is printed too). The engine's samples do not depend on the batch size.

The machine's load changes everything on a shared 2-core CPU: the load average is printed with every
row, and numbers measured under load are labelled as such in docs/perf/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time

import torch
from sft_measure import matmul_peak_gflops  # bench/

from tuneloop.models.llama_decode import fused_layer_weights, shared_prefix_length, supports_llama_fast_path
from tuneloop.models.matmul import linear, linear_backend

PROMPTS = "bundled:review-prompts"
DEMO_BATCH, DEMO_BATCH_BEFORE = 64, 16  # the demo's sample-stage batch size (src/tuneloop/demo.yaml), and before


def load(model_name: str):
    from tuneloop.models import ModelConfig, load_causal_lm

    return load_causal_lm(ModelConfig(name=model_name), trainable=False)


def review_prompts(tokenizer, count: int) -> list[list[int]]:
    from tuneloop.data import load_records
    from tuneloop.data.chat import render_prompt
    from tuneloop.data.formats import prompt_messages

    records = load_records(PROMPTS)
    return [render_prompt(tokenizer, prompt_messages(r)) for r in records[:count]]


def matmul_flops_per_token(model) -> int:
    """2 × the weights every generated token multiplies (the blocks' linear layers and the output head)."""
    return 2 * sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


@torch.no_grad()
def transformers_generate(model, tokenizer, prompts, num_candidates: int, max_new_tokens: int, batch_size: int,
                          forced: bool, top_p: float = 1.0, seed: int = 0) -> int:
    """The pre-engine code path: fixed chunks, transformers' own sampling; returns generated tokens."""
    from tuneloop.data.padding import pad_rows, padding_mask
    from tuneloop.generation import stop_token_ids

    stops = stop_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id
    jobs = sorted(((i, k) for i in range(len(prompts)) for k in range(num_candidates)),
                  key=lambda job: (-len(prompts[job[0]]), job))
    generated = 0
    for chunk_index, start in enumerate(range(0, len(jobs), batch_size)):
        chunk = jobs[start:start + batch_size]
        ids = pad_rows([prompts[i] for i, _ in chunk], pad, "left")
        mask = padding_mask([len(prompts[i]) for i, _ in chunk], "left")
        width = ids.shape[1]
        torch.manual_seed(seed * 1_000_003 + chunk_index)
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=top_p, top_k=0,
                             max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens if forced else None,
                             eos_token_id=stops, pad_token_id=pad, output_logits=True, return_dict_in_generate=True)
        new = out.sequences[:, width:]
        for row in new.tolist():  # tokens up to and including the first stop token
            end = next((j for j, t in enumerate(row) if t in stops), None)
            generated += len(row) if end is None or forced else end + 1
    return generated


def run_backend(backend: str, model, tokenizer, prompts, num_candidates: int, max_new_tokens: int,
                batch_size: int, forced: bool, top_p: float = 1.0) -> dict:
    from tuneloop.generation import SamplingConfig, generate
    from tuneloop.generation.engine import EngineStats, generate_engine

    started = time.perf_counter()
    stats = None
    if backend == "transformers":
        tokens = transformers_generate(model, tokenizer, prompts, num_candidates, max_new_tokens, batch_size, forced,
                                       top_p)
    else:
        cfg = SamplingConfig(temperature=1.0, top_p=top_p, top_k=0, max_new_tokens=max_new_tokens,
                             batch_size=batch_size, backend=backend)
        if backend == "tuneloop":
            stats = EngineStats()
            result = generate_engine(model, tokenizer, prompts, cfg, num_candidates, 0, 0, stats=stats,
                                     log=lambda line: None, stop_ids=[] if forced else None)
        else:
            if forced:
                raise ValueError("forced-length runs compare transformers and tuneloop only")
            result = generate(model, tokenizer, prompts, cfg, num_candidates, seed=0)
        tokens = sum(len(g.token_ids) for per in result for g in per)
    seconds = time.perf_counter() - started
    out = {"backend": backend, "tokens": tokens, "seconds": round(seconds, 2), "tok_s": round(tokens / seconds, 1),
           "load": round(os.getloadavg()[0], 1)}
    if stats is not None:
        out.update(prefill_s=round(stats.prefill_seconds, 2), decode_s=round(stats.decode_seconds, 2),
                   decode_steps=stats.decode_steps, mean_rows=round(stats.decoded_rows / max(stats.decode_steps, 1), 1),
                   decode_tok_s=round(stats.decoded_rows / max(stats.decode_seconds, 1e-9), 1))
    return out


def matmul_seconds(layers: list[tuple[torch.Tensor, ...]], head: torch.Tensor, rows: int, head_rows: int,
                   repeats: int = 5) -> float:
    """Best wall time of the matmuls alone of one pass of ``rows`` tokens through the blocks and ``head_rows``
    through the output head, as the engine runs them (``layers``: its fused q|k|v and gate|up weights,
    ``fused_layer_weights``; ``models.matmul.linear``): no attention, norms, rotary or sampling."""
    _, qkv, o, _, gate_up, down = layers[0]
    x, attended = torch.randn(rows, qkv.shape[1]), torch.randn(rows, o.shape[1])
    h = torch.randn(rows, down.shape[1])
    last = torch.randn(head_rows, head.shape[1])
    best = float("inf")
    with torch.no_grad(), torch._C.DisableTorchFunction():
        for _ in range(repeats + 1):
            started = time.perf_counter()
            for _, qkv, o, _, gate_up, down in layers:
                linear(x, qkv), linear(attended, o), linear(x, gate_up), linear(h, down)
            linear(last, head)
            best = min(best, time.perf_counter() - started)
    return best


def matmul_ceiling(layers: list[tuple[torch.Tensor, ...]], head: torch.Tensor, prompts: list[list[int]],
                   new_tokens: int, limit: float) -> dict:
    """The share of the FLOP limit that no engine computing this model with these kernels can pass, from the
    measured matmul time alone, for one candidate per prompt and every row forced to ``new_tokens``:
    ``decode`` = B = len(prompts) tokens ÷ one B-row pass; ``call`` = B × ``new_tokens`` tokens ÷ (the
    prefill's matmuls: the prompts' tokens through the blocks, the prefix the engine runs once for all of
    them (``shared_prefix_length``) counted once, the head at each prompt's last token, which gives the
    first new token; then ``new_tokens`` - 1 B-row decode passes)."""
    rows, shared = len(prompts), shared_prefix_length(prompts)
    prompt_tokens = shared + sum(len(p) - shared for p in prompts)
    step = matmul_seconds(layers, head, rows, rows)
    prefill = matmul_seconds(layers, head, prompt_tokens, rows, repeats=2)
    return {"decode": round(rows / step / limit, 3),
            "call": round(rows * new_tokens / (prefill + (new_tokens - 1) * step) / limit, 3),
            "step_matmul_ms": round(step * 1e3, 1), "prefill_matmul_s": round(prefill, 2),
            "prefill_tokens": prompt_tokens}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def compare(name: str, rows: list[dict], limit: float, table: list[dict], task_tokens: int | None = None) -> dict:
    """One table line from the rows of one workload (transformers or hf first, tuneloop last)."""
    base, engine = rows[0], rows[-1]
    line = {"workload": name, "base": base["backend"], "base_tok_s": base["tok_s"], "tok_s": engine["tok_s"],
            "ratio": round(engine["tok_s"] / base["tok_s"], 2), "prefill_s": engine.get("prefill_s"),
            "decode_s": engine.get("decode_s"), "flop_share": round(engine["tok_s"] / limit, 3),
            "decode_flop_share": round(engine["decode_tok_s"] / limit, 3) if "decode_tok_s" in engine else None,
            "load": engine["load"]}
    if task_tokens is not None:
        line["task_flop_share"] = round(task_tokens / engine["seconds"] / limit, 3)
    table.append(line)
    for row in rows:
        print(f"   {name}: {row}", flush=True)
    return line


def print_table(table: list[dict], limit: float) -> None:
    print(f"\n| workload | reference tok/s | tuneloop tok/s | ratio | tuneloop prefill s / decode s | share of the "
          f"FLOP limit ({limit:.0f} tok/s): whole call / decode steps | the same from the matmuls alone "
          "(a ceiling) | load avg |")
    print("|---|---|---|---|---|---|---|---|")
    for line in table:
        decode = f"{line['decode_flop_share']:.1%}" if line["decode_flop_share"] is not None else "-"
        bound = line.get("ceiling")
        ceiling = f"{bound['call']:.1%} / {bound['decode']:.1%}" if bound else "-"
        print(f"| {line['workload']} | {line['base_tok_s']} ({line['base']}) | {line['tok_s']} | {line['ratio']:.2f}× | "
              f"{line['prefill_s']} / {line['decode_s']} | {line['flop_share']:.1%} / {decode} | {ceiling} | "
              f"{line['load']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batches", default="1,8,32,64", help="batch sizes of the forced-length part")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: as configured)")
    parser.add_argument("--skip-sample", action="store_true", help="skip part 1 (the sample command's workload)")
    parser.add_argument("--skip-throughput", action="store_true", help="skip part 2 (forced-length throughput)")
    parser.add_argument("--demo-stage", action="store_true", help="run part 3 (the demo's sampling stage, hf vs engine)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model, tokenizer = load(args.model)
    report = {"model": args.model, "threads": torch.get_num_threads(), "uptime_before": uptime()}
    print(f"[bench] {args.model}, {torch.get_num_threads()} threads; {report['uptime_before']}")
    peak = matmul_peak_gflops()
    flops = matmul_flops_per_token(model)
    limit = peak["gflops"] * 1e9 / flops
    report.update(peak_gflops=round(peak["gflops"], 1), peak_by_backend=peak["by_backend"], flops_per_token=flops,
                  flop_limit_tok_s=round(limit, 1), linear_backend=linear_backend().value)
    print(f"[bench] fp32 matmul peak {peak['gflops']:.1f} GFLOP/s ({peak['backend']}, median "
          f"{peak['median_gflops']:.1f}; best of each: {peak['by_backend']}); {flops / 1e6:.1f} MFLOP per token → "
          f"FLOP limit {limit:.0f} tok/s; the engine's linear layers run on {linear_backend().value}")
    table: list[dict] = []

    if not args.skip_sample:
        prompts = review_prompts(tokenizer, 16)
        print(f"\n[bench] 1. sample workload: 16 prompts × 4 candidates, ≤ {args.max_new_tokens} new tokens, "
              "batch 32, T=1, top-p 1, top-k 0, stop at EOS", flush=True)
        rows = [run_backend(b, model, tokenizer, prompts, 4, args.max_new_tokens, 32, forced=False)
                for b in ("transformers", "hf", "tuneloop")]
        report["sample"] = compare("`sample` 16 × 4, batch 32", rows, limit, table)

    if not args.skip_throughput:
        prompts = review_prompts(tokenizer, 64)
        print(f"\n[bench] 2. throughput, every sequence forced to {args.max_new_tokens} new tokens", flush=True)
        report["throughput"] = []
        # the engine's weights, for the matmuls-alone ceiling (built once: a copy of every block's weights)
        fast_path = supports_llama_fast_path(model)
        fused = (fused_layer_weights(model), model.lm_head.weight) if fast_path else None
        cases = [(int(b), 1) for b in args.batches.split(",")] + [(32, 4)]
        for batch, candidates in cases:
            chosen = prompts[:max(1, batch // candidates)]
            rows = [run_backend(backend, model, tokenizer, chosen, candidates, args.max_new_tokens, batch, forced=True)
                    for backend in ("transformers", "tuneloop")]
            task_tokens = rows[-1]["tokens"] + sum(len(p) for p in chosen)
            name = f"forced {args.max_new_tokens}, batch {batch}" + (f", K = {candidates}" if candidates > 1 else "")
            line = compare(name, rows, limit, table, task_tokens)
            if fused is not None and candidates == 1:
                line["ceiling"] = matmul_ceiling(*fused, chosen, args.max_new_tokens, limit)
                print(f"   {name}: matmuls alone: {line['ceiling']}", flush=True)
            report["throughput"].append(line)

    if args.demo_stage:
        prompts = review_prompts(tokenizer, 48)
        print(f"\n[bench] 3. the demo's sample stage: 48 prompts × 4, ≤ 40 new tokens, T=1, top-p 0.95, batch "
              f"{DEMO_BATCH} (before: batch {DEMO_BATCH_BEFORE})", flush=True)
        before = run_backend("hf", model, tokenizer, prompts, 4, 40, DEMO_BATCH_BEFORE, forced=False, top_p=0.95)
        rows = [run_backend(b, model, tokenizer, prompts, 4, 40, batch, forced=False, top_p=0.95)
                for b, batch in (("hf", DEMO_BATCH), ("tuneloop", DEMO_BATCH_BEFORE), ("tuneloop", DEMO_BATCH))]
        report["demo_stage"] = compare(f"demo `sample` stage 48 × 4: hf at batch {DEMO_BATCH_BEFORE} (the stage "
                                       f"before) → the engine at batch {DEMO_BATCH}", [before, rows[-1]], limit, table)
        report["demo_stage_same_batch"] = compare(f"demo `sample` stage 48 × 4, both at batch {DEMO_BATCH}",
                                                  [rows[0], rows[-1]], limit, table)
        report["demo_stage_batch_before"] = compare(f"demo `sample` stage 48 × 4, both at batch {DEMO_BATCH_BEFORE}",
                                                    [before, rows[1]], limit, table)

    report["uptime_after"] = uptime()
    report["seconds"] = round(time.perf_counter() - started, 1)
    print_table(table, limit)
    print(f"\n[bench] {report['seconds']:.0f} s; {report['uptime_after']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
