// Agent runs in the page: the steps as the run's events arrive (applied to the markup the server renders in
// templates/agents/_steps.html, so a page loaded mid-run goes on from where the server left it), the approval
// card, and decisions through the API. Tool arguments and results are text: set with textContent, never HTML.
import { api, csrfToken, el, errorOf, readSSE } from "./app.js";

const RESUME_TRIES = 5;
const BUSY_TRIES = 4;
let cards = 0;

const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

/** Arguments as the card and the steps show them (the server indents them the same way). */
export function pretty(value) {
  return JSON.stringify(value === undefined || value === null ? {} : value, null, 2);
}

/** The same value whatever the order of its keys: is an edit a change? */
function canonical(value) {
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  if (value && typeof value === "object") {
    return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`).join(",")}}`;
  }
  return JSON.stringify(value);
}

function duration(ms) {
  if (typeof ms !== "number") return "";
  return ms < 1 ? "<1 ms" : ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

function money(usd) {
  if (typeof usd !== "number" || !Number.isFinite(usd)) return "";
  if (usd === 0) return "$0";
  if (Math.abs(usd) >= 1) return `$${usd.toFixed(2)}`;
  return `$${usd.toFixed(6).replace(/0+$/, "").replace(/\.$/, "")}`;
}

const stats = (...parts) => parts.filter(Boolean).join(" · ");

const STATE_WORDS = {
  waiting: "waiting for approval", decided: "", running: "running", ok: "done", error: "failed", denied: "denied",
};

function toolLabel(state, decision, edited) {
  const parts = [];
  if (decision === "approved") parts.push(edited ? "approved, arguments edited" : "approved");
  else if (decision === "denied" && state === "decided") parts.push("denied");
  parts.push(STATE_WORDS[state] || "");
  return stats(...parts);
}

const text = (v) => (typeof v === "string" ? v : v === null || v === undefined ? "" : String(v));

/** One run's steps block (``<details class="agent-steps">``): events applied to it in order. */
export class AgentSteps {
  constructor(details) {
    this.details = details;
    this.list = details.querySelector("ol.steps");
    this.summary = details.querySelector(".steps-summary");
    this.runId = details.dataset.run;
    this.seq = Number(details.dataset.seq || 0);
    const tpl = details.querySelector("template.agent-answer");
    this.answer = tpl ? tpl.content.textContent : "";
  }

  /** A new, empty block for run ``runId`` (collapsed). */
  static create(runId) {
    const details = el("details", { class: "agent-steps", "data-run": runId, "data-status": "running", "data-seq": "0" },
      el("summary", {}, "Agent steps ", el("span", { class: "steps-summary muted small", text: "(starting)" })),
      el("ol", { class: "steps" }),
      el("p", { class: "small steps-link" }, el("a", { href: `/runs/${encodeURIComponent(runId)}`, text: "The run's page" })));
    return new AgentSteps(details);
  }

  get status() { return this.details.dataset.status; }

  set status(value) { this.details.dataset.status = value; }

  find(attr, value) {
    for (const li of this.list.children) if (li.dataset[attr] === value) return li;
    return null;
  }

  modelItem(step, model) {
    const li = el("li", { class: "step step-model is-running", "data-step": String(step) },
      el("span", { class: "step-title" }, `Step ${step}: model `, el("code", { text: model })), " ",
      el("span", { class: "step-stats muted small" }));
    this.list.append(li);
    return li;
  }

  toolItem(callId, tool) {
    const found = this.find("call", callId);
    if (found) return found;
    const li = el("li", { class: "step step-tool is-running", "data-call": callId, "data-state": "running",
                          "data-decision": "", "data-edited": "" },
      el("span", { class: "step-title" }, "Tool ", el("code", { text: tool })), " ",
      el("span", { class: "badge step-state" }), " ",
      el("span", { class: "step-stats muted small" }),
      el("dl", { class: "step-io" }, el("dt", { text: "Arguments" }), el("dd", {}, el("pre", { class: "step-args" }))));
    this.list.append(li);
    return li;
  }

  /** Set a tool item's state (and decision), and its label from them. */
  mark(li, { state, decision, edited } = {}) {
    if (state !== undefined) li.dataset.state = state;
    if (decision !== undefined) li.dataset.decision = decision || "";
    if (edited !== undefined) li.dataset.edited = edited ? "1" : "";
    li.className = `step step-tool is-${li.dataset.state}`;
    li.querySelector(".step-state").textContent = toolLabel(li.dataset.state, li.dataset.decision,
                                                            li.dataset.edited === "1");
  }

  /** The ``<dd>`` after a ``<dt>`` of the item's list (made when missing). */
  entry(li, name, cls, css) {
    const dl = li.querySelector("dl.step-io");
    let dt = [...dl.children].find((n) => n.tagName === "DT" && n.classList.contains(css));
    if (!dt) {
      dt = el("dt", { class: css });
      dl.append(dt, el("dd", { class: cls }));
    }
    dt.textContent = name;
    return dt.nextElementSibling;
  }

  note(message, tone = "info") {
    this.list.append(el("li", { class: `step step-note is-${tone}`, text: message }));
  }

  refreshSummary() {
    const m = this.list.querySelectorAll(":scope > .step-model").length;
    const t = this.list.querySelectorAll(":scope > .step-tool").length;
    this.summary.textContent = `(${m} model call${m === 1 ? "" : "s"}, ${t} tool call${t === 1 ? "" : "s"})`;
  }

  /** Apply one event of the run (``{seq, type, ...data}``); false if it was applied before. */
  apply(event) {
    const seq = Number(event.seq);
    if (Number.isInteger(seq) && seq > 0) {
      if (seq <= this.seq) return false;
      this.seq = seq;
      this.details.dataset.seq = String(seq);
    }
    const d = event;
    switch (event.type) {
      case "synthesis_token":
        this.answer = d.replace ? text(d.text) : this.answer + text(d.text);
        break;
      case "step":
        if (d.kind === "model") this.modelItem(Number(d.step) || 0, text(d.model));
        else if (d.kind === "warning") this.note(text(d.message), "warning");
        break;
      case "model_answered":
      case "model_failed": {
        if (d.stage !== "step") break;
        const n = /^step (\d+)$/.exec(text(d.label));
        const li = n ? this.find("step", n[1]) : null;
        if (!li) break;
        li.className = `step step-model is-${event.type === "model_answered" ? "ok" : "failed"}`;
        li.querySelector(".step-stats").textContent = stats(
          duration(d.latency_ms), typeof d.tokens === "number" ? `${d.tokens} tokens` : "", money(d.cost_usd));
        if (d.error) li.append(el("p", { class: "step-error error", text: text(d.error) }));
        break;
      }
      case "approval_requested":
        for (const call of d.calls || []) {
          const li = this.toolItem(text(call.id), text(call.tool));
          li.querySelector(".step-args").textContent = pretty(call.arguments);
          this.mark(li, { state: "waiting" });
        }
        break;
      case "approval_decided": {
        const ids = d.call_id ? [d.call_id] : d.call_ids || [];
        for (const id of ids) {
          const li = this.toolItem(text(id), text(d.tool));
          this.mark(li, { state: "decided", decision: text(d.decision), edited: !!d.edited });
          const reason = d.reason === "timeout" && !d.call_id ? "nobody approved it in time" : text(d.reason);
          if (reason) this.entry(li, "Reason", "step-reason", "step-reason-h").textContent = reason;
        }
        break;
      }
      case "tool_call": {
        const li = this.toolItem(text(d.call_id), text(d.tool));
        li.querySelector(".step-args").textContent = pretty(d.arguments);
        this.mark(li, { state: "running", ...(d.approved ? { decision: "approved" } : {}) });
        break;
      }
      case "tool_result": {
        const li = this.toolItem(text(d.call_id), text(d.tool));
        const state = d.denied ? "denied" : d.ok ? "ok" : "error";
        this.mark(li, { state });
        li.querySelector(".step-stats").textContent = stats(duration(d.latency_ms), money(d.cost_usd));
        const dd = this.entry(li, state === "ok" ? "Result" : "Error", "", "step-result-h");
        dd.replaceChildren(el("pre", { class: "step-result", text: text(d.preview) }));
        break;
      }
      case "resumed":
        this.note(d.reason === "interrupted" ? "Resumed after the server running it stopped." : "Resumed on request.");
        break;
      case "error":
        this.note(text(d.message) || "The run failed.", "error");
        break;
      case "done":
        this.status = text(d.status) || "completed";
        break;
      default:
        return true;
    }
    if (event.type !== "synthesis_token") this.refreshSummary();
    return true;
  }
}

/** An approval card for ``call`` ({id, tool, arguments}) of run ``runId`` (the server's markup). */
export function approvalCard(runId, call, deadline, back) {
  cards += 1;
  const cid = `approval-${runId}-live${cards}`;
  const args = pretty(call.arguments);
  const rows = Math.max(3, Math.min(14, args.split("\n").length + 1));
  const what = el("p", { class: "approval-what" }, "The agent wants to call ", el("code", { text: text(call.tool) }), ".");
  if (typeof deadline === "number") {
    const at = new Date(deadline * 1000).toISOString().slice(0, 16).replace("T", " ");
    what.append(" ", el("span", { class: "muted small", text: `Undecided by ${at} UTC, it is denied.` }));
  }
  const area = el("textarea", { id: `${cid}-args`, name: "arguments", class: "approval-args", rows: String(rows),
                                spellcheck: "false", autocomplete: "off" });
  area.textContent = args; // also its defaultValue: what "changed" is measured against
  return el("section", { class: "card approval", "data-run": runId, "data-call": text(call.id),
                         "aria-labelledby": `${cid}-h` },
    el("h3", { id: `${cid}-h`, class: "approval-h", text: "Approve this tool call?" }),
    what,
    el("form", { method: "post", action: `/runs/${encodeURIComponent(runId)}/decide`, class: "approval-form stack" },
      el("input", { type: "hidden", name: "csrf", value: csrfToken() }),
      el("input", { type: "hidden", name: "call_id", value: text(call.id) }),
      el("input", { type: "hidden", name: "back", value: back || "" }),
      el("label", { for: `${cid}-args`, text: "Arguments (JSON; edit them to change the call)" }),
      area,
      el("label", { for: `${cid}-reason`, text: "Reason, if you deny it (the agent reads it)" }),
      el("input", { type: "text", id: `${cid}-reason`, name: "reason", class: "approval-reason", maxlength: "2000",
                    autocomplete: "off" }),
      el("p", { class: "approval-error error", role: "alert", hidden: true }),
      el("div", { class: "row" },
        el("button", { type: "submit", name: "decision", value: "approve", class: "primary", text: "Approve" }),
        el("button", { type: "submit", name: "decision", value: "deny", class: "danger", text: "Deny" }))));
}

/** Enter in a card's reason field denies: the form's first button, Approve, must not take it. */
export function denyOnEnter(root) {
  root.addEventListener("keydown", (e) => {
    const input = e.target;
    if (e.key === "Enter" && input instanceof HTMLInputElement && input.classList.contains("approval-reason")) {
      e.preventDefault();
      input.form.requestSubmit(input.form.querySelector('button[value="deny"]'));
    }
  });
}

/**
 * Send the card's decision (``approve`` or ``deny``) through the API. Approve sends the arguments only when
 * they were edited; arguments that are not a JSON object are refused here, in the card, and nothing is sent.
 * True once the server took the decision.
 */
export async function decide(form, decision) {
  const card = form.closest("section.approval");
  const error = form.querySelector(".approval-error");
  const show = (message) => { error.textContent = message; error.hidden = false; };
  const body = { call_id: card.dataset.call };
  if (decision === "approve") {
    const area = form.querySelector("textarea.approval-args");
    let value;
    try {
      value = JSON.parse(area.value);
    } catch (err) {
      show(`The arguments are not valid JSON (${err.message}). Nothing was sent: correct them, or Deny.`);
      area.focus();
      return false;
    }
    if (!value || typeof value !== "object" || Array.isArray(value)) {
      show("The arguments must be a JSON object, like {\"name\": \"value\"}. Nothing was sent.");
      area.focus();
      return false;
    }
    let proposed = null;
    try { proposed = JSON.parse(area.defaultValue); } catch (_) { /* then any value is an edit */ }
    if (canonical(value) !== canonical(proposed)) body.arguments = value;
  } else {
    const reason = form.querySelector("input.approval-reason").value.trim();
    if (reason) body.reason = reason;
  }
  const buttons = [...form.querySelectorAll("button")];
  for (const b of buttons) b.disabled = true;
  error.hidden = true;
  const path = `/api/v1/runs/${encodeURIComponent(card.dataset.run)}/${decision === "deny" ? "deny" : "approve"}`;
  try {
    for (let attempt = 0; ; attempt++) {
      const r = await api(path, { method: "POST", json: body });
      if (r.ok) break;
      // A run that has just paused is saved as paused a moment after it says so: ask again.
      if (r.status === 409 && attempt < BUSY_TRIES) { await sleep(250 * 2 ** attempt); continue; }
      show(await errorOf(r));
      for (const b of buttons) b.disabled = false;
      return false;
    }
  } catch (_) {
    show("Could not reach the server; try again.");
    for (const b of buttons) b.disabled = false;
    return false;
  }
  card.remove();
  return true;
}

/**
 * Follows one agent run's events into the page: its steps block, new approval cards, and (with ``answer``,
 * an element) the answer's text as it is written.
 *
 * ``scope``: the element holding the run's block, its ``.approvals`` box and its answer. ``place(details)``
 * puts a new steps block in the page (only when the scope has none yet).
 */
export class AgentLive {
  constructor(scope, runId, { place = null, answer = null, say = () => {} } = {}) {
    this.scope = scope;
    this.runId = runId;
    this.place = place;
    this.answer = answer;
    this.say = say;
    const found = scope.querySelector("details.agent-steps");
    this.steps = found ? new AgentSteps(found) : null;
    this.controller = null;
    this.waiting = false;
    // A block the server drew of a run that had already ended: nothing more will come.
    this.done = !!found && !["running", "awaiting_approval"].includes(found.dataset.status);
  }

  ensureSteps() {
    if (!this.steps) {
      this.steps = AgentSteps.create(this.runId);
      if (this.place) this.place(this.steps.details);
      else this.scope.prepend(this.steps.details);
    }
    return this.steps;
  }

  approvals() {
    let box = this.scope.querySelector(".approvals");
    if (!box) {
      box = el("div", { class: "approvals" });
      this.scope.append(box);
    }
    return box;
  }

  onEvent(ev) {
    if (ev.comment !== undefined) return;
    let data;
    try { data = JSON.parse(ev.data); } catch (_) { return; }
    if (!data || typeof data !== "object") return;
    const agent = data.type === "step" || (data.type === "run_started" && data.kind === "agent");
    const steps = agent || this.steps ? this.ensureSteps() : null;
    if (!steps || !steps.apply(data)) return;
    if (data.type === "synthesis_token" && this.answer) {
      if (data.replace) this.answer.textContent = text(data.text);
      else this.answer.append(document.createTextNode(text(data.text)));
    } else if (data.type === "approval_requested") {
      this.waiting = true;
      const box = this.approvals();
      for (const call of data.calls || []) {
        const known = [...box.querySelectorAll("section.approval")].some((c) => c.dataset.call === call.id);
        if (!known) box.append(approvalCard(this.runId, call, data.deadline, box.dataset.back || ""));
      }
      const tools = [...new Set((data.calls || []).map((c) => text(c.tool)))].join(", ");
      this.say(`The agent asks to call ${tools}: approve or deny it in the card.`);
    } else if (data.type === "approval_decided") {
      this.waiting = false; // a call still undecided is asked for again (approval_requested)
      const ids = data.call_id ? [data.call_id] : data.call_ids || [];
      for (const card of this.scope.querySelectorAll("section.approval")) {
        if (ids.includes(card.dataset.call)) card.remove();
      }
    } else if (data.type === "tool_call" || data.type === "step") {
      this.waiting = false;
    } else if (data.type === "done") {
      this.done = true;
      this.waiting = false;
    }
  }

  /** Follow the run from the last event seen until it ends ("done"), waits for a decision ("paused"), or
   * cannot be followed ("lost"); a broken stream is picked up again after its last event. */
  async follow() {
    const seen = () => (this.steps ? this.steps.seq : 0);
    for (let tries = 0; tries < RESUME_TRIES;) {
      if (tries) await sleep(400 * 2 ** tries);
      const before = seen();
      this.controller = new AbortController();
      try {
        const r = await api(`/api/v1/runs/${encodeURIComponent(this.runId)}/events`,
          { headers: { "Last-Event-ID": String(before) }, signal: this.controller.signal });
        if (r.status === 404) return "lost";
        if (r.ok) await readSSE(r, (ev) => this.onEvent(ev));
      } catch (err) {
        if (err instanceof DOMException && err.name === "AbortError") return "stopped";
      }
      if (this.done) return "done";
      if (this.waiting) return "paused";
      tries = seen() > before ? 1 : tries + 1; // a stream that brought events gets its tries again
    }
    return "lost";
  }

  stop() {
    if (this.controller) this.controller.abort();
  }
}
