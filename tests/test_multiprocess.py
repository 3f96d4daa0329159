"""Two thinktank processes sharing one database and one Redis: the limits hold across them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from .fakes.process import Server, run


@pytest.fixture
def shared_env(env: dict[str, str], redis_url: str, tmp_path: Path, fake_upstream_thread: str) -> dict[str, str]:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"models:\n  - {{name: m, provider: openai, model: fake-model, base_url: '{fake_upstream_thread}/v1',"
        " api_key: x, input_price: 1000, output_price: 1000}\n"
    )
    return {**env, "THINKTANK_REDIS_URL": redis_url, "THINKTANK_ADMIN_KEY": "adm", "THINKTANK_CONFIG": str(cfg)}


async def _fire(urls: list[str], key: str, n: int) -> list[httpx.Response]:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
    async with httpx.AsyncClient(timeout=30) as c:
        return list(await asyncio.gather(*(
            c.post(urls[i % len(urls)] + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
            for i in range(n)
        )))


def test_two_servers_sharing_redis_never_exceed_the_rate_limit(server: type[Server],
                                                               shared_env: dict[str, str]) -> None:
    key = run(["keys", "create", "--name", "shared", "--rpm", "20"], shared_env).stdout.strip()
    assert key.startswith("tt-")
    a, b = server([], shared_env), server([], shared_env)
    answers = asyncio.run(_fire([a.url, b.url], key, 80))
    codes = [r.status_code for r in answers]
    assert codes.count(200) == 20, codes  # admitted across both processes: never more than the limit
    assert codes.count(429) == 60
    assert all(int(r.headers["retry-after"]) >= 1 for r in answers if r.status_code == 429)


def test_two_servers_sharing_redis_never_overspend(server: type[Server], shared_env: dict[str, str]) -> None:
    # each hold is (1.5 x 8 + 10) x $1000/M = $0.022; each answer costs $0.02 ((12 + 8) x $1000/M)
    key = run(["keys", "create", "--name", "cap", "--budget", "0.1", "--period", "total"], shared_env).stdout.strip()
    a, b = server([], shared_env), server([], shared_env)
    answers = asyncio.run(_fire([a.url, b.url], key, 60))
    admitted = sum(r.status_code == 200 for r in answers)
    assert all(r.status_code in (200, 429) for r in answers)
    a.stop()
    b.stop()  # both flush their usage rows and return their budget leases
    table = run(["usage", "--by", "key", "--local"], shared_env).stdout.splitlines()[1:]  # read in this process
    cost = sum(float(line.split()[4]) for line in table)
    assert admitted >= 1
    assert cost == pytest.approx(admitted * 0.02)
    assert cost <= 0.1 + 1e-9
