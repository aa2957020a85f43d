// The cluster page: live workers (slots, heartbeat age, benched API keys), the queue and
// how many runs and forks ended over the last minutes, from GET /v1/cluster every 2 s.
// The queue-depth chart covers the time this page has been open (one sample per poll).
"use strict";

const CLUSTER_POLL_MS = 2000;
const QUEUE_SAMPLES = 300;

// Stacked bars (completed under failed), one per bucket, with the largest count labelled.
function drawBars(svg, series, { bucket }) {
  const width = 360;
  const height = 110;
  const bottom = height - 16;
  const n = series.completed.length;
  const totals = series.completed.map((c, i) => c + series.failed[i]);
  const max = Math.max(1, ...totals);
  const w = (width - 34) / n;
  const y = (v) => bottom - (v / max) * (bottom - 10);
  const nodes = [svgEl("path", { class: "grid", d: "M30 " + bottom + "H" + width + "M30 10H" + width })];
  const label = (x, yy, text, anchor = "start") => {
    const node = svgEl("text", { x: String(x), y: String(yy), "text-anchor": anchor });
    node.textContent = text;
    return node;
  };
  series.completed.forEach((ok, i) => {
    const bad = series.failed[i];
    const x = 32 + i * w;
    if (ok) nodes.push(svgEl("rect", { class: "ok", x: x.toFixed(1), y: y(ok).toFixed(1),
      width: Math.max(1, w - 1).toFixed(1), height: (bottom - y(ok)).toFixed(1) }));
    if (bad) nodes.push(svgEl("rect", { class: "bad", x: x.toFixed(1), y: y(ok + bad).toFixed(1),
      width: Math.max(1, w - 1).toFixed(1), height: (y(ok) - y(ok + bad)).toFixed(1) }));
  });
  const minutes = Math.round((n * bucket) / 60);
  nodes.push(label(26, 14, String(max), "end"), label(26, bottom, "0", "end"),
    label(32, height - 3, "−" + minutes + " min"), label(width, height - 3, "now", "end"));
  svg.setAttribute("viewBox", "0 0 " + width + " " + height);
  svg.dataset.total = String(totals.reduce((a, b) => a + b, 0));
  svg.replaceChildren(...nodes);
}

function drawLine(svg, samples) {
  const width = 360;
  const height = 110;
  const bottom = height - 16;
  const max = Math.max(1, ...samples.map(([, v]) => v));
  const t0 = samples.length ? samples[0][0] : 0;
  const t1 = samples.length ? Math.max(t0 + 1, samples[samples.length - 1][0]) : 1;
  const x = (t) => 32 + ((t - t0) / (t1 - t0)) * (width - 34);
  const y = (v) => bottom - (v / max) * (bottom - 10);
  const points = samples.map(([t, v]) => x(t).toFixed(1) + "," + y(v).toFixed(1)).join(" ");
  const nodes = [svgEl("path", { class: "grid", d: "M30 " + bottom + "H" + width + "M30 10H" + width })];
  if (samples.length > 1) {
    nodes.push(svgEl("polygon", { class: "area",
      points: x(t0).toFixed(1) + "," + bottom + " " + points + " " + x(t1).toFixed(1) + "," + bottom }));
  }
  nodes.push(svgEl("polyline", { class: "line", points }));
  for (const [text, xx, yy, anchor] of [[String(max), 26, 14, "end"], ["0", 26, bottom, "end"],
    ["since " + fmtTime(t0), 32, height - 3, "start"], ["now", width, height - 3, "end"]]) {
    const node = svgEl("text", { x: String(xx), y: String(yy), "text-anchor": anchor });
    node.textContent = text;
    nodes.push(node);
  }
  svg.setAttribute("viewBox", "0 0 " + width + " " + height);
  svg.replaceChildren(...nodes);
}

class ClusterView {
  constructor() {
    this.timer = null;
    this.closed = false;
    this.samples = [];
  }

  open() {
    document.getElementById("list-view").hidden = true;
    document.getElementById("run-view").hidden = true;
    document.getElementById("cluster-view").hidden = false;
    this.refresh();
    this.timer = setInterval(() => this.refresh(), CLUSTER_POLL_MS);
  }

  close() {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
  }

  async refresh() {
    const errorNode = document.getElementById("cluster-error");
    let data;
    try {
      data = await api("/v1/cluster");
    } catch (err) {
      errorNode.textContent = err.message;
      return;
    }
    if (this.closed) return;
    errorNode.textContent = "";
    this.samples.push([data.generated_at, data.queue_depth]);
    if (this.samples.length > QUEUE_SAMPLES) this.samples.shift();
    this.render(data);
  }

  render(data) {
    const by = data.runs_by_status;
    document.getElementById("cl-workers").textContent = String(data.workers.length);
    document.getElementById("cl-slots").textContent = data.slots.busy + " / " + data.slots.total;
    document.getElementById("cl-queue").textContent = String(data.queue_depth);
    document.getElementById("cl-live").textContent =
      by.running + " running · " + by.waiting + " waiting · " + by.queued + " queued";
    const bucket = data.throughput.bucket_s;
    drawBars(document.getElementById("chart-runs"), data.throughput.runs, { bucket });
    drawBars(document.getElementById("chart-forks"), data.throughput.forks, { bucket });
    drawLine(document.getElementById("chart-queue"), this.samples);
    document.getElementById("cl-bucket").textContent = String(bucket);
    const rows = data.workers.map((worker) => {
      const tr = el("tr");
      tr.dataset.workerId = worker.worker_id;
      const slots = el("td");
      const bar = el("progress");
      bar.max = Math.max(1, worker.concurrency);
      bar.value = worker.running;
      slots.append(bar, " " + worker.running + " / " + worker.concurrency);
      const benched = worker.benched_keys.map((k) =>
        k.model + " key #" + k.key_index + "/" + k.keys + " (" + k.status + ", " +
        fmtS(k.retry_in_s) + ")").join("; ");
      const age = el("td", worker.heartbeat_age_s > 10 ? "error" : "", fmtS(worker.heartbeat_age_s));
      tr.append(el("td", "mono", worker.worker_id), el("td", null, worker.host || ""), slots, age,
        el("td", benched ? "error" : "muted", benched || "none"),
        el("td", null, String(worker.redis_outages)));
      return tr;
    });
    if (!rows.length) {
      const tr = el("tr");
      const td = el("td", "muted", "no live workers");
      td.colSpan = 6;
      tr.appendChild(td);
      rows.push(tr);
    }
    document.querySelector("#workers tbody").replaceChildren(...rows);
  }
}
