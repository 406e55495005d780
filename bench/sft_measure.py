"""What bench/sft_vs_trl.py measures with: the fp32 matmul peak, a recorder of the model's forward calls
(real tokens, document lengths, head positions), the model-FLOPs count of its docstring, and per-step
timings summarised into tokens/s and MFU."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from itertools import pairwise

import torch


def matmul_peak_gflops(n: int = 2048, repeats: int = 12) -> dict:
    """Best fp32 GFLOP/s of an n×n by n×n matmul (2n³ FLOPs per product), of ``torch.mm`` and of oneDNN's
    matmul (``tuneloop.models.matmul``: on AMD CPUs with AVX-512 MKL runs AVX2 kernels and oneDNN about twice
    as fast): the machine's peak is the faster one; each backend's best under ``by_backend``."""
    from tuneloop.models.matmul import _onednn_linear, onednn_available

    a, b, out = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    backends = {"torch.mm": lambda: torch.mm(a, b, out=out)}
    if onednn_available():
        bt = b.t()  # x @ Wᵀ with W = bᵀ: the same product
        backends["onednn"] = lambda: _onednn_linear(a, bt)
    results = {}
    for name, run in backends.items():
        for _ in range(3):
            run()
        times = []
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(repeats):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
        cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
        times.sort()
        results[name] = {"gflops": 2 * n**3 / times[0] / 1e9, "median_gflops": 2 * n**3 / times[len(times) // 2] / 1e9,
                         "gflops_per_cpu_s": 2 * n**3 * repeats / cpu_s / 1e9, "cpu": cpu_s / wall_s}
    best = max(results, key=lambda name: results[name]["gflops"])
    return {**results[best], "backend": best, "by_backend": {k: round(v["gflops"], 1) for k, v in results.items()},
            "n": n, "threads": torch.get_num_threads()}


def same_kernels() -> str:
    """Route this process's fp32 ``F.linear`` calls through tuneloop's matmul choice (``models/matmul.py``:
    oneDNN where it beats MKL) now, before either tool runs: tuneloop's training loops enter that mode for
    their own run only, so without this TRL would run on MKL and the ratio would measure the matmul
    library. Both tools of an in-process bench then run on the same kernels. Prints and returns the
    backend."""
    from tuneloop.models.matmul import fast_linear

    block = fast_linear()  # open for the rest of the bench process (a script: nothing runs after it)
    backend = block.__enter__().value
    print(f"[bench] both tools' linear layers run on {backend} (tuneloop's choice for this CPU)", flush=True)
    return backend


@dataclass
class Forward:
    """What one training forward call processed."""

    tokens: int  # real (non-padding) tokens
    head_positions: int  # positions whose logits were computed
    trained: int | None  # positions in the loss, when the call shows them (TRL's labels)
    doc_lengths: list[int]  # length of every document in the call (attention is per document)


class ForwardRecorder:
    """Records every top-level causal-LM forward call, whichever tool makes it.

    A global forward hook (not a patch of either tool): it sees the keyword arguments both tools pass
    to ``model(...)`` -- input_ids, attention_mask or position_ids, and tuneloop's ``logits_to_keep`` or
    TRL's ``labels`` for its fused head.
    """

    def __init__(self, pad_id: int | None = None) -> None:
        self.calls: list[Forward] = []
        self.pad_id = pad_id
        self._handle = None

    def __enter__(self):
        from torch.nn.modules.module import register_module_forward_hook

        self._handle = register_module_forward_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def _hook(self, module, args, kwargs, output) -> None:
        if not type(module).__name__.endswith("ForCausalLM") or not module.training:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None or (self.calls and getattr(self, "_last_ids", None) is ids):
            return  # a wrapper (e.g. PeftModelForCausalLM) and its inner model saw the same call
        self._last_ids = ids
        self.calls.append(describe_forward(ids, kwargs, self.pad_id))


def describe_forward(ids: torch.Tensor, kwargs: dict, pad_id: int | None = None) -> Forward:
    """Real tokens, logit positions and document lengths of one forward call.

    Rows with an attention mask are padded rows of one document each. Rows without one are padding-free
    or packed: a document starts where the position id is 0, and a segment made only of ``pad_id``
    tokens is padding at the end of a row (no real document consists only of padding).
    """
    attention_mask, position_ids = kwargs.get("attention_mask"), kwargs.get("position_ids")
    if attention_mask is not None and attention_mask.dim() == 2:
        lengths = [int(n) for n in attention_mask.sum(dim=1).tolist()]
    elif position_ids is not None:
        lengths = []
        for row_ids, row in zip(ids.reshape(-1, ids.shape[-1]), position_ids.reshape(-1, position_ids.shape[-1])):
            starts = (row == 0).nonzero().flatten().tolist() + [row.numel()]
            lengths += [b - a for a, b in pairwise(starts)
                        if pad_id is None or not bool((row_ids[a:b] == pad_id).all())]
    else:
        lengths = [ids.shape[-1]] * ids.shape[0]
    tokens = sum(lengths)
    keep, labels = kwargs.get("logits_to_keep"), kwargs.get("labels")
    trained = int((labels[:, 1:] != -100).sum()) if labels is not None else None
    if isinstance(keep, torch.Tensor):
        head = keep.numel() * ids.shape[0]
    elif isinstance(keep, int) and keep > 0:
        head = min(keep, ids.shape[-1]) * ids.shape[0]
    elif kwargs.get("fused_lm_head") and trained is not None:  # TRL projects only next-token labels != -100
        head = trained
    else:
        head = tokens
    return Forward(tokens, head, trained, lengths)


@dataclass
class FlopModel:
    """Model FLOPs of training (forward + backward) on given tokens; see the module docstring."""

    block_params: int  # N_blocks: linear weights inside the transformer blocks
    d_model: int
    vocab: int
    layers: int
    d_attn: int

    @classmethod
    def from_folder(cls, folder: str) -> FlopModel:
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(folder)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        head = model.get_output_embeddings()
        linear = sum(m.weight.numel() for m in model.modules()
                     if isinstance(m, torch.nn.Linear) and m is not head)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(linear, head.in_features, head.out_features, config.num_hidden_layers,
                   config.num_attention_heads * head_dim)

    def flops(self, tokens: int, trained: int, doc_lengths: list[int]) -> float:
        """Training FLOPs of ``tokens`` real tokens in documents of ``doc_lengths``, ``trained`` of them in the loss."""
        return (6 * self.block_params * tokens + 6 * self.d_model * self.vocab * trained
                + 12 * self.layers * self.d_attn * sum(n * (n + 1) / 2 for n in doc_lengths))


@dataclass
class StepTiming:
    step_s: float  # the tool's own step window (see the docstring)
    wall_s: float  # end of the previous step to the end of this one
    cpu_s: float  # process CPU time over the same wall window
    calls: list[Forward]
    trained: int  # positions in the loss over the step
    loss: float | None = None


@dataclass
class VariantResult:
    name: str
    steps: list[StepTiming]
    warmup: int
    load_avg: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before and after
    notes: dict = field(default_factory=dict)

    @property
    def timed(self) -> list[StepTiming]:
        return self.steps[self.warmup:]

    def summary(self, flop_model: FlopModel, peak_gflops: float, peak_gflops_per_cpu_s: float) -> dict:
        timed = self.timed
        calls = [c for s in timed for c in s.calls]
        tokens, trained = sum(c.tokens for c in calls), sum(s.trained for s in timed)
        lengths = [n for c in calls for n in c.doc_lengths]
        step_s, wall_s = sum(s.step_s for s in timed), sum(s.wall_s for s in timed)
        flops, flops_all = flop_model.flops(tokens, trained, lengths), flop_model.flops(tokens, tokens, lengths)
        losses = [s.loss for s in self.steps if s.loss is not None]
        tail = losses[-5:]
        return {
            "variant": self.name, "timed_steps": len(timed), "tokens": tokens,
            "tokens_per_step": tokens / max(1, len(timed)),
            "trained_fraction": trained / max(1, tokens),
            "logits_computed_fraction": sum(c.head_positions for c in calls) / max(1, tokens),
            "step_s": step_s / max(1, len(timed)), "tokens_per_s": tokens / step_s,
            "wall_tokens_per_s": tokens / wall_s, "gflops": flops / step_s / 1e9,
            "mfu": flops / step_s / 1e9 / peak_gflops, "mfu_head_at_all": flops_all / step_s / 1e9 / peak_gflops,
            "cpu": sum(s.cpu_s for s in timed) / wall_s, "tokens_per_cpu_s": tokens / sum(s.cpu_s for s in timed),
            "mfu_per_cpu_s": flops / sum(s.cpu_s for s in timed) / 1e9 / peak_gflops_per_cpu_s,
            "loss_first": losses[0] if losses else math.nan, "loss_mean": sum(losses) / len(losses) if losses else math.nan,
            "loss_last5": sum(tail) / len(tail) if tail else math.nan, "load_avg": self.load_avg, **self.notes,
        }
