"""The quality report: agreement over the store's judgments and one card per annotator.

Pairwise units are candidate pairs ordered by candidate id (not by screen side); a K-way ranking
contributes a label to each of its C(K,2) pairs, so pairwise and ranking judgments are measured on
the same footing. Labels: "lo" (lower id preferred), "hi", "tie", "both_bad". Gold items and repeats
are kept out of agreement (they measure accuracy and consistency instead); corrections replace the
judgment they supersede.
"""

from __future__ import annotations

import itertools
import statistics
from collections import Counter, defaultdict
from typing import Any

from sqlalchemy import exists, func, select

from tuneloop.feedback import schema as S
from tuneloop.feedback.agreement import (
    Metric,
    average_ranks,
    cohen_kappa,
    fleiss_kappa,
    kendall_tau_b,
    kendall_w,
    krippendorff_alpha,
    krippendorff_alpha_nominal,
    rater_offset_scale,
    raw_agreement,
    wilson_interval,
)
from tuneloop.feedback.answers import pair_label
from tuneloop.feedback.aspects import parse_aspects
from tuneloop.feedback.assign import current_judgments
from tuneloop.feedback.store import Store

MIN_SHARED_FOR_COHEN = 5  # annotator pairs sharing fewer units are left out of the mean Cohen's κ


def pair_units(judgments: list[dict], items: dict[int, dict]) -> dict[tuple, dict[int, str]]:
    """{(prompt_id, lo, hi): {user_id: label}} from primary judgments of ordinary items."""
    units: dict[tuple, dict[int, str]] = defaultdict(dict)
    for j in judgments:
        item = items[j["item_id"]]
        if j["is_repeat"] or item["is_gold"]:
            continue
        for lo, hi in itertools.combinations(sorted(item["candidate_ids"]), 2):
            label = pair_label(j["answer"], j["kind"], lo, hi)
            if label is not None:
                units[(item["prompt_id"], lo, hi)][j["user_id"]] = label
    return units


def agreement_summary(units: dict[tuple, dict[int, str]]) -> dict[str, Any]:
    labelled = [list(u.values()) for u in units.values() if len(u) >= 2]
    sizes = [len(u) for u in labelled]
    modal = statistics.mode(sizes) if sizes else None
    by_user: dict[int, dict[tuple, str]] = defaultdict(dict)
    for key, unit in units.items():
        for user, label in unit.items():
            by_user[user][key] = label
    kappas = []
    for a, b in itertools.combinations(sorted(by_user), 2):
        shared = sorted(set(by_user[a]) & set(by_user[b]))
        if len(shared) >= MIN_SHARED_FOR_COHEN:
            k = cohen_kappa([by_user[a][s] for s in shared], [by_user[b][s] for s in shared])
            if k is not None:
                kappas.append(k)
    return {"units": len(units), "units_with_2plus": len(labelled),
            "raw_agreement": raw_agreement(labelled),
            "cohen_kappa_mean_over_pairs": statistics.fmean(kappas) if kappas else None,
            "cohen_pairs": len(kappas),
            "fleiss_kappa": fleiss_kappa([u for u in labelled if len(u) == modal]) if modal else None,
            "fleiss_units": sum(1 for s in sizes if s == modal),
            "krippendorff_alpha": krippendorff_alpha_nominal(labelled)}


def ranking_summary(judgments: list[dict], items: dict[int, dict]) -> dict[str, Any]:
    """Mean Kendall's W and mean pairwise τ_b over ranking items with ≥ 2 annotators."""
    per_item: dict[int, list[dict]] = defaultdict(list)
    for j in judgments:
        if j["kind"] == "ranking" and not j["is_repeat"] and not items[j["item_id"]]["is_gold"]:
            per_item[j["item_id"]].append(average_ranks(j["answer"]["ranking"]))
    ws, taus = [], []
    for item_id, ranks in per_item.items():
        if len(ranks) < 2:
            continue
        ids = sorted(items[item_id]["candidate_ids"])
        rows = [[r[c] for c in ids] for r in ranks]
        w = kendall_w(rows)
        if w is not None:
            ws.append(w)
        taus += [t for a, b in itertools.combinations(rows, 2) if (t := kendall_tau_b(a, b)) is not None]
    return {"ranking_items": sum(1 for r in per_item.values() if len(r) >= 2),
            "kendall_w_mean": statistics.fmean(ws) if ws else None,
            "kendall_tau_b_mean": statistics.fmean(taus) if taus else None}


