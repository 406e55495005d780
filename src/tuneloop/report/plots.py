"""Generic figures for run reports, drawn with matplotlib's object API on the Agg renderer (no display,
no global pyplot state, safe in worker threads). Each function writes one PNG and returns its path.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

DPI = 110


def _figure(width: float = 5.5, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.tight_layout()
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path


def reliability_diagram(mean_predicted: Sequence[float], mean_observed: Sequence[float], counts: Sequence[int],
                        path: str | Path, title: str, xlabel: str = "predicted probability") -> Path:
    """Observed frequency against predicted probability per bin (empty bins skipped), with the
    diagonal of perfect calibration; point size grows with the bin's count."""
    fig, ax = _figure()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfectly calibrated")
    points = [(p, o, n) for p, o, n in zip(mean_predicted, mean_observed, counts) if n and not math.isnan(p)]
    if points:
        largest = max(n for _, _, n in points)
        ax.plot([p for p, _, _ in points], [o for _, o, _ in points], color="tab:blue", linewidth=1.5)
        ax.scatter([p for p, _, _ in points], [o for _, o, _ in points], s=[20 + 180 * n / largest for *_, n in points],
                   color="tab:blue", zorder=3, label="model")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel=xlabel, ylabel="observed frequency", title=title)
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def histograms(series: dict[str, Sequence[float]], path: str | Path, title: str, xlabel: str, bins: int = 30) -> Path:
    """Overlaid, semi-transparent histograms of several named series on shared bins."""
    fig, ax = _figure()
    values = [v for vs in series.values() for v in vs]
    if values:
        low, high = min(values), max(values)
        edges = [low + (high - low) * i / bins for i in range(bins + 1)] if high > low else bins
        for name, vs in series.items():
            ax.hist(list(vs), bins=edges, alpha=0.5, label=f"{name} (n={len(vs)})")
        ax.legend(fontsize=8)
    ax.set(xlabel=xlabel, ylabel="count", title=title)
    return _save(fig, path)


def bar_chart(labels: Sequence[str], values: Sequence[float], path: str | Path, title: str, ylabel: str,
              annotations: Sequence[str] | None = None, reference: float | None = None,
              reference_label: str = "") -> Path:
    """Bars with optional text above each and an optional horizontal reference line (e.g. chance)."""
    fig, ax = _figure(max(5.5, 0.9 * len(labels) + 2))
    heights = [0.0 if v is None or math.isnan(v) else v for v in values]
    bars = ax.bar(range(len(labels)), heights, color="tab:blue")
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    for bar, text in zip(bars, annotations or []):
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=7)
    if reference is not None:
        ax.axhline(reference, linestyle="--", color="grey", linewidth=1, label=reference_label or None)
        if reference_label:
            ax.legend(fontsize=8)
    ax.set(ylabel=ylabel, title=title)
    return _save(fig, path)


def scatter(x: Sequence[float], y: Sequence[float], path: str | Path, title: str, xlabel: str, ylabel: str) -> Path:
    fig, ax = _figure()
    ax.scatter(list(x), list(y), s=6, alpha=0.4, color="tab:blue")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    return _save(fig, path)
