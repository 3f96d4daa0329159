"""Requests through the load balancer, and what the shared database recorded."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx
from deploy.multihost.fleet import Fleet


def chat(model: str = "priced", text: str = "hi", *, max_tokens: int = 10, stream: bool = False) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens,
            "stream": stream}


async def make_key(f: Fleet, **fields: Any) -> tuple[str, str]:
    """A new virtual key (made through the load balancer, so on any host): (its id, the key)."""
    async with httpx.AsyncClient(timeout=30) as c:
        made = await c.post(f.url + "/api/v1/keys", json={"name": "multihost", **fields}, headers=f.admin_headers)
    assert made.status_code == 201, made.text
    return made.json()["id"], made.json()["key"]


async def fire(f: Fleet, key: str, n: int, body: dict[str, Any]) -> list[httpx.Response]:
    """``n`` requests at once through the load balancer (one connection each, so HAProxy spreads them)."""
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as c:
        return list(await asyncio.gather(*(
            c.post(f.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
            for _ in range(n))))


async def usage_of(f: Fleet, key_id: str) -> list[asyncpg.Record]:
    """The key's usage rows as the shared database has them."""
    conn = await asyncpg.connect(f.db_url, timeout=10)
    try:
        return list(await conn.fetch("SELECT status, cost_usd FROM usage WHERE key_id = $1", key_id))
    finally:
        await conn.close()


async def wait_usage(f: Fleet, key_id: str, rows: int, timeout: float = 30) -> list[asyncpg.Record]:
    """The key's usage rows once there are ``rows`` of them (each host writes its buffer every half second)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found = await usage_of(f, key_id)
        if len(found) >= rows or loop.time() > deadline:
            return found
        await asyncio.sleep(0.2)
