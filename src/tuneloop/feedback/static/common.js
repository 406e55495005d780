// Shared helpers: JSON calls that carry the session's CSRF token; text goes in via textContent only.
"use strict";
const TL = {
  csrf: null,
  async call(method, url, body) {
    const headers = { "Accept": "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method !== "GET" && TL.csrf) headers["X-CSRF-Token"] = TL.csrf;
    const response = await fetch(url, { method, headers, credentials: "same-origin",
                                        body: body === undefined ? undefined : JSON.stringify(body) });
    if (response.status === 401 && !url.endsWith("/api/login")) { window.location.assign("/login"); throw new Error("log in"); }
    const data = await response.json().catch(() => ({}));
    if (!response.ok) { const err = new Error(data.error || ("HTTP " + response.status)); err.status = response.status; throw err; }
    return data;
  },
  el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = String(text);
    return node;
  },
  fmt(x, digits) { return (x === null || x === undefined) ? "undefined" : (typeof x === "number" ? x.toFixed(digits ?? 3) : String(x)); },
  async me() { const me = await TL.call("GET", "/api/me"); TL.csrf = me.csrf; return me; },
  async logout() { await TL.call("POST", "/api/logout", {}); window.location.assign("/login"); },
};
