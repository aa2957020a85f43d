// Shared helpers of the dashboard's pages: the API key, fetch, DOM and formatting.
// Plain scripts loaded in order by index.html (util, lanes, timeline, app, cluster, main);
// no build step.
"use strict";

const KEY_STORAGE = "orchestrator.apiKey";

function apiKey() {
  const url = new URL(window.location.href);
  const fromUrl = url.searchParams.get("key");
  if (fromUrl) {
    sessionStorage.setItem(KEY_STORAGE, fromUrl);
    url.searchParams.delete("key");  // keep the key out of the address bar and history
    history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
  return sessionStorage.getItem(KEY_STORAGE);
}

const KEY = apiKey();

async function api(path, options = {}) {
  const headers = Object.assign({ Accept: "application/json" }, options.headers || {});
  if (KEY) headers.Authorization = "Bearer " + KEY;
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, Object.assign({}, options, { headers }));
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (!response.ok) {
    const message = body && body.message ? body.message : response.status + " " + response.statusText;
    throw new Error(message);
  }
  return body;
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";

function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  return node;
}

function fmtMs(ms) {
  if (ms === null || ms === undefined) return "";
  return ms < 1000 ? Math.round(ms) + " ms" : (ms / 1000).toFixed(1) + " s";
}

function fmtS(seconds) {
  return seconds === null || seconds === undefined ? "" : fmtMs(seconds * 1000);
}

function fmtTime(epoch) {
  return epoch ? new Date(epoch * 1000).toLocaleTimeString() : "";
}

function fmtCount(n) {
  return n >= 10000 ? (n / 1000).toFixed(1) + "k" : String(n);
}

function short(value, limit = 300) {
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return text && text.length > limit ? text.slice(0, limit - 1) + "…" : text;
}

function durationOf(run) {
  if (run.run_ms !== null && run.run_ms !== undefined) return run.run_ms;
  if (run.started_at && !run.finished_at) return Date.now() - run.started_at * 1000;
  return null;
}

function setStatus(node, status) {
  node.textContent = status || "";
  node.dataset.status = status || "";
}

function statusBadge(status, text) {
  const badge = el("span", "status", text === undefined ? status : text);
  badge.dataset.status = status || "";
  return badge;
}

const STATUSES = ["queued", "running", "waiting", "completed", "error", "aborted"];
const TERMINAL = ["completed", "error", "aborted"];

function isTerminal(status) {
  return TERMINAL.includes(status);
}

// Stream ids are "ms-seq", or "ms-seq.i" for item i of an entry of several outputs (its
// last item has the plain id, so a plain id sorts after its entry's other items);
// compare numerically so the page can drop repeats.
const LAST_ITEM = 1n << 32n;

function parseId(id) {
  const [ms, rest] = id.split("-");
  const [seq, item] = (rest || "0").split(".");
  return [BigInt(ms), BigInt(seq || "0"), item === undefined ? LAST_ITEM : BigInt(item)];
}

function after(a, b) {
  const [am, as, ai] = parseId(a);
  const [bm, bs, bi] = parseId(b);
  return am > bm || (am === bm && (as > bs || (as === bs && ai > bi)));
}

// The id just before `id`, for "everything from `id` on" as an exclusive `after`.
function idBefore(id) {
  const [ms, seq, item] = parseId(id);
  if (item !== LAST_ITEM && item > 0n) return ms + "-" + seq + "." + (item - 1n);
  if (seq > 0n) return ms + "-" + (seq - 1n);
  return ms > 0n ? (ms - 1n) + "-18446744073709551615" : null;
}

function idMs(id) {
  return Number(id.split("-")[0]);
}

// Runs `fn` at most once per `interval` ms, soon after the last call (no rAF: it keeps
// going in a background tab, where the page still receives events).
function throttle(fn, interval) {
  let timer = null;
  let last = 0;
  const run = () => { timer = null; last = Date.now(); fn(); };
  const schedule = () => {
    if (timer !== null) return;
    timer = setTimeout(run, Math.max(0, last + interval() - Date.now()));
  };
  schedule.cancel = () => { if (timer !== null) clearTimeout(timer); timer = null; };
  schedule.now = () => { schedule.cancel(); run(); };
  return schedule;
}

function setConn(state) {
  document.getElementById("conn").dataset.state = state;
}

// Keeps one element per key in `container`, in the order of `items`, filling an element
// again only when its signature changes. A row under the pointer survives redraws, so a
// click on a live list lands (a row replaced between mousedown and mouseup gets none).
function syncRows(container, items, { key, sig, make, fill }) {
  const old = container.rowsByKey || new Map();
  const next = new Map();
  items.forEach((item, index) => {
    const id = key(item);
    const node = old.get(id) || make(item);
    const signature = sig(item, index);
    if (node.signature !== signature) {
      fill(node, item, index);
      node.signature = signature;
    }
    next.set(id, node);
  });
  for (const [id, node] of old) if (!next.has(id)) node.remove();
  let previous = null;
  for (const node of next.values()) {
    const wanted = previous ? previous.nextSibling : container.firstChild;
    if (wanted !== node) container.insertBefore(node, wanted);
    previous = node;
  }
  container.rowsByKey = next;
}
