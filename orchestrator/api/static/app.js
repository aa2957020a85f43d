// The orchestrator dashboard: a live runs list and a run view with one lane per agent.
// Plain JS, no build step. The API key comes from ?key= once and is kept in sessionStorage.
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

function fmtMs(ms) {
  if (ms === null || ms === undefined) return "";
  return ms < 1000 ? Math.round(ms) + " ms" : (ms / 1000).toFixed(1) + " s";
}

function fmtTime(epoch) {
  return epoch ? new Date(epoch * 1000).toLocaleTimeString() : "";
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

// ---------------------------------------------------------------- runs list

const list = { timer: null };

async function refreshList() {
  const params = new URLSearchParams({ limit: "50" });
  const status = document.getElementById("filter-status").value;
  const agent = document.getElementById("filter-agent").value.trim();
  if (status) params.set("status", status);
  if (agent) params.set("agent", agent);
  const errorNode = document.getElementById("list-error");
  try {
    const page = await api("/v1/runs?" + params);
    errorNode.textContent = "";
    renderRuns(page.runs);
  } catch (err) {
    errorNode.textContent = err.message;
  }
}

function renderRuns(runs) {
  const body = document.querySelector("#runs tbody");
  const rows = runs.map((run) => {
    const tr = el("tr");
    tr.dataset.runId = run.run_id;
    tr.appendChild(el("td", null, run.run_id.slice(0, 12)));
    const statusCell = el("td");
    const badge = el("span", "status");
    setStatus(badge, run.status);
    statusCell.appendChild(badge);
    tr.appendChild(statusCell);
    tr.appendChild(el("td", null, run.agent));
    tr.appendChild(el("td", null, fmtTime(run.submitted_at)));
    tr.appendChild(el("td", null, fmtMs(run.queue_ms)));
    tr.appendChild(el("td", null, fmtMs(durationOf(run))));
    tr.appendChild(el("td", null, run.total_tokens === null ? "" : String(run.total_tokens)));
    tr.addEventListener("click", () => { window.location.hash = "#/runs/" + run.run_id; });
    return tr;
  });
  body.replaceChildren(...rows);
}

async function submitRun(event) {
  event.preventDefault();
  const errorNode = document.getElementById("submit-error");
  const payload = {
    agent: document.getElementById("submit-agent").value.trim(),
    message: document.getElementById("submit-message").value,
  };
  const session = document.getElementById("submit-session").value.trim();
  if (session) payload.session_id = session;
  try {
    const run = await api("/v1/runs", { method: "POST", body: JSON.stringify(payload) });
    errorNode.textContent = "";
    window.location.hash = "#/runs/" + run.run_id;
  } catch (err) {
    errorNode.textContent = err.message;
  }
}

function showList() {
  document.getElementById("list-view").hidden = false;
  document.getElementById("run-view").hidden = true;
  refreshList();
  list.timer = setInterval(refreshList, 1000);
}

function hideList() {
  if (list.timer) clearInterval(list.timer);
  list.timer = null;
}

// ---------------------------------------------------------------- run view

// Stream ids are "ms-seq"; compare numerically so the page can drop repeats.
function parseId(id) {
  const [ms, seq] = id.split("-");
  return [BigInt(ms), BigInt(seq || "0")];
}

function after(a, b) {
  const [am, as] = parseId(a);
  const [bm, bs] = parseId(b);
  return am > bm || (am === bm && as > bs);
}

class RunView {
  constructor(runId) {
    this.runId = runId;
    this.sessionId = null;
    this.lastId = null;
    this.lanes = new Map();        // agent_call_id -> lane
    this.eventCount = 0;
    this.tokens = 0;
    this.source = null;
    this.closed = false;
    this.retryTimer = null;
    this.recordTimer = null;
    this.record = null;
  }

  async open() {
    document.getElementById("list-view").hidden = true;
    document.getElementById("run-view").hidden = false;
    document.getElementById("lanes").replaceChildren();
    document.getElementById("final").hidden = true;
    document.getElementById("run-id").textContent = this.runId;
    document.getElementById("run-events").textContent = "0";
    document.getElementById("run-tokens").textContent = "0";
    document.getElementById("run-error").textContent = "";
    const abort = document.getElementById("abort");
    abort.disabled = false;
    abort.onclick = () => this.abort();
    try {
      await this.refreshRecord();
    } catch (err) {
      document.getElementById("run-error").textContent = err.message;
      return;
    }
    this.sessionId = this.record.session_id;
    this.connect();
    this.recordTimer = setInterval(() => this.refreshRecord().catch(() => {}), 1000);
  }

  close() {
    this.closed = true;
    if (this.source) this.source.close();
    if (this.retryTimer) clearTimeout(this.retryTimer);
    if (this.recordTimer) clearInterval(this.recordTimer);
    setConn("idle");
  }

  async refreshRecord() {
    const run = await api("/v1/runs/" + encodeURIComponent(this.runId));
    this.record = run;
    setStatus(document.getElementById("run-status"), run.status);
    document.getElementById("run-agent").textContent = run.agent;
    document.getElementById("run-session").textContent = run.session_id;
    document.getElementById("run-queued").textContent = fmtMs(run.timings.queue_ms);
    document.getElementById("run-duration").textContent = fmtMs(durationOf({
      run_ms: run.timings.run_ms, started_at: run.started_at, finished_at: run.finished_at,
    }));
    if (run.usage && typeof run.usage.total_tokens === "number") {
      document.getElementById("run-tokens").textContent = String(run.usage.total_tokens);
    }
    const terminal = ["completed", "error", "aborted"].includes(run.status);
    document.getElementById("abort").disabled = terminal;
    if (run.error) document.getElementById("run-error").textContent = run.error;
  }

  // One EventSource on the session stream: forks publish there under their own origins.
  connect(fromId = this.lastId) {
    if (this.closed) return;
    const params = new URLSearchParams();
    if (KEY) params.set("access_token", KEY);
    // A fresh EventSource starts from ?from=; its own reconnects send Last-Event-ID.
    if (fromId) params.set("from", fromId);
    const url = "/v1/sessions/" + encodeURIComponent(this.sessionId) + "/events?" + params;
    const source = new EventSource(url);
    this.source = source;
    source.onopen = () => setConn("live");
    for (const kind of ["event", "response", "status"]) {
      source.addEventListener(kind, (message) => this.receive(message));
    }
    source.addEventListener("error", (message) => {
      if (message.data) document.getElementById("run-error").textContent = message.data;
    });
    source.onerror = () => {
      setConn("reconnecting");
      if (source.readyState === EventSource.CLOSED && !this.closed) {
        // The browser gave up (e.g. a 503): start again after the last entry we have.
        this.retryTimer = setTimeout(() => this.connect(), 1000);
      }
    };
  }

  receive(message) {
    const id = message.lastEventId;
    if (id && this.lastId && !after(id, this.lastId)) return;  // already shown
    if (id) this.lastId = id;
    let entry;
    try { entry = JSON.parse(message.data); } catch (_) { return; }
    this.eventCount += 1;
    document.getElementById("run-events").textContent = String(this.eventCount);
    document.getElementById("lanes").dataset.lastId = this.lastId || "";
    if (entry.kind === "event") this.onEvent(entry.output);
    else if (entry.kind === "response") this.onResponse(entry);
    else if (entry.kind === "status") this.onStatus(entry.status);
  }

  lane(origin) {
    const key = origin.agent_call_id;
    let lane = this.lanes.get(key);
    if (lane) return lane;
    const node = el("div", "lane");
    node.dataset.agentCallId = key;
    node.dataset.depth = String(origin.fork_depth || 0);
    if (origin.fork_id) node.dataset.forkId = origin.fork_id;
    const head = el("div", "lane-head");
    const title = el("span", "lane-title",
      origin.fork_id ? "fork " + origin.fork_id : "agent " + key.slice(0, 12));
    const meta = el("span", "lane-meta",
      "depth " + (origin.fork_depth || 0) + (origin.tool_name ? " · via " + origin.tool_name : ""));
    const state = el("span", "status");
    setStatus(state, "running");
    const tokens = el("span", "lane-meta lane-tokens", "");
    head.append(title, meta, state, tokens);
    const body = el("div", "lane-body");
    const children = el("div", "children");
    node.append(head, body, children);
    const parent = origin.parent_agent_call_id ? this.lanes.get(origin.parent_agent_call_id) : null;
    if (parent) parent.children.appendChild(node);
    else {
      if (origin.fork_depth) node.style.marginLeft = (1.2 * origin.fork_depth) + "rem";
      document.getElementById("lanes").appendChild(node);
    }
    lane = { node, body, children, title, state, tokensNode: tokens, tokens: 0,
             text: null, streamed: false, tools: new Map() };
    this.lanes.set(key, lane);
    return lane;
  }

  add(lane, cls, text) {
    const node = el("div", "item " + cls, text);
    lane.body.appendChild(node);
    return node;
  }

  onEvent(output) {
    const event = output.event;
    const lane = this.lane(output.origin);
    const handler = EVENT_HANDLERS[event.event_type];
    if (handler) handler.call(this, lane, event);
  }

  onResponse(entry) {
    const output = entry.output;
    if (output.origin && output.origin.fork_id) return;
    const text = typeof output.response === "string" ? output.response : JSON.stringify(output.response);
    if (entry.run_id === this.runId) {
      document.getElementById("final").hidden = false;
      document.getElementById("final-text").textContent = text;
    }
  }

  onStatus(status) {
    if (status.run_id !== this.runId) return;
    setStatus(document.getElementById("run-status"), status.status);
    if (["completed", "error", "aborted"].includes(status.status)) {
      document.getElementById("abort").disabled = true;
      const root = this.lanes.get(this.runId);
      if (root && root.state.dataset.status === "running") setStatus(root.state, status.status);
      this.refreshRecord().catch(() => {});
    }
  }

  addTokens(lane, usage) {
    if (!usage || typeof usage.total_tokens !== "number") return;
    lane.tokens += usage.total_tokens;
    lane.tokensNode.textContent = lane.tokens + " tokens";
    this.tokens += usage.total_tokens;
    document.getElementById("run-tokens").textContent = String(this.tokens);
  }

  async abort() {
    const button = document.getElementById("abort");
    button.disabled = true;
    try {
      await api("/v1/runs/" + encodeURIComponent(this.runId) + "/abort", {
        method: "POST", body: JSON.stringify({ reason: "dashboard" }),
      });
    } catch (err) {
      document.getElementById("run-error").textContent = err.message;
      button.disabled = false;
    }
  }
}

function chunkText(chunk) {
  const choices = (chunk && chunk.choices) || [];
  if (!choices.length) return "";
  const delta = choices[0].delta || {};
  return typeof delta.content === "string" ? delta.content : "";
}

function toolNode(lane, event) {
  let node = lane.tools.get(event.tool_call_id);
  if (!node) {
    node = el("div", "item tool");
    node.dataset.toolCallId = event.tool_call_id;
    node.call = el("span", "call", "→ " + event.tool_name + "(…)");
    node.timing = el("span", "timing", "");
    node.result = el("div", "result", "");
    node.append(node.call, " ", node.timing, node.result);
    lane.body.appendChild(node);
    lane.tools.set(event.tool_call_id, node);
    lane.text = null;
  }
  return node;
}

function callText(event) {
  const args = Object.entries(event.arguments || {})
    .map(([k, v]) => k + "=" + short(v, 80)).join(", ");
  return "→ " + event.tool_name + "(" + args + ")";
}

const EVENT_HANDLERS = {
  react_start(lane, event) {
    if (!lane.node.dataset.forkId) lane.title.textContent = "agent " + (event.func_name || "");
  },
  llm_call_start(lane, event) {
    lane.text = null;
    lane.streamed = false;
  },
  llm_chunk_arrive(lane, event) {
    const text = chunkText(event.chunk);
    if (!text) return;
    if (!lane.text) lane.text = this.add(lane, "text", "");
    lane.text.textContent += text;
    lane.streamed = true;
  },
  llm_call_end(lane, event) {
    // A model call that did not stream (or whose chunks were not published) shows its text.
    if (!lane.streamed && event.content) this.add(lane, "text", event.content);
    lane.text = null;
    this.add(lane, "llm", "model call " + (event.execution_time || 0).toFixed(2) + " s" +
      (event.usage ? " · " + (event.usage.total_tokens || 0) + " tokens" : ""));
    this.addTokens(lane, event.usage);
  },
  llm_call_error(lane, event) {
    this.add(lane, "err", "✗ model call failed: " + (event.error_message || event.error));
  },
  tool_call_arguments_delta(lane, event) {
    const node = toolNode(lane, event);
    node.argText = (node.argText || "") + (event.delta || event.argcontent_delta || "");
    node.call.textContent = "→ " + event.tool_name + "(" + short(node.argText, 200) + ")";
  },
  tool_call_start(lane, event) {
    toolNode(lane, event).call.textContent = callText(event);
  },
  tool_call_end(lane, event) {
    const node = toolNode(lane, event);
    node.call.textContent = callText(event);
    node.timing.textContent = ((event.execution_time || 0) * 1000).toFixed(0) + " ms";
    node.result.textContent = "✓ " + short(event.result);
  },
  tool_call_error(lane, event) {
    const node = toolNode(lane, event);
    node.timing.textContent = ((event.execution_time || 0) * 1000).toFixed(0) + " ms";
    node.result.textContent = "✗ " + (event.error_message || event.error);
    node.result.classList.add("error");
  },
  custom_event(lane, event) {
    this.add(lane, "custom", "• " + event.event_name + " " + short(event.data));
    lane.text = null;
  },
  react_end(lane, event) {
    const extra = event.extra || {};
    const state = extra.aborted ? "aborted" : extra.error ? "error" : "completed";
    setStatus(lane.state, state);
    const usage = event.total_token_usage;
    this.add(lane, "end", "■ " + state + " · " + event.total_llm_calls + " model call(s), " +
      event.total_tool_calls + " tool call(s)" +
      (usage ? ", " + (usage.total_tokens || 0) + " tokens" : "") + ", " +
      (event.total_execution_time || 0).toFixed(2) + " s");
    lane.text = null;
  },
};

function setConn(state) {
  document.getElementById("conn").dataset.state = state;
}

// ---------------------------------------------------------------- routing

let current = null;

function route() {
  hideList();
  if (current) { current.close(); current = null; }
  const match = window.location.hash.match(/^#\/runs\/([^/]+)$/);
  if (match) {
    current = new RunView(decodeURIComponent(match[1]));
    window.currentRunView = current;  // for debugging and browser tests
    current.open();
  } else {
    showList();
  }
}

async function showAuth() {
  const note = document.getElementById("auth-note");
  try {
    const health = await api("/healthz");
    note.textContent = health.auth === "open" ? "⚠ open API (no keys)" : KEY ? "key set" : "no key: add ?key=";
  } catch (_) {
    note.textContent = "";
  }
}

document.getElementById("submit-form").addEventListener("submit", submitRun);
document.getElementById("filter-status").addEventListener("change", refreshList);
document.getElementById("filter-agent").addEventListener("change", refreshList);
window.addEventListener("hashchange", route);
showAuth();
route();
