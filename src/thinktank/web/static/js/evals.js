// Evaluations: the start form's checks, a running evaluation's progress (its events), the matrix's filters.
// Everything a user or a model wrote reaches the page through the server's escaped HTML (DOMParser, never run)
// or textContent: never innerHTML.
import { api, cancelOnSubmit, el } from "./app.js";

const RETRY_MS = 2000;
const REFRESH_MS = 1500;
const LOG_LINES = 8;

const money = (usd) => {
  if (typeof usd !== "number" || !Number.isFinite(usd)) return "—";
  if (usd === 0) return "$0";
  return Math.abs(usd) >= 1 ? `$${usd.toFixed(2)}` : `$${usd.toFixed(6).replace(/0+$/, "").replace(/\.$/, "")}`;
};

// ---------------------------------------------------------------------------------------------------------------
// The start form: a file or a stored dataset (one clears the other), and a file too large refused before sending
// ---------------------------------------------------------------------------------------------------------------

function setupForm(form) {
  const file = form.querySelector('input[name="file"]');
  const stored = form.querySelector('select[name="dataset_id"]');
  const error = document.getElementById("eval-client-error");
  const maxBytes = Number(form.dataset.maxBytes || 0);
  const say = (text) => { error.textContent = text; error.hidden = !text; };
  file.addEventListener("change", () => { if (file.files.length) stored.value = ""; say(""); });
  stored.addEventListener("change", () => { if (stored.value) file.value = ""; say(""); });
  form.addEventListener("submit", (e) => {
    const picked = file.files.length ? file.files[0] : null;
    let problem = "";
    if (!picked && !stored.value) problem = "Upload a dataset file or choose a stored dataset.";
    else if (picked && maxBytes && picked.size > maxBytes) {
      problem = `The file is ${picked.size.toLocaleString()} bytes; a dataset may have at most ${maxBytes.toLocaleString()}.`;
    } else if (!form.querySelector('input[name="candidate"]:checked')) problem = "Choose at least one candidate.";
    if (problem) { e.preventDefault(); say(problem); error.scrollIntoView({ block: "nearest" }); }
  });
}

// ---------------------------------------------------------------------------------------------------------------
// The matrix's filters: by tag and disagreements only, in the page (the form's GET does the same without script)
// ---------------------------------------------------------------------------------------------------------------

const filters = { tag: "", disagreements: false };

function readFilters(root) {
  const tag = root.querySelector("#filter-tag");
  const only = root.querySelector("#filter-disagreements");
  if (tag) filters.tag = tag.value;
  if (only) filters.disagreements = only.checked;
}

function tagsOf(row) {
  try {
    const tags = JSON.parse(row.dataset.tags || "[]");
    return Array.isArray(tags) ? tags : [];
  } catch (_) {
    return [];
  }
}

function applyFilters(root) {
  const tag = root.querySelector("#filter-tag");
  const only = root.querySelector("#filter-disagreements");
  if (!tag || !only) return;
  if ([...tag.options].some((o) => o.value === filters.tag)) tag.value = filters.tag;
  only.checked = filters.disagreements;
  const rows = [...root.querySelectorAll("#eval-matrix tr.item-row")];
  let shown = 0;
  for (const row of rows) {
    const visible = (!tag.value || tagsOf(row).includes(tag.value))
      && (!only.checked || row.dataset.disagreement === "true");
    row.hidden = !visible;
    if (visible) shown += 1;
  }
  const count = root.querySelector("#eval-shown");
  if (count) count.textContent = `${shown} of ${rows.length} items shown`;
  const submit = root.querySelector(".filter-submit");
  if (submit) submit.hidden = true; // the filters apply as they change
}

function setupFilters(root) {
  root.addEventListener("change", (e) => {
    if (!(e.target instanceof Element) || !e.target.closest("#eval-filters")) return;
    readFilters(root);
    applyFilters(root);
    const url = new URL(window.location.href);
    url.searchParams.delete("tag");
    url.searchParams.delete("disagreements");
    if (filters.tag) url.searchParams.set("tag", filters.tag);
    if (filters.disagreements) url.searchParams.set("disagreements", "1");
    history.replaceState(null, "", url);
  });
  root.addEventListener("submit", (e) => {
    if (e.target instanceof HTMLFormElement && e.target.id === "eval-filters") e.preventDefault();
  });
  readFilters(root);
  applyFilters(root);
}

// ---------------------------------------------------------------------------------------------------------------
// A running evaluation: its events as progress, the server's page body swapped in as it fills and when it ends
// ---------------------------------------------------------------------------------------------------------------

function describe(type, d) {
  switch (type) {
    case "eval_started":
      return `started: ${d.items} items, ${(d.candidates || []).length} candidates, ${(d.judges || []).length} judges`;
    case "eval_answer":
      return d.ok ? `${d.candidate} answered ${d.item}${d.cached ? " (cached)" : ""}` : `${d.candidate} failed on ${d.item}`;
    case "eval_checked": return `${d.candidate} on ${d.item}: ${d.passed}/${d.total} checks passed`;
    case "eval_judged": return `${d.judge} judged ${d.a} vs ${d.b} on ${d.item}`;
    case "error": return `error: ${d.message || "the evaluation failed"}`;
    default: return null;
  }
}

