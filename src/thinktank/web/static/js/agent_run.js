// An agent run's page: while the run goes on, its steps and answer as they come; the approval card's
// decisions through the API; once it ends, the server's rendering of the run (the answer as Markdown).
import { AgentLive, decide, denyOnEnter } from "./agent.js";
import { api } from "./app.js";

const status = document.getElementById("status");
const say = (text) => { if (status) status.textContent = text; };

async function swapBody(runId) {
  const r = await api(`/runs/${encodeURIComponent(runId)}/fragment`);
  const body = document.getElementById("agent-run");
  if (!r.ok || !body) return;
  const wasOpen = !!body.querySelector("details.agent-steps[open]");
  // Our own server-rendered, sanitised HTML; DOMParser never runs scripts (and the CSP forbids inline ones).
  const fresh = new DOMParser().parseFromString(await r.text(), "text/html").getElementById("agent-run");
  if (!fresh) return;
  const steps = fresh.querySelector("details.agent-steps");
  if (steps) steps.open = wasOpen;
  body.replaceWith(document.importNode(fresh, true));
}

let following = false;

async function follow() {
  const body = document.getElementById("agent-run");
  if (!body || following) return;
  following = true;
  const answer = body.querySelector(".answer-live");
  const agent = new AgentLive(body, body.dataset.run, { answer, say });
  say("The agent is working…");
  const end = await agent.follow();
  following = false;
  if (end === "done") {
    await swapBody(body.dataset.run);
    say("The run has ended.");
  } else if (end === "lost") {
    say("Lost track of the run; reload the page to see where it is.");
  }
}

document.addEventListener("submit", async (e) => {
  const form = e.target;
  if (!(form instanceof HTMLFormElement) || !form.classList.contains("approval-form")) return;
  e.preventDefault();
  const decision = e.submitter && e.submitter.value === "deny" ? "deny" : "approve";
  if (!(await decide(form, decision))) return;
  say(decision === "deny" ? "Denied; the agent goes on." : "Approved; the agent goes on.");
  const body = document.getElementById("agent-run");
  if (body) body.dataset.status = "running";
  follow();
});

denyOnEnter(document);

const body = document.getElementById("agent-run");
if (body && body.dataset.status === "running") follow();
