"""``kill -9`` of one of three hosts behind HAProxy while requests flow.

- Requests sent once the host is dead never fail: one that HAProxy sends to the dead host before its health checks
  notice gets a refused connection, and HAProxy tries it again on another host (``retries`` + ``option redispatch
  1``).
- A request in flight on the dead host is lost, never retried (it may have called a paid model already). A plain
  one gets HAProxy's 502 in the OpenAI error shape (``bad_gateway``) when it was the first request on its client
  connection; a later request on a kept-alive client connection sees the connection closed without an answer
  (httpx: ``RemoteProtocolError: Server disconnected without sending a response``), HAProxy's way of letting a
  client retry what is safe to retry. A stream whose headers and first events came already is cut short: the
  connection ends without the rest of the chunked body (no ``data: [DONE]``), an incomplete read to the client
  (httpx: ``RemoteProtocolError``).
- The host started again rejoins: HAProxy's checks put it back and it serves its share.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import httpx
from deploy.multihost.fleet import Fleet, Host

from .helpers import chat, make_key
from .load import Load

SLOW = "slow:6"
"""Upstream answers that take 6 s: still in flight when the host dies."""
IN_FLIGHT = 6
"""Of each kind (plain and streamed): round robin puts two of each on every host."""


@dataclass
class Stream:
    host: Host | None = None
    events: int = 0
    done: bool = False
    error: str | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)


async def _stream(c: httpx.AsyncClient, f: Fleet, auth: dict[str, str], out: Stream) -> None:
    try:
        async with c.stream("POST", f.url + "/v1/chat/completions", json=chat("free", SLOW, stream=True),
                            headers=auth) as r:
            assert r.status_code == 200
            out.host = f.served_by(r)
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    out.events += 1
                    out.started.set()
                    out.done = out.done or line == "data: [DONE]"
    except httpx.TransportError as exc:
        out.error = type(exc).__name__
    finally:
        out.started.set()


async def test_kill_9_of_a_host_loses_only_what_it_had_in_flight(hosts: Fleet) -> None:
    _, key = await make_key(hosts)
    auth = {"Authorization": f"Bearer {key}"}
    victim = hosts.hosts[1]
    survivors = {h for h in hosts.hosts if h is not victim}
    one_each = httpx.Limits(max_connections=100, max_keepalive_connections=0)  # a connection per request
    async with httpx.AsyncClient(timeout=60, limits=one_each) as c:
        streams = [Stream() for _ in range(IN_FLIGHT)]
        stream_tasks = [asyncio.create_task(_stream(c, hosts, auth, s)) for s in streams]
        await asyncio.gather(*(s.started.wait() for s in streams))  # each has its headers and first event
        plain = [asyncio.create_task(c.post(hosts.url + "/v1/chat/completions", json=chat("free", SLOW),
                                            headers=auth)) for _ in range(IN_FLIGHT)]

        async def quick(client: httpx.AsyncClient) -> httpx.Response:
            return await client.post(hosts.url + "/v1/chat/completions", json=chat("free"), headers=auth)

        load = Load({"chat": quick}, workers_per_kind=3)
        load.start()
        try:
            await load.until(lambda: len(load.of("before")) >= 30, "requests before the kill")
            load.phase = "killing"  # requests of this phase may be in flight on the victim when it dies
            await asyncio.to_thread(victim.kill)
            load.phase = "killed"  # dead, until HAProxy has noticed
            await asyncio.to_thread(hosts.lb.wait_state, victim.name, "DOWN", 30)
            load.phase = "out"
            await load.until(lambda: len(load.of("out")) >= 30, "requests with the host out")
            answers = await asyncio.gather(*plain)
            await asyncio.gather(*stream_tasks)
            load.phase = "restarting"
            await asyncio.to_thread(hosts.start, 1)  # its port and data directory; until HAProxy has it UP
            load.phase = "back"
            await load.until(lambda: len(load.of("back")) >= 30, "requests with the host back")
        finally:
            await load.stop()
    summary = load.summary()
    # Not one of the requests sent once the host was dead failed: before HAProxy noticed, while it was out, while it
    # came back.
    assert all(o.status == 200 for o in load.outcomes if o.phase not in ("before", "killing")), summary
    assert {k[0] for k in summary} >= {"before", "killed", "out", "back"}
    # Before: only those in flight on the victim when it died (a worker has one request out at a time), lost as
    # described above.
    lost = [o for o in load.outcomes if o.status != 200]
    assert len(lost) <= load.workers_per_kind, summary
    assert all((o.status == 502 and o.body["error"]["code"] == "bad_gateway")
               or (o.status is None and "without sending a response" in str(o.failure)) for o in lost), summary
    # The restarted host serves again (a new process: request ids with a new prefix).
    assert any(hosts.served_by(httpx.Response(200, headers=o.headers)) is victim for o in load.of("back")), summary
    # In flight on the victim: lost, each in the way described above; elsewhere: answered in full.
    lost_plain = [r for r in answers if r.status_code != 200]
    assert lost_plain, "no plain request was in flight on the killed host"
    assert {r.status_code for r in lost_plain} == {502}
    assert {r.json()["error"]["code"] for r in lost_plain} == {"bad_gateway"}
    assert all(r.headers["content-type"] == "application/json" for r in lost_plain)
    assert all(hosts.served_by(r) in survivors for r in answers if r.status_code == 200)
    cut = [s for s in streams if s.host is victim]
    assert cut, "no stream was in flight on the killed host"
    assert all(not s.done and s.error == "RemoteProtocolError" and s.events >= 1 for s in cut)
    assert all(s.done and s.error is None and s.host in survivors for s in streams if s not in cut)