function follow(root) {
  const id = root.dataset.run;
  const body = () => root.querySelector(".eval-body");
  const progress = { done: null, total: Number(body().dataset.total || 0), cost: null };
  const lines = [];
  let seq = 0;
  let source = null;
  let ended = body().dataset.status !== "running";
  let busy = false;
  let again = false;
  let timer = null;
  let lastRefresh = 0;

  function fresh(event) {
    const n = Number(event.lastEventId);
    if (n && n <= seq) return false;
    if (n) seq = n;
    return true;
  }

  function showProgress() {
    const bar = root.querySelector("#eval-progress");
    const set = (sel, text) => { const node = root.querySelector(sel); if (node) node.textContent = text; };
    if (progress.total) {
      set("#eval-total", String(progress.total));
      if (bar) bar.max = progress.total;
    }
    if (progress.done !== null) {
      set("#eval-done", String(progress.done));
      if (bar) bar.value = progress.done;
    }
    if (progress.cost !== null) {
      set("#eval-live-cost", money(progress.cost));
      set("#eval-cost", money(progress.cost));
    }
    const log = root.querySelector("#eval-log");
    if (log) log.replaceChildren(...lines.map((text) => el("li", { text })));
  }

  function line(text) {
    lines.push(text);
    while (lines.length > LOG_LINES) lines.shift();
  }

  async function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    lastRefresh = Date.now();
    try {
      const response = await api(`/evals/${encodeURIComponent(id)}/fragment`);
      if (!response.ok) return;
      const doc = new DOMParser().parseFromString(await response.text(), "text/html");
      const next = doc.querySelector(".eval-body");
      if (!next) return;
      const open = [...root.querySelectorAll("tr.item-row details[open]")].map((d) => {
        const row = d.closest("tr.item-row");
        const cell = d.closest("td");
        return [row.dataset.item, cell ? cell.dataset.candidate : "", [...(cell || row).querySelectorAll("details")].indexOf(d)];
      });
      body().replaceWith(document.importNode(next, true));
      for (const [item, candidate, index] of open) {
        const row = [...root.querySelectorAll("tr.item-row")].find((r) => r.dataset.item === item);
        const scope = row && candidate ? [...row.querySelectorAll("td")].find((c) => c.dataset.candidate === candidate) : row;
        const details = scope ? scope.querySelectorAll("details")[index] : null;
        if (details) details.open = true;
      }
      applyFilters(root);
      const status = body().dataset.status;
      if (status === "running") showProgress();
      else {
        stop();
        const region = document.getElementById("eval-announce");
        if (region) region.textContent = `The evaluation ${status}.`;
      }
    } finally {
      busy = false;
      if (again) { again = false; refresh(); }
    }
  }

  // While it runs, the page body is fetched again as items finish, at most every REFRESH_MS.
  function soon() {
    if (timer) return;
    const wait = Math.max(0, REFRESH_MS - (Date.now() - lastRefresh));
    timer = setTimeout(() => { timer = null; refresh(); }, wait);
  }

  function stop() {
    ended = true;
    if (source) { source.close(); source = null; }
  }

  function connect() {
    if (ended) return;
    source = new EventSource(`/api/v1/runs/${encodeURIComponent(id)}/events?after=${seq}`);
    for (const type of ["eval_started", "eval_answer", "eval_checked", "eval_judged"]) {
      source.addEventListener(type, (e) => {
        if (!fresh(e)) return;
        let d;
        try { d = JSON.parse(e.data); } catch (_) { return; }
        if (type === "eval_started" && typeof d.items === "number") progress.total = d.items;
        const text = describe(type, d);
        if (text) line(text);
        showProgress();
      });
    }
    source.addEventListener("eval_progress", (e) => {
      if (!fresh(e)) return;
      let d;
      try { d = JSON.parse(e.data); } catch (_) { return; }
      if (typeof d.done === "number") progress.done = d.done;
      if (typeof d.total === "number") progress.total = d.total;
      if (typeof d.cost_usd === "number") progress.cost = d.cost_usd;
      showProgress();
      soon();
    });
    source.addEventListener("done", (e) => { fresh(e); stop(); refresh(); });
    source.addEventListener("error", (e) => {
      if (e.data) { // the run's own "error" event
        if (!fresh(e)) return;
        try { line(describe("error", JSON.parse(e.data))); } catch (_) { line("error"); }
        showProgress();
        return;
      }
      // The connection dropped (or the stream ended): pick up after the last event seen.
      if (source) { source.close(); source = null; }
      if (!ended) setTimeout(() => { refresh(); connect(); }, RETRY_MS);
    });
  }

  cancelOnSubmit(root, id, refresh);

  connect();
}

const form = document.getElementById("eval-form");
if (form) setupForm(form);
const live = document.getElementById("eval-live");
if (live) {
  setupFilters(live);
  follow(live);
}
