"""The linear layers' matmul backend (models/matmul.py): oneDNN's forward and its three gradients equal
torch's, the torch-function mode reroutes nn.Linear and falls back where oneDNN does not apply, the
environment variable is checked, and the decode engine on oneDNN samples what the transformers forward
(torch's matmul) teacher-forces."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from generation_helpers import assert_sampled_logprobs_are_teacher_forced
from tuneloop.data.chat import render_prompt
from tuneloop.generation import SamplingConfig
from tuneloop.generation.engine import generate_engine
from tuneloop.generation.forward import GenericForward
from tuneloop.models import matmul
from tuneloop.models.llama_decode import LlamaForward

pytestmark = pytest.mark.skipif(not matmul.onednn_available(), reason="this torch build has no oneDNN")


def _ran_on_onednn(t: torch.Tensor) -> bool:
    """The autograd node that made ``t`` (under the views ``linear`` adds) is the oneDNN linear."""
    node = t.grad_fn
    while node is not None and type(node).__name__ == "ViewBackward0":
        node = node.next_functions[0][0]
    return type(node).__name__ == "_OneDNNLinearBackward"


def _leaves(*shapes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=generator).requires_grad_() for s in shapes]


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("x_shape", [(5, 24), (2, 3, 24)])
def test_onednn_forward_and_gradients_equal_torch(backend, with_bias, x_shape):
    assert backend("onednn") is matmul.LinearBackend.ONEDNN
    x, weight, bias = _leaves(x_shape, (16, 24), (16,))
    bias = bias if with_bias else None
    grad_out = torch.randn(*x_shape[:-1], 16, generator=torch.Generator().manual_seed(1))
    expected = F.linear(x, weight, bias)
    expected_grads = torch.autograd.grad(expected, [t for t in (x, weight, bias) if t is not None], grad_out)
    got = matmul.linear(x, weight, bias)
    assert _ran_on_onednn(got)
    got_grads = torch.autograd.grad(got, [t for t in (x, weight, bias) if t is not None], grad_out)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-5)
    for g, e in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-5)


def test_a_slice_of_the_output_can_be_modified_in_place(backend):
    """As TRL's PPO does to its logits (``logits /= temperature`` on a slice): the gradient stays right."""
    backend("onednn")
    x, weight = _leaves((2, 5, 8), (6, 8))

    def loss(fn):
        logits = fn(x, weight)[:, 1:]
        logits /= 0.7
        return logits.square().sum()

    expected = torch.autograd.grad(loss(F.linear), [x, weight])
    assert _ran_on_onednn(matmul.linear(x, weight))
    got = torch.autograd.grad(loss(matmul.linear), [x, weight])
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-5)


def test_a_frozen_weight_gets_no_gradient_and_the_input_does(backend):
    backend("onednn")
    x, weight = _leaves((4, 8), (6, 8))
    weight.requires_grad_(False)
    y = matmul.linear(x, weight)
    assert _ran_on_onednn(y)
    y.square().sum().backward()
    assert weight.grad is None
    torch.testing.assert_close(x.grad, (2 * F.linear(x, weight)) @ weight)


def test_the_mode_reroutes_nn_linear_and_falls_back_where_onednn_does_not_apply(backend):
    backend("onednn")
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(3, 8)
    with matmul.FastLinear():
        y = layer(x)
        keyword = F.linear(input=x, weight=layer.weight, bias=layer.bias)
        double = layer.double()(x.double())  # fp64: torch's own matmul
    assert _ran_on_onednn(y) and _ran_on_onednn(keyword)
    torch.testing.assert_close(keyword, y)
    assert double.dtype == torch.float64 and type(double.grad_fn).__name__ == "AddmmBackward0"
    torch.testing.assert_close(double.float(), y, rtol=1e-6, atol=1e-6)


def test_add_linear_adds_in_place(backend, monkeypatch):
    backend("onednn")
    out, x, weight = (t.detach() for t in _leaves((4, 6), (4, 8), (6, 8)))
    expected = out + x @ weight.t()
    monkeypatch.setattr(torch.Tensor, "addmm_", None)  # torch's path would fail: the sum is oneDNN's
    assert matmul.add_linear_(out, x, weight) is out
    torch.testing.assert_close(out, expected)


def test_what_onednn_does_not_take_goes_to_torch(backend):
    """A 1-D weight, a shape mismatch (torch's own error message) and an empty batch."""
    backend("onednn")
    x = torch.randn(3, 8, requires_grad=True)
    assert matmul.linear(x, torch.randn(8)).shape == (3,)
    with pytest.raises(RuntimeError, match="mat1 and mat2 shapes cannot be multiplied"):
        matmul.linear(x, torch.randn(4, 5))
    empty = torch.zeros(0, 8, requires_grad=True)
    weight = torch.randn(4, 8, requires_grad=True)
    matmul.linear(empty, weight).sum().backward()
    assert torch.equal(weight.grad, torch.zeros(4, 8))


def test_fast_linear_lasts_for_its_block_and_nests(backend):
    backend("onednn")
    layer, x = torch.nn.Linear(8, 4), torch.randn(3, 8)
    with matmul.fast_linear() as chosen:
        assert chosen is matmul.LinearBackend.ONEDNN and _ran_on_onednn(layer(x))
        with matmul.fast_linear():
            assert _ran_on_onednn(layer(x))
        assert _ran_on_onednn(layer(x))  # the inner block did not close the outer one's mode
    assert type(layer(x).grad_fn).__name__ == "AddmmBackward0"
    backend("torch")
    with matmul.fast_linear() as chosen:
        assert chosen is matmul.LinearBackend.TORCH
        assert type(layer(x).grad_fn).__name__ == "AddmmBackward0"


