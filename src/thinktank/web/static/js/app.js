// thinktank's own helpers for every page: the CSRF header on changes, reading an SSE body from fetch.

/** The session's CSRF token (the page's <meta name="csrf-token">). */
export function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.getAttribute("content") : "";
}

/** fetch() on our own API with the session cookie and, for changes, the CSRF header. */
export async function api(path, { method = "GET", json, body, headers = {}, signal } = {}) {
  const h = { "x-requested-with": "fetch", ...headers };
  if (method !== "GET" && method !== "HEAD") h["x-csrf-token"] = csrfToken();
  if (json !== undefined) {
    h["content-type"] = "application/json";
    body = JSON.stringify(json);
  }
  return fetch(path, { method, headers: h, body, signal, credentials: "same-origin" });
}

/** The error message of a failed API response (the OpenAI error shape), or its status. */
export async function errorOf(response) {
  try {
    const data = await response.json();
    if (data && data.error && data.error.message) return data.error.message;
  } catch (_) { /* not JSON */ }
  return `${response.status} ${response.statusText}`;
}

/**
 * Read a text/event-stream body as it arrives: onEvent({id, event, data}) for each event.
 * Comments (": ...") are passed as {comment}. Resolves when the body ends.
 */
export async function readSSE(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
      const ev = { id: null, event: "message", data: "" };
      const data = [];
      let comment = null;
      for (const line of block.split(/\r?\n/)) {
        if (line.startsWith(":")) { comment = line.slice(1).trim(); continue; }
        const i = line.indexOf(":");
        const field = i < 0 ? line : line.slice(0, i);
        const val = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
        if (field === "data") data.push(val);
        else if (field === "id") ev.id = val;
        else if (field === "event") ev.event = val;
      }
      if (data.length) { ev.data = data.join("\n"); onEvent(ev); }
      else if (comment !== null) onEvent({ comment });
    }
  }
}

/** Text that is safe to put in the page: always set with textContent, never innerHTML. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

/** Forms with data-confirm ask first (no inline handlers: CSP). */
document.addEventListener("submit", (e) => {
  const form = e.target;
  if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
    e.preventDefault();
  }
});

// A running run's page: its "cancel" form (class cancel-form) posts the cancel through the API (409: it ended
// meanwhile), shows a refusal in .cancel-error, then calls ``after``.
export function cancelOnSubmit(root, runId, after) {
  root.addEventListener("submit", async (e) => {
    const form = e.target;
    if (!(form instanceof HTMLFormElement) || !form.classList.contains("cancel-form")) return;
    e.preventDefault();
    const button = form.querySelector("button");
    if (button) button.disabled = true;
    const response = await api(`/api/v1/runs/${encodeURIComponent(runId)}/cancel`, { method: "POST" });
    if (!response.ok && response.status !== 409) {
      const note = root.querySelector(".cancel-error");
      if (note) { note.textContent = await errorOf(response); note.hidden = false; }
      if (button) button.disabled = false;
      return;
    }
    after();
  });
}
