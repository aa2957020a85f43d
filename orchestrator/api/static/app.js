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

const TERMINAL = ["completed", "error", "aborted"];
const SPAWN_TOOL = "selfref_fork_spawn";
const GATHER_TOOL = "selfref_fork_gather_all";
const GATHER_WAITING = "fork_gather_waiting";
const FORK_FIELDS = ["fork_id", "fork_depth", "fork_seq", "tool_name", "parent_agent_call_id"];

function isTerminal(status) {
  return TERMINAL.includes(status);
}

// A fork's run id is "<root run id>.fork_N": the fork id, for a fork known only by a
// status entry so far (its events carry the fork id in their origin).
function forkIdOf(runId) {
  const match = /\.(fork_\d+)$/.exec(runId);
  return match ? match[1] : null;
}

// One lane per agent of the run's fork tree: the root, and each fork nested in its parent.
// A lane's status: queued (announced) -> running (its events) <-> waiting (suspended in a
// gather) -> completed | error | aborted (its terminal status entry has the last word).
class RunView {
  constructor(runId) {
    this.runId = runId;
    this.sessionId = null;
    this.lastId = null;
    this.lanes = new Map();        // agent_call_id (= run id) -> lane
    this.forks = new Map();        // fork_id -> lane
    this.spawns = new Map();       // fork_id -> {parentId, depth}, from spawn results
    this.gathers = new Set();      // gather indicators still in progress
    this.eventCount = 0;
    this.tokens = 0;
    this.rootEnded = false;
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
    // A poll answered before the run's terminal status entry must not undo it.
    if (!this.rootEnded || isTerminal(run.status)) {
      setStatus(document.getElementById("run-status"), run.status);
    }
    document.getElementById("run-agent").textContent = run.agent;
    document.getElementById("run-session").textContent = run.session_id;
    document.getElementById("run-queued").textContent = fmtMs(run.timings.queue_ms);
    document.getElementById("run-duration").textContent = fmtMs(durationOf({
      run_ms: run.timings.run_ms, started_at: run.started_at, finished_at: run.finished_at,
    }));
    if (run.usage && typeof run.usage.total_tokens === "number") {
      // The record counts the root's tokens; the stream adds its forks'.
      document.getElementById("run-tokens").textContent =
        String(Math.max(run.usage.total_tokens, this.tokens));
    }
    const terminal = isTerminal(run.status) || this.rootEnded;
    document.getElementById("abort").disabled = terminal;
    if (run.error) document.getElementById("run-error").textContent = run.error;
  }

