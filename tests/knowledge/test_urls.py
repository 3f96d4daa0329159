"""Safe URL fetching: the policy over a table of hosts and addresses (an injected resolver, no network),
then real fetches from a raw HTTP/1.1 server on loopback that records every connection and request."""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import random
import shutil
import socket
import ssl
import subprocess
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from thinktank.errors import PayloadTooLargeError, UnprocessableError
from thinktank.knowledge.urls import (
    DEFAULT_REFUSED_NETWORKS,
    UrlFetcher,
    UrlFetchError,
    UrlPolicy,
    UrlRefusedError,
    embedded_ipv4,
)

# --- an injectable resolver ---------------------------------------------------------------------


class TableResolver:
    """Answers from a table (a name may have a list of answers, one per call, the last repeating);
    records every call. A name not in the table is unknown (like NXDOMAIN)."""

    def __init__(self, table: dict[str, list[str] | list[list[str]]] | None = None) -> None:
        self.table = table or {}
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append(host)
        answers = self.table.get(host)
        if answers is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if answers and isinstance(answers[0], list):
            sequence = [a for a in answers if isinstance(a, list)]
            return sequence[min(len([c for c in self.calls if c == host]), len(sequence)) - 1]
        return [a for a in answers if isinstance(a, str)]


# --- the default policy, no network -------------------------------------------------------------

NAMES: dict[str, list[str] | list[list[str]]] = {
    "intranet.example.com": ["10.0.0.7"],
    "dual.example.com": ["93.184.216.34", "127.0.0.1"],
    "dual-v6.example.com": ["2606:4700::1111", "fd00:ec2::254"],
    "v6-loopback.example.com": ["::1"],
    "mapped.example.com": ["::ffff:169.254.169.254"],
    "linklocal.example.com": ["fe80::1%1"],
    "garbage.example.com": ["not-an-address"],
    "public.example.com": ["93.184.216.34", "2606:4700::1111"],
    "empty.example.com": [],
}

REFUSED_URLS = [
    # loopback, private, link-local, CGNAT, this-network, multicast, reserved, broadcast
    "http://127.0.0.1/", "http://127.255.255.254/", "http://[::1]/", "http://10.1.2.3/", "http://172.16.0.1/",
    "http://172.31.255.255/", "http://192.168.1.1/", "http://[fc00::1]/", "http://[fd12:3456::1]/",
    "http://169.254.169.254/latest/meta-data/", "http://169.254.0.1/", "http://[fe80::1]/", "http://100.64.0.1/",
    "http://100.127.255.255/", "http://0.0.0.0/", "http://0.1.2.3/", "http://[::]/", "http://224.0.0.1/",
    "http://239.255.255.250/", "http://[ff02::1]/", "http://240.0.0.1/", "http://255.255.255.255/",
    "http://192.0.2.1/", "http://198.18.0.1/", "http://[2001:db8::1]/",
    # cloud metadata services outside 169.254/16
    "http://100.100.100.200/", "http://192.0.0.192/", "http://168.63.129.16/", "http://[fd00:ec2::254]/",
    # IPv6 forms of refused IPv4 addresses
    "http://[::ffff:127.0.0.1]/", "http://[::ffff:7f00:1]/", "http://[::ffff:10.0.0.1]/",
    "http://[::ffff:169.254.169.254]/", "http://[::127.0.0.1]/", "http://[::7f00:1]/", "http://[::ffff:0:7f00:1]/",
    "http://[64:ff9b::7f00:1]/", "http://[64:ff9b::a9fe:a9fe]/", "http://[64:ff9b:1::5db8:d822]/",
    "http://[2002:7f00:1::]/", "http://[2002:a9fe:a9fe::1]/", "http://[2002:c0a8:101::1]/",
    "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",  # Teredo
    # IPv6 outside the allocated global unicast space 2000::/3
    "http://[4000::1]/", "http://[100:1::1]/", "http://[64::1]/", "http://[c000::1]/",
    # zone ids
    "http://[fe80::1%25eth0]/", "http://[fe80::1%eth0]/",
    # IPv4 in the forms inet_aton and browsers accept
    "http://2130706433/", "http://0177.0.0.1/", "http://0x7f.1/", "http://0x7f000001/", "http://127.1/",
    "http://127.0.1/", "http://0/", "http://017700000001/", "http://0x7F.0.0.1/", "http://0xa9.0xfe.0xa9.0xfe/",
    "http://2852039166/", "http://127.0.0.1./", "http://127\u30020\u30020\u30021/",
    # hosts that are no valid address and no valid name
    "http://1.2.3.4.5/", "http://example.123/", "http://%31%32%37.0.0.1/", "http://256.1.1.1/",
    # names
    "http://localhost/", "http://LOCALHOST./", "http://foo.localhost/", "http://metadata.google.internal/",
    "http://metadata/", "http://printer.local/", "http://kubernetes.default.svc/", "http://x.home.arpa/",
    # names resolving to refused addresses: every answer is checked
    "http://intranet.example.com/", "http://dual.example.com/", "http://dual-v6.example.com/",
    "http://v6-loopback.example.com/", "http://mapped.example.com/", "http://linklocal.example.com/",
    "http://garbage.example.com/",
    # schemes, user information, ports
    "ftp://public.example.com/", "file:///etc/passwd", "gopher://public.example.com/", "javascript:alert(1)",
    "data:text/plain,hi", "ws://public.example.com/", "//public.example.com/", "public.example.com",
    "http://user:pw@public.example.com/", "http://user@public.example.com/", "http://@public.example.com/",
    "http://public.example.com\\@127.0.0.1/", "http://public.example.com:22/", "http://public.example.com:0/",
    "http://public.example.com:99999/", "http://public.example.com:6379/", "https://public.example.com:8000/",
    # not a URL
    "http://", "", "http://exa mple.com/",
]


