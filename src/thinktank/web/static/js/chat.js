// The chat pages: a new chat from the list, and on a thread's page the answer streamed as it is written
// (plain text in an aria-live region, then the server-rendered message swapped in), Stop, resuming a
// broken stream, edit and regenerate, copy, citations that open their source, files dropped on the chat; an
// agent's steps as they happen and its approval cards (agent.js).
import { AgentLive, AgentSteps, decide, denyOnEnter } from "./agent.js";
import { api, el, errorOf, readSSE } from "./app.js";

const RESUME_TRIES = 5;
const REFRESH_TRIES = 8;

const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

// -- the list: a new chat ---------------------------------------------------------------------------

function newChat(form) {
  const error = document.getElementById("new-chat-error");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const data = new FormData(form);
    const message = String(data.get("message") || "");
    const body = { model: String(data.get("model")), knowledge_bases: data.getAll("kb").map(String) };
    if (data.get("persona")) body.persona_id = String(data.get("persona"));
    form.querySelector("button[type=submit]").disabled = true;
    const r = await api("/api/v1/threads", { method: "POST", json: body });
    if (!r.ok) {
      error.textContent = await errorOf(r);
      error.hidden = false;
      form.querySelector("button[type=submit]").disabled = false;
      return;
    }
    const thread = await r.json();
    if (message.trim()) sessionStorage.setItem(`chat-pending:${thread.id}`, message);
    window.location.assign(`/chat/${encodeURIComponent(thread.id)}`);
  });
}

// -- a thread ---------------------------------------------------------------------------------------

class ThreadPage {
  constructor(root) {
    this.root = root;
    this.id = root.dataset.thread;
    this.messages = document.getElementById("messages");
    this.form = document.getElementById("composer");
    this.input = document.getElementById("message");
    this.sendButton = document.getElementById("send");
    this.stopButton = document.getElementById("stop");
    this.status = document.getElementById("status");
    this.editNote = document.getElementById("edit-note");
    this.replaces = null;
    this.busy = false;
    this.controller = null;
    this.stopping = false;
    this.following = new WeakSet();
  }

