// Compare: several models answer one question in parallel columns; a running ensemble's page follows its events.
import { api, errorOf, readSSE, el } from "./app.js";

const fmtMs = (ms) => (ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`);
const fmtCost = (usd) => (usd === null || usd === undefined ? "—" : usd === 0 ? "$0" : `$${usd.toPrecision(3)}`);

/** Replace `node`'s children with the sanitised HTML the server rendered (parsed, never run). */
function swapHTML(node, html) {
  const doc = new DOMParser().parseFromString(html, "text/html");
  node.replaceChildren(...Array.from(doc.body.childNodes).map((n) => document.importNode(n, true)));
}

// ---------------------------------------------------------------------------------------------------------------
// Side by side
// ---------------------------------------------------------------------------------------------------------------

function column(model) {
  const stats = {
    ttft: el("span", { class: "ttft", text: "first token —" }),
    total: el("span", { class: "total", text: "total —" }),
    tokens: el("span", { class: "tokens", text: "— tokens" }),
    cost: el("span", { class: "cost", text: "cost —" }),
  };
  const status = el("span", { class: "badge col-status", text: "waiting" });
  const text = el("div", { class: "streamed", "aria-live": "polite" });
  const node = el("article", { class: "card answer-card compare-col", "data-model": model },
    el("h3", {}, el("span", { class: "model-name", text: model }), " ", status),
    el("p", { class: "stats muted" }, stats.ttft, " · ", stats.total, " · ", stats.tokens, " · ", stats.cost),
    text);
  return { node, stats, status, text };
}

async function streamInto(col, model, question, signal) {
  const started = performance.now();
  let first = null;
  let answer = "";
  let usage = null;
  col.status.textContent = "streaming";
  const tick = () => { col.stats.total.textContent = `total ${fmtMs(performance.now() - started)}`; };
  try {
    const r = await api("/v1/chat/completions", {
      method: "POST", signal,
      json: { model, stream: true, stream_options: { include_usage: true },
              messages: [{ role: "user", content: question }] },
    });
    if (!r.ok) throw new Error(await errorOf(r));
    await readSSE(r, (ev) => {
      if (!ev.data || ev.data === "[DONE]") return;
      const data = JSON.parse(ev.data);
      if (data.error) throw new Error(data.error.message || "the stream failed");
      for (const choice of data.choices || []) {
        const piece = choice.delta && choice.delta.content;
        if (piece) {
          if (first === null) {
            first = performance.now() - started;
            col.stats.ttft.textContent = `first token ${fmtMs(first)}`;
          }
          answer += piece;
          col.text.textContent = answer;
        }
      }
      if (data.usage) usage = data.usage;
      tick();
    });
    tick();
    if (usage) {
      col.stats.tokens.textContent = `${usage.prompt_tokens} + ${usage.completion_tokens} tokens`;
      col.stats.cost.textContent = `cost ${fmtCost(usage.cost)}`;
    }
    col.status.textContent = "done";
    col.node.classList.add("done");
    const md = await api("/compare/render", { method: "POST", body: answer,
                                               headers: { "content-type": "text/plain; charset=utf-8" } });
    if (md.ok) swapHTML(col.text, await md.text());
  } catch (err) {
    tick();
    col.status.textContent = signal.aborted ? "stopped" : "failed";
    col.node.classList.add("failed");
    col.text.append(el("p", { class: "error", role: "alert", text: signal.aborted ? "Stopped." : String(err.message || err) }));
  }
}

function setupCompare(form) {
  const min = Number(form.dataset.min), max = Number(form.dataset.max);
  const error = document.getElementById("compare-error");
  const columns = document.getElementById("columns");
  const ask = document.getElementById("compare-ask");
  const stop = document.getElementById("compare-stop");
  let controller = null;
  stop.addEventListener("click", () => { if (controller) controller.abort(); });
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const models = Array.from(form.querySelectorAll('input[name="model"]:checked')).map((i) => i.value);
    const question = form.elements.question.value.trim();
    error.textContent = "";
    if (models.length < min || models.length > max) {
      error.textContent = `Pick between ${min} and ${max} models (you picked ${models.length}).`;
      return;
    }
    if (!question) { error.textContent = "Write a question first."; return; }
    controller = new AbortController();
    ask.disabled = true; stop.disabled = false;
    const cols = models.map((m) => [m, column(m)]);
    columns.className = `columns n${models.length}`;
    columns.replaceChildren(...cols.map(([, c]) => c.node));
    await Promise.all(cols.map(([m, c]) => streamInto(c, m, question, controller.signal)));
    ask.disabled = false; stop.disabled = true; controller = null;
  });
}

// ---------------------------------------------------------------------------------------------------------------
// A running ensemble (or arena): its events, then the server-rendered result
// ---------------------------------------------------------------------------------------------------------------

function describe(type, d) {
  const who = d.model ? `${d.role} (${d.model})` : d.role || (d.label ? `answer ${d.label}` : "");
  switch (type) {
    case "stage_started": return `${d.stage} started`;
    case "model_answered": return `${who} answered in ${fmtMs(d.latency_ms || 0)}, ${d.tokens} tokens`;
    case "model_failed": return `${who} failed`;
    case "review": return d.excluded ? `a judge was left out: ${d.reason}` : `review by ${d.reviewer || d.judge}`;
    case "ranking": return `ranked: ${(d.order || []).join(" > ")}`;
    case "error": return `error: ${d.message}`;
    default: return null;
  }
}

function setupLive(live) {
  const id = live.dataset.run;
  const log = document.getElementById("live-log");
  const synthWrap = document.getElementById("live-synthesis-wrap");
  const synth = document.getElementById("live-synthesis");
  let synthText = "";
  const source = new EventSource(`/api/v1/runs/${encodeURIComponent(id)}/events`);
  const line = (text) => log.append(el("li", { text }));
  for (const type of ["stage_started", "model_answered", "model_failed", "review", "ranking", "error"]) {
    source.addEventListener(type, (ev) => {
      if (!ev.data) return; // the EventSource's own "error" (a lost connection) carries no data
      const text = describe(type, JSON.parse(ev.data));
      if (text) line(text);
    });
  }
  source.addEventListener("synthesis_token", (ev) => {
    const d = JSON.parse(ev.data);
    synthText = d.replace ? d.text : synthText + d.text;
    synthWrap.hidden = false;
    synth.textContent = synthText;
  });
  source.addEventListener("done", async () => {
    source.close();
    line("finished");
    const r = await api(`/runs/${encodeURIComponent(id)}/fragment`);
    const body = document.getElementById("run-body");
    if (r.ok && body) {
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      const fresh = doc.getElementById("run-body");
      if (fresh) body.replaceWith(document.importNode(fresh, true));
    }
  });
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) line("The connection was lost; reload the page.");
  };
}

const form = document.getElementById("compare-form");
if (form) setupCompare(form);
const live = document.getElementById("live");
if (live) setupLive(live);
