"""Request ids (``x-request-id`` on every response, in every log line, on the usage record) and what the logs
never hold: keys, prompts, answers (unless THINKTANK_LOG_CONTENT is on)."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import text

from thinktank.api.app import ThinktankApp, create_app
from thinktank.config import Settings, parse_config
from thinktank.observability.logs import JsonFormatter, RequestIdFilter, TextFormatter, logging_config, redact

from ..fakes import openai as fmt
from ..fakes.process import Server, clean_env
from ..fakes.server import serving
from ..fakes.upstream import FakeUpstream, Recorded, Reply
from .conftest import ADMIN, AUTH

UPSTREAM_KEY = "sk-upstream-secret-KEY-0123456789"
PROMPT = "Where did I bury the treasure? ZEBRA-PROMPT-42"
ANSWER = "Under the old oak. QUOKKA-ANSWER-77"


def config(url: str) -> dict[str, Any]:
    return {"models": [{"name": "gpt", "provider": "openai", "model": "fake-model", "base_url": url + "/v1",
                        "api_key": UPSTREAM_KEY, "input_price": 1, "output_price": 2}],
            "router": {"backoff_base": 0, "num_retries": 2},
            "ensembles": [{"name": "duo", "members": ["gpt", "gpt"], "strategy": "heuristic"}]}


def answering(rec: Recorded) -> Reply:
    body = rec.json if isinstance(rec.json, dict) else {}
    if body.get("stream"):
        return Reply(sse=fmt.stream_events(ANSWER.split(" ")))
    return Reply(json=fmt.completion(ANSWER))


@contextmanager
def captured(formatter: logging.Formatter, level: int = logging.DEBUG) -> Iterator[io.StringIO]:
    """Everything logged (every logger, at ``level``) through ``formatter``, as ``thinktank serve`` sets it up."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    before = root.level
    root.addHandler(handler)
    root.setLevel(level)
    loggers = logging_config(logging.getLevelName(level), "json")["loggers"]  # the levels serve sets
    levels = {name: logging.getLogger(name).level for name in loggers}
    for name, spec in loggers.items():
        logging.getLogger(name).setLevel(spec["level"])
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(before)
        for name, was in levels.items():
            logging.getLogger(name).setLevel(was)


@asynccontextmanager
async def app_on(settings: Settings, upstream: FakeUpstream,
                 ) -> AsyncIterator[tuple[str, ThinktankApp, httpx.AsyncClient]]:
    app = create_app(settings, parse_config(config(upstream.url)))
    async with serving(app) as url, httpx.AsyncClient(timeout=30) as http:
        yield url, app, http


@pytest.fixture
async def answers() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream(answering)
    await fake.start()
    yield fake
    await fake.close()


async def _traffic(url: str, http: httpx.AsyncClient, answers: FakeUpstream) -> tuple[str, list[str]]:
    """Requests with a key of a user's, distinctive prompts and answers, and an upstream error quoting a key.
    Returns the user's key and the request ids."""
    ids = []
    r = await http.post(url + "/api/v1/users", headers=AUTH, json={"email": "ann@example.com",
                                                                    "password": "correct horse battery staple"})
    assert r.status_code == 201, r.text
    login = await http.post(url + "/api/v1/auth/login", json={"email": "ann@example.com",
                                                               "password": "correct horse battery staple"})
    session = {"Authorization": f"Bearer {login.json()['token']}"}
    made = await http.post(url + "/api/v1/keys", headers=session, json={"name": "k"})
    assert made.status_code == 201, made.text
    key = made.json()["key"]
    user = {"Authorization": f"Bearer {key}"}
    body = {"model": "gpt", "messages": [{"role": "user", "content": PROMPT}]}
    answers.queue(Reply(status=500, json={"error": {"message": f"internal error for key {UPSTREAM_KEY}, "
                                                               f"Authorization: Bearer {UPSTREAM_KEY}"}}))
    r = await http.post(url + "/v1/chat/completions", headers=user, json=body)
    assert r.status_code == 200 and ANSWER in r.text
    ids.append(r.headers["x-request-id"])
    r = await http.post(url + "/v1/chat/completions", headers=user, json={**body, "stream": True})
    assert r.status_code == 200 and "QUOKKA" in r.text
    ids.append(r.headers["x-request-id"])
    r = await http.post(url + "/v1/chat/completions", headers=user, json={**body, "model": "ensemble/duo"})
    assert r.status_code == 200 and "QUOKKA" in r.text  # a run: its prompts and answers are stored
    thread = await http.post(url + "/api/v1/threads", headers=user, json={"model": "gpt"})
    assert thread.status_code == 201, thread.text
    turn = await http.post(url + f"/api/v1/threads/{thread.json()['id']}/messages", headers=user,
                           json={"content": PROMPT})
    assert turn.status_code in (200, 201) and "QUOKKA" in turn.text, turn.text  # stored, through aiosqlite
    r = await http.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}x"}, json=body)
    assert r.status_code == 401
    return key, ids