  start() {
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      const text = this.input.value;
      if (!text.trim() || this.busy) return;
      this.send(text, this.replaces);
    });
    this.input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); this.form.requestSubmit(); }
    });
    this.stopButton.addEventListener("click", () => this.stop());
    document.getElementById("edit-cancel").addEventListener("click", () => this.cancelEdit());
    this.messages.addEventListener("click", (e) => this.onMessageClick(e));
    this.messages.addEventListener("submit", (e) => this.onDecision(e));
    denyOnEnter(this.messages);
    for (const article of this.messages.querySelectorAll("article.msg")) this.wire(article);
    new Uploads(this).start();
    const pending = sessionStorage.getItem(`chat-pending:${this.id}`);
    if (pending) {
      sessionStorage.removeItem(`chat-pending:${this.id}`);
      this.send(pending, null);
    }
  }

  /** Citation links point at this message's own sources (several answers on a page each have a [1]); an
   * answer whose agent run goes on after a decision is followed to its end. */
  wire(article) {
    for (const a of article.querySelectorAll("a.cite")) {
      const k = a.dataset.cite;
      if (/^[0-9]+$/.test(k || "")) a.setAttribute("href", `#${article.id}-cite-${k}`);
    }
    const steps = article.querySelector("details.agent-steps");
    if (steps && article.dataset.finish === "awaiting_approval") {
      const status = steps.dataset.status;
      if (status === "running") this.continueRun(article);
      // Ended a moment ago: the server writes the answer into the message just after the run's end.
      else if (status !== "awaiting_approval") this.refreshMessage(article, { quiet: true, tries: 4 });
    }
  }

  // -- agents: the steps of a turn's run, decisions, the run going on after one ----------------------------

  /** The turn's model is a run: follow its events too; an agent's steps show in the answer as they happen. */
  watchRun(turn, runId) {
    if (turn.agent) return;
    turn.agent = new AgentLive(turn.answer, runId, {
      place: (details) => turn.live.before(details),
      say: (text) => this.say(text),
    });
    turn.agent.follow(); // ends by itself when the run pauses or ends
  }

  async onDecision(e) {
    const form = e.target;
    if (!(form instanceof HTMLFormElement) || !form.classList.contains("approval-form")) return;
    e.preventDefault();
    const decision = e.submitter && e.submitter.value === "deny" ? "deny" : "approve";
    const article = form.closest("article.msg");
    if (!(await decide(form, decision))) return;
    this.say(decision === "deny" ? "Denied; the agent goes on." : "Approved; the agent goes on.");
    // A card still in the streaming answer: the stored message replaces it in a moment and goes on from there
    // (finish() follows the run then, as the stored message may have been read before this decision).
    if (article && article.dataset.id) this.continueRun(article);
    else if (article) article.dataset.decided = "1";
  }

  /** After a decision: the rest of the steps and the answer as the run writes it; then the stored message. */
  async continueRun(article) {
    const details = article.querySelector("details.agent-steps");
    if (!details || this.following.has(article)) return;
    this.following.add(article);
    let live = article.querySelector(".answer-live");
    if (!live) {
      live = el("div", { class: "text streaming answer-live", "aria-live": "polite", "aria-busy": "true" },
        new AgentSteps(details).answer);
      const md = article.querySelector(".md.answer");
      if (md) md.replaceWith(live);
      else details.after(live);
    }
    live.setAttribute("aria-busy", "true");
    const agent = new AgentLive(article, details.dataset.run, { answer: live, say: (text) => this.say(text) });
    const end = await agent.follow();
    this.following.delete(article);
    live.removeAttribute("aria-busy");
    if (end === "done") await this.refreshMessage(article);
    else if (end === "lost") this.say("Lost track of the agent's run; reload the page to see where it is.");
  }

  /** The stored message once the server has written the run's answer into it (just after the run ends). */
  async refreshMessage(article, { quiet = false, tries = REFRESH_TRIES } = {}) {
    for (let i = 0; i < tries; i++) {
      if (!article.isConnected) return; // replaced meanwhile (by another look at the same message)
      const fresh = await this.fragment(article.dataset.id);
      if (fresh && fresh.dataset.finish !== "awaiting_approval" && article.isConnected) {
        const steps = fresh.querySelector("details.agent-steps");
        if (steps && article.querySelector("details.agent-steps[open]")) steps.open = true; // as the reader left it
        article.replaceWith(fresh);
        this.wire(fresh);
        if (!quiet) this.say("Answer complete.");
        return;
      }
      await sleep(Math.min(2000, 150 * 2 ** i));
    }
    if (!quiet) this.say("The agent has finished; reload the page to see its answer.");
  }

  onMessageClick(e) {
    const target = e.target instanceof Element ? e.target : null;
    if (!target) return;
    const article = target.closest("article.msg");
    if (!article) return;
    const cite = target.closest("a.cite");
    if (cite) {
      const details = document.getElementById(`${article.id}-cite-${cite.dataset.cite}`);
      if (details) {
        e.preventDefault();
        details.open = true;
        details.scrollIntoView({ block: "nearest" });
        details.querySelector("summary").focus();
      }
      return;
    }
    const button = target.closest("button[data-action]");
    if (!button) return;
    const action = button.dataset.action;
    if (action === "copy") this.copy(article, button);
    else if (action === "edit") this.edit(article);
    else if (action === "regenerate") this.regenerate(article);
  }

  rawText(article) {
    const tpl = article.querySelector("template.raw");
    return tpl ? tpl.content.textContent : article.textContent;
  }

  async copy(article, button) {
    try {
      await navigator.clipboard.writeText(this.rawText(article));
      this.say("Copied.");
      button.textContent = "Copied";
      setTimeout(() => { button.textContent = "Copy"; }, 1500);
    } catch (_) {
      this.say("Copying is not allowed here; select the text instead.");
    }
  }

  edit(article) {
    if (this.busy) return;
    this.replaces = article.dataset.id;
    this.input.value = this.rawText(article);
    this.editNote.hidden = false;
    this.form.querySelector('input[name="replaces"]').value = article.dataset.id;
    this.input.focus();
  }

  cancelEdit() {
    this.replaces = null;
    this.editNote.hidden = true;
    this.form.querySelector('input[name="replaces"]').value = "";
    this.input.value = "";
  }

  regenerate(article) {
    if (this.busy) return;
    let question = article.previousElementSibling;
    while (question && question.dataset.role !== "user") question = question.previousElementSibling;
    if (!question) return;
    this.send(this.rawText(question), question.dataset.id);
  }

  say(text) { this.status.textContent = text; }

  setBusy(busy) {
    this.busy = busy;
    this.sendButton.disabled = busy;
    this.stopButton.hidden = !busy;
  }

  /** Drop the articles from ``id`` on (an edited or regenerated turn replaces them). */
  removeFrom(id) {
    let node = document.getElementById(id);
    while (node) {
      const next = node.nextElementSibling;
      node.remove();
      node = next;
    }
  }

  async send(text, replaces) {
    this.setBusy(true);
    this.stopping = false;
    this.stopRequest = null;
    if (replaces) this.removeFrom(replaces);
    for (const b of this.messages.querySelectorAll('button[data-action="regenerate"]')) b.remove();
    this.cancelEdit();
    const mine = el("article", { class: "msg msg-user pending", "data-role": "user" },
      el("header", { class: "msg-head row" }, el("span", { class: "msg-who", text: "You" })),
      el("div", { class: "text", text }));
    const live = el("div", { class: "text streaming", "aria-live": "polite", "aria-busy": "true" });
    const progress = el("p", { class: "muted small progress" });
    const answer = el("article", { class: "msg msg-assistant pending", "data-role": "assistant" },
      el("header", { class: "msg-head row" }, el("span", { class: "msg-who", text: "Assistant" })), progress, live);
    this.messages.append(mine, answer);
    answer.scrollIntoView({ block: "end" });
    const turn = { mine, answer, live, progress, lastId: 0, ended: false };
    this.turn = turn;
    this.controller = new AbortController();
    const body = { content: text, stream: true };
    if (replaces) body.replaces = replaces;
    this.say("Writing the answer…");
    try {
      const r = await api(`/api/v1/threads/${encodeURIComponent(this.id)}/messages`,
        { method: "POST", json: body, signal: this.controller.signal });
      if (!r.ok) {
        this.fail(turn, await errorOf(r));
        return;
      }
      await readSSE(r, (ev) => this.onEvent(turn, ev));
    } catch (err) {
      if (!(err instanceof DOMException && err.name === "AbortError")) console.info("stream broke", err);
    }
    if (this.stopRequest) await this.stopRequest; // the server has stopped the turn: only its end is left
    if (!turn.ended) await this.resume(turn);
  }

  onEvent(turn, ev) {
    if (ev.comment !== undefined) return;
    const n = Number(ev.id);
    if (Number.isInteger(n) && n > 0) {
      if (n <= turn.lastId) return; // seen already (a resumed stream starts after it; never twice)
      turn.lastId = n;
    }
    let data = {};
    try { data = JSON.parse(ev.data); } catch (_) { return; }
    if (ev.event === "delta") {
      turn.progress.textContent = "";
      turn.live.append(document.createTextNode(data.content || ""));
    } else if (ev.event === "progress") {
      turn.progress.textContent = data.text || "";
      const run = /^run ([A-Za-z0-9_-]+)$/.exec(data.text || "");
      if (run) this.watchRun(turn, run[1]);
    } else if (ev.event === "restart") {
      // The answer starts again (the server writing it stopped and another took it up, or the run behind it
      // began its answer anew): what was shown of it is void.
      turn.live.textContent = "";
      turn.progress.textContent = data.reason === "interrupted"
        ? "The server writing the answer stopped; another one writes it again." : "The answer starts again.";
    } else if (ev.event === "summary") {
      turn.progress.textContent = "Summarised the earlier conversation.";
    } else if (ev.event === "message") {
      turn.ended = true;
      this.finish(turn, data);
    } else if (ev.event === "error") {
      turn.ended = true;
      this.fail(turn, (data.error && data.error.message) || "The answer failed.");
    }
  }

  /** The stream broke (or Stop aborted it): follow the turn again after the last event seen. */
  async resume(turn) {
    for (let attempt = 0; attempt < RESUME_TRIES && !turn.ended; attempt++) {
      if (!this.stopping) this.say("The connection broke; picking the answer up again…");
      if (attempt) await new Promise((ok) => setTimeout(ok, 500 * 2 ** attempt));
      try {
        const r = await api(`/api/v1/threads/${encodeURIComponent(this.id)}/turn/events`,
          { headers: { "Last-Event-ID": String(turn.lastId) } });
        if (r.status === 404) break;
        if (!r.ok) continue;
        await readSSE(r, (ev) => this.onEvent(turn, ev));
      } catch (_) { /* offline: try again */ }
    }
    if (!turn.ended) {
      turn.ended = true;
      this.fail(turn, "The answer was lost with the connection; reload the page to see what was stored.");
    }
  }

  async stop() {
    if (!this.busy || this.stopping) return;
    this.stopping = true;
    this.stopButton.hidden = true;
    this.say("Stopping…");
    // The server stops the turn and stores the reply as far as it got; send() then follows the turn to its
    // end through turn/events and shows the stored reply.
    this.stopRequest = api(`/api/v1/threads/${encodeURIComponent(this.id)}/turn/stop`, { method: "POST" })
      .then(async (r) => { if (!r.ok) this.say(await errorOf(r)); })
      .catch(() => this.say("Could not reach the server to stop the answer."));
    if (this.controller) this.controller.abort(); // the text stops growing now
  }

  async fragment(messageId) {
    const r = await api(`/chat/${encodeURIComponent(this.id)}/messages/${encodeURIComponent(messageId)}`);
    if (!r.ok) return null;
    // Our own server-rendered, sanitised HTML; DOMParser never runs scripts (and the CSP forbids inline ones).
    const doc = new DOMParser().parseFromString(await r.text(), "text/html");
    return doc.body.firstElementChild;
  }

  async finish(turn, data) {
    const [user, reply] = await Promise.all([this.fragment(data.user_message.id), this.fragment(data.message.id)]);
    if (user) turn.mine.replaceWith(user);
    const wasOpen = !!turn.answer.querySelector("details.agent-steps[open]");
    if (reply) {
      if (turn.agent) turn.agent.stop(); // the stored message shows the steps (and any card) itself
      const steps = reply.querySelector("details.agent-steps");
      if (steps && wasOpen) steps.open = true;
      turn.answer.replaceWith(reply);
      this.wire(reply);
      if (turn.answer.dataset.decided && reply.querySelector("details.agent-steps")) this.continueRun(reply);
    } else {
      turn.live.removeAttribute("aria-busy");
    }
    const title = document.getElementById("thread-title");
    if (title && title.textContent === "New chat") this.retitle(title);
    const finish = data.message.finish_reason;
    if (finish === "awaiting_approval") this.say("The agent waits for your decision: approve or deny its tool call.");
    else this.say(finish === "stopped" ? "Stopped; the answer so far is kept." : "Answer complete.");
    this.setBusy(false);
    this.input.focus();
  }

  /** A new chat is titled from its first message once that is stored. */
  async retitle(heading) {
    const r = await api(`/api/v1/threads/${encodeURIComponent(this.id)}`);
    if (!r.ok) return;
    const thread = await r.json();
    if (thread.title) {
      heading.textContent = thread.title;
      document.title = `${thread.title} · thinktank`;
    }
  }

  fail(turn, message) {
    turn.live.removeAttribute("aria-busy");
    turn.answer.classList.add("failed");
    turn.answer.append(el("p", { class: "error", role: "alert", text: message }));
    this.say(message);
    this.setBusy(false);
  }
}