def test_auto_measures_each_regime_and_torch_itself_even_inside_the_mode(backend, monkeypatch):
    """auto keeps oneDNN in a regime at its minimum speedup or more (the training regime is measured only
    where oneDNN wins the decode one, on an AVX-512 CPU); the measurement times torch's F.linear, not the
    mode's."""
    measured = []

    def speedups(decode: float, training: float) -> None:
        def measure(rows=32, inputs=1024, outputs=4096, backward=False):
            measured.append(backward)
            return training if backward else decode
        monkeypatch.setattr(matmul, "measure_speedup", measure)

    monkeypatch.setattr(matmul, "has_avx512", lambda: True)
    speedups(matmul.MIN_SPEEDUP, matmul.MIN_TRAINING_SPEEDUP)
    assert backend("") is matmul.LinearBackend.ONEDNN  # empty = auto
    speedups(matmul.MIN_SPEEDUP, matmul.MIN_TRAINING_SPEEDUP - 0.01)
    assert backend("auto") is matmul.LinearBackend.SPLIT
    measured.clear()
    speedups(matmul.MIN_SPEEDUP - 0.01, 9.0)
    assert backend("auto") is matmul.LinearBackend.TORCH and measured == [False]
    measured.clear()
    monkeypatch.setattr(matmul, "has_avx512", lambda: False)  # AVX2: training stays on torch's, unmeasured
    speedups(matmul.MIN_SPEEDUP, 9.0)
    assert backend("auto") is matmul.LinearBackend.SPLIT and measured == [False]
    monkeypatch.setattr(matmul, "has_avx512", lambda: True)
    speedups(matmul.MIN_SPEEDUP, matmul.MIN_TRAINING_SPEEDUP)
    monkeypatch.setenv("WORLD_SIZE", "2")  # a torchrun rank: torch's matmul (multi-process runs aborted at exit)
    assert backend("auto") is matmul.LinearBackend.TORCH
    assert backend("onednn") is matmul.LinearBackend.ONEDNN  # unless asked for
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.undo()
    backend("onednn")
    calls = []
    monkeypatch.setattr(matmul, "_onednn_linear", lambda *a: calls.append(1) or torch.zeros(()))
    with matmul.FastLinear():
        matmul.measure_speedup(rows=2, inputs=4, outputs=4)
        assert len(calls) == 6  # oneDNN's own 1 + 5 timed calls; torch's F.linear was not rerouted
        matmul.measure_speedup(rows=2, inputs=4, outputs=4, backward=True)
        assert len(calls) == 6 + 4 * 4  # forward and dx, both directions, 1 + 3 calls each


def test_split_sends_only_small_row_counts_to_onednn_and_enters_no_mode(backend):
    assert backend("onednn-small") is matmul.LinearBackend.SPLIT
    x, weight = _leaves((2, matmul.SMALL_ROWS // 2, 8), (6, 8))  # SMALL_ROWS rows in all
    assert _ran_on_onednn(matmul.linear(x, weight))
    big = _leaves((matmul.SMALL_ROWS + 1, 8))[0]
    assert type(matmul.linear(big, weight).grad_fn).__name__ == "MmBackward0"
    layer = torch.nn.Linear(8, 4)
    with matmul.fast_linear() as chosen:  # training forwards have many rows: no mode, no per-op dispatch
        assert chosen is matmul.LinearBackend.SPLIT
        assert type(layer(torch.randn(3, 8)).grad_fn).__name__ == "AddmmBackward0"


def test_the_environment_variable_is_checked(backend, monkeypatch):
    assert backend("torch") is matmul.LinearBackend.TORCH
    with pytest.raises(ValueError, match="must be auto, torch, onednn or onednn-small, got 'mkl'"):
        backend("mkl")
    monkeypatch.setattr(matmul, "onednn_available", lambda: False)
    with pytest.raises(ValueError, match="TUNELOOP_LINEAR=onednn, but this torch build has no oneDNN"):
        backend("onednn")


def test_the_engine_on_onednn_samples_what_torch_teacher_forces(backend, sharp_model, tiny_tokenizer):
    """The engine's matmuls on oneDNN, the generic forward and the teacher forcing on torch's: the same
    tokens, and log-probs equal to 1e-5."""
    prompts = [render_prompt(tiny_tokenizer, [{"role": "user", "content": q}])
               for q in ("Tell me a joke", "Write a short review of a film about a dog.")]
    cfg = SamplingConfig(max_new_tokens=12, batch_size=4, temperature=0.8)

    def run(forward):
        return generate_engine(sharp_model, tiny_tokenizer, prompts, cfg, 2, seed=3, rank=0, forward=forward,
                               log=lambda line: None)

    backend("torch")
    generic = run(GenericForward(sharp_model))
    backend("onednn")
    fast = run(LlamaForward(sharp_model))
    backend("torch")
    assert [[g.token_ids for g in per] for per in fast] == [[g.token_ids for g in per] for per in generic]
    assert_sampled_logprobs_are_teacher_forced(sharp_model, tiny_tokenizer.pad_token_id, fast, 0.8)
