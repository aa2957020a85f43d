// One lane per agent: its text, model calls, tool calls (grouped when one tool is called
// many times), custom events, gather progress and end. A lane draws only what its
// agent's own entries say; where it sits and its status come from the run view's model.
"use strict";

const SPAWN_TOOL = "selfref_fork_spawn";
const GATHER_TOOL = "selfref_fork_gather_all";
const GATHER_WAITING = "fork_gather_waiting";
// The n-th call of one tool in a lane turns them all into one row with a count.
const GROUP_AT = 5;
// Rows of a group drawn at a time when it is expanded.
const GROUP_PAGE = 50;
// A gather of more forks than this shows counts by status instead of one chip per fork.
const CHIP_LIMIT = 12;
// Results longer than this are folded: a preview, and the whole JSON on demand.
const PREVIEW_CHARS = 160;

function chunkText(chunk) {
  const choices = (chunk && chunk.choices) || [];
  if (!choices.length) return "";
  const delta = choices[0].delta || {};
  return typeof delta.content === "string" ? delta.content : "";
}

function callText(call) {
  if (call.args) {
    const args = Object.entries(call.args).map(([k, v]) => k + "=" + short(v, 80)).join(", ");
    return "→ " + call.name + "(" + args + ")";
  }
  return "→ " + call.name + "(" + (call.argText ? short(call.argText, 200) : "…") + ")";
}

// A result as a preview line, with the whole JSON folded behind a toggle when long.
function fillResult(node, call) {
  node.replaceChildren();
  node.classList.toggle("error", call.state === "error");
  if (call.state === "running") return;
  if (call.state === "error") {
    node.textContent = "✗ " + call.error;
    return;
  }
  const full = typeof call.result === "string" ? call.result : JSON.stringify(call.result);
  node.append("✓ " + short(full === undefined ? "" : full, PREVIEW_CHARS));
  if (full && full.length > PREVIEW_CHARS) {
    const fold = el("button", "fold", "{…}");
    fold.title = "show the whole result";
    fold.onclick = (event) => {
      event.stopPropagation();
      let raw = node.querySelector(":scope > pre.raw");
      if (raw) { raw.remove(); return; }
      raw = el("pre", "raw", typeof call.result === "string" ? call.result
        : JSON.stringify(call.result, null, 2));
      node.appendChild(raw);
    };
    node.append(" ", fold);
  }
}

function toolRow(call) {
  const node = el("div", "item tool");
  node.dataset.toolCallId = call.id;
  node.dataset.toolName = call.name || "";
  node.call = el("span", "call", "");
  node.timing = el("span", "timing", "");
  node.result = el("div", "result", "");
  node.append(node.call, " ", node.timing, node.result);
  drawCall(node, call);
  return node;
}

function drawCall(node, call) {
  node.call.textContent = callText(call);
  node.timing.textContent = call.ms === null ? "" : call.ms.toFixed(0) + " ms";
  fillResult(node.result, call);
}

// Many calls of one tool in one lane: a single row "→ tool × N" with counts by outcome;
// its rows are drawn only while it is expanded, a page at a time.
class ToolGroup {
  constructor(lane, name) {
    this.name = name;
    this.calls = [];
    this.shown = 0;
    this.node = el("div", "item tool-group");
    this.node.dataset.toolName = name;
    this.toggle = el("button", "expander", "▸");
    this.label = el("span", "call", "");
    this.states = el("span", "group-states", "");
    this.members = el("div", "members");
    this.members.hidden = true;
    this.toggle.onclick = () => this.setOpen(this.members.hidden);
    this.node.append(this.toggle, " ", this.label, " ", this.states, this.members);
    this.redraw = throttle(() => this.draw(), () => 150);
  }

  add(call) {
    this.calls.push(call);
    this.redraw();
  }

  update() {
    this.redraw();
  }

