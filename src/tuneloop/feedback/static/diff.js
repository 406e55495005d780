// Word-level difference of two texts (longest common subsequence), rendered with textContent only.
"use strict";
const TLDiff = {
  MAX_TOKENS: 1500,
  tokens(text) { return text.split(/(\s+)/).filter((t) => t.length > 0); },
  // Returns [[op, token], ...] with op "=" (both), "-" (only in a), "+" (only in b); null when too long.
  compare(a, b) {
    const x = TLDiff.tokens(a), y = TLDiff.tokens(b);
    if (x.length > TLDiff.MAX_TOKENS || y.length > TLDiff.MAX_TOKENS) return null;
    const n = x.length, m = y.length, table = [];
    for (let i = 0; i <= n; i++) table.push(new Uint16Array(m + 1));
    for (let i = n - 1; i >= 0; i--)
      for (let j = m - 1; j >= 0; j--)
        table[i][j] = x[i] === y[j] ? table[i + 1][j + 1] + 1 : Math.max(table[i + 1][j], table[i][j + 1]);
    const out = [];
    let i = 0, j = 0;
    while (i < n && j < m) {
      if (x[i] === y[j]) { out.push(["=", x[i]]); i++; j++; }
      else if (table[i + 1][j] >= table[i][j + 1]) { out.push(["-", x[i]]); i++; }
      else { out.push(["+", y[j]]); j++; }
    }
    while (i < n) out.push(["-", x[i++]]);
    while (j < m) out.push(["+", y[j++]]);
    return out;
  },
  // Fill `node` with one side of the diff: side "a" shows "=" and "-", side "b" shows "=" and "+".
  render(node, ops, side) {
    node.textContent = "";
    node.classList.add("diff");
    for (const [op, token] of ops) {
      if (op === "=") node.appendChild(document.createTextNode(token));
      else if (op === "-" && side === "a") node.appendChild(TL.el("span", { class: "del" }, token));
      else if (op === "+" && side === "b") node.appendChild(TL.el("span", { class: "ins" }, token));
    }
  },
};
