"""Training curves from a run's ``metrics.jsonl`` as one PNG (matplotlib, Agg: no display needed).

A resumed run appends the steps it replays after its checkpoint, so a step can appear twice; the
last record of each (step, split) wins, which is the history of the run as it finally happened.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

STEP_AXIS = "optimizer step"  # what one logged step of SFT, reward and DPO is
ROUND_AXIS = "rollout round"  # RL logs once per round of rollout + update (several optimizer steps)


def read_metrics(path: Path) -> dict[str, dict[int, dict]]:
    """split → step → the last record logged for that step."""
    out: dict[str, dict[int, dict]] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            out.setdefault(record["split"], {})[int(record["step"])] = record
    return out


def trailing_mean(values: list[float], window: int) -> list[float]:
    """Mean of each value and the ``window - 1`` before it (fewer at the start)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def smoothing_window(points: int) -> int:
    """1 (no smoothing) for short runs; about a fifteenth of the run, at least 5 steps, for long ones."""
    return 1 if points < 30 else max(5, points // 15)


def plot_curves(metrics_path: Path, out_path: Path, panels: list[tuple[str, list[str]]],
                title: str, x_label: str = STEP_AXIS) -> Path | None:
    """One subplot per (panel title, metric keys): train as lines (long runs: faint per-step values under
    their trailing mean), eval as markers (None: nothing to plot). ``x_label`` names what a logged step
    is: an optimizer step, or a rollout round for RL (several optimizer steps per round)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = read_metrics(metrics_path)
    present = [(name, keys) for name, keys in panels
               if any(key in r for split in history.values() for r in split.values() for key in keys)]
    if not present:
        return None
    cols = 3
    rows = math.ceil(len(present) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (name, keys) in zip(axes.flat, present):
        for k, key in enumerate(keys):
            for split, style in (("train", {"linewidth": 1.2}), ("eval", {"marker": "o", "linestyle": "--"})):
                style = {**style, "color": f"C{k}"}
                points = sorted((s, r[key]) for s, r in history.get(split, {}).items()
                                if isinstance(r.get(key), (int, float)) and math.isfinite(r[key]))
                if not points:
                    continue
                steps, values = zip(*points)
                window = smoothing_window(len(points)) if split == "train" else 1
                if window == 1:
                    ax.plot(steps, values, label=f"{split} {key}", **style)
                else:  # noisy per-step values faint, their trailing mean on top
                    ax.plot(steps, values, alpha=0.25, **style)
                    ax.plot(steps, trailing_mean(list(values), window), label=f"{split} {key} (mean of {window})",
                            **style)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(x_label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