@pytest.mark.parametrize("url", REFUSED_URLS)
async def test_default_policy_refuses(url: str) -> None:
    resolver = TableResolver(NAMES)
    with pytest.raises(UrlRefusedError) as caught:
        await UrlFetcher(resolver=resolver).check(url)
    assert caught.value.status == 400
    assert caught.value.code == "url_refused"
    assert caught.value.param == "url"
    if "example.com" not in url:
        assert resolver.calls == []  # an address literal (in any form) is checked without the resolver


@pytest.mark.parametrize(("url", "addresses"), [
    ("http://93.184.216.34/", ["93.184.216.34"]),
    ("https://[2606:4700::1111]/", ["2606:4700::1111"]),
    ("http://public.example.com:8080/a?b=c#frag", ["93.184.216.34", "2606:4700::1111"]),
    ("https://PUBLIC.example.com.:8443/", ["93.184.216.34", "2606:4700::1111"]),
    ("http://[::ffff:93.184.216.34]/", ["93.184.216.34"]),  # mapped: connected to as IPv4
    ("http://[64:ff9b::5db8:d822]/", ["64:ff9b::5db8:d822"]),  # NAT64 of a public address
    ("http://[2002:5db8:d822::1]/", ["2002:5db8:d822::1"]),  # 6to4 of a public address
    ("http://1.1.1.1:80/", ["1.1.1.1"]),
])
async def test_default_policy_allows_public(url: str, addresses: list[str]) -> None:
    target = await UrlFetcher(resolver=TableResolver(NAMES)).check(url)
    assert [str(a) for a in target.addresses] == addresses
    assert target.url.fragment == ""
    assert target.url.scheme in ("http", "https")


async def test_unresolvable_and_empty_answers_are_422_naming_only_the_host() -> None:
    fetcher = UrlFetcher(resolver=TableResolver(NAMES))
    for url in ("http://nowhere.example.com/", "http://empty.example.com/"):
        with pytest.raises(UrlFetchError) as caught:
            await fetcher.check(url)
        assert caught.value.status == 422
        assert "could not be resolved" in caught.value.message


async def test_refusals_never_echo_resolved_addresses() -> None:
    fetcher = UrlFetcher(resolver=TableResolver(NAMES))
    with pytest.raises(UrlRefusedError) as caught:
        await fetcher.check("http://intranet.example.com/")
    assert "intranet.example.com" in caught.value.message
    assert "non-public address" in caught.value.message
    assert "10.0.0.7" not in caught.value.message
    with pytest.raises(UrlRefusedError) as caught:
        await fetcher.check("http://mapped.example.com/")
    assert "169.254" not in caught.value.message


