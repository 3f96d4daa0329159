// A knowledge base's page: files and folders (picked or dropped) are uploaded one file per request,
// a few at a time, each with its progress and its outcome (added, unchanged, duplicate, refused and why).
import { api, csrfToken, el } from "./app.js";

const PARALLEL = 3;

const section = document.getElementById("upload");
if (section) setUp(section);

function setUp(section) {
  const kb = section.dataset.kb;
  const pending = section.dataset.pending === "true";
  const list = document.getElementById("upload-list");
  const summary = document.getElementById("upload-summary");
  const done = document.getElementById("upload-done");
  const zone = document.getElementById("dropzone");
  const queue = [];
  const counts = { total: 0, finished: 0 };
  const outcomes = {};
  let running = 0;

  function report() {
    const parts = Object.entries(outcomes).map(([k, n]) => `${n} ${k}`);
    summary.textContent = `${counts.finished} of ${counts.total} done` + (parts.length ? `: ${parts.join(", ")}` : "");
    if (counts.total && counts.finished === counts.total) done.hidden = false;
  }

  function entry(path) {
    const bar = el("progress", { max: "100", value: "0", "aria-label": `Upload of ${path}` });
    const outcome = el("span", { class: "outcome", text: "waiting" });
    const item = el("li", { class: "upload" }, el("span", { class: "name", text: path }), bar, outcome);
    list.append(item);
    counts.total += 1;
    return { path, bar, outcome, item };
  }

  function add(files) {
    for (const { file, path } of files) queue.push({ file, ...entry(path) });
    report();
    pump();
  }

  async function fetchUrl(url) {
    const job = entry(url);
    job.outcome.textContent = "fetching";
    report();
    try {
      const response = await api(`/api/v1/knowledge-bases/${encodeURIComponent(kb)}/urls`, { method: "POST", json: { urls: [url] } });
      let body = null;
      try { body = await response.json(); } catch (_) { /* not JSON */ }
      describe(job, response.status, body);
    } catch (_) {
      finish(job, "refused", "refused: the connection failed");
    }
    counts.finished += 1;
    report();
  }

  function pump() {
    while (running < PARALLEL && queue.length) {
      const job = queue.shift();
      running += 1;
      send(job).finally(() => { running -= 1; counts.finished += 1; report(); pump(); });
    }
  }

  function finish(job, kind, text) {
    job.outcome.textContent = text;
    job.outcome.className = `outcome ${kind}`;
    job.item.dataset.outcome = kind;
    job.bar.value = 100;
    outcomes[kind] = (outcomes[kind] || 0) + 1;
  }

  function describe(job, status, body) {
    const result = body && Array.isArray(body.data) ? body.data[0] : null;
    if (!result) {
      const message = body && body.error && body.error.message ? body.error.message : `HTTP ${status}`;
      return finish(job, "refused", `refused: ${message}`);
    }
    const chunks = `${result.chunks} passage${result.chunks === 1 ? "" : "s"}`;
    switch (result.status) {
      case "added":
      case "replaced":
        if (result.document_status === "pending") return finish(job, "pending", `${result.status}, waiting for review (${chunks})`);
        return finish(job, result.status, `${result.status} (${chunks})`);
      case "unchanged":
        return finish(job, "unchanged", "unchanged: already here with the same content");
      case "duplicate":
        return finish(job, "duplicate", `duplicate: ${result.detail || "the same content is already here"}`);
      default:
        return finish(job, "refused", `refused: ${(result.error && result.error.message) || "failed"}`);
    }
  }

  function send(job) {
    return new Promise((resolve) => {
      const form = new FormData();
      form.append("files", job.file, job.path);
      const xhr = new XMLHttpRequest();
      xhr.open("POST", `/api/v1/knowledge-bases/${encodeURIComponent(kb)}/documents`);
      xhr.setRequestHeader("x-csrf-token", csrfToken());
      xhr.setRequestHeader("x-requested-with", "fetch");
      xhr.responseType = "json";
      job.outcome.textContent = "sending";
      xhr.upload.addEventListener("progress", (e) => {
        if (e.lengthComputable) job.bar.value = Math.round((e.loaded / e.total) * 95);
      });
      xhr.upload.addEventListener("load", () => { job.outcome.textContent = pending ? "reading (for review)" : "reading"; });
      xhr.addEventListener("load", () => { describe(job, xhr.status, xhr.response); resolve(); });
      xhr.addEventListener("error", () => { finish(job, "refused", "refused: the connection failed"); resolve(); });
      xhr.addEventListener("abort", () => { finish(job, "refused", "refused: cancelled"); resolve(); });
      xhr.send(form);
    });
  }

  function picked(input) {
    const files = Array.from(input.files || []).map((file) => ({ file, path: file.webkitRelativePath || file.name }));
    input.value = "";
    if (files.length) add(files);
  }

  document.getElementById("files").addEventListener("change", (e) => picked(e.target));
  document.getElementById("folder").addEventListener("change", (e) => picked(e.target));

  const urlForm = document.getElementById("url-form");
  urlForm.hidden = false;
  urlForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const input = document.getElementById("url");
    const url = input.value.trim();
    if (!url) return;
    input.value = "";
    fetchUrl(url);
  });

  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    const items = Array.from(e.dataTransfer.items || []);
    const entries = items.map((i) => (i.webkitGetAsEntry ? i.webkitGetAsEntry() : null));
    if (entries.length && entries.every((x) => x)) {
      Promise.all(entries.map((entry) => walk(entry, ""))).then((found) => add(found.flat()));
    } else {
      add(Array.from(e.dataTransfer.files || []).map((file) => ({ file, path: file.name })));
    }
  });
}

/** Every file under a dropped entry, with its path from the drop. */
async function walk(entry, prefix) {
  if (entry.isFile) {
    const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
    return [{ file, path: prefix + file.name }];
  }
  if (!entry.isDirectory) return [];
  const reader = entry.createReader();
  const children = [];
  for (;;) {
    const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
    if (!batch.length) break;
    children.push(...batch);
  }
  const nested = await Promise.all(children.map((child) => walk(child, `${prefix}${entry.name}/`)));
  return nested.flat();
}
