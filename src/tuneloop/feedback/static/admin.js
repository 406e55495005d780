// The admin page: progress, agreement, per-annotator cards, export links. Text via textContent only.
"use strict";

function table(node, head, rows) {
  node.textContent = "";
  const tr = TL.el("tr", {});
  for (const h of head) tr.appendChild(TL.el("th", {}, h));
  node.appendChild(tr);
  for (const row of rows) {
    const line = TL.el("tr", {});
    for (const cell of row) line.appendChild(TL.el("td", {}, cell));
    node.appendChild(line);
  }
}

function rate(r) {
  if (!r || r.rate === null) return "undefined";
  return r.rate.toFixed(2) + " [" + r.wilson95[0].toFixed(2) + ", " + r.wilson95[1].toFixed(2) + "]  (" + r.k + "/" + r.n + ")";
}

async function load() {
  const me = await TL.me();
  document.getElementById("who").textContent = me.name + " (" + me.role + ")";
  const report = await TL.call("GET", "/api/admin/stats");
  const c = report.counts, p = report.pairwise, r = report.rankings;
  document.getElementById("counts").textContent = c.judgments + " judgments by " + c.annotators + " annotators; " +
    c.items_complete + " of " + c.items + " items have all their judgments.";
  table(document.getElementById("agreement"), ["statistic", "value", "over"], [
    ["raw pairwise agreement", TL.fmt(p.raw_agreement), p.units_with_2plus + " units with ≥ 2 labels"],
    ["Cohen's κ (mean over annotator pairs)", TL.fmt(p.cohen_kappa_mean_over_pairs), p.cohen_pairs + " pairs"],
    ["Fleiss' κ", TL.fmt(p.fleiss_kappa), p.fleiss_units + " units"],
    ["Krippendorff's α (nominal)", TL.fmt(p.krippendorff_alpha), p.units + " units"],
    ["Kendall's W (mean)", TL.fmt(r.kendall_w_mean), r.ranking_items + " ranking items"],
    ["Kendall's τ_b (mean over pairs)", TL.fmt(r.kendall_tau_b_mean), r.ranking_items + " ranking items"],
  ]);
  table(document.getElementById("annotators"),
        ["annotator", "judgments", "gold accuracy", "consensus", "first shown", "repeat consistency", "median s"],
        report.annotators.map((a) => [a.name, String(a.judgments), rate(a.gold), rate(a.agreement_with_consensus),
                                      rate(a.chose_first_shown), rate(a.repeat_consistency), TL.fmt(a.median_seconds, 1)]));
}

document.getElementById("refresh").addEventListener("click", () => load().catch(show));
document.getElementById("logout").addEventListener("click", TL.logout);
document.addEventListener("keydown", (e) => { if (e.key === "r" && !e.ctrlKey && !e.metaKey) load().catch(show); });
function show(err) { document.getElementById("status").textContent = err.message; }
load().catch(show);
