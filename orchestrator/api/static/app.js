// The dashboard's run page and its live feed (an EventSource on the session's events):
// an overview of the whole fork tree first (counts by status, totals, gather progress,
// failed and slowest forks), a timeline with one bar per agent, then the lanes.
//
// A small tree (up to LANE_LIMIT agents) shows every lane, filled live from a replay of
// the stream, entry by entry. A larger one starts from GET /v1/runs/{id}/tree (one row
// per agent, computed from the run records) and follows the stream from where that
// summary ends, in batches; its forks are rows of a virtualised list, and a lane is
// fetched (GET /v1/runs/{id}/lane) and drawn only when opened. Repeats are dropped by
// stream id, so a reconnect shows nothing twice.
"use strict";

const LANE_LIMIT = 8;          // agents: a tree up to this size shows every lane
const REPLAY_LIMIT = 3000;     // entries: ... and is replayed from the start
const LIST_ROW_H = 26;
const LIST_HEIGHT = 420;
const LIST_OVERSCAN = 8;
const ATTENTION_ROWS = 8;
const GATHER_ROWS = 6;
const MAX_OPEN_LANES = 6;

// A fork's run id is "<root run id>.fork_N".
function forkIdOf(runId) {
  const match = /\.(fork_\d+)$/.exec(runId);
  return match ? match[1] : null;
}

function forkNumber(agent) {
  const match = agent.forkId ? /(\d+)$/.exec(agent.forkId) : null;
  return match ? Number(match[1]) : 0;
}

// What the page knows of one agent of the tree (from the tree summary and the stream).
class Agent {
  constructor(id) {
    this.id = id;
    this.forkId = forkIdOf(id);
    this.parentId = null;
    this.depth = 0;
    this.seq = null;
    this.viaTool = null;
    this.funcName = "";
    this.status = "";
    this.submitted = null;
    this.started = null;
    this.finished = null;
    this.waits = [];
    this.awaiting = null;        // fork ids it waits for in a gather
    this.tokens = 0;
    this.cost = null;
    this.error = null;
    this.entries = 0;
    this.firstId = null;
    this.children = [];
    this.lane = null;
  }

  get name() {
    return this.forkId || "root";
  }

  duration(now) {
    return this.started ? (this.finished || now) - this.started : null;
  }
}

// Status changes only move forward: a terminal status stays, except that a status entry
// (authoritative) may correct one inferred from events.
function nextStatus(current, status, authoritative) {
  if (!status || current === status) return null;
  if (isTerminal(current) && !(authoritative && isTerminal(status))) return null;
  if (status === "queued" && current) return null;  // announced after it started
  return status;
}

class RunView {
  constructor(runId) {
    this.runId = runId;
    this.sessionId = null;
    this.lastId = null;
    this.agents = new Map();       // run id -> Agent
    this.byFork = new Map();       // fork id -> Agent
    this.gathers = new Set();      // gather indicators still in progress (in drawn lanes)
    this.mode = "lanes";           // "lanes": every lane drawn; "tree": overview + list
    this.batched = false;
    this.eventCount = 0;
    this.rootEnded = false;
    this.source = null;
    this.closed = false;
    this.retryTimer = null;
    this.recordTimer = null;
    this.record = null;
    this.recordTokens = 0;
    this.forkList = null;
    this.timeline = null;
    this.stats = { messages: 0, entries: 0 };  // SSE messages and the entries they held
    this.renderSoon = throttle(() => this.render(), () => (this.agents.size > 50 ? 250 : 60));
  }

