"""How far apart two AdamW runs that sum the same gradients in another order may end, in fp32."""

from __future__ import annotations

FP32_ULP = 2.0 ** -23  # spacing of fp32 numbers in [1, 2)


def linear_adam_bound(initial: dict, a: dict, steps: int, accumulated: int) -> tuple[float, float, float]:
    """(max weight difference, max update, the fp32 bound it must stay under) for two runs of ``steps``
    AdamW steps with ε = 1 that differ only in how a step's gradient is summed over ``accumulated`` parts.

    Why ε = 1: with the default ε = 1e-8, AdamW divides every entry by its own √v̂, so the first step
    is ±lr whatever the gradient's size, and an entry whose gradient is a near-cancelling sum turns its
    rounding error (relative to itself, unbounded) into a full-size difference of the step: no fp32
    bound holds in max norm (measured, 0.2% of the largest update). With ε = 1 ≫ √v̂ (per-entry
    gradients ≤ 1 after clipping) the step lr·m̂/(√v̂+ε) is linear in the gradient to within a factor 2,
    so a gradient error δg moves a weight by at most 2·lr·|δg| per step.

    The bound: summing ``accumulated`` fp32 parts in another order changes a gradient by at most
    (accumulated − 1)·2⁻²⁴·Σ|parts| ≤ accumulated·2⁻²⁴·(max gradient), and the matrix products on
    smaller micro-batches reduce over the same tokens, also within a few ulps; over ``steps`` steps the
    weights move apart by ≤ steps·2·accumulated·2⁻²⁴ of the largest update, i.e. < 1e-5 of it for
    3 steps of 8 parts, plus rounding when each step is added to the weights: half an ulp of the largest
    weight per step and run, ``steps`` ulps in all.
    """
    update = max((a[n] - initial[n]).abs().max().item() for n in a)
    largest_weight = max(w.abs().max().item() for w in a.values())
    bound = 1e-5 * update + steps * FP32_ULP * max(1.0, largest_weight)
    return update, largest_weight, bound


def assert_two_processes_match_one(one_dir, two_dir, steps: int, accumulated: int) -> None:
    """The model folders of a 1-process and a 2-process run of the tiny model agree within
    ``linear_adam_bound``, and the runs moved the weights (an update over 1e-2)."""
    import os

    from safetensors.torch import load_file

    from tuneloop.models.loading import resolve_model_name

    a = load_file(os.path.join(one_dir, "model", "model.safetensors"))
    b = load_file(os.path.join(two_dir, "model", "model.safetensors"))
    initial = load_file(os.path.join(resolve_model_name("tiny-llama"), "model.safetensors"))
    update, _, bound = linear_adam_bound(initial, a, steps=steps, accumulated=accumulated)
    diff = max((a[n] - b[n]).abs().max().item() for n in a)
    assert update > 1e-2, f"the runs barely trained (largest update {update:.2e})"
    assert diff < bound, f"2 processes differ from 1 by {diff:.2e}, over the fp32 bound {bound:.2e} (update {update:.2e})"
