// The annotator's page: one task at a time, judged with the keyboard.
// Candidate HTML comes from the server's safe Markdown renderer (raw HTML escaped, images as text); all
// other text is set with textContent. The CSP blocks inline script even if something slipped through.
"use strict";

const STRENGTHS = [["5", "significantly", "significantly better"], ["6", "better", "better"],
                   ["7", "slightly", "slightly better"], ["8", "negligibly", "negligibly better / unsure"]];
const LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const S = { correcting: null, task: null, outcome: null, winner: null, strength: "better", order: [], tied: new Set(),
            noneAcceptable: false, focus: 0, ratings: {}, flags: {}, scores: {}, aspect: 0, scoring: null,
            diff: false, activeMs: 0, busy: false };

function randomId() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function status(text, isError) {
  const node = document.getElementById("status");
  node.textContent = text;
  node.classList.toggle("error", Boolean(isError));
}

// Active time: the page is visible and either focused or used in the last 30 s.
let lastInput = 0, lastTick = performance.now();
document.addEventListener("keydown", () => { lastInput = Date.now(); }, true);
function tick() {
  const now = performance.now();
  const engaged = document.hasFocus() || Date.now() - lastInput < 30000;
  if (S.task && document.visibilityState === "visible" && engaged) S.activeMs += now - lastTick;
  lastTick = now;
}
setInterval(tick, 250);

function groups() {
  const out = [];
  S.order.forEach((id, i) => { if (i > 0 && S.tied.has(id)) out[out.length - 1].push(id); else out.push([id]); });
  return out;
}

// A response keeps the letter it was shown with (its place in the served order), wherever it is moved.
function letter(id) { return LETTERS[S.task.candidates.findIndex((c) => c.id === id)] || "?"; }

function show(task) {
  Object.assign(S, { task, correcting: task && task.supersedes ? task.supersedes : null, outcome: null, winner: null,
                     strength: "better", tied: new Set(), noneAcceptable: false, focus: 0, ratings: {}, flags: {},
                     scores: {}, aspect: 0, scoring: null, diff: false, activeMs: 0 });
  document.getElementById("done").classList.toggle("hidden", Boolean(task));
  for (const id of ["prompt-card", "candidates", "keys", "answer-card"])
    document.getElementById(id).classList.toggle("hidden", !task);
  document.getElementById("rationale").value = "";
  lastTick = performance.now();
  if (!task) return;
  S.order = task.candidates.map((c) => c.id);
  if (task.previous) restore(task.previous);
  const context = document.getElementById("context");
  context.textContent = "";
  for (const turn of task.context) {
    const node = TL.el("div", { class: "turn" });
    node.appendChild(TL.el("div", { class: "meta" }, turn.role));
    const body = TL.el("div", {});
    body.innerHTML = turn.html; // sanitised on the server
    node.appendChild(body);
    context.appendChild(node);
  }
  document.getElementById("prompt").innerHTML = task.prompt_html; // sanitised on the server
  document.getElementById("guideline").textContent = "· guidelines " + task.guideline_version +
    (S.correcting ? " · CORRECTING your previous judgment (Enter saves the correction)" : "");
  renderKeys();
  render();
}

// The correction view starts from the answer being corrected: choice or ranking, ratings, flags, scores.
function restore(previous) {
  const a = previous.answer || {};
  if (S.task.kind === "pairwise" && a.outcome) {
    S.outcome = a.outcome; S.winner = a.winner; S.strength = a.strength || "better";
  }
  if (S.task.kind === "ranking" && a.ranking) {
    S.order = a.ranking.flat();
    S.tied = new Set(a.ranking.flatMap((g) => g.slice(1)));
    S.noneAcceptable = Boolean(a.none_acceptable);
  }
  S.ratings = { ...(a.ratings || {}) };
  S.flags = Object.fromEntries(Object.entries(a.flags || {}).map(([k, v]) => [k, [...v]]));
  S.scores = Object.fromEntries(Object.entries(a.scores || {}).map(([k, v]) => [k, { ...v }]));
  document.getElementById("rationale").value = previous.rationale || "";
}