  async open() {
    document.getElementById("list-view").hidden = true;
    document.getElementById("cluster-view").hidden = true;
    document.getElementById("run-view").hidden = false;
    for (const id of ["lanes", "drawer-lanes", "attention", "gather-rows", "gather-more"]) {
      const node = document.getElementById(id);
      node.replaceChildren();
      node.rowsByKey = null;
    }
    this.showDrawer(false);
    document.getElementById("final").hidden = true;
    document.getElementById("run-id").textContent = this.runId;
    document.getElementById("run-events").textContent = "0";
    document.getElementById("run-tokens").textContent = "0";
    document.getElementById("run-error").textContent = "";
    document.getElementById("overview").dataset.ready = "false";
    this.timeline = new Timeline(document.getElementById("timeline"), (id) => this.pick(id));
    document.getElementById("drawer-close").onclick = () => this.closeAll();
    const abort = document.getElementById("abort");
    abort.disabled = false;
    abort.onclick = () => this.abort();
    const path = "/v1/runs/" + encodeURIComponent(this.runId);
    // The record and the tree summary together; a large tree's root lane is asked for
    // once the summary is drawn (the overview first).
    const record = this.refreshRecord();
    const summary = api(path + "/tree").catch((err) => {
      document.getElementById("run-error").textContent = "tree: " + err.message;
      return null;
    });
    try {
      await record;
    } catch (err) {
      document.getElementById("run-error").textContent = err.message;
      return;
    }
    this.sessionId = this.record.session_id;
    const tree = await summary;
    if (this.closed) return;
    if (tree && (tree.totals.agents > LANE_LIMIT || (tree.totals.outputs ?? tree.totals.entries) > REPLAY_LIMIT)) {
      this.loadTree(tree);
      this.connect(this.lastId);
    } else {
      this.ensure(this.runId);
      this.connect(null);  // replay from the start: every lane fills in order
    }
    this.render();
    this.recordTimer = setInterval(() => {
      const ended = this.rootEnded || (this.record && isTerminal(this.record.status));
      if (!ended) this.refreshRecord().catch(() => {});
    }, 1000);
  }

