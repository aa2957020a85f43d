// The orchestrator dashboard's start: the live runs list and the routes to the run page
// (app.js) and the cluster page (cluster.js). Plain JS, no build step. The API key comes
// from ?key= once and is kept in sessionStorage (util.js).
"use strict";

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
  document.getElementById("cluster-view").hidden = true;
  refreshList();
  list.timer = setInterval(refreshList, 1000);
}

function hideList() {
  if (list.timer) clearInterval(list.timer);
  list.timer = null;
}

// ---------------------------------------------------------------- routing

let current = null;

function route() {
  hideList();
  if (current) { current.close(); current = null; }
  const match = window.location.hash.match(/^#\/runs\/([^/]+)$/);
  const named = { "#/cluster": "cluster", "#/batches": "batches" }[window.location.hash];
  document.body.dataset.page = match ? "run" : named || "list";
  document.getElementById("batches-view").hidden = true;
  if (match) {
    current = new RunView(decodeURIComponent(match[1]));
    window.currentRunView = current;  // for debugging and browser tests
    current.open();
  } else if (window.location.hash === "#/cluster") {
    current = new ClusterView();
    current.open();
  } else if (window.location.hash === "#/batches") {
    current = new BatchesView();
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