function candidateCard(cand, title, index) {
  const card = TL.el("article", { class: "card cand", "data-id": String(cand.id), "data-label": letter(cand.id) });
  const head = TL.el("h3", {});
  head.appendChild(TL.el("span", { class: "label-chip" }, letter(cand.id)));
  head.appendChild(document.createTextNode(title));
  card.appendChild(head);
  const body = TL.el("div", { class: "body" });
  body.innerHTML = cand.html; // sanitised on the server
  card.appendChild(body);
  if (cand.truncated) card.appendChild(TL.el("div", { class: "truncated" }, "cut off at the length limit"));
  const extra = [];
  if (S.ratings[cand.id]) extra.push("rating " + S.ratings[cand.id] + "/7");
  for (const [name, score] of Object.entries(S.scores[cand.id] || {})) extra.push(name + " " + score);
  for (const f of S.flags[cand.id] || []) extra.push("⚑ " + f);
  if (extra.length) card.appendChild(TL.el("div", { class: "meta" }, extra.join(" · ")));
  if (index === S.focus && S.task.candidates.length > 1) card.classList.add("focus");
  return card;
}

function render() {
  const box = document.getElementById("candidates");
  box.textContent = "";
  const task = S.task;
  if (task.kind === "pairwise") {
    box.className = "pair" + (S.diff ? " diff-on" : "");
    task.candidates.forEach((cand, i) => {
      const card = candidateCard(cand, "  [" + (i + 1) + "]", i);
      if (S.outcome === "win" && S.winner === cand.id) card.classList.add("picked");
      if (S.outcome === "both_bad") card.classList.add("bad");
      if (S.diff) {
        const ops = TLDiff.compare(task.candidates[0].text, task.candidates[1].text);
        if (ops) TLDiff.render(card.querySelector(".body"), ops, i === 0 ? "a" : "b");
      }
      box.appendChild(card);
    });
  } else if (task.kind === "ranking") {
    box.className = "ranking";
    const byId = Object.fromEntries(task.candidates.map((c) => [c.id, c]));
    let rank = 0;
    S.order.forEach((id, i) => {
      if (!(i > 0 && S.tied.has(id))) rank += 1;
      const title = " place " + rank + (i > 0 && S.tied.has(id) ? "  (= tied with the one above)" : "");
      box.appendChild(candidateCard(byId[id], title, i));
    });
  } else {
    box.className = "rating";
    box.appendChild(candidateCard(task.candidates[0], " the response to score", 0));
  }
  renderAnswer();
}

function renderAnswer() {
  const line = document.getElementById("answer-line");
  line.textContent = "";
  if (S.task.kind === "pairwise") {
    const names = { win: null, tie: "tie", both_bad: "both bad" };
    let text = "Your answer: ";
    if (S.outcome === null) text += "—";
    else if (S.outcome === "win") text += letter(S.winner) + " is " + STRENGTHS.find(([, name]) => name === S.strength)[2];
    else text += names[S.outcome];
    line.appendChild(TL.el("strong", {}, text));
    if (S.diff) line.appendChild(TL.el("span", { class: "on indicator", id: "diff-indicator" },
                                       "difference view on · d turns it off"));
  } else if (S.task.kind === "ranking") {
    const label = groups().map((g) => g.map(letter).join(" = ")).join("  >  ");
    line.appendChild(TL.el("strong", {}, "Ranking: " + label + (S.noneAcceptable ? "   (none acceptable)" : "")));
  } else {
    const missing = S.task.aspects.filter((a) => !(S.scores[focusedId()] || {})[a.name]).map((a) => a.name);
    line.appendChild(TL.el("strong", {}, missing.length ? "Score every aspect; left: " + missing.join(", ")
                                                        : "All aspects scored: Enter submits"));
  }
  renderAspects();
  const flagLine = document.getElementById("flag-line");
  flagLine.textContent = "";
  const mine = S.flags[focusedId()] || [];
  flagLine.appendChild(document.createTextNode("Flags for " + letter(focusedId()) + ": "));
  for (const [name, label, key] of S.task.flags) {
    const item = TL.el("span", { class: "flag" });
    item.appendChild(TL.el("kbd", mine.includes(name) ? { class: "on" } : {}, key));
    item.appendChild(document.createTextNode(" " + label));
    flagLine.appendChild(item);
  }
}

function renderAspects() {
  const panel = document.getElementById("aspect-panel");
  panel.textContent = "";
  panel.classList.toggle("hidden", !S.task.ask_scores);
  if (!S.task.ask_scores) return;
  const mine = S.scores[focusedId()] || {};
  panel.appendChild(TL.el("div", { class: "meta" }, S.task.kind === "rating"
    ? "Score the response on every aspect: ↑ ↓ or the aspect's key choose, a digit scores (and moves on)."
    : "Aspect scores for " + letter(focusedId()) + " (optional): the aspect's key, then a digit."));
  S.task.aspects.forEach((a, i) => {
    const selected = S.task.kind === "rating" ? i === S.aspect : S.scoring === i;
    const row = TL.el("div", { class: "row" + (selected ? " selected" : ""), "data-aspect": a.name });
    row.appendChild(TL.el("kbd", mine[a.name] ? { class: "on" } : {}, a.key));
    row.appendChild(TL.el("span", { class: "name" }, a.name));
    row.appendChild(TL.el("span", { class: "score" }, (mine[a.name] || "–") + " / " + a.scale[0] + "–" + a.scale[1]));
    row.appendChild(TL.el("span", { class: "guide" }, a.guideline));
    panel.appendChild(row);
  });
}