def test_embedded_ipv4() -> None:
    cases = {
        "::ffff:127.0.0.1": {"127.0.0.1"},
        "::7f00:1": {"127.0.0.1"},
        "::ffff:0:a00:1": {"10.0.0.1"},
        "64:ff9b::a9fe:a9fe": {"169.254.169.254"},
        "2002:c0a8:101::1": {"192.168.1.1"},
        "2001:0:4136:e378:8000:63bf:3fff:fdd2": {"65.54.227.120", "192.0.2.45"},  # RFC 4380's example
        "2606:4700::1111": set(),
    }
    for address, expected in cases.items():
        assert {str(a) for a in embedded_ipv4(ipaddress.IPv6Address(address))} == expected


def _sample() -> Iterator[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    rng = random.Random(20240601)
    for _ in range(20000):
        yield ipaddress.IPv4Address(rng.getrandbits(32))
    for first in range(256):  # every /8, with its edges
        yield ipaddress.IPv4Address(first << 24)
        yield ipaddress.IPv4Address((first << 24) | 0xFFFFFF)
    for net in DEFAULT_REFUSED_NETWORKS:  # each refused network's edges, and the addresses just outside
        first, last = int(net.network_address), int(net.broadcast_address)
        for value in (first - 1, first, last, last + 1):
            if 0 <= value < 2 ** net.max_prefixlen:
                yield ipaddress.IPv4Address(value) if net.version == 4 else ipaddress.IPv6Address(value)
    embedding = [ipaddress.ip_network(n) for n in ("::ffff:0:0/96", "64:ff9b::/96", "2002::/16")]
    for _ in range(20000):
        top = rng.choice([0x0000, 0x0064, 0x0100, 0x2001, 0x2002, 0x2400, 0x2606, 0x3FFF, 0x5F00, 0xFC00, 0xFE80,
                          0xFEC0, 0xFF02, rng.getrandbits(16)])
        v6 = ipaddress.IPv6Address((top << 112) | rng.getrandbits(112 if rng.random() < 0.5 else 32))
        if not any(v6 in n for n in embedding):
            yield v6


def test_default_policy_allows_only_what_python_calls_global() -> None:
    """A cross-check of the table: no address the default policy allows is one that Python's ipaddress
    (the IANA special-purpose registries) says is not globally reachable."""
    policy = UrlPolicy()
    allowed = [a for a in _sample() if not policy.refuses_address(a)]
    assert allowed  # the sample does reach public space
    assert [a for a in allowed if not a.is_global] == []


def test_policy_exceptions_are_narrow() -> None:
    policy = UrlPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),))
    assert not policy.refuses_address(ipaddress.ip_address("127.0.0.1"))
    assert not policy.refuses_address(ipaddress.ip_address("::ffff:127.0.0.1"))
    assert policy.refuses_address(ipaddress.ip_address("127.0.0.2"))
    assert policy.refuses_address(ipaddress.ip_address("::1"))
    assert policy.refuses_address(ipaddress.ip_address("169.254.169.254"))
    assert UrlPolicy().refuses_address(ipaddress.ip_address("127.0.0.1"))
    assert UrlPolicy().refuses_name("localhost")
    assert not UrlPolicy().refuses_name("example.com")
    assert not UrlPolicy(allow_single_label=True).refuses_name("wiki")
    assert UrlPolicy().refuses_address(ipaddress.ip_address("4000::1"))
    assert not UrlPolicy(ipv6_unicast=None).refuses_address(ipaddress.ip_address("4000::1"))


# --- a raw HTTP/1.1 server on loopback ----------------------------------------------------------


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]


Route = Callable[[Seen, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class WireServer:
    """One request per connection; ``routes`` by path (a 404 otherwise). Records every connection,
    every request head, and for TLS the server name each client asked for (SNI)."""

    routes: dict[str, Route]
    tls: ssl.SSLContext | None = None
    connections: int = 0
    requests: list[Seen] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)
    port: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def base(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def paths(self) -> list[str]:
        return [r.target for r in self.requests]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line, *lines = head.decode("latin-1").split("\r\n")
            method, target, _ = line.split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines if h)}
            seen = Seen(method, target, headers)
            self.requests.append(seen)
            await self.routes.get(target.split("?")[0], reply(404, b"not here"))(seen, reader, writer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()
            with suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
            self._tasks.discard(task)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[WireServer]:
        if self.tls is not None:
            def sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
                self.server_names.append(name)
            self.tls.sni_callback = sni
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await server.wait_closed()


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} Status", *(f"{k}: {v}" for k, v in headers.items()), "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1")


