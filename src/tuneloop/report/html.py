"""The pipeline report: one self-contained HTML file a person can read offline.

Every figure is embedded as a ``data:image/png;base64`` URI and the page carries a Content-Security-
Policy that allows nothing else (no script, font, stylesheet or image from anywhere), so opening it
makes no request. Sections, each present when its stage ran:

  summary      the loop at a glance: reward-model accuracy, each policy's gold score and KL
  stages       one row per stage: what it made and the time it took (cached stages say so)
  curves       training curves of every stage with a run folder (SFT, reward, DPO, RL …)
  reward-model held-out accuracy, calibration (reliability diagram) and score histograms
  agreement    the rater panel: judgments, agreement between raters, Fleiss' κ, Krippendorff's α
  policies     eval metrics with bootstrap intervals, and win rates
  frontier     gold and proxy score against √KL for each policy, best-of-n, Gao et al.'s fits
  samples      the same prompts answered by every policy, side by side
  next         how to judge the candidates by hand and where the files are
"""

from __future__ import annotations

import base64
import html
import json
import math
import time
from pathlib import Path

from tuneloop.atomic import atomic_write_text
from tuneloop.report import figures

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
TABLE_METRICS = ("kl/k3_sequence", "kl/k1_token", "length/tokens", "eos_rate", "truncation_rate",
                 "repetition/rep_3", "distinct/2")
STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:24px}
section{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:16px 20px;margin:18px 0}
h1{font-size:26px;margin:8px 0} h2{font-size:19px;margin:4px 0 12px} h3{font-size:16px;margin:14px 0 6px}
table{border-collapse:collapse;width:100%;font-size:13.5px} th,td{border-bottom:1px solid #e5e8ec;padding:5px 8px;
text-align:left;vertical-align:top} th{background:#f0f2f5} td.num{font-variant-numeric:tabular-nums;white-space:nowrap}
img{max-width:100%;height:auto;display:block;margin:8px 0} .muted{color:#5d6776;font-size:13px}
.cards{display:flex;flex-wrap:wrap;gap:12px} .card{flex:1 1 200px;border:1px solid #dde1e7;border-radius:6px;padding:10px}
.card b{font-size:22px;display:block} .sample td{width:33%} code{background:#eef0f3;padding:1px 4px;border-radius:3px}
nav a{margin-right:12px;color:#2456a6;text-decoration:none} .scroll{overflow-x:auto}
.ci{display:block;color:#5d6776;font-size:12px}
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _num(value, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and math.isfinite(value) else "—"


def _pct(value) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) and math.isfinite(value) else "—"


def _ci(metric: dict | None) -> str:
    if not metric or metric.get("mean") is None:
        return "—"
    if metric.get("ci_low") is None:
        return _num(metric["mean"])
    return f"{_num(metric['mean'])}<span class=ci>[{_num(metric['ci_low'])}, {_num(metric['ci_high'])}]</span>"


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _img_file(path: Path, alt: str) -> str:
    return _img(path.read_bytes(), alt) if path.is_file() else ""


def _table(header: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td class=num>{c}</td>" if i >= numeric_from else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<div class=scroll><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>{body}</section>'


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# Sections


def _stages(records) -> str:
    from tuneloop.commands.stages import STAGE_KINDS

    rows, total = [], 0.0
    for r in records.values():
        kind = STAGE_KINDS.get(r.uses)
        line = kind.headline(r.summary) if kind and r.summary else ""
        total += r.seconds
        rows.append([f"<b>{_e(r.name)}</b> <span class=muted>({_e(r.uses)})</span>", _e(line),
                     f"{r.seconds:.1f}s" + (" <span class=muted>(cached)</span>" if r.cached else "")])
    rows.append(["<b>total</b>", "", f"<b>{total:.1f}s</b>"])
    return _table(["stage", "what it made", "time"], rows, numeric_from=2)


def _curves(records, folder: Path) -> str:
    from tuneloop.commands.stages import STAGE_KINDS
    from tuneloop.curves import STEP_AXIS

    parts = []
    for r in records.values():
        run = Path(r.outputs["run"]) if "run" in r.outputs else None
        if run is None or not (run / "metrics.jsonl").is_file():
            continue
        unit = getattr(STAGE_KINDS.get(r.uses), "step_unit", STEP_AXIS)  # rollout rounds for RL
        png = figures.training_curves(run / "metrics.jsonl", folder / f".curves-{r.name}.png",
                                      f"{r.name} ({r.uses})", unit)
        if png is not None:
            parts.append(f"<h3>{_e(r.name)}</h3>{_img(png.read_bytes(), f'training curves of {r.name}')}")
            png.unlink()
    return "".join(parts)


def _reward_model(record) -> str:
    run = Path(record.outputs["run"])
    report = _read_json(run / "eval" / "report.json") or {}
    cards = (f"<div class=cards><div class=card>held-out accuracy<b>{_pct(report.get('accuracy'))}</b>"
             f"<span class=muted>on {int(report.get('pairs', 0))} pairs the model never saw (chance: 50%)</span></div>"
             f"<div class=card>calibration error (ECE)<b>{_num(report.get('ece'))}</b>"
             f"<span class=muted>0 = its probabilities match how often it is right</span></div>"
             f"<div class=card>length correlation<b>{_num(report.get('length_spearman'), 2)}</b>"
             f"<span class=muted>Spearman of reward and response length (length bias)</span></div></div>")
    images = "".join(_img_file(run / "eval" / name, alt) for name, alt in
                     (("reliability.png", "reward-model calibration"), ("scores.png", "held-out reward histograms"),
                      ("accuracy_by_length.png", "accuracy by response length")))
    return cards + images


def _agreement(record) -> str:
    s = record.summary
    rows = [["judgments", str(s.get("judgments"))], ["simulated raters", str(len(s.get("annotators") or []))],
            ["pairwise agreement between raters", _pct(s.get("measured_agreement"))
             + " <span class=muted>(InstructGPT's labellers: ~73–77%)</span>"],
            ["expected agreement (calibrated noise)", _pct(s.get("expected_agreement"))],
            ["Fleiss' κ", _num(s.get("fleiss_kappa"))], ["Krippendorff's α", _num(s.get("krippendorff_alpha"))],
            ["rater noise σ", _num(s.get("noise_sigma"), 4)], ["preference pairs exported", str(s.get("pairs"))]]
    return _table(["", "value"], rows)


def _policies(result: dict) -> str:
    columns = [result["gold"]] + (["reward_model"] if result.get("proxy") else []) + list(TABLE_METRICS)
    rows = [[f"<b>{_e(name)}</b>", *(_ci(entry["metrics"].get(c)) for c in columns)]
            for name, entry in result["policies"].items()]
    body = (f"<p class=muted>{result['prompts']} held-out prompts, the same for every policy, sampled with one seed; "
            f"KL to <code>{_e(result['reference'])}</code>; mean and 95% bootstrap interval.</p>"
            + _table(["policy", *(_e(c).replace("/", "/<wbr>").replace("_", "_<wbr>") for c in columns)], rows))
    if result.get("win_rates"):
        wins = [[f"{_e(w['a'])} over {_e(w['b'])}", _e(w["by"]), _ci(w)] for w in result["win_rates"]]
        body += "<h3>Win rates (ties count ½)</h3>" + _table(["comparison", "judged by", "win rate"], wins,
                                                              numeric_from=2)
    return body


def _peak(peak: float | None, reach: float) -> str:
    """The fitted peak d, or where it lies when the fit only extrapolates to it (beyond twice the largest
    measured d, e.g. e^(α/β − 1) = 1e32 for a nearly straight RL fit)."""
    if peak is None:
        return "—"
    if reach > 0 and peak > 2 * reach:
        return f"beyond the data (&gt; {2 * reach:.2f})"
    return _num(peak, 2)


def _frontier(result: dict) -> str:
    body = _img(figures.frontier(result), "reward versus KL frontier")
    fits = []
    for name, entry in list((result.get("overoptimization") or {}).items()) + \
            [(f"best-of-n from {n}", b) for n, b in figures.reference_best_of_n(result).items()]:
        for key in ("gold_fit", "proxy_fit"):
            fit = entry.get(key)
            if fit:
                form = "d(α − β d)" if fit["form"] == "best_of_n" else "d(α − β log d)"
                reach = max((p["sqrt_kl"] for p in entry.get("points") or []), default=0.0)
                fits.append([_e(name), key.split("_")[0], form, _num(fit["alpha"]), _num(fit["beta"]),
                             _peak(fit["peak_sqrt_kl"], reach), _num(fit["rmse"])])
    if fits:
        body += ("<h3>Over-optimisation fits (Gao et al. 2022), d = √KL</h3>"
                 + _table(["policy", "score", "form", "α", "β", "peak d", "rmse"], fits, numeric_from=3)
                 + "<p class=muted>A proxy that keeps rising while the gold score peaks and falls is the reward "
                   "model being over-optimised.</p>")
    else:
        body += ("<p class=muted>Evaluate a policy's checkpoints (eval <code>policies[].checkpoints</code>) or "
                 "several samples per prompt to draw the over-optimisation curves.</p>")
    return body


def _samples(result: dict) -> str:
    names = list(result["policies"])
    rows = []
    for row in result.get("side_by_side") or []:
        cells = []
        for name in names:
            r = row["responses"][name]
            score = r.get(result["gold"])
            mark = "" if r.get("finished", True) else " <span class=muted>(cut at the length limit)</span>"
            cells.append(f"{_e(r['text'])}{mark}<br><span class=muted>{_e(result['gold'])} {_num(score)}</span>")
        rows.append(f"<tr><td colspan={len(names)}><b>Prompt:</b> {_e(row['prompt'])}</td></tr>"
                    f"<tr class=sample>{''.join(f'<td>{c}</td>' for c in cells)}</tr>")
    head = "".join(f"<th>{_e(n)}</th>" for n in names)
    return f"<div class=scroll><table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"


def _summary(records, result: dict | None) -> str:
    cards = []
    reward = next((r for r in records.values() if r.uses == "reward"), None)
    if reward:
        accuracy = (reward.summary.get("eval") or {}).get("accuracy")
        cards.append(f"<div class=card>reward-model accuracy<b>{_pct(accuracy)}</b>"
                     f"<span class=muted>held out; chance is 50%</span></div>")
    if result:
        for name, entry in result["policies"].items():
            m = entry["metrics"]
            cards.append(f"<div class=card>{_e(name)}: {_e(result['gold'])}<b>{_num(m[result['gold']]['mean'])}</b>"
                         f"<span class=muted>KL {_num(m['kl/k3_sequence']['mean'], 2)} nats/sequence, "
                         f"{_num(m['length/tokens']['mean'], 1)} tokens</span></div>")
    total = sum(r.seconds for r in records.values())
    return (f"<div class=cards>{''.join(cards)}</div><p class=muted>{len(records)} stages, {total:.0f}s of stage time.</p>")


def _next(records) -> str:
    label = next((r for r in records.values() if r.uses == "label-simulate"), None)
    lines = []
    if label:
        lines.append(f"<li>Judge the candidates yourself instead of the simulated panel: "
                     f"<code>tuneloop label serve --db {_e(label.outputs['db'])}</code></li>")
    for r in records.values():
        if "model" in r.outputs and r.uses != "reward":
            lines.append(f"<li>Talk to the {_e(r.name)} policy: <code>tuneloop chat --model {_e(r.outputs['model'])}</code></li>")
    return f"<ul>{''.join(lines)}</ul>"


def write_pipeline_report(path: str | Path, records: dict, title: str) -> Path:
    """Write the report of the stages in ``records`` (name → ``pipeline.StageRecord``) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    by_kind = {r.uses: r for r in records.values()}
    evals = [r for r in records.values() if r.uses == "eval"]
    result = _read_json(Path(evals[-1].outputs["json"])) if evals else None
    sections = [("summary", "The loop at a glance", _summary(records, result)),
                ("stages", "Stages and the time each took", _stages(records))]
    curves = _curves(records, path.parent)
    if curves:
        sections.append(("curves", "Training curves", curves))
    if "reward" in by_kind:
        sections.append(("reward-model", "Reward model: accuracy and calibration", _reward_model(by_kind["reward"])))
    if "label-simulate" in by_kind:
        sections.append(("agreement", "Annotator agreement", _agreement(by_kind["label-simulate"])))
    if result:
        sections += [("policies", "Policies on held-out prompts", _policies(result)),
                     ("frontier", "Reward vs KL frontier and over-optimisation", _frontier(result)),
                     ("samples", "Before and after: the same prompts, side by side", _samples(result))]
    sections.append(("next", "Next", _next(records)))
    nav = "".join(f'<a href="#{a}">{_e(t.split(":")[0])}</a>' for a, t, _ in sections)
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{STYLE}</style></head><body><main>"
            f"<h1>{_e(title)}</h1><p class=muted>written {time.strftime('%Y-%m-%d %H:%M')} · self-contained: "
            f"opening it makes no network request</p><nav>{nav}</nav>"
            + "".join(_section(a, t, b) for a, t, b in sections) + "</main></body></html>\n")
    atomic_write_text(path, page)
    return path
