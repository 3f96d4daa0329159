"""The web app served on loopback with the offline demo models, and a browser-like client that signs in
through the pages' own forms (cookies, CSRF tokens) and parses what it gets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from selectolax.lexbor import LexborHTMLParser as HTMLParser
from selectolax.lexbor import LexborNode as Node

from thinktank.api.app import ThinktankApp, create_app
from thinktank.config import GatewayConfig, Settings
from thinktank.discovery import demo_config
from thinktank.knowledge.embeddings import LocalEmbedder

from ..fakes.server import serving

ADMIN_KEY = "tt-web-admin-key-0123456789"
ADMIN_EMAIL = "admin@example.com"
PASSWORD = "correct horse battery staple"


class Page:
    """A fetched page, parsed."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.status = response.status_code
        self.tree = HTMLParser(response.text)

    def one(self, selector: str) -> Node:
        node = self.tree.css_first(selector)
        assert node is not None, f"no {selector!r} in {self.response.url}"
        return node

    def all(self, selector: str) -> list[Node]:
        return list(self.tree.css(selector))

    def texts(self, selector: str) -> list[str]:
        return [n.text(strip=True) for n in self.tree.css(selector)]

    @property
    def csrf(self) -> str:
        node = self.tree.css_first('meta[name="csrf-token"]')
        assert node is not None
        return node.attributes.get("content") or ""

    def form_value(self, name: str, form: str = "form") -> str:
        node = self.one(f'{form} input[name="{name}"]')
        return node.attributes.get("value") or ""


class Browser:
    """An httpx client with a cookie jar, the way a browser uses the pages."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.AsyncClient(base_url=url, timeout=30, follow_redirects=False)
        self.csrf = ""

    async def get(self, path: str, **kw: Any) -> Page:
        return Page(await self.http.get(path, **kw))

    async def sign_in(self, email: str, password: str = PASSWORD) -> httpx.Response:
        page = await self.get("/login")
        assert page.status == 200, page.response.text
        r = await self.http.post("/login", data={"csrf": page.form_value("csrf"), "email": email,
                                                 "password": password, "next": "/chat"})
        if r.status_code == 303:
            chat = await self.get("/chat")
            self.csrf = chat.csrf
        return r

    async def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """Our API as the pages' scripts call it: the cookie, and the CSRF header on changes."""
        headers = dict(kw.pop("headers", {}))
        if method not in ("GET", "HEAD"):
            headers.setdefault("x-csrf-token", self.csrf)
        return await self.http.request(method, path, headers=headers, **kw)

    async def close(self) -> None:
        await self.http.aclose()


@dataclass
class WebEnv:
    url: str
    app: ThinktankApp
    admin: Browser
    """Signed in as the admin (made at start from the settings)."""

    async def browser(self) -> Browser:
        b = Browser(self.url)
        self._browsers.append(b)
        return b

    async def member(self, email: str, **fields: Any) -> Browser:
        """A member made through the admin API, signed in in a browser of their own."""
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as http:
            r = await http.post("/api/v1/users", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                                json={"email": email, "password": PASSWORD, **fields})
            assert r.status_code == 201, r.text
        b = await self.browser()
        r = await b.sign_in(email)
        assert r.status_code == 303, r.text
        return b

    def __post_init__(self) -> None:
        self._browsers: list[Browser] = []


@pytest.fixture
async def web(tmp_path: Path, local_embedder: LocalEmbedder) -> AsyncIterator[WebEnv]:
    async with web_env(tmp_path, local_embedder, demo_config()) as env:
        yield env


@asynccontextmanager
async def web_env(tmp_path: Path, local_embedder: LocalEmbedder, config: GatewayConfig) -> AsyncIterator[WebEnv]:
    """The pages of an app serving ``config``, with the admin signed in."""
    settings = Settings(data_dir=tmp_path / "data", admin_key=ADMIN_KEY, admin_email=ADMIN_EMAIL,
                        admin_password=PASSWORD)
    app = create_app(settings, config, local_embedder=local_embedder, quiet=True)
    async with serving(app) as url:
        admin = Browser(url)
        r = await admin.sign_in(ADMIN_EMAIL)
        assert r.status_code == 303, r.text
        env = WebEnv(url, app, admin)
        try:
            yield env
        finally:
            for b in [admin, *env._browsers]:
                await b.close()


@pytest.fixture
async def fresh(tmp_path: Path, local_embedder: LocalEmbedder) -> AsyncIterator[tuple[str, Browser]]:
    """A server with no account yet (the first-run page)."""
    settings = Settings(data_dir=tmp_path / "data", admin_key=ADMIN_KEY)
    app = create_app(settings, demo_config(), local_embedder=local_embedder, quiet=True)
    async with serving(app) as url:
        b = Browser(url)
        try:
            yield url, b
        finally:
            await b.close()