def score_units(judgments: list[dict], items: dict[int, dict]) -> dict[str, dict[int, dict[int, int]]]:
    """{aspect: {candidate id: {user id: score}}} from the aspect scores of primary judgments of ordinary
    items (rating items, and pairwise or ranking items that asked for scores)."""
    units: dict[str, dict[int, dict[int, int]]] = defaultdict(lambda: defaultdict(dict))
    for j in judgments:
        if j["is_repeat"] or items[j["item_id"]]["is_gold"]:
            continue
        for cid, per_aspect in (j["answer"].get("scores") or {}).items():
            for aspect, score in per_aspect.items():
                units[aspect][int(cid)][j["user_id"]] = score
    return units


def aspect_summary(units: dict[str, dict[int, dict[int, int]]], aspect_names: list[str],
                   names: dict[int, str]) -> list[dict[str, Any]]:
    """Per aspect: how many responses were scored (by ≥ 2 people), the mean score, Krippendorff's α for
    interval and ordinal data, and each annotator's offset and scale against the others."""
    out = []
    for aspect in aspect_names + sorted(set(units) - set(aspect_names)):
        per_unit = units.get(aspect, {})
        labelled = [list(u.values()) for u in per_unit.values() if len(u) >= 2]
        scores = [s for u in per_unit.values() for s in u.values()]
        raters = rater_offset_scale(per_unit)
        out.append({"aspect": aspect, "responses": len(per_unit), "responses_with_2plus": len(labelled),
                    "scores": len(scores), "mean": statistics.fmean(scores) if scores else None,
                    "alpha_interval": krippendorff_alpha(labelled, Metric.INTERVAL),
                    "alpha_ordinal": krippendorff_alpha(labelled, Metric.ORDINAL),
                    "raters": [{"name": names.get(uid, str(uid)), **stats} for uid, stats in sorted(raters.items())]})
    return out


def annotator_cards(judgments: list[dict], items: dict[int, dict], units: dict, names: dict[int, str]) -> list[dict]:
    cards = []
    for user_id in sorted({j["user_id"] for j in judgments}):
        mine = [j for j in judgments if j["user_id"] == user_id]
        gold_hits = [_gold_correct(j, items[j["item_id"]]) for j in mine if items[j["item_id"]]["is_gold"]]
        gold_hits = [g for g in gold_hits if g is not None]
        loo_hits = []
        for unit in units.values():
            if user_id in unit and len(unit) >= 3:
                others = Counter(lab for u, lab in unit.items() if u != user_id).most_common()
                if len(others) == 1 or others[0][1] > others[1][1]:  # the others have a clear majority
                    loo_hits.append(unit[user_id] == others[0][0])
        first = [j["answer"]["winner"] == j["display_order"][0] for j in mine
                 if j["kind"] == "pairwise" and j["answer"]["outcome"] == "win"]
        times = [j["active_ms"] / 1000 for j in mine if not j["is_repeat"]]
        cards.append({
            "user_id": user_id, "name": names.get(user_id, str(user_id)), "judgments": len(mine),
            "gold": _rate(gold_hits), "agreement_with_consensus": _rate(loo_hits),
            "chose_first_shown": _rate(first), "repeat_consistency": _rate(_repeat_hits(mine, items)),
            "median_seconds": statistics.median(times) if times else None})
    return cards


def _rate(hits: list[bool]) -> dict[str, Any]:
    k, n = sum(hits), len(hits)
    return {"k": k, "n": n, "rate": k / n if n else None, "wilson95": wilson_interval(k, n)}


def _gold_correct(j: dict, item: dict) -> bool | None:
    gold = item["gold_answer"] or {}
    if j["kind"] == "pairwise" and "winner" in gold:
        return j["answer"]["outcome"] == "win" and j["answer"]["winner"] == gold["winner"]
    if j["kind"] == "ranking" and "ranking" in gold:
        return j["answer"]["ranking"] == gold["ranking"]
    return None


def _repeat_hits(mine: list[dict], items: dict[int, dict]) -> list[bool]:
    first = {j["item_id"]: j for j in mine if not j["is_repeat"]}
    hits = []
    for j in mine:
        if j["is_repeat"] and j["item_id"] in first:
            ids = sorted(items[j["item_id"]]["candidate_ids"])
            pairs = list(itertools.combinations(ids, 2))
            hits.append(all(pair_label(j["answer"], j["kind"], a, b) == pair_label(first[j["item_id"]]["answer"],
                                                                                    j["kind"], a, b) for a, b in pairs))
    return hits


