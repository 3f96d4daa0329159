"""From the upstream's first token to the same token on the page: a fake OpenAI-compatible upstream notes the
wall-clock time it writes its first content chunk; ``thinktank serve`` streams it through; in Debian's
Chromium (Playwright) a MutationObserver on the page notes when that text appears. Both clocks are this
machine's.

    python bench/web_first_token.py                    # the compare page, 20 questions to two models
    python bench/web_first_token.py --page chat --runs 30

Needs /usr/bin/chromium (or THINKTANK_CHROMIUM) and the dev extras (playwright).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiohttp import web

EMAIL = "bench@example.com"
PASSWORD = "bench password 123"
KEY = "sk-bench-admin-0123456789"
MARK = "FIRSTTOKEN"
HOLD = 0.4  # the upstream waits this long before its first token (the page is surely listening by then)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Upstream:
    """An OpenAI-compatible streaming server that remembers when it sent each first token."""

    def __init__(self) -> None:
        self.sent: dict[str, list[float]] = {}
        """When each first token went out, by the question asked (a thread's title and memory calls ask others)."""
        self.port = free_port()

    def app(self) -> web.Application:
        async def chat(request: web.Request) -> web.StreamResponse:
            body = orjson.loads(await request.read())
            response = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await response.prepare(request)
            await asyncio.sleep(HOLD)

            def chunk(text: str) -> bytes:
                data = {"id": "c1", "object": "chat.completion.chunk", "created": int(time.time()),
                        "model": body.get("model"), "choices": [{"index": 0, "delta": {"content": text},
                                                                 "finish_reason": None}]}
                return b"data: " + orjson.dumps(data) + b"\n\n"

            messages = body.get("messages") or [{}]
            asked = str(messages[-1].get("content", ""))
            self.sent.setdefault(asked, []).append(time.time())
            await response.write(chunk(MARK + " "))
            for word in ["and", "the", "rest", "of", "the", "answer"]:
                await asyncio.sleep(0.02)
                await response.write(chunk(word + " "))
            done = {"id": "c1", "object": "chat.completion.chunk", "created": int(time.time()),
                    "model": body.get("model"), "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}
            await response.write(b"data: " + orjson.dumps(done) + b"\n\ndata: [DONE]\n\n")
            return response

        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        return app

    def start(self) -> None:
        loop = asyncio.new_event_loop()
        runner = web.AppRunner(self.app())

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
            loop.run_forever()

        threading.Thread(target=serve, daemon=True).start()


def start_server(upstream: Upstream, port: int) -> subprocess.Popen[bytes]:
    data = Path(tempfile.mkdtemp(prefix="tt-first-token-"))
    config = data / "config.yaml"
    config.write_text("models:\n" + "".join(
        f"  - name: bench/{n}\n    provider: openai\n    model: fake\n"
        f"    base_url: http://127.0.0.1:{upstream.port}/v1\n    api_key: sk-fake\n"
        "    input_price: 2.5\n    output_price: 10.0\n" for n in ("a", "b")))
    env = {**os.environ, "THINKTANK_DATA_DIR": str(data), "THINKTANK_ADMIN_KEY": KEY,
           "THINKTANK_ADMIN_EMAIL": EMAIL, "THINKTANK_ADMIN_PASSWORD": PASSWORD}
    server = subprocess.Popen([sys.executable, "-m", "thinktank", "serve", "--config", str(config), "--port",
                               str(port), "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit("thinktank serve did not become ready")


WATCH = """(mark) => {
  window.__firstSeen = [];
  const seen = new WeakSet(document.querySelectorAll('%s'));  // what is already there is not this answer
  new MutationObserver(() => {
    for (const node of document.querySelectorAll('%s')) {
      if (!seen.has(node) && node.textContent.includes(mark)) { seen.add(node); window.__firstSeen.push(Date.now()); }
    }
  }).observe(document.body, { subtree: true, childList: true, characterData: true });
}"""


def run(page_kind: str, runs: int, url: str, upstream: Upstream) -> list[float]:
    from playwright.sync_api import sync_playwright

    delays: list[float] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=os.environ.get("THINKTANK_CHROMIUM", "/usr/bin/chromium"),
                                     args=["--headless", "--no-sandbox", "--disable-gpu",
                                           "--disable-background-networking"])
        page = browser.new_page(base_url=url)
        page.goto("/login")
        page.fill("input[name=email]", EMAIL)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url("**/chat")
        for i in range(runs):
            question = f"question {i} of the benchmark"
            if page_kind == "compare":
                page.goto("/compare")
                for model in ("bench/a", "bench/b"):
                    page.check(f"input[value='{model}']")
                page.evaluate(WATCH % (".compare-col", ".compare-col"), MARK)
                page.fill("textarea[name=question]", question)
                page.get_by_role("button", name="Ask").click()
                expected = 2
            else:
                if i == 0:  # one thread on bench/a, then its page for every question
                    page.goto("/chat")
                    page.select_option("#new-chat select[name=model]", "bench/a")
                    page.get_by_role("button", name="Start chat").click()
                    page.wait_for_url("**/chat/thr_*")
                page.evaluate(WATCH % ("[data-role=assistant]", "[data-role=assistant]"), MARK)
                page.fill("#message", question)
                page.click("#send")
                expected = 1
            page.wait_for_function(f"() => window.__firstSeen && window.__firstSeen.length >= {expected}",
                                   timeout=15_000)
            seen: list[Any] = page.evaluate("() => window.__firstSeen")
            sent = sorted(upstream.sent.get(question, []))
            assert len(sent) == expected, f"the upstream saw {len(sent)} requests for {question!r}"
            # The first sightings, one per answer (a finished chat answer is swapped for the rendered one).
            delays += [(s / 1000 - t) * 1000 for s, t in zip(sorted(seen)[:expected], sent, strict=False)]
            if page_kind == "chat":
                page.wait_for_selector("#stop", state="hidden")
            page.wait_for_timeout(300)  # let the answer finish before the next one
        browser.close()
    return delays


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--page", choices=["compare", "chat"], default="compare")
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    upstream = Upstream()
    upstream.start()
    port = free_port()
    server = start_server(upstream, port)
    try:
        delays = run(args.page, args.runs, f"http://127.0.0.1:{port}", upstream)
    finally:
        server.terminate()
        server.wait(10)
    q = statistics.quantiles(delays, n=20)
    print(f"{args.page} page, {len(delays)} first tokens: upstream sent -> shown in the page: "
          f"p50 {statistics.median(delays):.1f} ms, p95 {q[18]:.1f} ms, max {max(delays):.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