def reply(status: int = 200, body: bytes = b"", headers: dict[str, str] | None = None) -> Route:
    async def route(_seen: Seen, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_head(status, {"Content-Length": str(len(body)), **(headers or {})}) + body)
    return route


def redirect(location: str, status: int = 302) -> Route:
    return reply(status, b"", {"Location": location})


def chunked(piece: bytes, most: int, headers: dict[str, str] | None = None) -> Route:
    """A chunked body without a length: ``piece`` again and again, up to ``most`` bytes or until the
    client goes away."""
    async def route(_seen: Seen, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_head(200, {"Transfer-Encoding": "chunked", "Content-Type": "text/plain", **(headers or {})}))
        sent = 0
        while sent < most:
            writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            await writer.drain()
            sent += len(piece)
        writer.write(b"0\r\n\r\n")
    return route


def claims(length: int) -> Route:
    """Announces a huge Content-Length, sends a few bytes, then waits for the client to hang up: a client
    that read the body instead of refusing it up front would wait here until its timeout."""
    async def route(_seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_head(200, {"Content-Length": str(length), "Content-Type": "text/plain"}) + b"hello")
        await writer.drain()
        await reader.read()
    return route


def silent() -> Route:
    async def route(_seen: Seen, reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers; returns when the client hangs up
    return route


def only(port: int, *allowed: str) -> UrlPolicy:
    """The test policy: the default one plus exceptions for exactly these addresses, and only ``port``."""
    return UrlPolicy(allowed_networks=tuple(ipaddress.ip_network(a) for a in allowed or ("127.0.0.1",)),
                     allowed_ports=frozenset({port}))


@asynccontextmanager
async def wire(routes: dict[str, Route], tls: ssl.SSLContext | None = None) -> AsyncIterator[WireServer]:
    async with WireServer(routes, tls).running() as server:
        yield server


# --- end to end ---------------------------------------------------------------------------------


async def test_fetches_text_and_html_with_their_content_type() -> None:
    html = b"<html><head><title>Doc</title></head><body><p>Hello</p></body></html>"
    async with wire({
        "/notes.txt": reply(200, b"plain words", {"Content-Type": "text/plain"}),
        "/page": reply(200, html, {"Content-Type": "text/html; charset=utf-8"}),
    }) as server:
        fetcher = UrlFetcher(only(server.port))
        text = await fetcher.fetch(f"{server.base}/notes.txt")
        page = await fetcher.fetch(f"{server.base}/page#section")
    assert (text.name, text.data, text.content_type) == (f"{server.base}/notes.txt", b"plain words", "text/plain")
    assert (page.data, page.content_type) == (html, "text/html; charset=utf-8")
    assert page.name == f"{server.base}/page"  # the fragment is not part of the document's name
    assert page.metadata == {"final_url": f"{server.base}/page"}
    assert server.paths == ["/notes.txt", "/page"]
    request = server.requests[0]
    assert request.headers["host"] == f"127.0.0.1:{server.port}"
    assert request.headers["accept-encoding"] == "identity"
    assert "authorization" not in request.headers and "cookie" not in request.headers


async def test_size_limit_exact_and_over() -> None:
    async with wire({
        "/exact": reply(200, b"x" * 1000, {"Content-Type": "text/plain"}),
        "/over": reply(200, b"x" * 1001, {"Content-Type": "text/plain"}),
        "/claims": claims(10_000_000),
        "/chunked": chunked(b"y" * 256, 1_000_000),
        "/chunked-small": chunked(b"z" * 100, 900),
    }) as server:
        fetcher = UrlFetcher(only(server.port), max_bytes=1000, total_timeout=30)
        assert len((await fetcher.fetch(f"{server.base}/exact")).data) == 1000
        assert (await fetcher.fetch(f"{server.base}/chunked-small")).data == b"z" * 900
        for path in ("/over", "/claims", "/chunked"):
            with pytest.raises(PayloadTooLargeError) as caught:
                await fetcher.fetch(f"{server.base}{path}")
            assert caught.value.status == 413
            assert "1,000 byte limit" in caught.value.message


async def test_error_statuses_are_422_naming_the_status() -> None:
    async with wire({"/gone": reply(404, b"nope"), "/boom": reply(500, b"oops"), "/odd": reply(300, b"")}) as server:
        fetcher = UrlFetcher(only(server.port))
        for path, status in (("/gone", 404), ("/boom", 500), ("/odd", 300)):
            with pytest.raises(UnprocessableError) as caught:
                await fetcher.fetch(f"{server.base}{path}")
            assert caught.value.status == 422
            assert f"HTTP {status}" in caught.value.message


async def test_redirect_without_location_is_422() -> None:
    async with wire({"/r": reply(302, b"")}) as server:
        with pytest.raises(UrlFetchError, match="302 without a Location"):
            await UrlFetcher(only(server.port)).fetch(f"{server.base}/r")


async def test_redirect_chain_to_an_allowed_url() -> None:
    async with wire({}) as server:
        server.routes.update({
            "/start": redirect("next?x=1"),  # relative to the current URL
            "/next": redirect(f"http://127.0.0.1:{server.port}/moved", 301),
            "/moved": redirect(f"//127.0.0.1:{server.port}/final", 307),
            "/final": reply(200, b"arrived", {"Content-Type": "text/plain"}),
        })
        source = await UrlFetcher(only(server.port)).fetch(f"{server.base}/start")
    assert source.data == b"arrived"
    assert source.name == f"{server.base}/start"
    assert source.metadata == {"final_url": f"{server.base}/final"}
    assert server.paths == ["/start", "/next?x=1", "/moved", "/final"]


async def test_redirect_to_refused_addresses_is_refused() -> None:
    async with wire({}) as server:
        server.routes.update({
            "/to-loopback-2": redirect(f"http://127.0.0.2:{server.port}/"),
            "/to-metadata": redirect("http://169.254.169.254/latest/meta-data/"),
            "/to-metadata-port": redirect(f"http://169.254.169.254:{server.port}/"),
            "/to-decimal": redirect(f"http://2852039166:{server.port}/"),
            "/to-file": redirect("file:///etc/passwd"),
            "/to-userinfo": redirect(f"http://me@127.0.0.1:{server.port}/"),
            "/to-name": redirect(f"http://internal.example.com:{server.port}/"),
        })
        resolver = TableResolver({"internal.example.com": ["10.1.1.1"]})
        policy = UrlPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),),
                           allowed_ports=frozenset({80, server.port}))
        fetcher = UrlFetcher(policy, resolver=resolver)
        expected = {
            "/to-loopback-2": "not a public address", "/to-metadata": "not a public address",
            "/to-metadata-port": "not a public address", "/to-decimal": "not a public address",
            "/to-file": "only http and https", "/to-userinfo": "user information",
            "/to-name": "non-public address",
        }
        for path, reason in expected.items():
            with pytest.raises(UrlRefusedError) as caught:
                await fetcher.fetch(f"{server.base}{path}")
            assert caught.value.message.startswith("Redirect 1 was refused")
            assert reason in caught.value.message
            assert "10.1.1.1" not in caught.value.message
    assert server.paths == list(expected)  # no refused target was ever requested
    assert server.connections == len(expected)


