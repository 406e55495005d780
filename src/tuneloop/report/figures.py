"""Figures of the pipeline report that are drawn from eval results (PNG bytes, matplotlib's Agg canvas).

- ``frontier``: gold and proxy score against √KL to the reference for every policy (a point per policy,
  a line through a policy's checkpoints, and the best-of-n curve), with Gao et al.'s fits dashed.
- ``training_curves``: a run's metrics.jsonl as panels; the panels cover every stage's metric names
  (SFT, reward, DPO, and the RL names ``objective/kl``, ``objective/scores``, ``completions/mean_length`` …),
  and only those the run logged are drawn.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from tuneloop.report.plots import _figure

CURVE_PANELS = [
    ("loss", ["loss", "loss/policy_avg", "loss/value_avg"]),
    ("accuracy", ["accuracy", "rewards/accuracy"]),
    ("reward", ["objective/scores", "objective/rlhf_reward", "rewards/margin", "rewards/chosen", "rewards/rejected"]),
    ("KL to the reference", ["objective/kl", "kl/estimate", "policy/approxkl_avg"]),
    ("gold score", ["gold", "eval/gold"]),
    ("response length", ["completions/mean_length", "completions/clipped_ratio"]),
    ("learning rate", ["lr"]),
]


def png_bytes(fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def training_curves(metrics_path: Path, out_path: Path, title: str, x_label: str) -> Path | None:
    """The run's curves as one PNG (None when it logged none of the known metrics)."""
    from tuneloop.curves import plot_curves

    return plot_curves(metrics_path, out_path, CURVE_PANELS, title, x_label)


def _series(result: dict) -> list[dict]:
    """One series per policy: its checkpoints' points (when evaluated) ending at the policy itself."""
    out = []
    over = result.get("overoptimization") or {}
    for name, entry in result["policies"].items():
        metrics = entry["metrics"]
        kl = metrics["kl/k3_sequence"]["mean"] or 0.0
        final = {"sqrt_kl": math.sqrt(max(kl, 0.0)), "gold": metrics[result["gold"]]["mean"],
                 "proxy": metrics[result["proxy"]]["mean"] if result.get("proxy") else None}
        points = [{"sqrt_kl": p["sqrt_kl"], "gold": p[result["gold"]],
                   "proxy": p.get(result["proxy"]) if result.get("proxy") else None} for p in over[name]["points"]] \
            if name in over else [final]
        out.append({"name": name, "points": points, "fit": over.get(name)})
    return out


def frontier(result: dict) -> bytes:
    """Gold (left) and proxy (right) score against √KL(π‖π_ref) per policy, best-of-n and the fits."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [("gold", f"gold score: {result['gold']}")]
    if result.get("proxy"):
        panels.append(("proxy", "proxy score (reward model)"))
    fig = Figure(figsize=(5.2 * len(panels), 4.0), dpi=110)
    FigureCanvasAgg(fig)
    for column, (key, label) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), column + 1)
        for k, series in enumerate(_series(result)):
            xs = [p["sqrt_kl"] for p in series["points"]]
            ys = [p[key] for p in series["points"]]
            style = {"marker": "o", "color": f"C{k}"}
            ax.plot(xs, ys, label=series["name"], **style)
            fit = (series["fit"] or {}).get(f"{key}_fit")
            if fit and len(xs) > 1:
                _draw_fit(ax, fit, max(xs), ys[0], f"C{k}")
        for name, bon in reference_best_of_n(result).items():
            xs = [p["sqrt_kl"] for p in bon["points"]]
            ys = [p[key] for p in bon["points"]]
            ax.plot(xs, ys, marker="s", linestyle=":", color="grey", label=f"best-of-n from {name}")
            for p in bon["points"]:
                ax.annotate(f"n={p['n']}", (p["sqrt_kl"], p[key]), fontsize=7, textcoords="offset points",
                            xytext=(3, 3))
            fit = bon.get(f"{key}_fit")
            if fit:
                _draw_fit(ax, fit, max(xs), ys[0], "grey")
        ax.set(xlabel="√KL(π ‖ π_ref)  (nats½, k3 per sequence)", ylabel=key, title=f"{label} vs √KL")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return png_bytes(fig)


def reference_best_of_n(result: dict) -> dict:
    """The best-of-n curves that belong on a √KL-to-the-reference axis: those of a policy that IS the reference
    (its KL to it is 0). Best-of-n of another policy has KL log n − (n − 1)/n to that policy, not to the
    reference, so it is left off the frontier (eval.json keeps it)."""
    policies = result.get("policies") or {}
    return {name: bon for name, bon in (result.get("best_of_n") or {}).items()
            if name in policies and (policies[name].get("model") == result.get("reference")
                                     or abs(policies[name]["metrics"]["kl/k3_sequence"]["mean"] or 0.0) < 1e-9)}


def _draw_fit(ax, fit: dict, d_max: float, start: float, color: str) -> None:
    from tuneloop.evaluate.overoptimization import GaoFit, GaoForm

    model = GaoFit(GaoForm(fit["form"]), fit["alpha"], fit["beta"], fit["rmse"])
    ds = [d_max * 1.25 * i / 40 for i in range(41)]
    ax.plot(ds, [start + v for v in model.predict(ds)], linestyle="--", linewidth=1, color=color, alpha=0.7)


def empty_figure(text: str) -> bytes:
    fig, ax = _figure(5, 1.2)
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")
    return png_bytes(fig)