// -- files dropped on the chat go to one of its knowledge bases --------------------------------------

class Uploads {
  constructor(page) {
    this.page = page;
    this.form = document.getElementById("drop-form");
    this.results = document.getElementById("drop-results");
  }

  start() {
    if (!this.form) return;
    const zone = this.page.root;
    zone.addEventListener("dragover", (e) => {
      if (e.dataTransfer && [...e.dataTransfer.types].includes("Files")) {
        e.preventDefault();
        zone.classList.add("dropping");
      }
    });
    zone.addEventListener("dragleave", (e) => {
      if (e.target === zone) zone.classList.remove("dropping");
    });
    zone.addEventListener("drop", (e) => {
      zone.classList.remove("dropping");
      if (!e.dataTransfer || !e.dataTransfer.files.length) return;
      e.preventDefault();
      this.upload([...e.dataTransfer.files]);
    });
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      const input = document.getElementById("drop-files");
      if (input.files.length) this.upload([...input.files]);
      input.value = "";
    });
  }

  async upload(files) {
    const kb = document.getElementById("drop-kb").value;
    const rows = files.map((f) => {
      const li = el("li", { text: `${f.name}: uploading…` });
      this.results.append(li);
      return li;
    });
    const body = new FormData();
    for (const f of files) body.append("files", f, f.name);
    let r;
    try {
      r = await api(`/api/v1/knowledge-bases/${encodeURIComponent(kb)}/documents`, { method: "POST", body });
    } catch (_) {
      for (const li of rows) li.textContent = li.textContent.replace("uploading…", "the upload failed (offline?)");
      return;
    }
    let data = null;
    try { data = await r.json(); } catch (_) { /* not JSON */ }
    if (!data || !Array.isArray(data.data)) {
      const why = data && data.error ? data.error.message : `${r.status} ${r.statusText}`;
      for (const li of rows) { li.textContent = `${li.textContent.split(":")[0]}: ${why}`; li.className = "error"; }
      return;
    }
    data.data.forEach((res, i) => {
      const li = rows[i] || el("li");
      const failed = res.status === "failed";
      const what = failed ? (res.error && res.error.message) || "failed"
        : `${res.status}${res.chunks ? `, ${res.chunks} passages` : ""}${res.document_status === "pending" ? " (awaiting review)" : ""}`;
      li.textContent = `${files[i] ? files[i].name : res.source}: ${what}`;
      li.className = failed ? "error" : "ok";
    });
  }
}

const root = document.getElementById("chat");
if (root) new ThreadPage(root).start();
const form = document.getElementById("new-chat");
if (form) newChat(form);