async def test_redirect_limit() -> None:
    async with wire({}) as server:
        for i in range(10):
            server.routes[f"/hop{i}"] = redirect(f"/hop{i + 1}")
        server.routes["/hop5"] = reply(200, b"five redirects", {"Content-Type": "text/plain"})
        fetcher = UrlFetcher(only(server.port))
        assert (await fetcher.fetch(f"{server.base}/hop0")).data == b"five redirects"  # exactly 5 are fine
        server.requests.clear()
        server.routes["/hop5"] = redirect("/hop6")
        with pytest.raises(UrlFetchError, match="redirected more than 5 times"):
            await fetcher.fetch(f"{server.base}/hop0")
    assert server.paths == [f"/hop{i}" for i in range(6)]  # the 6th redirect is not followed


async def test_dns_rebinding_cannot_switch_the_address() -> None:
    """The name resolves once, to an allowed address; a second answer (the rebinding) would be a refused
    one. The request reaches the server on the checked address, with the name in the Host header."""
    async with wire({"/doc": reply(200, b"pinned", {"Content-Type": "text/plain"})}) as server:
        resolver = TableResolver({"rebind.example.com": [["127.0.0.1"], ["169.254.169.254"]]})
        source = await UrlFetcher(only(server.port), resolver=resolver).fetch(
            f"http://rebind.example.com:{server.port}/doc")
    assert source.data == b"pinned"
    assert resolver.calls == ["rebind.example.com"]  # resolved once, by us; httpx resolved nothing
    assert server.requests[0].headers["host"] == f"rebind.example.com:{server.port}"
    assert source.name == f"http://rebind.example.com:{server.port}/doc"


