"""Training curves: the trailing mean by hand, and a PNG from a real metrics file."""

from __future__ import annotations

import json

from tuneloop.curves import plot_curves, read_metrics, smoothing_window, trailing_mean


def test_trailing_mean_by_hand():
    # window 3: 1 → 1; (1+3)/2 → 2; (1+3+5)/3 → 3; (3+5+7)/3 → 5; (5+7+0)/3 → 4
    assert trailing_mean([1.0, 3.0, 5.0, 7.0, 0.0], 3) == [1.0, 2.0, 3.0, 5.0, 4.0]
    assert trailing_mean([2.0, 4.0], 1) == [2.0, 4.0]


def test_smoothing_only_for_long_runs():
    assert smoothing_window(10) == 1 and smoothing_window(29) == 1
    assert smoothing_window(30) == 5 and smoothing_window(150) == 10


def test_curves_png_and_last_record_wins(tmp_path):
    rows = [{"step": s, "split": "train", "loss": 1.0 / s} for s in range(1, 61)]
    rows += [{"step": 30, "split": "train", "loss": 9.0},  # a resumed run replays step 30
             {"step": 60, "split": "eval", "loss": 0.5}]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert read_metrics(metrics)["train"][30]["loss"] == 9.0
    out = plot_curves(metrics, tmp_path / "curves.png", [("loss", ["loss"]), ("absent", ["nothing"])], "t")
    assert out is not None and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_curves(metrics, tmp_path / "none.png", [("absent", ["nothing"])], "t") is None


def test_x_axis_names_the_logged_step(tmp_path, monkeypatch):
    """RL logs once per rollout round (several optimizer steps): its curves' x-axis says so; the report
    takes the unit from the stage kind."""
    from matplotlib.axes import Axes

    from tuneloop.commands.stages import STAGE_KINDS
    from tuneloop.curves import ROUND_AXIS

    labels: list[str] = []
    original = Axes.set_xlabel
    monkeypatch.setattr(Axes, "set_xlabel", lambda ax, text, *a, **k: (labels.append(text), original(ax, text, *a, **k))[1])
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "split": "train", "loss": 1.0}) + "\n" for s in (1, 2)))
    plot_curves(metrics, tmp_path / "a.png", [("loss", ["loss"])], "t")
    plot_curves(metrics, tmp_path / "b.png", [("loss", ["loss"])], "t", ROUND_AXIS)
    assert labels == ["optimizer step", "rollout round"]
    assert {STAGE_KINDS[k].step_unit for k in ("ppo", "a2c", "grpo", "rloo")} == {ROUND_AXIS}
    assert STAGE_KINDS["sft"].step_unit == STAGE_KINDS["dpo"].step_unit == "optimizer step"