  setOpen(open) {
    this.members.hidden = !open;
    this.toggle.textContent = open ? "▾" : "▸";
    this.node.dataset.open = String(open);
    if (!open) {
      this.members.replaceChildren();
      this.shown = 0;
    }
    this.draw();
  }

  draw() {
    const counts = { running: 0, ok: 0, error: 0 };
    for (const call of this.calls) counts[call.state === "done" ? "ok" : call.state] += 1;
    this.node.dataset.count = String(this.calls.length);
    this.label.textContent = "→ " + this.name + " × " + this.calls.length;
    this.states.textContent = ["✓ " + counts.ok, counts.error ? "✗ " + counts.error : "",
      counts.running ? "… " + counts.running : ""].filter(Boolean).join(" · ");
    if (this.members.hidden) return;
    const rows = [...this.members.querySelectorAll(":scope > .item.tool")];
    rows.forEach((row, i) => drawCall(row, this.calls[i]));
    this.more();
  }

  more(step = 0) {
    const want = Math.min(this.calls.length, Math.max(this.shown, GROUP_PAGE) + step);
    const button = this.members.querySelector(":scope > .more");
    if (button) button.remove();
    while (this.shown < want) this.members.appendChild(toolRow(this.calls[this.shown++]));
    const left = this.calls.length - this.shown;
    if (left > 0) {
      const next = el("button", "more", "show " + Math.min(left, GROUP_PAGE) + " more of " + left);
      next.onclick = () => this.more(GROUP_PAGE);
      this.members.appendChild(next);
    }
  }
}

class Lane {
  constructor(view, agent, { closable = false } = {}) {
    this.view = view;
    this.agent = agent;
    const node = el("div", "lane");
    node.dataset.agentCallId = agent.id;
    const head = el("div", "lane-head");
    this.title = el("span", "lane-title", "");
    this.meta = el("span", "lane-meta", "");
    this.state = el("span", "status");
    this.tokensNode = el("span", "lane-meta lane-tokens", "");
    head.append(this.title, this.meta, this.state, this.tokensNode);
    if (closable) {
      const close = el("button", "close", "×");
      close.title = "close this lane";
      close.onclick = () => view.closeLane(agent);
      head.appendChild(close);
    }
    this.body = el("div", "lane-body");
    this.children = el("div", "children");
    node.append(head, this.body, this.children);
    this.node = node;
    this.text = null;
    this.streamed = false;
    this.calls = new Map();      // tool_call_id -> call
    this.byName = new Map();     // tool name -> calls, in order
    this.groups = new Map();     // tool name -> ToolGroup
    this.gathers = new Map();    // tool call ids -> gather indicator
    this.spawned = [];           // fork ids this agent spawned, in order
    this.ended = false;
    this.loading = false;
    this.buffer = [];
    this.lastId = null;
    this.describe();
  }

  // Title, meta, depth, nesting attributes and status, from the agent.
  describe() {
    const agent = this.agent;
    const node = this.node;
    node.dataset.depth = String(agent.depth || 0);
    if (agent.forkId) {
      node.dataset.forkId = agent.forkId;
      this.title.textContent = "fork " + agent.forkId;
      this.meta.textContent = ["depth " + (agent.depth || "?"),
        agent.seq ? "#" + agent.seq : "",
        agent.viaTool ? "via " + agent.viaTool : ""].filter(Boolean).join(" · ");
    } else {
      this.title.textContent = "agent " + (agent.funcName || agent.id.slice(0, 12));
      this.meta.textContent = agent.id === this.view.runId ? "root" : "";
    }
    if (agent.parentId) node.dataset.parentAgentCallId = agent.parentId;
    this.showStatus();
    this.showTokens();
  }

  showStatus() {
    const status = this.agent.status || "";
    if (this.state.dataset.status === status) return;
    setStatus(this.state, status);
    this.node.dataset.status = status;
  }

  showTokens() {
    const text = this.agent.tokens ? this.agent.tokens + " tokens" : "";
    if (this.tokensNode.textContent !== text) this.tokensNode.textContent = text;
  }