async def test_no_key_prompt_or_answer_is_logged_even_at_debug(settings: Settings, answers: FakeUpstream) -> None:
    for formatter in (JsonFormatter(), TextFormatter()):
        with captured(formatter) as out:
            async with app_on(settings, answers) as (url, _app, http):
                key, ids = await _traffic(url, http, answers)
        logged = out.getvalue()
        assert "upstream gpt failed (attempt 1)" in logged  # the upstream error is logged, scrubbed
        for secret in (ADMIN, key, UPSTREAM_KEY, "ZEBRA-PROMPT", "QUOKKA-ANSWER", "treasure", "old oak"):
            assert secret not in logged, secret
        if isinstance(formatter, JsonFormatter):
            lines = [orjson.loads(line) for line in logged.splitlines()]
            assert all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
            [failed] = [line for line in lines if "upstream gpt failed" in line["message"]]
            assert failed["request_id"] == ids[0] and failed["level"] == "INFO" and failed["logger"] == \
                "thinktank.router"
        else:
            assert f"[{ids[0]}]: upstream gpt failed (attempt 1)" in logged
        settings = settings.model_copy(update={"data_dir": settings.data_dir.parent / "again"})


async def test_prompts_and_answers_are_logged_only_when_switched_on(settings: Settings, answers: FakeUpstream) -> None:
    on = settings.model_copy(update={"log_content": True})
    with captured(JsonFormatter()) as out:
        async with app_on(on, answers) as (url, _app, http):
            r = await http.post(url + "/v1/chat/completions", headers=AUTH,
                                json={"model": "gpt", "messages": [{"role": "user", "content": PROMPT}]})
            assert r.status_code == 200
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    logged = [line for line in lines if line.get("request_id") == r.headers["x-request-id"]]
    assert any("ZEBRA-PROMPT-42" in line["message"] for line in logged)
    assert any("QUOKKA-ANSWER-77" in line["message"] for line in logged)
    assert ADMIN not in out.getvalue() and UPSTREAM_KEY not in out.getvalue()


