// The admin page: progress, agreement (table and chart), aspect scores, per-annotator cards, export links.
// Text via textContent only; the chart is SVG built node by node (no inline style: the CSP forbids it).
"use strict";

const SVG = "http://www.w3.org/2000/svg";

function table(node, head, rows) {
  node.textContent = "";
  const tr = TL.el("tr", {});
  for (const h of head) tr.appendChild(TL.el("th", {}, h));
  node.appendChild(tr);
  for (const row of rows) {
    const line = TL.el("tr", {});
    for (const cell of row) {
      const td = TL.el("td", {});
      if (cell instanceof Node) td.appendChild(cell); else td.textContent = String(cell);
      line.appendChild(td);
    }
    node.appendChild(line);
  }
}

function rate(r) {
  if (!r || r.rate === null) return "undefined";
  return r.rate.toFixed(2) + " [" + r.wilson95[0].toFixed(2) + ", " + r.wilson95[1].toFixed(2) + "]  (" + r.k + "/" + r.n + ")";
}

function plural(n, one, many) { return n + " " + (n === 1 ? one : many); }

function bar(value, max, text) {
  const wrap = TL.el("span", {});
  wrap.appendChild(TL.el("progress", { max: String(Math.max(max, 1)), value: String(value) }));
  wrap.appendChild(document.createTextNode(" " + text));
  return wrap;
}

function svgEl(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

// Horizontal bars on a 0…1 axis (a negative value shows as an empty bar with its number).
function chart(node, rows) {
  node.textContent = "";
  const left = 230, width = 320, height = 22;
  node.setAttribute("viewBox", "0 0 " + (left + width + 70) + " " + (rows.length * height + 6));
  node.setAttribute("width", left + width + 70);
  node.setAttribute("height", rows.length * height + 6);
  rows.forEach(([label, value], i) => {
    const y = 3 + i * height;
    node.appendChild(svgEl("text", { x: 0, y: y + 14 }, label));
    node.appendChild(svgEl("rect", { class: "track", x: left, y: y + 3, width, height: 13, rx: 3 }));
    const v = value === null || value === undefined ? 0 : Math.max(0, Math.min(1, value));
    node.appendChild(svgEl("rect", { class: "bar", x: left, y: y + 3, width: v * width, height: 13, rx: 3 }));
    node.appendChild(svgEl("text", { x: left + width + 8, y: y + 14 }, TL.fmt(value, 2)));
  });
}

async function load() {
  const me = await TL.me();
  document.getElementById("who").textContent = me.name + " (" + me.role + ")";
  const report = await TL.call("GET", "/api/admin/stats");
  const c = report.counts, p = report.pairwise, r = report.rankings;
  document.getElementById("counts").textContent = plural(c.judgments, "judgment", "judgments") + " by " +
    plural(c.annotators, "annotator", "annotators") + "; " + c.items_complete + " of " +
    plural(c.items, "item has", "items have") + " all their judgments.";
  const overall = document.getElementById("overall");
  overall.setAttribute("max", String(Math.max(c.items, 1)));
  overall.setAttribute("value", String(c.items_complete));
  table(document.getElementById("agreement"), ["statistic", "value", "over"], [
    ["raw pairwise agreement", TL.fmt(p.raw_agreement), plural(p.units_with_2plus, "unit", "units") + " with ≥ 2 labels"],
    ["Cohen's κ (mean over annotator pairs)", TL.fmt(p.cohen_kappa_mean_over_pairs), plural(p.cohen_pairs, "pair", "pairs")],
    ["Fleiss' κ", TL.fmt(p.fleiss_kappa), plural(p.fleiss_units, "unit", "units")],
    ["Krippendorff's α (nominal)", TL.fmt(p.krippendorff_alpha), plural(p.units, "unit", "units")],
    ["Kendall's W (mean)", TL.fmt(r.kendall_w_mean), plural(r.ranking_items, "ranking item", "ranking items")],
    ["Kendall's τ_b (mean over pairs)", TL.fmt(r.kendall_tau_b_mean), plural(r.ranking_items, "ranking item", "ranking items")],
  ]);
  const aspects = (report.aspects || []).filter((a) => a.scores > 0);
  chart(document.getElementById("agreement-chart"), [
    ["raw pairwise agreement", p.raw_agreement], ["Cohen's κ", p.cohen_kappa_mean_over_pairs],
    ["Fleiss' κ", p.fleiss_kappa], ["Krippendorff's α (pairs)", p.krippendorff_alpha],
    ["Kendall's W (rankings)", r.kendall_w_mean],
    ...aspects.map((a) => ["α interval · " + a.aspect, a.alpha_interval]),
  ]);
  table(document.getElementById("aspects"), ["aspect", "scores", "responses (≥ 2 raters)", "mean", "α interval", "α ordinal"],
        aspects.map((a) => [a.aspect, String(a.scores), a.responses + " (" + a.responses_with_2plus + ")", TL.fmt(a.mean, 2),
                            TL.fmt(a.alpha_interval), TL.fmt(a.alpha_ordinal)]));
  document.getElementById("raters").classList.toggle("hidden", !aspects.some((a) => a.raters.length));
  document.getElementById("aspects").classList.toggle("hidden", !aspects.length);
  table(document.getElementById("raters"), ["aspect", "annotator", "n", "offset", "scale"],
        aspects.flatMap((a) => a.raters.map((x) => [a.aspect, x.name, String(x.n),
                                                    (x.offset >= 0 ? "+" : "") + x.offset.toFixed(2), TL.fmt(x.scale, 2)])));
  table(document.getElementById("annotators"),
        ["annotator", "progress", "gold accuracy", "consensus", "first shown", "repeat consistency", "median s"],
        report.annotators.map((a) => [a.name, bar(a.judgments, a.judgments + a.left, a.judgments + " done · " + a.left + " left"),
                                      rate(a.gold), rate(a.agreement_with_consensus), rate(a.chose_first_shown),
                                      rate(a.repeat_consistency), TL.fmt(a.median_seconds, 1)]));
}

document.getElementById("refresh").addEventListener("click", () => load().catch(show));
document.getElementById("logout").addEventListener("click", TL.logout);
document.addEventListener("keydown", (e) => { if (e.key === "r" && !e.ctrlKey && !e.metaKey) load().catch(show); });
function show(err) { document.getElementById("status").textContent = err.message; }
load().catch(show);