async def test_every_hop_is_resolved_and_checked_again() -> None:
    """A redirect to the same name is a new hop: resolved and checked again, so an answer that has
    turned internal by then is refused."""
    async with wire({}) as server:
        server.routes["/a"] = redirect(f"http://rebind.example.com:{server.port}/b")
        server.routes["/b"] = reply(200, b"never", {"Content-Type": "text/plain"})
        resolver = TableResolver({"rebind.example.com": [["127.0.0.1"], ["169.254.169.254"]]})
        with pytest.raises(UrlRefusedError, match="Redirect 1 was refused"):
            await UrlFetcher(only(server.port), resolver=resolver).fetch(f"http://rebind.example.com:{server.port}/a")
    assert resolver.calls == ["rebind.example.com", "rebind.example.com"]
    assert server.paths == ["/a"]


async def test_a_name_with_one_refused_address_is_refused_whole() -> None:
    async with wire({"/": reply(200, b"x")}) as server:
        resolver = TableResolver({"mixed.example.com": ["127.0.0.1", "10.0.0.1"]})
        with pytest.raises(UrlRefusedError, match="non-public address"):
            await UrlFetcher(only(server.port), resolver=resolver).fetch(f"http://mixed.example.com:{server.port}/")
    assert server.connections == 0


async def test_checked_addresses_are_tried_in_order() -> None:
    async with wire({"/": reply(200, b"second address", {"Content-Type": "text/plain"})}) as server:
        resolver = TableResolver({"two.example.com": ["127.0.0.3", "127.0.0.1"]})  # nothing listens on .3
        source = await UrlFetcher(only(server.port, "127.0.0.1/32", "127.0.0.3/32"), resolver=resolver).fetch(
            f"http://two.example.com:{server.port}/")
    assert source.data == b"second address"
    assert server.connections == 1


async def test_userinfo_and_other_schemes_are_refused_without_a_connection() -> None:
    async with wire({"/": reply(200, b"x")}) as server:
        fetcher = UrlFetcher(only(server.port))
        for url in (f"http://user:secret@127.0.0.1:{server.port}/", f"http://user@127.0.0.1:{server.port}/",
                    f"ftp://127.0.0.1:{server.port}/", "file:///etc/passwd", f"gopher://127.0.0.1:{server.port}/_x",
                    f"http://127.0.0.1:{server.port + 1 if server.port < 65535 else 1}/"):
            with pytest.raises(UrlRefusedError):
                await fetcher.fetch(url)
    assert server.connections == 0


async def test_unreachable_host_is_422_without_addresses() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    resolver = TableResolver({"down.example.com": ["127.0.0.1"]})
    with pytest.raises(UrlFetchError) as caught:
        await UrlFetcher(only(port), resolver=resolver).fetch(f"http://down.example.com:{port}/")
    assert caught.value.status == 422
    assert caught.value.message == f"Could not connect to down.example.com on port {port}."


async def test_a_server_that_never_answers_times_out_as_422() -> None:
    async with wire({"/": silent()}) as server:
        with pytest.raises(UrlFetchError, match=r"took longer than 0\.5 s"):
            await UrlFetcher(only(server.port), total_timeout=0.5).fetch(f"{server.base}/")
    assert server.connections == 1