  add(cls, text) {
    const node = el("div", "item " + cls, text);
    this.body.appendChild(node);
    return node;
  }

  // An entry of this agent, after the model has taken it in.
  apply(entry) {
    if (entry.id) {
      if (this.lastId && !after(entry.id, this.lastId)) return;  // drawn already
      this.lastId = entry.id;
    }
    if (entry.kind === "event") {
      const event = entry.output.event;
      const handler = EVENT_HANDLERS[event.event_type];
      if (handler) handler.call(this, event);
    } else if (entry.kind === "status") {
      this.onStatus(entry.status);
    }
  }

  onStatus(status) {
    if (isTerminal(status.status) && !this.ended) {
      // Ended without a ReactEnd of its own (e.g. aborted while queued): say so.
      const why = status.abort_reason || status.error || "";
      this.add("end", "■ " + status.status + (why ? " · " + why : ""));
      this.ended = true;
    }
  }

  // ---- tool calls: one row each, or one row per tool once it is called GROUP_AT times

  call(event) {
    let call = this.calls.get(event.tool_call_id);
    if (!call) {
      call = { id: event.tool_call_id, name: event.tool_name || "", argText: "", args: null,
               state: "running", result: undefined, error: null, ms: null, node: null };
      this.calls.set(call.id, call);
      const named = this.byName.get(call.name) || [];
      named.push(call);
      this.byName.set(call.name, named);
      this.place(call, named);
      this.text = null;
    }
    return call;
  }

  place(call, named) {
    const group = this.groups.get(call.name);
    if (group) {
      group.add(call);
    } else if (named.length >= GROUP_AT && call.name !== GATHER_TOOL) {
      const made = new ToolGroup(this, call.name);
      const first = named[0].node;
      this.body.insertBefore(made.node, first && first.parentNode === this.body ? first : null);
      for (const each of named) {
        if (each.node) each.node.remove();
        each.node = null;
        made.add(each);
      }
      this.groups.set(call.name, made);
    } else {
      call.node = toolRow(call);
      this.body.appendChild(call.node);
    }
  }

  redrawCall(call) {
    if (call.node) drawCall(call.node, call);
    else if (this.groups.has(call.name)) this.groups.get(call.name).update();
  }

  // ---- gathers: one indicator per gather call, "gathering k/n" as awaited forks end

  gatherOf(toolCallIds) {
    const key = toolCallIds.join(",");
    let gather = this.gathers.get(key);
    if (!gather) {
      const node = this.add("gather", "");
      node.dataset.toolCallIds = key;
      const label = el("span", "gather-label", "");
      const bar = el("progress");
      const chips = el("span", "chips");
      node.append(label, " ", bar, " ", chips);
      gather = { key, node, label, bar, chips, forkIds: [], results: null, failed: null,
                 lane: this };
      this.gathers.set(key, gather);
      this.view.gathers.add(gather);
      this.text = null;
    }
    return gather;
  }

  onGatherWaiting(data) {
    const callIds = data.tool_call_ids || [];
    const gather = this.gatherOf(callIds);
    // A gather of all forks (no fork_ids) also covers forks that ended before it waited.
    const named = callIds.flatMap((id) => {
      const call = this.calls.get(id);
      const ids = call && call.args ? call.args.fork_ids : null;
      return ids === null || ids === undefined ? this.spawned : [].concat(ids);
    });
    gather.forkIds = [...new Set([...gather.forkIds, ...named, ...(data.waiting_for || [])])];
    this.renderGather(gather);
  }

  onGatherEnd(event, failed) {
    const callId = event.tool_call_id;
    const known = [...this.gathers.values()].find((g) => g.key.split(",").includes(callId));
    const gather = known || this.gatherOf([callId]);
    if (failed) gather.failed = failed;
    else {
      gather.results = event.result && typeof event.result === "object" ? event.result : {};
      gather.forkIds = [...new Set([...gather.forkIds, ...Object.keys(gather.results)])];
    }
    this.view.gathers.delete(gather);
    this.renderGather(gather);
  }

