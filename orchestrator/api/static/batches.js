// The batches page: the latest batches submitted with Client.submit_batch (lm-deluge's
// client on the cluster), their progress, tokens and cost, from GET /v1/batches every 2 s.
"use strict";

const BATCHES_POLL_MS = 2000;

class BatchesView {
  constructor() {
    this.timer = null;
    this.closed = false;
  }

  open() {
    for (const id of ["list-view", "run-view", "cluster-view"]) {
      document.getElementById(id).hidden = true;
    }
    document.getElementById("batches-view").hidden = false;
    this.refresh();
    this.timer = setInterval(() => this.refresh(), BATCHES_POLL_MS);
  }

  close() {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    document.getElementById("batches-view").hidden = true;
  }

  async refresh() {
    const errorNode = document.getElementById("batches-error");
    let data;
    try {
      data = await api("/v1/batches?limit=50");
    } catch (err) {
      errorNode.textContent = err.message;
      return;
    }
    if (this.closed) return;
    errorNode.textContent = "";
    this.render(data.batches);
  }

  render(batches) {
    const rows = batches.map((batch) => {
      const tr = el("tr");
      tr.dataset.batchId = batch.batch_id;
      const progress = el("td");
      const bar = el("progress");
      bar.max = Math.max(1, batch.total);
      bar.value = batch.done + batch.failed;
      progress.append(bar, " " + (batch.done + batch.failed) + " / " + batch.total);
      const state = batch.finished ? "completed" : "running";
      const status = el("td");
      const badge = el("span", "status");
      setStatus(badge, state);
      status.appendChild(badge);
      tr.append(el("td", "mono", batch.batch_id.slice(0, 12)), status, progress,
        el("td", batch.failed ? "error" : "muted", String(batch.failed)),
        el("td", null, batch.input_tokens + " / " + batch.output_tokens),
        el("td", null, "$" + batch.cost.toFixed(4)), el("td", null, fmtTime(batch.created_at)));
      return tr;
    });
    if (!rows.length) {
      const tr = el("tr");
      const td = el("td", "muted", "no batches");
      td.colSpan = 7;
      tr.appendChild(td);
      rows.push(tr);
    }
    document.querySelector("#batches tbody").replaceChildren(...rows);
  }
}