def load(store: Store) -> tuple[list[dict], dict[int, dict], dict[int, str]]:
    with store.read() as conn:
        judgments = current_judgments(conn)
        items = {r["id"]: dict(r) for r in conn.execute(select(S.items)).mappings()}
        names = dict(conn.execute(select(S.users.c.id, S.users.c.name)).all())
    return judgments, items, names


def quality_report(store: Store) -> dict[str, Any]:
    judgments, items, names = load(store)
    units = pair_units(judgments, items)
    cfg = store.settings()
    overlap = cfg["overlap"]
    cards = annotator_cards(judgments, items, units, names)
    for card in cards:  # what is left for each annotator, for the admin page's progress bars
        judged = {j["item_id"] for j in judgments if j["user_id"] == card["user_id"]}
        card["left"] = sum(1 for i in items.values()
                           if not i["is_gold"] and i["n_done"] < overlap and i["id"] not in judged)
    aspect_names = [a.name for a in parse_aspects(cfg["aspects"])]
    return {"counts": {"judgments": len(judgments), "annotators": len({j["user_id"] for j in judgments}),
                       "items": len(items), "items_complete": sum(1 for i in items.values() if i["n_done"] >= overlap)},
            "pairwise": agreement_summary(units), "rankings": ranking_summary(judgments, items),
            "aspects": aspect_summary(score_units(judgments, items), aspect_names, names),
            "annotators": cards}


def annotator_summary(store: Store, user_id: int) -> dict[str, Any]:
    """An annotator's own numbers for the page header (nothing about anyone else)."""
    I, J = S.items.c, S.judgments.c
    with store.read() as conn:
        mine = current_judgments(conn, user_id)
        overlap = store.settings(conn)["overlap"]
        left = conn.execute(select(func.count()).select_from(S.items).where(
            ~I.is_gold, I.n_done < overlap, ~exists().where(J.item_id == I.id, J.user_id == user_id))).scalar_one()
    times = [j["active_ms"] / 1000 for j in mine]
    return {"judged": len(mine), "left": int(left), "median_seconds": statistics.median(times) if times else None}


def fmt(value: Any, digits: int = 3) -> str:
    """Numbers for people: "undefined" for None."""
    if value is None:
        return "undefined"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def format_report(report: dict[str, Any]) -> str:
    c, p, r = report["counts"], report["pairwise"], report["rankings"]
    lines = [(f"judgments {c['judgments']}  annotators {c['annotators']}  items {c['items']} "
              f"(complete {c['items_complete']})"),
             f"pairwise units {p['units']} (with ≥2 labels {p['units_with_2plus']})",
             f"  raw agreement        {fmt(p['raw_agreement'])}",
             f"  Cohen's κ (mean of {p['cohen_pairs']} annotator pairs) {fmt(p['cohen_kappa_mean_over_pairs'])}",
             f"  Fleiss' κ ({p['fleiss_units']} units) {fmt(p['fleiss_kappa'])}",
             f"  Krippendorff's α     {fmt(p['krippendorff_alpha'])}",
             f"rankings ({r['ranking_items']} items with ≥2 annotators)",
             f"  Kendall's W (mean)   {fmt(r['kendall_w_mean'])}",
             f"  Kendall's τ_b (mean) {fmt(r['kendall_tau_b_mean'])}",
             *_format_aspects(report.get("aspects", [])),
             "annotator            n   gold            consensus       first-shown     median s"]
    for card in report["annotators"]:
        cells = [_cell(card[k]) for k in ("gold", "agreement_with_consensus", "chose_first_shown")]
        lines.append(f"{card['name'][:18]:<18} {card['judgments']:>4}   " + "  ".join(f"{x:<14}" for x in cells)
                     + f"  {fmt(card['median_seconds'], 1)}")
    return "\n".join(lines)


def _format_aspects(aspects: list[dict]) -> list[str]:
    lines = []
    for a in aspects:
        if not a["scores"]:
            continue
        lines.append(f"aspect {a['aspect']}: {a['scores']} scores of {a['responses']} responses "
                     f"({a['responses_with_2plus']} with ≥2)  mean {fmt(a['mean'], 2)}  "
                     f"α interval {fmt(a['alpha_interval'])}  α ordinal {fmt(a['alpha_ordinal'])}")
        for r in a["raters"]:
            lines.append(f"    {r['name'][:18]:<18} n {r['n']:>4}  offset {r['offset']:+.2f}  scale {fmt(r['scale'], 2)}")
    return lines


def _cell(rate: dict) -> str:
    if rate["rate"] is None:
        return "undefined"
    lo, hi = rate["wilson95"]
    return f"{rate['rate']:.2f} [{lo:.2f},{hi:.2f}]"