  // One EventSource on the session stream; entries of other runs in the session are
  // skipped, the run's own and its forks' (same root_run_id) are shown.
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
    if ((entry.root_run_id || entry.run_id) !== this.runId) return;  // another turn's
    this.eventCount += 1;
    document.getElementById("run-events").textContent = String(this.eventCount);
    document.getElementById("lanes").dataset.lastId = this.lastId || "";
    if (entry.kind === "event") this.onEvent(entry.output);
    else if (entry.kind === "response") this.onResponse(entry);
    else if (entry.kind === "status") this.onStatus(entry.status);
  }

  // The lane of one agent call, made on first sight (a fork's "queued" status entry or
  // any event); where it nests is settled once its parent is known.
  lane(runId) {
    let lane = this.lanes.get(runId);
    if (lane) return lane;
    const node = el("div", "lane");
    node.dataset.agentCallId = runId;
    node.dataset.depth = "0";
    const head = el("div", "lane-head");
    const title = el("span", "lane-title", "agent " + runId.slice(0, 12));
    const meta = el("span", "lane-meta", runId === this.runId ? "root" : "");
    const state = el("span", "status");
    const tokens = el("span", "lane-meta lane-tokens", "");
    head.append(title, meta, state, tokens);
    const body = el("div", "lane-body");
    const children = el("div", "children");
    node.append(head, body, children);
    lane = { id: runId, node, body, children, title, meta, state, tokensNode: tokens, tokens: 0,
             text: null, streamed: false, tools: new Map(), gathers: new Map(),
             fork: {}, forkId: null, described: false, parentId: null, ended: false,
             spawned: [] };
    this.lanes.set(runId, lane);
    const container = document.getElementById("lanes");
    if (runId === this.runId) {
      container.prepend(node);
      // Forks announced before the root's lane existed move under it.
      for (const other of this.lanes.values()) {
        if (other !== lane && !other.parentId) lane.children.appendChild(other.node);
      }
    } else {
      // Until its parent is known, a fork sits under the root.
      const root = this.lanes.get(this.runId);
      (root ? root.children : container).appendChild(node);
      const forkId = forkIdOf(runId);
      if (forkId) this.markFork(lane, { fork_id: forkId });
    }
    return lane;
  }

  // Records what is known of a fork (from its events' origin, its run id or its spawn's
  // result) and shows it: fork id, depth, place among its parent's forks, nesting.
  markFork(lane, info) {
    for (const field of FORK_FIELDS) {
      if (info[field] !== null && info[field] !== undefined) lane.fork[field] = info[field];
    }
    const fork = lane.fork;
    if (fork.fork_id && lane.forkId !== fork.fork_id) {
      lane.forkId = fork.fork_id;
      lane.node.dataset.forkId = fork.fork_id;
      lane.title.textContent = "fork " + fork.fork_id;
      this.forks.set(fork.fork_id, lane);
    }
    const spawn = this.spawns.get(lane.forkId) || {};
    const depth = fork.fork_depth || spawn.depth || 0;
    lane.node.dataset.depth = String(depth);
    lane.meta.textContent = ["depth " + (depth || "?"),
      fork.fork_seq ? "#" + fork.fork_seq : "",
      fork.tool_name ? "via " + fork.tool_name : ""].filter(Boolean).join(" · ");
    this.nest(lane, fork.parent_agent_call_id || spawn.parentId);
  }

  nest(lane, parentId) {
    if (!parentId || lane.parentId === parentId || parentId === lane.id) return;
    const parent = this.lane(parentId);
    lane.parentId = parentId;
    lane.node.dataset.parentAgentCallId = parentId;
    parent.children.appendChild(lane.node);
  }

  // Status changes only move forward: a terminal status stays, except that a status
  // entry (authoritative) may correct one inferred from events.
  setLaneStatus(lane, status, authoritative = false) {
    const current = lane.state.dataset.status;
    if (current === status) return;
    if (isTerminal(current) && !(authoritative && isTerminal(status))) return;
    if (status === "queued" && current) return;  // announced after it started
    setStatus(lane.state, status);
    lane.node.dataset.status = status;
    if (lane.forkId) this.updateGathers();
  }

  add(lane, cls, text) {
    const node = el("div", "item " + cls, text);
    lane.body.appendChild(node);
    return node;
  }

  onEvent(output) {
    const event = output.event;
    const origin = output.origin;
    const lane = this.lane(origin.agent_call_id);
    if (origin.fork_id && !lane.described) {
      lane.described = true;  // every event of an agent carries the same origin
      this.markFork(lane, origin);
    }
    if (event.event_type !== "react_end") this.setLaneStatus(lane, "running");
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

  // Status entries of the run itself set the run's status; a fork's set only its lane.
  onStatus(status) {
    const lane = this.lane(status.run_id);
    this.setLaneStatus(lane, status.status, true);
    if (isTerminal(status.status) && !lane.ended) {
      // Ended without a ReactEnd of its own (e.g. aborted while queued): say so.
      const why = status.abort_reason || status.error || "";
      this.add(lane, "end", "■ " + status.status + (why ? " · " + why : ""));
      lane.ended = true;
    }
    if (status.run_id !== this.runId) return;
    setStatus(document.getElementById("run-status"), status.status);
    if (isTerminal(status.status)) {
      this.rootEnded = true;
      document.getElementById("abort").disabled = true;
      this.refreshRecord().catch(() => {});
    }
  }

  // ---- gathers: one indicator per gather call, "gathering k/n" as awaited forks end

  gatherOf(lane, toolCallIds) {
    const key = toolCallIds.join(",");
    let gather = lane.gathers.get(key);
    if (!gather) {
      const node = this.add(lane, "gather", "");
      node.dataset.toolCallIds = key;
      const label = el("span", "gather-label", "");
      const bar = el("progress");
      const chips = el("span", "chips");
      node.append(label, " ", bar, " ", chips);
      gather = { key, node, label, bar, chips, forkIds: [], results: null, failed: null };
      lane.gathers.set(key, gather);
      this.gathers.add(gather);
      lane.text = null;
    }
    return gather;
  }

  onGatherWaiting(lane, data) {
    const callIds = data.tool_call_ids || [];
    const gather = this.gatherOf(lane, callIds);
    // A gather of all forks (no fork_ids) also covers forks that ended before it waited.
    const named = callIds.flatMap((id) => {
      const call = lane.tools.get(id);
      const ids = call && call.args ? call.args.fork_ids : null;
      return ids === null || ids === undefined ? lane.spawned : [].concat(ids);
    });
    gather.forkIds = [...new Set([...gather.forkIds, ...named, ...(data.waiting_for || [])])];
    this.setLaneStatus(lane, "waiting");
    this.renderGather(gather);
  }

  onGatherEnd(lane, event, failed) {
    const callId = event.tool_call_id;
    const known = [...lane.gathers.values()].find((g) => g.key.split(",").includes(callId));
    const gather = known || this.gatherOf(lane, [callId]);
    if (failed) gather.failed = failed;
    else {
      gather.results = event.result && typeof event.result === "object" ? event.result : {};
      gather.forkIds = [...new Set([...gather.forkIds, ...Object.keys(gather.results)])];
    }
    this.gathers.delete(gather);
    this.renderGather(gather);
  }

  forkStatus(forkId) {
    const lane = this.forks.get(forkId);
    return lane ? lane.state.dataset.status || "queued" : "queued";
  }

  updateGathers() {
    for (const gather of this.gathers) this.renderGather(gather);
  }

  renderGather(gather) {
    const done = gather.results !== null || gather.failed !== null;
    const states = gather.forkIds.map((forkId) => {
      const result = gather.results ? gather.results[forkId] : null;
      return [forkId, result && result.status ? result.status : this.forkStatus(forkId)];
    });
    const ended = states.filter(([, status]) => isTerminal(status)).length;
    const total = states.length;
    gather.node.dataset.ended = String(ended);
    gather.node.dataset.total = String(total);
    gather.node.dataset.done = String(done);
    gather.bar.max = Math.max(total, 1);
    gather.bar.value = ended;
    gather.label.textContent = gather.failed ? "✗ gather failed: " + gather.failed
      : (done ? "✓ gathered " : "gathering ") + ended + "/" + total;
    gather.chips.replaceChildren(...states.map(([forkId, status]) => {
      const chip = el("span", "status", forkId + " " + status);
      chip.dataset.status = status;
      chip.dataset.forkId = forkId;
      return chip;
    }));
  }

  onSpawned(lane, result) {
    if (!result || typeof result !== "object" || !result.fork_id) return;
    lane.spawned.push(result.fork_id);
    this.spawns.set(result.fork_id, { parentId: lane.id, depth: result.depth });
    const child = this.forks.get(result.fork_id);
    if (child) this.markFork(child, { fork_id: result.fork_id, fork_depth: result.depth });
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
    node.dataset.toolName = event.tool_name || "";
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
    if (!lane.forkId) lane.title.textContent = "agent " + (event.func_name || "");
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
    const node = toolNode(lane, event);
    node.args = event.arguments || {};
    node.call.textContent = callText(event);
  },
  tool_call_end(lane, event) {
    const node = toolNode(lane, event);
    node.call.textContent = callText(event);
    node.timing.textContent = ((event.execution_time || 0) * 1000).toFixed(0) + " ms";
    node.result.textContent = "✓ " + short(event.result);
    if (event.tool_name === SPAWN_TOOL) this.onSpawned(lane, event.result);
    if (event.tool_name === GATHER_TOOL) this.onGatherEnd(lane, event, null);
  },
  tool_call_error(lane, event) {
    const node = toolNode(lane, event);
    const error = event.error_message || event.error;
    node.timing.textContent = ((event.execution_time || 0) * 1000).toFixed(0) + " ms";
    node.result.textContent = "✗ " + error;
    node.result.classList.add("error");
    if (event.tool_name === GATHER_TOOL) this.onGatherEnd(lane, event, error || "error");
  },
  custom_event(lane, event) {
    if (event.event_name === GATHER_WAITING) {
      this.onGatherWaiting(lane, event.data || {});
      return;
    }
    this.add(lane, "custom", "• " + event.event_name + " " + short(event.data));
    lane.text = null;
  },
  react_end(lane, event) {
    const extra = event.extra || {};
    const state = extra.aborted ? "aborted" : extra.error ? "error" : "completed";
    this.setLaneStatus(lane, state);
    lane.ended = true;
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