  renderGather(gather) {
    const done = gather.results !== null || gather.failed !== null;
    const states = gather.forkIds.map((forkId) => {
      const result = gather.results ? gather.results[forkId] : null;
      return [forkId, result && result.status ? result.status : this.view.forkStatus(forkId)];
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
    if (total <= CHIP_LIMIT) {
      gather.chips.replaceChildren(...states.map(([forkId, status]) => {
        const chip = statusBadge(status, forkId + " " + status);
        chip.dataset.forkId = forkId;
        return chip;
      }));
      return;
    }
    const counts = new Map();
    for (const [, status] of states) counts.set(status, (counts.get(status) || 0) + 1);
    gather.chips.replaceChildren(...STATUSES.filter((s) => counts.has(s))
      .map((status) => statusBadge(status, counts.get(status) + " " + status)));
  }

  onSpawned(result) {
    if (!result || typeof result !== "object" || !result.fork_id) return;
    this.spawned.push(result.fork_id);
    this.view.onSpawned(this.agent, result);
  }
}

// Each handler runs with `this` = the lane.
const EVENT_HANDLERS = {
  llm_call_start() {
    this.text = null;
    this.streamed = false;
  },
  llm_chunk_arrive(event) {
    const text = chunkText(event.chunk);
    if (!text) return;
    if (!this.text) this.text = this.add("text", "");
    this.text.textContent += text;
    this.streamed = true;
  },
  llm_call_end(event) {
    // A model call that did not stream (or whose chunks were left out) shows its text.
    if (!this.streamed && event.content) this.add("text", event.content);
    this.text = null;
    this.add("llm", "model call " + (event.execution_time || 0).toFixed(2) + " s" +
      (event.usage ? " · " + (event.usage.total_tokens || 0) + " tokens" : ""));
  },
  llm_call_error(event) {
    this.add("err", "✗ model call failed: " + (event.error_message || event.error));
  },
  tool_call_arguments_delta(event) {
    const call = this.call(event);
    call.argText += event.delta || event.argcontent_delta || "";
    this.redrawCall(call);
  },
  tool_call_start(event) {
    const call = this.call(event);
    call.args = event.arguments || {};
    this.redrawCall(call);
  },
  tool_call_end(event) {
    const call = this.call(event);
    call.args = event.arguments || call.args || {};
    call.ms = (event.execution_time || 0) * 1000;
    call.state = "done";
    call.result = event.result;
    this.redrawCall(call);
    if (event.tool_name === SPAWN_TOOL) this.onSpawned(event.result);
    if (event.tool_name === GATHER_TOOL) this.onGatherEnd(event, null);
  },
  tool_call_error(event) {
    const call = this.call(event);
    call.ms = (event.execution_time || 0) * 1000;
    call.state = "error";
    call.error = event.error_message || event.error || "error";
    this.redrawCall(call);
    if (event.tool_name === GATHER_TOOL) this.onGatherEnd(event, call.error);
  },
  custom_event(event) {
    if (event.event_name === GATHER_WAITING) {
      this.onGatherWaiting(event.data || {});
      return;
    }
    this.add("custom", "• " + event.event_name + " " + short(event.data));
    this.text = null;
  },
  react_end(event) {
    const extra = event.extra || {};
    const state = extra.aborted ? "aborted" : extra.error ? "error" : "completed";
    this.ended = true;
    const usage = event.total_token_usage;
    this.add("end", "■ " + state + " · " + event.total_llm_calls + " model call(s), " +
      event.total_tool_calls + " tool call(s)" +
      (usage ? ", " + (usage.total_tokens || 0) + " tokens" : "") + ", " +
      (event.total_execution_time || 0).toFixed(2) + " s");
    this.text = null;
  },
};