  close() {
    this.closed = true;
    if (this.source) this.source.close();
    if (this.retryTimer) clearTimeout(this.retryTimer);
    if (this.recordTimer) clearInterval(this.recordTimer);
    this.renderSoon.cancel();
    document.body.classList.remove("drawer-open");
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
      this.recordTokens = run.usage.total_tokens;  // the root's own; the tree adds its forks'
      this.showTokens();
    }
    const terminal = isTerminal(run.status) || this.rootEnded;
    document.getElementById("abort").disabled = terminal;
    if (run.error) document.getElementById("run-error").textContent = run.error;
  }

  // ---- the model: agents of the tree

  ensure(runId) {
    let agent = this.agents.get(runId);
    if (agent) return agent;
    agent = new Agent(runId);
    this.agents.set(runId, agent);
    if (agent.forkId) this.byFork.set(agent.forkId, agent);
    if (this.mode === "lanes") this.drawLane(agent);
    else if (runId !== this.runId) this.attach(agent, this.runId);
    return agent;
  }

  // In "lanes" mode: every agent's lane, nested in its parent's (under the root until
  // its parent is known).
  drawLane(agent) {
    const lane = new Lane(this, agent);
    agent.lane = lane;
    const container = document.getElementById("lanes");
    if (agent.id === this.runId) {
      container.prepend(lane.node);
      // Forks announced before the root's lane existed move under it.
      for (const other of this.agents.values()) {
        if (other !== agent && !other.parentId && other.lane) lane.children.appendChild(other.lane.node);
      }
    } else {
      const root = this.agents.get(this.runId);
      (root && root.lane ? root.lane.children : container).appendChild(lane.node);
    }
  }

  // Where a fork sits: its parent (children kept in spawn order).
  attach(agent, parentId) {
    if (!parentId || parentId === agent.id || agent.parentId === parentId) return;
    if (agent.parentId) {
      const old = this.agents.get(agent.parentId);
      if (old) old.children = old.children.filter((c) => c !== agent);
    }
    agent.parentId = parentId;
    const parent = this.ensure(parentId);
    parent.children.push(agent);
    if (agent.seq) bySeq(parent.children);
    if (agent.lane && parent.lane && this.mode === "lanes") {
      parent.lane.children.appendChild(agent.lane.node);
    }
    if (agent.lane) agent.lane.describe();
  }

  noteFork(agent, info) {
    let changed = false;
    if (info.fork_id && !agent.forkId) {
      agent.forkId = info.fork_id;
      this.byFork.set(info.fork_id, agent);
      changed = true;
    }
    for (const [field, value] of [["depth", info.depth], ["seq", info.seq], ["viaTool", info.tool]]) {
      if (value && agent[field] !== value) {
        agent[field] = value;
        changed = true;
      }
    }
    if (info.parent && info.parent !== agent.parentId) {
      this.attach(agent, info.parent);
    } else if (changed) {
      if (agent.lane) agent.lane.describe();
      const parent = this.agents.get(agent.parentId);
      if (parent && agent.seq) bySeq(parent.children);
    }
  }

  setAgentStatus(agent, status, authoritative = false) {
    const next = nextStatus(agent.status, status, authoritative);
    if (!next) return;
    agent.status = next;
    if (agent.lane) agent.lane.showStatus();
    if (agent.forkId) this.updateGathers();
  }

  forkStatus(forkId) {
    const agent = this.byFork.get(forkId);
    return agent && agent.status ? agent.status : "queued";
  }

  updateGathers() {
    for (const gather of this.gathers) gather.lane.renderGather(gather);
  }

  onSpawned(parent, result) {
    const child = this.ensure(this.forkRunId(result.fork_id));
    this.noteFork(child, { fork_id: result.fork_id, depth: result.depth, parent: parent.id });
  }

  forkRunId(forkId) {
    const known = this.byFork.get(forkId);
    return known ? known.id : this.runId + "." + forkId;
  }

  // ---- the tree summary (large trees)

  loadTree(tree) {
    this.mode = "tree";
    this.batched = true;
    this.lastId = tree.last_id;
    // The page counts outputs (an entry may hold several: see the stream's docs).
    this.eventCount = tree.totals.outputs ?? tree.totals.entries;
    for (const row of tree.agents) this.ensure(row.run_id);
    for (const row of tree.agents) {
      const agent = this.agents.get(row.run_id);
      this.mergeRow(agent, row);
    }
    this.drawTreeLanes();
  }

  mergeRow(agent, row) {
    this.setAgentStatus(agent, row.status, true);
    agent.submitted = row.submitted_at;
    agent.started = row.started_at || agent.started;
    agent.finished = row.finished_at || agent.finished;
    agent.waits = row.waits && row.waits.length ? row.waits : agent.waits;
    if (row.tokens !== null && row.tokens !== undefined) agent.tokens = row.tokens;
    agent.cost = row.cost;
    agent.error = row.error || row.abort_reason || agent.error;
    agent.entries = Math.max(agent.entries, row.outputs ?? row.entries);
    agent.firstId = agent.firstId || row.first_id;
    if (row.waiting_for && row.waiting_for.length) {
      agent.awaiting = row.waiting_for.map((id) => forkIdOf(id) || id);
    }
    if (!row.fork_id && row.agent) agent.funcName = row.agent.split(":").pop();
    this.noteFork(agent, { fork_id: row.fork_id, depth: row.depth, seq: row.seq,
                           parent: row.parent_run_id });
  }

  // "tree" mode: the root's lane inline, its forks as a list, other lanes on demand.
  drawTreeLanes() {
    const root = this.ensure(this.runId);
    if (!root.lane) {
      root.lane = new Lane(this, root);
      document.getElementById("lanes").prepend(root.lane.node);
      // After the overview has been drawn.
      setTimeout(() => this.loadLane(root), 0);
    }
    this.forkList = new ForkList(this);
    root.lane.children.replaceChildren(this.forkList.node);
  }

  // A small tree that grew large: fold the fork lanes into the list, batch the stream.
  becomeTree() {
    this.mode = "tree";
    this.stats.folded = { messages: this.stats.messages, entries: this.stats.entries };
    for (const agent of this.agents.values()) {
      if (agent.id !== this.runId && agent.lane) this.dropLane(agent);
    }
    this.drawTreeLanes();
    this.batched = true;
    if (this.source) {
      this.source.close();
      this.connect(this.lastId);
    }
  }

  // ---- lanes on demand

  pick(runId) {
    const agent = this.agents.get(runId);
    if (!agent) return;
    if (this.mode === "lanes" || agent.id === this.runId) {
      if (agent.lane) this.reveal(agent.lane);
      return;
    }
    this.openLane(agent);
  }

  openLane(agent) {
    if (agent.lane) { this.reveal(agent.lane); return; }
    const lane = new Lane(this, agent, { closable: true });
    agent.lane = lane;
    const drawer = document.getElementById("drawer");
    const lanes = document.getElementById("drawer-lanes");
    lanes.prepend(lane.node);
    if (drawer.hidden) this.showDrawer(true);
    const open = [...lanes.children];
    for (const extra of open.slice(MAX_OPEN_LANES)) {
      const other = this.agents.get(extra.dataset.agentCallId);
      if (other) this.closeLane(other);
    }
    this.loadLane(agent);
    this.reveal(lane);
  }

  closeLane(agent) {
    this.dropLane(agent);
    const lanes = document.getElementById("drawer-lanes");
    if (!lanes.children.length) this.showDrawer(false);
  }

  // Lanes open beside the page (which makes room, and redraws its timeline to fit).
  showDrawer(open) {
    document.getElementById("drawer").hidden = !open;
    document.body.classList.toggle("drawer-open", open);
    if (this.agents.size) this.renderSoon();
  }

  closeAll() {
    const drawn = document.getElementById("drawer-lanes");
    for (const agent of this.agents.values()) {
      if (agent.lane && agent.lane.node.parentNode === drawn) this.closeLane(agent);
    }
  }

  dropLane(agent) {
    const lane = agent.lane;
    if (!lane) return;
    for (const gather of lane.gathers.values()) this.gathers.delete(gather);
    lane.node.remove();
    agent.lane = null;
  }

  reveal(lane) {
    lane.node.scrollIntoView({ block: "nearest" });
    lane.node.classList.remove("flash");
    void lane.node.offsetWidth;  // restart the animation
    lane.node.classList.add("flash");
  }

  // An opened lane's history up to what the page has seen, then what arrived meanwhile
  // (the lane drops whatever it has drawn already).
  async loadLane(agent) {
    const lane = agent.lane;
    lane.loading = true;
    lane.node.dataset.loaded = "false";
    const upto = this.lastId;
    let afterId = agent.firstId ? idBefore(agent.firstId) : null;
    try {
      for (;;) {
        const params = new URLSearchParams({ view: "compact", limit: "5000" });
        if (upto) params.set("upto", upto);
        if (afterId) params.set("after", afterId);
        const page = await api("/v1/runs/" + encodeURIComponent(agent.id) + "/lane?" + params);
        if (agent.lane !== lane) return;  // closed meanwhile
        for (const entry of page.entries) lane.apply(entry);
        if (!page.next_after) break;
        afterId = page.next_after;
      }
    } catch (err) {
      lane.add("err", "✗ could not load this lane: " + err.message);
    }
    if (agent.lane !== lane) return;
    const waiting = lane.buffer;
    lane.buffer = [];
    lane.loading = false;
    for (const entry of waiting) lane.apply(entry);
    lane.node.dataset.loaded = "true";
  }

  // ---- the stream

  // One EventSource on the session stream; entries of other runs in the session are
  // skipped, the run's own and its forks' (same root_run_id) are taken in.
  connect(fromId = this.lastId) {
    if (this.closed) return;
    const params = new URLSearchParams();
    if (KEY) params.set("access_token", KEY);
    // A fresh EventSource starts from ?from=; its own reconnects send Last-Event-ID.
    if (fromId) params.set("from", fromId);
    if (this.batched) params.set("batch", "true");
    const url = "/v1/sessions/" + encodeURIComponent(this.sessionId) + "/events?" + params;
    const source = new EventSource(url);
    this.source = source;
    source.onopen = () => setConn("live");
    for (const kind of ["event", "response", "status"]) {
      source.addEventListener(kind, (message) => this.receive(message));
    }
    source.addEventListener("batch", (message) => this.receiveBatch(message));
    source.addEventListener("error", (message) => {
      if (message.data) document.getElementById("run-error").textContent = message.data;
    });
    source.onerror = () => {
      setConn("reconnecting");
      if (source.readyState === EventSource.CLOSED && !this.closed && this.source === source) {
        // The browser gave up (e.g. a 503): start again after the last entry we have.
        this.retryTimer = setTimeout(() => this.connect(), 1000);
      }
    };
  }

  receive(message) {
    let entry;
    try { entry = JSON.parse(message.data); } catch (_) { return; }
    if (!entry.id && message.lastEventId) entry.id = message.lastEventId;
    this.stats.messages += 1;
    this.stats.entries += 1;
    this.take(entry);
    this.taken();
  }

  receiveBatch(message) {
    let entries;
    try { entries = JSON.parse(message.data); } catch (_) { return; }
    if (!Array.isArray(entries)) return;
    this.stats.messages += 1;
    this.stats.entries += entries.length;
    for (const entry of entries) this.take(entry);
    this.taken();
  }

  take(entry) {
    const id = entry.id;
    if (id && this.lastId && !after(id, this.lastId)) return;  // already shown
    if (id) this.lastId = id;
    if ((entry.root_run_id || entry.run_id) !== this.runId) return;  // another turn's
    this.eventCount += 1;
    const runId = entry.kind === "status" ? entry.status.run_id : entry.run_id;
    const agent = this.ensure(runId);
    agent.entries += 1;
    if (!agent.firstId && id) agent.firstId = id;
    if (entry.kind === "event") this.noteEvent(agent, entry);
    else if (entry.kind === "status") this.noteStatus(agent, entry.status);
    else if (entry.kind === "response") this.onResponse(entry);
    const lane = agent.lane;
    if (lane) {
      if (lane.loading) lane.buffer.push(entry);
      else lane.apply(entry);
    }
    if (this.mode === "lanes" && this.agents.size > LANE_LIMIT) this.becomeTree();
  }

  taken() {
    document.getElementById("run-events").textContent = String(this.eventCount);
    document.getElementById("lanes").dataset.lastId = this.lastId || "";
    this.renderSoon();
  }

  noteEvent(agent, entry) {
    const { event, origin } = entry.output;
    if (origin && origin.fork_id) {
      this.noteFork(agent, { fork_id: origin.fork_id, depth: origin.fork_depth,
        seq: origin.fork_seq, tool: origin.tool_name, parent: origin.parent_agent_call_id });
    }
    const at = Date.parse(event.timestamp) / 1000 || idMs(entry.id || "0") / 1000;
    if (!agent.started) agent.started = at;
    closeWait(agent, at);
    const type = event.event_type;
    if (type === "react_end") {
      const extra = event.extra || {};
      this.setAgentStatus(agent, extra.aborted ? "aborted" : extra.error ? "error" : "completed");
      const usage = event.total_token_usage;
      if (usage && typeof usage.total_tokens === "number") agent.tokens = usage.total_tokens;
    } else {
      this.setAgentStatus(agent, "running");
    }
    if (type === "react_start" && !agent.forkId && event.func_name !== agent.funcName) {
      agent.funcName = event.func_name || agent.funcName;
      if (agent.lane) agent.lane.describe();
    }
    if (type === "llm_call_end" && event.usage && typeof event.usage.total_tokens === "number") {
      agent.tokens += event.usage.total_tokens;
    }
    if (type === "custom_event" && event.event_name === GATHER_WAITING) {
      agent.awaiting = (event.data && event.data.waiting_for) || agent.awaiting;
    }
    if (type === "tool_call_end" && event.tool_name === SPAWN_TOOL && !agent.lane) {
      const result = event.result;
      if (result && typeof result === "object" && result.fork_id) this.onSpawned(agent, result);
    }
    if (agent.lane) agent.lane.showTokens();
  }

  noteStatus(agent, status) {
    if (status.fork) {
      const fork = status.fork;
      this.noteFork(agent, { fork_id: fork.fork_id, depth: fork.depth, seq: fork.fork_seq,
                             tool: fork.tool_name, parent: fork.parent_run_id });
    }
    this.setAgentStatus(agent, status.status, true);
    if (status.status === "queued" && !agent.submitted) agent.submitted = status.at;
    if (status.status === "waiting") agent.waits.push([status.at, null]);
    if (isTerminal(status.status)) {
      agent.finished = agent.finished || status.at;
      closeWait(agent, status.at);
      agent.error = status.error || status.abort_reason || agent.error;
    }
    if (agent.id !== this.runId) return;
    // Status entries of the run itself set the run's status; a fork's set only its own.
    setStatus(document.getElementById("run-status"), status.status);
    if (isTerminal(status.status)) {
      this.rootEnded = true;
      document.getElementById("abort").disabled = true;
      this.refreshRecord().catch(() => {});
      if (this.mode === "tree") this.reloadTree();
    }
  }

  onResponse(entry) {
    const output = entry.output;
    if (output.origin && output.origin.fork_id) return;
    if (entry.run_id !== this.runId) return;
    const text = typeof output.response === "string" ? output.response : JSON.stringify(output.response);
    document.getElementById("final").hidden = false;
    document.getElementById("final-text").textContent = text;
  }

  // Once the root has ended, its records have the last word on times and tokens.
  async reloadTree() {
    try {
      const tree = await api("/v1/runs/" + encodeURIComponent(this.runId) + "/tree");
      for (const row of tree.agents) this.mergeRow(this.ensure(row.run_id), row);
      this.renderSoon();
    } catch (_) { /* the live figures stand */ }
  }

  // ---- overview, timeline, list (redrawn at most a few times a second)

  ordered() {
    const root = this.agents.get(this.runId);
    const out = [];
    const seen = new Set();
    const visit = (agent) => {
      if (seen.has(agent.id)) return;
      seen.add(agent.id);
      out.push(agent);
      for (const child of agent.children) visit(child);
    };
    if (root) visit(root);
    for (const agent of this.agents.values()) visit(agent);
    return out;
  }

  render() {
    if (this.closed) return;
    const now = Date.now() / 1000;
    const agents = this.ordered();
    this.renderCounts(agents);
    this.renderGathers(agents);
    this.renderAttention(agents, now);
    if (agents.length) this.timeline.draw(agents, now);
    if (this.forkList) this.forkList.draw();
    this.showTokens();
    document.getElementById("run-events").textContent = String(this.eventCount);
    document.getElementById("overview").dataset.ready = "true";
  }

  renderCounts(agents) {
    const counts = Object.fromEntries(STATUSES.map((s) => [s, 0]));
    for (const agent of agents) if (agent.status in counts) counts[agent.status] += 1;
    for (const status of STATUSES) {
      const node = document.querySelector('#counts .count[data-status="' + status + '"] b');
      const text = String(counts[status]);
      if (node.textContent !== text) node.textContent = text;
    }
    const depth = Math.max(0, ...agents.map((a) => a.depth || 0));
    const costs = agents.filter((a) => typeof a.cost === "number");
    const cost = costs.length ? "$" + costs.reduce((s, a) => s + a.cost, 0).toFixed(4) : "—";
    document.getElementById("tree-agents").textContent = String(agents.length);
    document.getElementById("tree-depth").textContent = String(depth);
    document.getElementById("tree-cost").textContent = cost;
    document.getElementById("overview").dataset.agents = String(agents.length);
  }

  treeTokens() {
    let total = 0;
    for (const agent of this.agents.values()) total += agent.tokens || 0;
    return total;
  }

  showTokens() {
    const root = this.agents.get(this.runId);
    const own = root ? root.tokens : 0;
    const tokens = this.treeTokens() + Math.max(0, this.recordTokens - own);
    document.getElementById("run-tokens").textContent = String(tokens);
    const node = document.getElementById("tree-tokens");
    if (node) node.textContent = String(tokens);
  }

  // The gather progress of each parent: its forks ended out of those it waits for.
  renderGathers(agents) {
    const parents = agents.filter((a) => a.children.length || a.awaiting);
    parents.sort((a, b) => (b.status === "waiting") - (a.status === "waiting") || a.depth - b.depth);
    const rows = parents.slice(0, GATHER_ROWS).map((agent) => {
      const awaited = agent.awaiting && agent.awaiting.length
        ? agent.awaiting.map((f) => this.byFork.get(f)).filter(Boolean) : agent.children;
      return { agent, ended: awaited.filter((a) => isTerminal(a.status)).length, total: awaited.length };
    });
    syncRows(document.getElementById("gather-rows"), rows, {
      key: (row) => row.agent.id,
      sig: (row) => [row.agent.status, row.ended, row.total].join(),
      make: (row) => {
        const node = el("div", "gather-row");
        node.dataset.runId = row.agent.id;
        node.onclick = () => this.pick(row.agent.id);
        return node;
      },
      fill: (node, { agent, ended, total }) => {
        node.dataset.ended = String(ended);
        node.dataset.total = String(total);
        const bar = el("progress");
        bar.max = Math.max(1, total);
        bar.value = ended;
        node.replaceChildren(el("span", "name", agent.name), statusBadge(agent.status), bar,
          el("span", "muted", ended + "/" + total + " forks ended"));
      },
    });
    const more = parents.length - GATHER_ROWS;
    const note = more > 0 ? "and " + more + " more parents" : "";
    const moreNode = document.getElementById("gather-more");
    if (moreNode.textContent !== note) moreNode.textContent = note;
  }

  // Failed forks first, then the slowest.
  renderAttention(agents, now) {
    const forks = agents.filter((a) => a.id !== this.runId);
    const failed = forks.filter((a) => a.status === "error" || a.status === "aborted")
      .sort((a, b) => (a.status === "error" ? 0 : 1) - (b.status === "error" ? 0 : 1)
        || (a.finished || 0) - (b.finished || 0));
    const slow = forks.filter((a) => a.started && !failed.includes(a))
      .sort((a, b) => b.duration(now) - a.duration(now));
    syncRows(document.getElementById("attention"), [...failed, ...slow].slice(0, ATTENTION_ROWS), {
      key: (agent) => agent.id,
      sig: (agent) => [agent.status, fmtS(agent.duration(now)), agent.error].join(),
      make: (agent) => {
        const row = el("li", "attention-row");
        row.dataset.runId = agent.id;
        row.onclick = () => this.pick(agent.id);
        return row;
      },
      fill: (row, agent) => {
        row.dataset.status = agent.status;
        row.replaceChildren(statusBadge(agent.status), el("span", "name", agent.name),
          el("span", "muted", fmtS(agent.duration(now))),
          el("span", "why", agent.error ? short(agent.error, 120) : ""));
      },
    });
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

// Forks in spawn order (those whose place is not known yet last).
function bySeq(agents) {
  agents.sort((a, b) => (a.seq || 1e9) - (b.seq || 1e9));
}

function closeWait(agent, at) {
  const last = agent.waits[agent.waits.length - 1];
  if (last && (last[1] === null || last[1] === undefined)) last[1] = Math.max(last[0], at);
}

const SORTS = {
  attention: (now) => {
    const rank = { error: 0, aborted: 1, running: 2, waiting: 3, queued: 4, completed: 5 };
    return (a, b) => (rank[a.status] ?? 6) - (rank[b.status] ?? 6)
      || (b.duration(now) || 0) - (a.duration(now) || 0);
  },
  slowest: (now) => (a, b) => (b.duration(now) || 0) - (a.duration(now) || 0),
  spawn: () => (a, b) => (a.seq || 0) - (b.seq || 0) || forkNumber(a) - forkNumber(b),
};

// The forks of a large tree as rows of a scrolling list: only the rows in view are in
// the page. A fork with forks of its own expands in place; a click opens its lane.
class ForkList {
  constructor(view) {
    this.view = view;
    this.expanded = new Set([view.runId]);
    this.node = el("div", "fork-list");
    const head = el("div", "fork-list-head");
    this.count = el("span", "fork-count", "");
    this.sort = el("select", "fork-sort");
    for (const [value, label] of [["attention", "failed first"], ["slowest", "slowest first"],
      ["spawn", "spawn order"]]) {
      const option = el("option", null, label);
      option.value = value;
      this.sort.appendChild(option);
    }
    this.filter = el("select", "fork-filter");
    for (const value of ["", ...STATUSES]) {
      const option = el("option", null, value || "any status");
      option.value = value;
      this.filter.appendChild(option);
    }
    this.sort.onchange = () => this.draw();
    this.filter.onchange = () => { this.viewport.scrollTop = 0; this.draw(); };
    head.append(this.count, el("label", null, "sort "), this.sort,
      el("label", null, " show "), this.filter);
    this.viewport = el("div", "fork-viewport");
    this.spacer = el("div", "fork-spacer");
    this.viewport.appendChild(this.spacer);
    this.viewport.addEventListener("scroll", () => this.drawRows());
    this.node.append(head, this.viewport);
    this.rows = [];
  }

  flatten() {
    const now = Date.now() / 1000;
    const order = SORTS[this.sort.value](now);
    const root = this.view.agents.get(this.view.runId);
    const status = this.filter.value;
    if (status) {
      return [...this.view.agents.values()]
        .filter((a) => a !== root && a.status === status).sort(order)
        .map((agent) => ({ agent, indent: 0 }));
    }
    const rows = [];
    const visit = (agent, indent) => {
      for (const child of [...agent.children].sort(order)) {
        rows.push({ agent: child, indent });
        if (this.expanded.has(child.id)) visit(child, indent + 1);
      }
    };
    if (root) visit(root, 0);
    return rows;
  }

  draw() {
    this.rows = this.flatten();
    const forks = this.view.agents.size - 1;
    this.count.textContent = forks + " forks · ";
    this.node.dataset.rows = String(this.rows.length);
    this.spacer.style.height = this.rows.length * LIST_ROW_H + "px";
    this.viewport.style.height = Math.min(LIST_HEIGHT, this.rows.length * LIST_ROW_H + 2) + "px";
    this.drawRows();
  }

  drawRows() {
    const top = this.viewport.scrollTop;
    const first = Math.max(0, Math.floor(top / LIST_ROW_H) - LIST_OVERSCAN);
    const last = Math.min(this.rows.length, Math.ceil((top + LIST_HEIGHT) / LIST_ROW_H) + LIST_OVERSCAN);
    const now = Date.now() / 1000;
    const shown = this.rows.slice(first, last).map((row, i) => ({ ...row, index: first + i }));
    syncRows(this.spacer, shown, {
      key: (row) => row.agent.id,
      sig: ({ agent, indent, index }) => [index, indent, agent.status, fmtS(agent.duration(now)),
        agent.tokens, agent.entries, agent.error, agent.children.length,
        this.expanded.has(agent.id)].join("|"),
      make: ({ agent }) => {
        const row = el("div", "fork-row");
        row.dataset.runId = agent.id;
        row.onclick = () => this.view.openLane(agent);
        return row;
      },
      fill: (row, entry) => this.fill(row, entry, now),
    });
  }

  fill(row, { agent, indent, index }, now) {
    row.dataset.status = agent.status;
    row.style.top = index * LIST_ROW_H + "px";
    row.style.paddingLeft = 0.4 + indent * 1.2 + "rem";
    const parts = [];
    if (agent.children.length) {
      const open = this.expanded.has(agent.id);
      const toggle = el("button", "expander", (open ? "▾ " : "▸ ") + agent.children.length);
      toggle.title = (open ? "collapse" : "expand") + " its forks";
      toggle.onclick = (event) => {
        event.stopPropagation();
        if (open) this.expanded.delete(agent.id);
        else this.expanded.add(agent.id);
        this.draw();
      };
      parts.push(toggle);
    }
    const meta = [fmtS(agent.duration(now)), agent.tokens ? agent.tokens + " tok" : "",
      agent.entries ? agent.entries + " entries" : ""].filter(Boolean).join(" · ");
    parts.push(statusBadge(agent.status),
      el("span", "name", agent.name + (agent.seq ? " #" + agent.seq : "")),
      el("span", "muted", meta), el("span", "why", agent.error ? short(agent.error, 100) : ""));
    row.replaceChildren(...parts);
  }
}