async def test_every_response_carries_a_request_id(settings: Settings, answers: FakeUpstream) -> None:
    async with app_on(settings, answers) as (url, app, http):
        body = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}
        seen = []
        requests: list[tuple[str, str, dict[str, Any]]] = [
                                 ("GET", "/health", {}), ("GET", "/ready", {}), ("GET", "/v1/models", {}),
                                 ("POST", "/v1/chat/completions", {"json": body}), ("GET", "/nope", {}),
                                 ("GET", "/api/v1/runs/run_x", {}), ("DELETE", "/v1/models", {}),
                                 ("POST", "/v1/chat/completions", {"content": b"{"}), ("GET", "/", {})]
        for method, path, kw in requests:
            r = await http.request(method, url + path, headers=AUTH, **kw)
            rid = r.headers["x-request-id"]
            assert rid.startswith("req-") and len(r.headers.get_list("x-request-id")) == 1, (path, r.status_code)
            seen.append(rid)
        assert len(set(seen)) == len(seen)
        unauthenticated = await http.post(url + "/v1/chat/completions", json=body)
        assert unauthenticated.status_code == 401 and unauthenticated.headers["x-request-id"].startswith("req-")

        # A sane id of the client's is kept; anything else is replaced.
        for sent in ["abc-123", "4bf92f35-77b3-4da6-a3ce-929d0e0e4736", "Root=1-67891233-abcdef012345678912345678",
                     "a" * 128]:
            r = await http.get(url + "/health", headers={"x-request-id": sent})
            assert r.headers["x-request-id"] == sent
        for insane in ["a" * 129, "has space", "quote\"d", "new\\nline", "ünïcode", "<script>", ""]:
            r = await http.get(url + "/health", headers={b"x-request-id": insane.encode()})
            assert r.status_code == 200 and r.headers["x-request-id"].startswith("req-"), insane

        # The usage record's id is the request's when generated here; a client's id (maybe reused) is not.
        generated = (await http.post(url + "/v1/chat/completions", headers=AUTH, json=body)).headers["x-request-id"]
        for _ in range(2):
            r = await http.post(url + "/v1/chat/completions", headers={**AUTH, "x-request-id": "mine"}, json=body)
            assert r.status_code == 200 and r.headers["x-request-id"] == "mine"
        await app.state.usage_writer.flush()
        async with app.state.db.engine.connect() as conn:
            recorded = (await conn.execute(text("SELECT request_id FROM usage"))).scalars().all()
        assert generated in recorded and "mine" not in recorded
        assert len(recorded) == len(set(recorded)) == 4  # both of the client's "mine" requests are recorded


def test_the_formats() -> None:
    record = logging.LogRecord("thinktank.x", logging.WARNING, __file__, 1, "key %s and %s", (
        "Bearer tt-abcdefghijklmnop", "https://user:pa55@host/x?api_key=zzz"), None)
    record.deployment = "gpt"
    RequestIdFilter().filter(record)
    line = orjson.loads(JsonFormatter().format(record))
    assert line["level"] == "WARNING" and line["logger"] == "thinktank.x" and line["deployment"] == "gpt"
    assert "request_id" not in line  # not handling a request
    assert line["message"] == "key Bearer *** and https://***@host/x?api_key=***"
    assert "tt-abcdefghijklmnop" not in TextFormatter().format(record)
    assert redact("sk-proj-abcdefghijkl AIzaSyA1234567890abcdef") == "*** ***"
    assert redact("run_0123456789abcdef req-0a1b2c3d4e5f-1f") == "run_0123456789abcdef req-0a1b2c3d4e5f-1f"
    cfg = logging_config("debug", "json")
    assert cfg["root"]["level"] == "DEBUG" and cfg["formatters"]["thinktank"]["()"].endswith("JsonFormatter")


def test_serve_logs_json_lines_from_its_workers(server: type[Server], tmp_path: Path) -> None:
    env = {**clean_env(tmp_path), "THINKTANK_LOG_FORMAT": "json", "THINKTANK_ADMIN_KEY": ADMIN}
    s = server(["--demo", "--workers", "2"], env)  # (at debug, the unread pipe of stderr would fill up)
    for _ in range(4):
        r = httpx.post(s.url + "/v1/chat/completions", headers=AUTH, json={
            "model": "demo/echo", "messages": [{"role": "user", "content": PROMPT}]})
        assert r.status_code == 200
    err = s.stop()
    parsed = [orjson.loads(line) for line in err.splitlines() if line.startswith("{")]
    started = [p["message"] for p in parsed if p["message"].startswith("Started server process")]
    assert len(set(started)) == 2, err  # each worker's uvicorn says so, in JSON
    assert any(p["logger"] == "uvicorn.error" for p in parsed)
    assert "ZEBRA-PROMPT" not in err and ADMIN not in err
    # Nothing the server logged is in another format (the command's own notices are plain sentences).
    for line in err.splitlines():
        assert not re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ |(INFO|DEBUG|WARNING|ERROR):  ", line), line
