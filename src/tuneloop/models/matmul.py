"""The linear layers' matmul on CPU: torch's own (MKL) or oneDNN's, whichever this CPU runs faster.

torch runs an fp32 ``F.linear`` on CPU through MKL, whose kernels are chosen by CPU vendor: on AMD
CPUs with AVX-512 (e.g. EPYC Zen 4/5) MKL runs its AVX2 code, half the vector width. oneDNN, which torch
ships as well, picks its kernels by instruction set. Which one is faster depends on the CPU and on the
number of rows, so the choice is made apart for two regimes: matmuls of at most ``SMALL_ROWS`` rows (the
decode engine's steps) and larger ones (prefill, teacher forcing, the training forwards and backwards).
Measured with 2 threads, every SmolLM2-135M weight shape once:

- 2-core AMD EPYC family 26 (AVX-512): oneDNN 2.0-2.3× the GFLOP/s of ``F.linear`` at 1 to 370 rows
  (2048² matmul 233 → 502 GFLOP/s): oneDNN in both regimes.
- 2-core AMD EPYC family 25 (AVX2): oneDNN 1.1-1.8× at 8-32 rows, but 0.8-1.1× at 360-1024 rows and
  slower on the backward's transposed weights; a LoRA forward + backward of SmolLM2 on 4 × 140 tokens
  took 5.9 s on oneDNN against 3.9 s on MKL: oneDNN for the decode steps only (``SPLIT``).

Which one runs is decided once per process (``linear_backend``): ``TUNELOOP_LINEAR=torch``, ``onednn``
or ``onednn-small`` in the environment, or by default (``auto``) a short measurement of both (~0.1 s,
~0.5 s with the training regime; see ``measure_speedup``), oneDNN kept in a regime only when it is at
least ``MIN_SPEEDUP`` (training: ``MIN_TRAINING_SPEEDUP``, and only on an AVX-512 CPU) faster there and
the run has one process (see ``linear_backend``). Results differ from torch's in the
last bits of fp32 (another summation order), as two BLAS libraries do.

``linear(x, weight, bias)`` is ``F.linear`` on the chosen backend for its number of rows, with autograd
(the backward's two matmuls on oneDNN too); ``FastLinear`` is a torch-function mode that sends every
eligible ``F.linear`` (an fp32 CPU tensor and weight: transformers' and peft's ``nn.Linear`` layers)
through it. The training loops and ``tuneloop eval`` run inside it for the length of the run
(``with_fast_linear``) when the large regime is on oneDNN; the decode engine calls ``linear`` directly.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import os
import threading
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.overrides import TorchFunctionMode

MIN_SPEEDUP = 1.25  # oneDNN must be this much faster than torch's matmul to be chosen by ``auto``
# ... and this much in the training regime, whose measurement on one synthetic layer overstates oneDNN:
# on the AVX2 CPU of the docstring it read 1.06-1.30 (128-256 rows) where a LoRA forward + backward ran
# 1.5× slower on oneDNN; on the AVX-512 one oneDNN is 2.0-2.3× there.
MIN_TRAINING_SPEEDUP = 1.5
SMALL_ROWS = 64  # matmuls of at most this many rows (decode steps) are chosen apart from larger ones


class LinearBackend(str, enum.Enum):
    TORCH = "torch"  # torch's matmul (MKL) for every call
    ONEDNN = "onednn"  # oneDNN for every eligible call
    SPLIT = "onednn-small"  # oneDNN up to SMALL_ROWS rows (the decode steps), torch's above

    def onednn_for(self, rows: int) -> bool:
        return self is LinearBackend.ONEDNN or (self is LinearBackend.SPLIT and rows <= SMALL_ROWS)

    def describe(self) -> str:
        return {LinearBackend.TORCH: "torch's matmul (MKL)", LinearBackend.ONEDNN: "oneDNN",
                LinearBackend.SPLIT: f"oneDNN up to {SMALL_ROWS} rows (decode steps), MKL above"}[self]


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def has_avx512() -> bool:
    """Whether torch's CPU kernels run AVX-512 code on this CPU."""
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T (+ bias) by oneDNN; ``weight`` may be a transposed view (no copy is made)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _best_time(fn, repeats: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def measure_speedup(rows: int = 32, inputs: int = 1024, outputs: int = 4096, backward: bool = False) -> float:
    """torch's time / oneDNN's time for one (rows, inputs) × (outputs, inputs)ᵀ fp32 matmul, best of 5; with
    ``backward``, the sum over a training layer's two matmuls (y = x Wᵀ and the backward's dx = dy W on the
    transposed weight) in both directions (inputs → outputs and back), best of 3 each."""
    generator = torch.Generator().manual_seed(0)
    shapes = [(inputs, outputs), (outputs, inputs)] if backward else [(inputs, outputs)]
    repeats = 3 if backward else 5
    torch_s = onednn_s = 0.0
    with torch._C.DisableTorchFunction():  # torch's own F.linear, even inside a FastLinear mode
        for n_in, n_out in shapes:
            x = torch.randn(rows, n_in, generator=generator)
            weight = torch.randn(n_out, n_in, generator=generator)
            pairs = [(x, weight)]
            if backward:
                pairs.append((torch.randn(rows, n_out, generator=generator), weight.t()))
            for a, w in pairs:
                torch_s += _best_time(lambda a=a, w=w: F.linear(a, w), repeats)
                onednn_s += _best_time(lambda a=a, w=w: _onednn_linear(a, w), repeats)
    return torch_s / onednn_s


@functools.cache
def linear_backend() -> LinearBackend:
    """The backend of this process: ``TUNELOOP_LINEAR`` (torch, onednn, onednn-small or auto, the
    default). auto measures the decode regime (32 rows, forward) and, where oneDNN wins there and the CPU
    has AVX-512, the training regime (128 rows, forward and backward)."""
    choice = os.environ.get("TUNELOOP_LINEAR", "").strip().lower() or "auto"
    if choice not in ("auto", *(b.value for b in LinearBackend)):
        raise ValueError(f"TUNELOOP_LINEAR must be auto, torch, onednn or onednn-small, got {choice!r}")
    if choice == "torch" or not onednn_available():
        if choice not in ("torch", "auto"):
            raise ValueError(f"TUNELOOP_LINEAR={choice}, but this torch build has no oneDNN "
                             "(torch.backends.mkldnn)")
        return LinearBackend.TORCH
    if choice != "auto":
        return LinearBackend(choice)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Multi-process (torchrun) runs stay on torch's matmul: with oneDNN, 2-process CPU runs under gloo
        # aborted at exit in 3 of 8 rounds of the multi-process tests in one session and in 1 of 52 tiny-SFT
        # rounds in another ("terminate called without an active exception", exit -6, in C++ teardown after
        # the last step); with torch's, 0 of 6. Cause not found yet.
        return LinearBackend.TORCH
    if measure_speedup() < MIN_SPEEDUP:
        return LinearBackend.TORCH
    # The training regime only where MKL can fall short at every size (its AVX2 code on an AVX-512 CPU):
    # on an AVX2 CPU both run AVX2 kernels, and a timing taken under load read 1.3-1.8 there (idle:
    # 1.06-1.30) where the model's training ran 1.5× slower on oneDNN.
    if has_avx512() and measure_speedup(rows=128, backward=True) >= MIN_TRAINING_SPEEDUP:
        return LinearBackend.ONEDNN
    return LinearBackend.SPLIT


def _eligible(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """fp32 dense CPU tensors of torch's own type (not DTensor or other subclasses, not quantized), a 2-D
    weight whose inputs match x's last dimension, at least one row: anything else is left to torch."""
    tensors = (x, weight) if bias is None else (x, weight, bias)
    return (all(type(t) is torch.Tensor or type(t) is torch.nn.Parameter for t in tensors)
            and all(t.device.type == "cpu" and t.dtype == torch.float32 and t.layout == torch.strided for t in tensors)
            and weight.dim() == 2 and x.dim() >= 1 and x.shape[-1] == weight.shape[1] and x.numel() > 0
            and (bias is None or bias.shape == (weight.shape[0],)))


class _OneDNNLinear(torch.autograd.Function):
    """y = x Wᵀ + b with every matmul on oneDNN: dx = dy W, dW = dyᵀ x, db = Σ dy over rows."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        """x (N, in) 2-D: oneDNN returns a view for more dimensions, and an output that is a view made
        inside a Function could not be modified in place (``linear`` reshapes around it instead)."""
        # Only what the backward needs: a frozen weight (LoRA's base layers) keeps no input alive.
        weight_grad, input_grad = weight.requires_grad, x.requires_grad
        ctx.save_for_backward(x.contiguous() if weight_grad else None, weight if input_grad else None)
        ctx.has_bias = bias is not None
        return _onednn_linear(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = _onednn_linear(grad, weight.t())
        if ctx.needs_input_grad[1]:
            grad_weight = _onednn_linear(grad.t(), x.t())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)
        return grad_x, grad_weight, grad_bias


def _use_onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """oneDNN for this call: a CPU input (a GPU run never measures), eligible tensors, a backend that sends
    this many rows to oneDNN."""
    if x.device.type != "cpu" or (backend := linear_backend()) is LinearBackend.TORCH:
        return False
    return _eligible(x, weight, bias) and backend.onednn_for(x.numel() // x.shape[-1])


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` on this process's backend (oneDNN for eligible tensors when ``linear_backend`` says so)."""
    if _use_onednn(x, weight, bias):
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
            rows = _OneDNNLinear.apply(x.reshape(-1, x.shape[-1]), weight, bias)
            return rows.view(*x.shape[:-1], weight.shape[0])
        return _onednn_linear(x, weight, bias)
    return F.linear(x, weight, bias)


def add_linear_(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """out += x Wᵀ in place (no autograd: the decode engine's residual adds); ``out``."""
    if _use_onednn(x, weight, None):
        return out.add_(_onednn_linear(x, weight))
    return out.addmm_(x, weight.t())


class FastLinear(TorchFunctionMode):
    """Sends ``F.linear`` calls through ``linear`` (every other torch function runs unchanged)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            return _linear_call(*args, **kwargs)
        return func(*args, **kwargs)


def _linear_call(input, weight, bias=None):  # noqa: A002  (F.linear's own argument names)
    return linear(input, weight, bias)


_ACTIVE = threading.local()  # .depth: fast_linear() blocks open in this thread


@contextlib.contextmanager
def fast_linear() -> Iterator[LinearBackend]:
    """Within the block, this thread's ``F.linear`` calls go through ``linear`` (a ``FastLinear`` mode),
    when the backend is oneDNN for every row count and no GPU is in use (a ``SPLIT`` backend would send
    the training forwards' many rows to torch anyway: no mode, no per-op dispatch); nested blocks add
    nothing. Yields the backend."""
    backend = LinearBackend.TORCH if torch.cuda.is_available() else linear_backend()
    depth = getattr(_ACTIVE, "depth", 0)
    _ACTIVE.depth = depth + 1
    try:
        with FastLinear() if backend is LinearBackend.ONEDNN and depth == 0 else contextlib.nullcontext():
            yield backend
    finally:
        _ACTIVE.depth = depth


def with_fast_linear(fn):
    """Decorator: run ``fn`` inside ``fast_linear()`` (the training loops' and ``tuneloop eval``'s entry
    points: the mode lasts as long as the run, and the backend is printed once per process)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with fast_linear() as backend:
            _announce(backend)
            return fn(*args, **kwargs)
    return wrapper


@functools.cache
def _announce(backend: LinearBackend) -> None:
    if backend is not LinearBackend.TORCH:
        print(f"[tuneloop] linear layers on {backend.describe()} (faster than torch's MKL matmul there on "
              "this CPU; TUNELOOP_LINEAR=torch or onednn to force one)", flush=True)
