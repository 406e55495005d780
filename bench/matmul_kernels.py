"""The two fp32 matmul kernels under tuneloop's linear layers on this CPU (``models/matmul.py``): torch's
(MKL) and oneDNN's, per SmolLM2-135M weight shape and row count, and one LoRA forward + backward of the
model on each, with the choice ``linear_backend()`` makes here. The numbers behind the per-regime choice
(docs/perf/README.md, "The matmul under every linear layer").

Run (from the repository root, on an otherwise idle machine):

    HF_HUB_OFFLINE=1 python bench/matmul_kernels.py            # ~1 min on 2 cores
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F

from tuneloop.models import matmul

SHAPES = [(576, 576), (576, 1536), (1536, 576), (576, 49152)]  # (in, out): q|o, gate|up, down, head


def gflops(fn, flop: float) -> float:
    return flop / matmul._best_time(fn) / 1e9


def shape_table(rows_list: list[int]) -> None:
    print("| rows | (in → out) | forward MKL / oneDNN GFLOP/s | backward dx MKL / oneDNN GFLOP/s |")
    print("|---|---|---|---|")
    generator = torch.Generator().manual_seed(0)
    with torch._C.DisableTorchFunction():
        for rows in rows_list:
            for n_in, n_out in SHAPES:
                x = torch.randn(rows, n_in, generator=generator)
                weight = torch.randn(n_out, n_in, generator=generator)
                dy, flop = torch.randn(rows, n_out, generator=generator), 2 * rows * n_in * n_out
                forward = (gflops(lambda: F.linear(x, weight), flop),
                           gflops(lambda: matmul._onednn_linear(x, weight), flop))
                dx = (gflops(lambda: F.linear(dy, weight.t()), flop),
                      gflops(lambda: matmul._onednn_linear(dy, weight.t()), flop))
                print(f"| {rows} | {n_in} → {n_out} | {forward[0]:.0f} / {forward[1]:.0f} "
                      f"| {dx[0]:.0f} / {dx[1]:.0f} |")


def lora_step_seconds(kernel: str, batch: int, tokens: int, repeats: int = 3) -> float:
    """Mean seconds of one LoRA (r 16, all projections) forward + backward of SmolLM2 on batch × tokens,
    the head on the last 40 positions, every linear layer on ``kernel`` (torch or onednn)."""
    from peft import LoraConfig, get_peft_model

    from tuneloop.models import ModelConfig, load_causal_lm

    os.environ["TUNELOOP_LINEAR"] = kernel
    matmul.linear_backend.cache_clear()
    model, _ = load_causal_lm(ModelConfig(name="smollm2-135m-instruct"), trainable=True)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    ids = torch.randint(0, 49_000, (batch, tokens), generator=torch.Generator().manual_seed(0))

    def step():
        logits = model(input_ids=ids, logits_to_keep=40).logits
        logits.logsumexp(-1).sum().backward()

    with matmul.fast_linear():
        step()
        started = time.perf_counter()
        for _ in range(repeats):
            step()
    return (time.perf_counter() - started) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="8,32,64,360,1024", help="row counts of the per-shape table")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--tokens", type=int, default=140)
    args = p.parse_args()
    print(f"[bench] CPU capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} "
          f"threads; auto chooses: {matmul.linear_backend().describe()}")
    shape_table([int(r) for r in args.rows.split(",")])
    times = {kernel: lora_step_seconds(kernel, args.batch, args.tokens) for kernel in ("torch", "onednn")}
    print(f"\nLoRA forward + backward of SmolLM2 on {args.batch} × {args.tokens} tokens: "
          f"MKL {times['torch']:.2f} s, oneDNN {times['onednn']:.2f} s "
          f"(oneDNN / MKL {times['onednn'] / times['torch']:.2f})")


if __name__ == "__main__":
    main()
