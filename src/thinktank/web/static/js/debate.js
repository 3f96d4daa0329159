// The Debate page: follows a running debate's events and swaps in the server-rendered timeline as it goes.
// The synthesis is shown as plain text while it streams (textContent), then as the server's Markdown.
import { api, cancelOnSubmit } from "./app.js";

const REFRESH_ON = ["analysis", "panel", "round", "convergence", "follow_up", "stage_started", "document"];
const RETRY_MS = 2000;

function follow(root) {
  const id = root.dataset.run;
  const timeline = () => root.querySelector(".timeline");
  let seq = Number(timeline().dataset.seq || 0);
  let synthesis = (root.querySelector(".synthesis-live") || {}).textContent || "";
  let source = null;
  let ended = timeline().dataset.status !== "running";
  let busy = false;
  let again = false;
  let timer = null;

  function fresh(event) {
    const n = Number(event.lastEventId);
    if (n && n <= seq) return false;
    if (n) seq = n;
    return true;
  }

  function showSynthesis() {
    const live = root.querySelector(".synthesis-live");
    if (!live) return;
    live.textContent = synthesis;
    live.closest("section").hidden = synthesis === "";
  }

  async function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    try {
      const response = await api(`/debate/${encodeURIComponent(id)}/timeline`);
      if (!response.ok) return;
      const doc = new DOMParser().parseFromString(await response.text(), "text/html");
      const next = doc.querySelector(".timeline");
      if (!next) return;
      const open = [...root.querySelectorAll("details[open][id]")].map((d) => d.id);
      const hadFocus = root.contains(document.activeElement);
      timeline().replaceWith(next);
      for (const d of open) { const node = document.getElementById(d); if (node) node.open = true; }
      showSynthesis();
      announce(next);
      if (next.dataset.status !== "running") stop();
      if (hadFocus && !root.contains(document.activeElement)) root.querySelector("h2")?.focus?.();
    } finally {
      busy = false;
      if (again) { again = false; refresh(); }
    }
  }

  // One live region outside the swapped timeline says what changed (a replaced region is not announced).
  let said = "";
  function announce(next) {
    const region = document.getElementById("debate-announce");
    const stage = next.querySelector(".stage");
    const text = next.dataset.status === "running" ? (stage ? stage.textContent : "") : `The debate ${next.dataset.status}.`;
    if (region && text && text !== said) { said = text; region.textContent = text; }
  }

  function soon() {
    clearTimeout(timer);
    timer = setTimeout(refresh, 120);
  }

  function stop() {
    ended = true;
    if (source) { source.close(); source = null; }
  }

  function connect() {
    if (ended) return;
    source = new EventSource(`/api/v1/runs/${encodeURIComponent(id)}/events?after=${seq}`);
    for (const type of REFRESH_ON) {
      source.addEventListener(type, (e) => { if (fresh(e)) soon(); });
    }
    source.addEventListener("synthesis_token", (e) => {
      if (!fresh(e)) return;
      try {
        const d = JSON.parse(e.data);
        synthesis = (d.replace ? "" : synthesis) + (d.text || ""); // replace: the answer began again
      } catch (_) { return; }
      showSynthesis();
    });
    source.addEventListener("done", (e) => { fresh(e); stop(); refresh(); });
    source.addEventListener("error", (e) => {
      if (e.data) { if (fresh(e)) soon(); return; } // the run's own "error" event
      // The connection dropped (or the stream ended): pick up after the last event seen.
      if (source) { source.close(); source = null; }
      if (!ended) setTimeout(() => { refresh(); connect(); }, RETRY_MS);
    });
  }

  cancelOnSubmit(root, id, refresh);

  connect();
}

const root = document.getElementById("debate-live");
if (root) follow(root);
