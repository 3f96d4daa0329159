"""Web app page times: ``thinktank serve --demo`` in a subprocess on a database holding 1,000 threads with
10,000 messages (and 10,000 usage rows), signed in as the admin; each page fetched many times over loopback.

    python bench/web_pages.py                 # 200 fetches per page
    python bench/web_pages.py --fetches 500 --threads 1000 --messages 10

The time is the whole request as the client sees it (loopback, keep-alive), an upper bound on the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

KEY = "sk-bench-admin-0123456789"
EMAIL = "bench@example.com"
PASSWORD = "bench password 123"
PAGES = ["/chat", "/chat?q=topic+7", "{thread}", "/compare", "/arena", "/leaderboard", "/debate", "/knowledge",
         "/me", "/me/usage", "/admin", "/admin/users", "/admin/keys", "/admin/usage", "/admin/usage?window=7d",
         "/admin/usage?window=30d", "/admin/usage?by=user&window=30d", "/admin/health", "/admin/budgets"]


def seed(data_dir: Path, threads: int, per_thread: int) -> str:
    """Write the threads, messages and usage rows straight into the SQLite database; the newest thread's page."""
    import sqlite3

    db = sqlite3.connect(data_dir / "thinktank.db")
    user_id = db.execute("SELECT id FROM users WHERE email = ?", (EMAIL,)).fetchone()[0]
    rng = random.Random(7)
    now = time.time()
    words = ["model", "ensemble", "debate", "budget", "latency", "token", "vector", "search", "answer", "question",
             "topic", "plan", "code", "python", "rust", "docs", "index", "cache", "router"]
    newest = ""
    for t in range(threads):
        tid = f"thr_bench{t:07d}"
        updated = now - (threads - t) * 60
        db.execute("INSERT INTO threads (id, user_id, title, model, archived, created_at, updated_at) "
                   "VALUES (?, ?, ?, ?, 0, ?, ?)", (tid, user_id, f"topic {t} " + " ".join(rng.sample(words, 3)),
                                                     "demo/echo", updated - 600, updated))
        rows = []
        for s in range(1, per_thread + 1):
            role = "user" if s % 2 else "assistant"
            text = " ".join(rng.choice(words) for _ in range(60 if role == "assistant" else 15))
            if role == "assistant":
                text += "\n\n```python\nprint('hello')\n```\n"
            rows.append((f"msg_b{t:07d}{s:03d}", tid, s, role, text, "demo/echo" if role == "assistant" else None,
                         12, 80 if role == "assistant" else 0, 0.00012 if role == "assistant" else 0.0,
                         updated - 600 + s))
        db.executemany("INSERT INTO thread_messages (id, thread_id, seq, role, content, model, prompt_tokens, "
                       "completion_tokens, cost_usd, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        newest = tid
    usage = [(f"req_b{i:08d}", now - rng.random() * 30 * 86400, user_id, None,
              rng.choice(["demo/echo", "demo/fast", "demo/slow"]), "demo/echo", 50, 100, 0.0002,
              rng.random() * 900, 200 if rng.random() > 0.05 else 502, 0, 0) for i in range(10_000)]
    cols = [r[1] for r in db.execute("PRAGMA table_info(usage)")]
    if "day" in cols:
        usage_rows = [(*u, int(u[1] // 86400)) for u in usage]
        db.executemany("INSERT INTO usage (request_id, ts, user_id, key_id, model, deployment, prompt_tokens, "
                       "completion_tokens, cost_usd, latency_ms, status, cache_hit, stream, day) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", usage_rows)
    db.commit()
    db.close()
    return f"/chat/{newest}"


def start(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "THINKTANK_DATA_DIR": str(data_dir), "THINKTANK_ADMIN_KEY": KEY,
           "THINKTANK_ADMIN_EMAIL": EMAIL, "THINKTANK_ADMIN_PASSWORD": PASSWORD}
    server = subprocess.Popen([sys.executable, "-m", "thinktank", "serve", "--demo", "--port", str(port),
                               "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(600):
        if server.poll() is not None:
            raise SystemExit(f"thinktank serve exited: {server.stderr.read().decode() if server.stderr else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit("thinktank serve did not become ready")


async def measure(url: str, pages: list[str], fetches: int) -> list[tuple[str, int, list[float]]]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        login = await http.get("/login")
        csrf = login.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        r = await http.post("/login", data={"csrf": csrf, "email": EMAIL, "password": PASSWORD})
        assert r.status_code == 303, r.text
        out = []
        for page in pages:
            first = await http.get(page)
            times = []
            for _ in range(fetches):
                t = time.perf_counter()
                r = await http.get(page)
                times.append((time.perf_counter() - t) * 1000)
            out.append((page, first.status_code, times))
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=10, help="messages per thread")
    parser.add_argument("--fetches", type=int, default=200)
    parser.add_argument("--port", type=int, default=18765)
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="tt-web-bench-"))
    server = start(data_dir, args.port)  # creates the database and the admin
    try:
        thread_page = seed(data_dir, args.threads, args.messages)
        pages = [thread_page if p == "{thread}" else p for p in PAGES]
        results = asyncio.run(measure(f"http://127.0.0.1:{args.port}", pages, args.fetches))
    finally:
        server.terminate()
        server.wait(10)
    print(f"{args.threads} threads, {args.threads * args.messages} messages, 10,000 usage rows; "
          f"{args.fetches} fetches per page\n")
    print("| page | status | p50 ms | p95 ms | max ms |")
    print("|---|---|---|---|---|")
    for page, status, times in results:
        q = statistics.quantiles(times, n=20)
        shown = "/chat/{thread}" if page.startswith("/chat/thr_") else page
        print(f"| `{shown}` | {status} | {statistics.median(times):.1f} | {q[18]:.1f} | {max(times):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
