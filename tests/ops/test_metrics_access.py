"""Who may read ``/metrics``: admin credentials by default, only the scrape token when one is set, anyone on a
metrics port of its own (unless a token is set); and bad input gets a clear 4xx, never a 500."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from thinktank.api.app import create_app
from thinktank.config import Settings, parse_config

from ..fakes.process import free_port
from ..fakes.server import serving
from .scrape import parse

ADMIN = "tt-test-admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
TOKEN = "scrape-token-0123456789abcdef"
CONFIG = {"models": [{"name": "m", "provider": "mock"}]}

Served = Callable[..., Any]


@asynccontextmanager
async def server(tmp_path: Path, **settings: Any) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    app = create_app(Settings(data_dir=tmp_path / "data", admin_key=ADMIN, **settings), parse_config(CONFIG))
    async with serving(app) as url, httpx.AsyncClient(timeout=10) as http:
        yield url, http


async def member_session(url: str, http: httpx.AsyncClient) -> dict[str, str]:
    password = "correct horse battery staple"
    r = await http.post(url + "/api/v1/users", headers=AUTH, json={"email": "bob@example.com", "password": password})
    assert r.status_code == 201, r.text
    login = await http.post(url + "/api/v1/auth/login", json={"email": "bob@example.com", "password": password})
    return {"Authorization": f"Bearer {login.json()['token']}"}


def error_of(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    message: str = r.json()["error"]["message"]
    return message


async def test_admin_credentials_by_default(tmp_path: Path) -> None:
    async with server(tmp_path) as (url, http):
        r = await http.get(url + "/metrics")
        assert "Bearer" in r.headers["www-authenticate"]
        error_of(r, 401)
        member = await member_session(url, http)
        assert "admins" in error_of(await http.get(url + "/metrics", headers=member), 403)
        ok = await http.get(url + "/metrics", headers=AUTH)
        assert ok.status_code == 200 and ok.headers["cache-control"] == "no-store"
        assert "thinktank_requests_total" in parse(ok.text).sample_names()
        head = await http.head(url + "/metrics", headers=AUTH)
        assert head.status_code == 200 and head.content == b""
        assert (await http.get(url + "/metrics/", headers=AUTH)).status_code == 200
        assert (await http.get(url + "/metrics?name[]=x&debug=%ff", headers=AUTH)).status_code == 200


async def test_the_token_alone_when_one_is_set(tmp_path: Path) -> None:
    async with server(tmp_path, metrics_token=TOKEN) as (url, http):
        error_of(await http.get(url + "/metrics"), 401)
        error_of(await http.get(url + "/metrics", headers=AUTH), 401)  # not even the admin key
        error_of(await http.get(url + "/metrics", headers={"Authorization": f"Basic {TOKEN}"}), 401)
        error_of(await http.get(url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}x"}), 401)
        ok = await http.get(url + "/metrics", headers={"Authorization": f"bearer  {TOKEN}"})
        assert ok.status_code == 200
        # Guessing is throttled like failed logins: 429 with Retry-After, never a 500.
        statuses = [(await http.get(url + "/metrics", headers={"Authorization": f"Bearer guess-{i}"})).status_code
                    for i in range(12)]
        assert set(statuses) <= {401, 429} and statuses[-1] == 429
        limited = await http.get(url + "/metrics", headers={"Authorization": "Bearer another-guess"})
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1


async def test_bad_input_is_never_a_server_error(tmp_path: Path) -> None:
    async with server(tmp_path, metrics_token=TOKEN) as (url, http):
        r = await http.post(url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, content=b"{}")
        error_of(r, 405)
        assert "GET" in r.headers["allow"]
        for value in (b"Bearer \xff\xfe", b"Bearer", b"Bearer:x", b"\xc3\x28", b"Bearer " + b"x" * 6000):
            r = await http.get(url + "/metrics", headers=[(b"authorization", value)])
            assert 400 <= r.status_code < 500, (value[:20], r.status_code)
        odd = "application/openmetrics-text; version=abc;;,,==, */*;q=x"
        r = await http.get(url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}", "Accept": odd})
        assert r.status_code == 200


async def test_a_metrics_port_of_its_own(tmp_path: Path) -> None:
    port = free_port()
    async with server(tmp_path, metrics_port=port) as (url, http):
        metrics = f"http://127.0.0.1:{port}"
        error_of(await http.get(url + "/metrics", headers=AUTH), 404)  # not on the main port
        open_ = await http.get(metrics + "/metrics")  # open: bind it where only Prometheus reaches it
        assert open_.status_code == 200 and open_.headers["content-type"].startswith("text/plain; version=0.0.4")
        parse(open_.text)
        error_of(await http.get(metrics + "/v1/models", headers=AUTH), 404)
        r = await http.delete(metrics + "/metrics")
        error_of(r, 405)
        assert r.headers["allow"] == "GET, HEAD"
    # Closed with the app: the port is free again.
    async with server(tmp_path, metrics_port=port, metrics_token=TOKEN) as (url, http):
        metrics = f"http://127.0.0.1:{port}/metrics"
        error_of(await http.get(metrics), 401)
        error_of(await http.get(metrics, headers=AUTH), 401)
        for value in (b"Bearer \xff\xfe", b"Bearer " + b"y" * 6000):
            r = await http.get(metrics, headers=[(b"authorization", value)])
            assert 400 <= r.status_code < 500
        assert (await http.get(metrics, headers={"Authorization": f"Bearer {TOKEN}"})).status_code == 200