function renderKeys() {
  const keys = document.getElementById("keys");
  keys.textContent = "";
  const kind = S.task.kind;
  const rows = kind === "pairwise"
    ? [["1 / 2", "A / B is better"], ["0", "tie"], ["9", "both bad"],
       ...STRENGTHS.map(([k, , label]) => [k, label]), ["← / →", "focus A / B"], ["d", "highlight differences"]]
    : kind === "ranking"
      ? [["↑ / ↓", "focus"], ["Shift+↑ / Shift+↓", "move the focused response up / down"],
         ["=", "tie the focused response with the one above"], ["n", "none acceptable"]]
      : [["↑ / ↓", "choose an aspect"], ["digit", "score the chosen aspect"]];
  if (S.task.ask_scores) rows.push([S.task.aspects.map((a) => a.key).join(" "), "choose an aspect to score"]);
  if (kind !== "rating") rows.push(["Shift+1…7", "rate the focused response 1–7"]);
  rows.push(["c", "write a rationale"], ["u", "correct your previous judgment"], ["Enter", "submit"]);
  for (const [k, what] of rows) {
    const item = TL.el("span", {});
    item.appendChild(TL.el("kbd", {}, k));
    item.appendChild(document.createTextNode(" " + what + "   "));
    keys.appendChild(item);
  }
}

function focusedId() { return S.task.kind === "ranking" ? S.order[S.focus] : S.task.candidates[S.focus].id; }

function moveFocused(delta) {
  const i = S.focus, j = i + delta;
  if (j < 0 || j >= S.order.length) return;
  [S.order[i], S.order[j]] = [S.order[j], S.order[i]];
  const a = S.tied.has(S.order[i]), b = S.tied.has(S.order[j]); // tie marks stay with positions
  S.tied.delete(S.order[i]); S.tied.delete(S.order[j]);
  if (b) S.tied.add(S.order[i]);
  if (a) S.tied.add(S.order[j]);
  S.focus = j;
}

function setScore(aspectIndex, value) {
  const a = S.task.aspects[aspectIndex];
  if (value < a.scale[0] || value > a.scale[1]) { status(a.name + " takes " + a.scale[0] + "–" + a.scale[1] + ".", true); return; }
  const id = focusedId();
  S.scores[id] = { ...(S.scores[id] || {}), [a.name]: value };
  status("");
}

function answer() {
  const extra = { flags: S.flags };
  if (Object.keys(S.scores).length) extra.scores = S.scores;
  if (S.task.kind === "rating") return { scores: S.scores, flags: S.flags };
  extra.ratings = S.ratings;
  if (S.task.kind === "pairwise") {
    if (S.outcome === null) return null;
    return S.outcome === "win" ? { outcome: "win", winner: S.winner, strength: S.strength, ...extra } : { outcome: S.outcome, ...extra };
  }
  return { ranking: groups(), none_acceptable: S.noneAcceptable, ...extra };
}

async function submit() {
  const ans = answer();
  if (!ans) { status("Pick an answer first: 1, 2, 0 or 9.", true); return; }
  if (S.busy) return;
  S.busy = true;
  tick();
  const target = S.correcting ? { supersedes: S.correcting } : { lease_id: S.task.lease_id };
  const body = { id: randomId(), ...target, answer: ans,
                 rationale: document.getElementById("rationale").value, active_ms: Math.round(S.activeMs) };
  try {
    let result = null;
    for (let attempt = 0; attempt < 3 && !result; attempt++) { // the same id: a retry cannot double-count
      try { result = await TL.call("POST", "/api/judgments", body); }
      catch (err) { if (err.status || attempt === 2) throw err; await new Promise((r) => setTimeout(r, 500)); }
    }
    status(S.correcting ? "Correction saved." : "Saved.");
    show(result.next);
    refreshMe();
  } catch (err) {
    status(err.message, true);
    if (err.status === 409) show(await TL.call("POST", "/api/tasks/next", {}));
  } finally { S.busy = false; }
}