def _gzip_stream(pattern: bytes, total: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    block = pattern * (1_000_000 // len(pattern))
    out = [compressor.compress(block) for _ in range(total // len(block))]
    return b"".join([*out, compressor.flush()])


async def test_gzip_bomb_stops_at_the_limit() -> None:
    bomb = _gzip_stream(b"\0", 100_000_000)  # 100 MB of zeros in ~100 KB
    limit = 1_000_000
    assert len(bomb) < limit  # only the decoded size can be over the limit
    async with wire({
        "/bomb": reply(200, bomb, {"Content-Type": "text/plain", "Content-Encoding": "gzip"}),
        "/bomb-chunked": chunked(bomb[:50_000], 50_000, {"Content-Encoding": "gzip"}),
    }) as server:
        fetcher = UrlFetcher(only(server.port), max_bytes=limit)
        for path in ("/bomb", "/bomb-chunked"):
            with pytest.raises(PayloadTooLargeError):
                await fetcher.fetch(f"{server.base}{path}")


async def test_compressed_bodies_are_decoded_or_refused() -> None:
    text = b"compressed words " * 100
    deflated = zlib.compress(text)
    raw_deflate = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    raw = raw_deflate.compress(text) + raw_deflate.flush()
    async with wire({
        "/gzip": reply(200, gzip.compress(text), {"Content-Type": "text/plain", "Content-Encoding": "gzip"}),
        "/two-members": reply(200, gzip.compress(text) + gzip.compress(b"tail"), {"Content-Encoding": "x-gzip"}),
        "/deflate": reply(200, deflated, {"Content-Type": "text/plain", "Content-Encoding": "deflate"}),
        "/raw-deflate": reply(200, raw, {"Content-Type": "text/plain", "Content-Encoding": "deflate"}),
        "/br": reply(200, b"\x1b\x03\x00", {"Content-Type": "text/plain", "Content-Encoding": "br"}),
        "/truncated": reply(200, gzip.compress(text)[:40], {"Content-Encoding": "gzip"}),
        "/corrupt": reply(200, b"\x1f\x8bnot gzip at all", {"Content-Encoding": "gzip"}),
    }) as server:
        fetcher = UrlFetcher(only(server.port))
        assert (await fetcher.fetch(f"{server.base}/gzip")).data == text
        assert (await fetcher.fetch(f"{server.base}/two-members")).data == text + b"tail"
        assert (await fetcher.fetch(f"{server.base}/deflate")).data == text
        assert (await fetcher.fetch(f"{server.base}/raw-deflate")).data == text
        for path, reason in (("/br", "content encoding"), ("/truncated", "truncated"), ("/corrupt", "corrupt")):
            with pytest.raises(UrlFetchError, match=reason):
                await fetcher.fetch(f"{server.base}{path}")


@pytest.mark.parametrize("form", ["127.0.0.1", "[::ffff:127.0.0.1]", "2130706433", "0x7f.1", "127.1", "localhost"])
async def test_default_policy_refuses_loopback_before_connecting(form: str) -> None:
    async with wire({"/": reply(200, b"secret")}) as server:
        resolver = TableResolver()
        fetcher = UrlFetcher(resolver=resolver)  # the DEFAULT policy
        with pytest.raises(UrlRefusedError) as caught:
            await fetcher.fetch(f"http://{form}:{server.port}/")
        assert "not a public" in caught.value.message  # the address (or name), not the port, is the reason
    assert server.connections == 0
    assert resolver.calls == []


# --- https: SNI and certificate verification on the name, connection to the checked address -----


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=thinktank test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=docs.example.com")
    (d / "leaf.ext").write_text("subjectAltName=DNS:docs.example.com\nbasicConstraints=CA:FALSE\n"
                                "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "leaf.pem",
        "-days", "2", "-extfile", "leaf.ext")
    return Pki(ca=d / "ca.pem", cert=d / "leaf.pem", key=d / "leaf.key")


def _server_tls(pki: Pki) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki.cert, pki.key)
    return ctx


async def test_https_verifies_the_name_and_sends_it_as_sni(pki: Pki) -> None:
    trust = ssl.create_default_context(cafile=str(pki.ca))
    async with wire({"/doc": reply(200, b"over tls", {"Content-Type": "text/plain"})}, _server_tls(pki)) as server:
        resolver = TableResolver({"docs.example.com": ["127.0.0.1"], "other.example.com": ["127.0.0.1"]})
        fetcher = UrlFetcher(only(server.port), resolver=resolver, ssl_context=trust)
        source = await fetcher.fetch(f"https://docs.example.com:{server.port}/doc")
        assert source.data == b"over tls"
        assert server.server_names == ["docs.example.com"]
        assert server.requests[0].headers["host"] == f"docs.example.com:{server.port}"
        # The certificate is for docs.example.com only: the same address under another name is refused,
        # so verification is against the name, not the address connected to.
        with pytest.raises(UrlFetchError, match=r"verified TLS connection to other\.example\.com"):
            await fetcher.fetch(f"https://other.example.com:{server.port}/doc")
        # Without the test CA, the default trust store refuses the certificate.
        with pytest.raises(UrlFetchError, match="verified TLS"):
            await UrlFetcher(only(server.port), resolver=resolver).fetch(f"https://docs.example.com:{server.port}/doc")
    assert server.paths == ["/doc"]
