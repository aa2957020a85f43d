// The run page's timeline: one bar per agent of the fork tree (parents above their forks),
// queued -> started -> waiting -> ended, coloured by status, in plain SVG. Bars are kept
// and moved between draws; the queued and waiting stretches of every agent are one path
// each, so a tree of 300 forks is about 310 nodes. Hover shows an agent's times, a click
// opens its lane.
"use strict";

const TIMELINE_MAX_HEIGHT = 600;
const TIMELINE_LABELS_UP_TO = 40;  // agents; beyond, rows are too thin to label
const TICK_STEPS = [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200];

class Timeline {
  constructor(container, onPick) {
    this.container = container;
    this.onPick = onPick;
    this.svg = svgEl("svg", { class: "timeline", role: "img" });
    // Waiting stretches are striped over the bar, so "waiting" never reads as a status.
    const defs = svgEl("defs");
    const stripes = svgEl("pattern", { id: "timeline-wait", width: "6", height: "6",
      patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)" });
    stripes.append(svgEl("rect", { width: "6", height: "6", class: "wait-ground" }),
      svgEl("rect", { width: "3", height: "6", class: "wait-stripe" }));
    defs.appendChild(stripes);
    this.axis = svgEl("g", { class: "axis" });
    this.queued = svgEl("path", { class: "queued" });
    this.rows = svgEl("g", { class: "bars" });
    this.waits = svgEl("path", { class: "waits" });
    this.labels = svgEl("g", { class: "labels" });
    this.svg.append(defs, this.axis, this.queued, this.rows, this.waits, this.labels);
    this.tip = el("div", "tip");
    this.tip.hidden = true;
    container.replaceChildren(this.svg, this.tip);
    this.bars = new Map();
    this.layout = null;
    this.svg.addEventListener("mousemove", (event) => this.hover(event));
    this.svg.addEventListener("mouseleave", () => { this.tip.hidden = true; });
    this.svg.addEventListener("click", (event) => {
      const bar = this.barAt(event);
      if (bar) this.onPick(bar.dataset.runId);
    });
  }

  // `agents` in display order; `now` in epoch seconds.
  draw(agents, now) {
    const width = Math.max(400, this.container.clientWidth || 900);
    const n = Math.max(1, agents.length);
    const rowH = Math.max(2, Math.min(16, Math.floor(TIMELINE_MAX_HEIGHT / n)));
    const labelled = agents.length <= TIMELINE_LABELS_UP_TO;
    const gutter = labelled ? 110 : 0;
    const top = 18;
    const t0 = Math.min(...agents.map((a) => a.submitted || a.started || now));
    const t1 = Math.max(t0 + 0.001, ...agents.map((a) => a.finished || now));
    const scale = (width - gutter - 6) / (t1 - t0);
    const x = (t) => gutter + (t - t0) * scale;
    this.layout = { agents, rowH, top, x, t0, t1 };
    this.svg.setAttribute("width", String(width));
    this.svg.setAttribute("height", String(top + n * rowH + 2));
    this.svg.dataset.bars = String(agents.length);
    this.drawAxis(width, gutter, top + n * rowH, t0, t1, x);
    const queued = [];
    const waits = [];
    const gap = rowH > 4 ? 1 : 0;
    const seen = new Set();
    agents.forEach((agent, i) => {
      seen.add(agent.id);
      const y = top + i * rowH;
      const h = rowH - gap;
      const start = agent.started || null;
      const end = agent.finished || now;
      if (agent.submitted) {
        const qEnd = start || (isTerminal(agent.status) ? end : now);
        queued.push(rectPath(x(agent.submitted), y, x(qEnd) - x(agent.submitted), h));
      }
      for (const [from, until] of agent.waits || []) {
        waits.push(rectPath(x(from), y, x(until || end) - x(from), h));
      }
      const bar = this.bar(agent);
      const bx = start ? x(start) : x(agent.submitted || now);
      const bw = start ? Math.max(1, x(end) - x(start)) : 0;
      bar.setAttribute("x", bx.toFixed(1));
      bar.setAttribute("y", String(y));
      bar.setAttribute("width", bw.toFixed(1));
      bar.setAttribute("height", String(h));
      if (bar.dataset.status !== agent.status) bar.dataset.status = agent.status || "";
    });
    for (const [id, bar] of this.bars) {
      if (!seen.has(id)) { bar.remove(); this.bars.delete(id); }
    }
    this.queued.setAttribute("d", queued.join(""));
    this.waits.setAttribute("d", waits.join(""));
    this.labels.replaceChildren(...(labelled ? agents.map((agent, i) => {
      const label = svgEl("text", { x: "2", y: String(top + i * rowH + rowH - 3) });
      label.textContent = agent.forkId || "root";
      return label;
    }) : []));
  }

  bar(agent) {
    let bar = this.bars.get(agent.id);
    if (!bar) {
      bar = svgEl("rect", { class: "bar" });
      bar.dataset.runId = agent.id;
      this.rows.appendChild(bar);
      this.bars.set(agent.id, bar);
    }
    return bar;
  }

  drawAxis(width, gutter, bottom, t0, t1, x) {
    const span = t1 - t0;
    const step = TICK_STEPS.find((s) => span / s <= 8) || TICK_STEPS[TICK_STEPS.length - 1];
    const lines = [];
    const texts = [];
    for (let t = 0; t <= span + 1e-9; t += step) {
      const px = x(t0 + t);
      lines.push("M" + px.toFixed(1) + " 14V" + bottom);
      const label = svgEl("text", { x: (px + 2).toFixed(1), y: "11" });
      label.textContent = "+" + fmtS(t);
      texts.push(label);
    }
    const grid = svgEl("path", { d: lines.join("") });
    this.axis.replaceChildren(grid, ...texts);
  }

  barAt(event) {
    const target = event.target;
    if (target && target.classList && target.classList.contains("bar")) return target;
    // Thin rows: pick the row under the pointer.
    const layout = this.layout;
    if (!layout) return null;
    const box = this.svg.getBoundingClientRect();
    const row = Math.floor((event.clientY - box.top - layout.top) / layout.rowH);
    const agent = layout.agents[row];
    return agent ? this.bars.get(agent.id) : null;
  }

  hover(event) {
    const bar = this.barAt(event);
    const agent = bar && this.layout.agents.find((a) => a.id === bar.dataset.runId);
    if (!agent) { this.tip.hidden = true; return; }
    const now = Date.now() / 1000;
    const queued = agent.submitted && agent.started ? agent.started - agent.submitted : null;
    const ran = agent.started ? (agent.finished || now) - agent.started : null;
    const waited = (agent.waits || []).reduce((s, [a, b]) => s + ((b || now) - a), 0);
    this.tip.textContent = [(agent.forkId || "root") + " · " + agent.status,
      queued !== null ? "queued " + fmtS(queued) : "",
      ran !== null ? "ran " + fmtS(ran) : "",
      waited ? "waited " + fmtS(waited) : "",
      agent.tokens ? agent.tokens + " tokens" : "",
      agent.error ? "✗ " + short(agent.error, 80) : ""].filter(Boolean).join(" · ");
    const box = this.container.getBoundingClientRect();
    this.tip.style.left = Math.min(event.clientX - box.left + 12, box.width - 260) + "px";
    this.tip.style.top = (event.clientY - box.top + 12) + "px";
    this.tip.hidden = false;
  }
}

function rectPath(x, y, w, h) {
  if (!(w > 0)) return "";
  return "M" + x.toFixed(1) + " " + y + "h" + w.toFixed(1) + "v" + h + "h" + (-w).toFixed(1) + "Z";
}