// Keys for scoring aspects; returns true when the key was one.
function scoringKey(event, digit) {
  if (!S.task.ask_scores) return false;
  const aspects = S.task.aspects;
  const chosen = aspects.findIndex((a) => a.key === event.key);
  if (S.task.kind === "rating") {
    if (chosen >= 0) { S.aspect = chosen; return true; }
    if (event.key === "ArrowUp" || event.key === "ArrowDown") {
      S.aspect = Math.max(0, Math.min(aspects.length - 1, S.aspect + (event.key === "ArrowUp" ? -1 : 1)));
      return true;
    }
    if (digit && !event.shiftKey) {
      setScore(S.aspect, +digit[1]);
      const next = aspects.findIndex((a) => !(S.scores[focusedId()] || {})[a.name]);
      if (next >= 0) S.aspect = next;
      return true;
    }
    return false;
  }
  if (chosen >= 0) { S.scoring = S.scoring === chosen ? null : chosen; return true; } // the next digit scores it
  if (S.scoring !== null && digit && !event.shiftKey) { setScore(S.scoring, +digit[1]); S.scoring = null; return true; }
  return false;
}

function onKey(event) {
  const typing = document.activeElement && document.activeElement.id === "rationale";
  if (typing) { if (event.key === "Escape") document.activeElement.blur(); return; }
  if (event.key === "u" && !S.correcting) { event.preventDefault(); correctLast().catch((e) => status(e.message, true)); return; }
  if (!S.task) return;
  const pair = S.task.kind === "pairwise", ranking = S.task.kind === "ranking";
  const digit = /^Digit([0-9])$/.exec(event.code);
  let handled = true;
  if (event.key === "Enter") { event.preventDefault(); submit(); return; }
  else if (event.key === "c") { event.preventDefault(); document.getElementById("rationale").focus(); return; }
  else if (scoringKey(event, digit)) { /* an aspect score */ }
  else if (S.task.kind !== "rating" && event.shiftKey && digit && +digit[1] >= 1 && +digit[1] <= 7) S.ratings[focusedId()] = +digit[1];
  else if (pair && (event.key === "1" || event.key === "2")) {
    S.outcome = "win"; S.winner = S.task.candidates[+event.key - 1].id;
  } else if (pair && event.key === "0") { S.outcome = "tie"; S.winner = null; }
  else if (pair && event.key === "9") { S.outcome = "both_bad"; S.winner = null; }
  else if (pair && STRENGTHS.some(([k]) => k === event.key)) S.strength = STRENGTHS.find(([k]) => k === event.key)[1];
  else if (pair && (event.key === "ArrowLeft" || event.key === "ArrowRight")) S.focus = event.key === "ArrowLeft" ? 0 : 1;
  else if (pair && event.key === "d") S.diff = !S.diff;
  else if (ranking && (event.key === "ArrowUp" || event.key === "ArrowDown")) {
    const delta = event.key === "ArrowUp" ? -1 : 1;
    if (event.shiftKey) moveFocused(delta);
    else S.focus = Math.max(0, Math.min(S.order.length - 1, S.focus + delta));
  } else if (ranking && event.key === "=") {
    const id = S.order[S.focus];
    if (S.focus > 0) { if (S.tied.has(id)) S.tied.delete(id); else S.tied.add(id); }
  } else if (ranking && event.key === "n") S.noneAcceptable = !S.noneAcceptable;
  else {
    const flag = S.task.flags.find(([, , key]) => key === event.key);
    if (flag) {
      const id = focusedId(), list = S.flags[id] || [];
      S.flags[id] = list.includes(flag[0]) ? list.filter((f) => f !== flag[0]) : [...list, flag[0]];
    } else handled = false;
  }
  if (handled) { event.preventDefault(); render(); }
}

async function correctLast() {
  const mine = await TL.call("GET", "/api/judgments/mine?limit=1");
  if (!mine.judgments.length) { status("Nothing to correct yet.", true); return; }
  show(await TL.call("GET", "/api/judgments/" + encodeURIComponent(mine.judgments[0].id) + "/task"));
}

async function refreshMe() {
  const me = await TL.me();
  document.getElementById("who").textContent = me.name + " (" + me.role + ")";
  document.getElementById("admin-link").classList.toggle("hidden", me.role !== "admin");
  const s = me.stats;
  document.getElementById("progress").textContent =
    "judged " + s.judged + " · left for you " + s.left +
    (s.median_seconds === null ? "" : " · median " + TL.fmt(s.median_seconds, 1) + " s");
}

async function start() {
  document.addEventListener("keydown", onKey);
  document.getElementById("logout").addEventListener("click", TL.logout);
  await refreshMe();
  show(await TL.call("POST", "/api/tasks/next", {}));
}

start().catch((err) => status(err.message, true));
