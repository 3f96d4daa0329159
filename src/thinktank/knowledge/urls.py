"""Fetching a URL a user gave, to ingest it as a document, without becoming an SSRF proxy.

Every hop (the URL itself, then each redirect, at most ``max_redirects``) goes through the same
procedure before anything is sent:

1. The URL must parse (with httpx's parser, the one that later builds the request), be ``http`` or
   ``https``, carry no user information (no ``@`` in the authority at all) and be at most
   ``max_url_length`` characters.
2. The host is classified by this module, not by a resolver: an IPv6 literal (a zone id such as
   ``fe80::1%eth0`` is refused), an IPv4 address in any form ``inet_aton`` or a browser accepts
   (``2130706433``, ``0177.0.0.1``, ``0x7f.1``, ``127.1``; a host whose last label is a number must
   be such an address or it is refused), or a DNS name (letters, digits, ``-`` and ``_`` only, at
   least two labels, not under a refused domain such as ``localhost`` or ``internal``).
3. The port must be in the policy's allowed ports.
4. A name is resolved once, here (the resolver is injectable); EVERY address it resolves to must be
   allowed, or the URL is refused. An address literal is checked without the resolver.
5. The request goes to one of those checked addresses: the URL handed to httpx carries the IP,
   so httpx never resolves anything; the ``Host`` header, the TLS SNI (the ``sni_hostname`` request
   extension, which httpcore passes to ``start_tls`` as ``server_hostname``) and so the certificate
   check use the original host name. A DNS answer that changes between the check and the connection
   (DNS rebinding) is never looked at. Checked addresses are tried in the resolver's order when a
   connection cannot be made; no other address is ever tried.

An address is refused when it is in one of the policy's refused networks (by default every range of
the IANA special-purpose registries that is not globally reachable, plus multicast, the 6to4 relay
anycast, Azure's platform address and the deprecated IPv6 ranges), or when it is an IPv6 address that
embeds an IPv4 address (IPv4-mapped, IPv4-compatible, IPv4-translated, the NAT64 well-known prefix,
6to4, both addresses of a Teredo address) which is itself refused, or when it is an IPv6 address outside
the global unicast space 2000::/3 that is not an IPv4-mapped or NAT64 form. ``allowed_networks`` are
exceptions checked first (a test server on 127.0.0.1).

The body is streamed and bounded: a ``Content-Length`` over the limit is refused before the body is
read, and both the bytes on the wire and the decoded bytes are counted. The request asks for
``Accept-Encoding: identity``; a server that compresses anyway is decoded here (gzip and deflate only,
by zlib with an output bound, so a compression bomb stops at the limit), any other content encoding is
refused. Errors name what the caller gave (their URL's host, a redirect's host, a status code), never
an address a name resolved to nor the text of a network error.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import httpx

from ..errors import InvalidRequestError, PayloadTooLargeError, UnprocessableError
from .ingest import Source
from .parsers import Limits

__all__ = [
    "DEFAULT_ALLOWED_PORTS",
    "DEFAULT_REFUSED_DOMAINS",
    "DEFAULT_REFUSED_NETWORKS",
    "IPAddress",
    "IPNetwork",
    "Resolver",
    "Target",
    "UrlFetchError",
    "UrlFetcher",
    "UrlPolicy",
    "UrlRefusedError",
    "embedded_ipv4",
    "parse_host",
    "system_resolver",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""``(host, port) -> addresses``: every address the name resolves to, as text."""


class UrlRefusedError(InvalidRequestError):
    """The URL (or a redirect's target) is not one the server may fetch: 400."""

    code = "url_refused"


class UrlFetchError(UnprocessableError):
    """An allowed URL could not be fetched (unreachable, timed out, an error status...): 422."""

    code = "url_fetch_failed"


def _nets(*cidrs: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


DEFAULT_REFUSED_NETWORKS: Final[tuple[IPNetwork, ...]] = _nets(
    # IPv4
    "0.0.0.0/8",  # "this network"; 0.0.0.0 reaches the local host on Linux
    "10.0.0.0/8",  # private
    "100.64.0.0/10",  # carrier-grade NAT (and Alibaba Cloud's metadata at 100.100.100.200)
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local, cloud metadata at 169.254.169.254
    "172.16.0.0/12",  # private
    "192.0.0.0/24",  # IETF protocol assignments (Oracle Cloud's metadata at 192.0.0.192)
    "192.0.2.0/24",  # documentation
    "192.88.99.0/24",  # 6to4 relay anycast (deprecated)
    "192.168.0.0/16",  # private
    "198.18.0.0/15",  # benchmarking
    "198.51.100.0/24",  # documentation
    "203.0.113.0/24",  # documentation
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, with 255.255.255.255 broadcast
    "168.63.129.16/32",  # Azure's platform address (WireServer): public, but answers only the VM's host
    # IPv6
    "::/96",  # unspecified, loopback and the deprecated IPv4-compatible addresses
    "::ffff:0:0:0/96",  # IPv4-translated (SIIT): never a destination on the internet
    "64:ff9b:1::/48",  # local-use IPv4/IPv6 translation
    "100::/64",  # discard-only
    "2001::/23",  # IETF protocol assignments: Teredo 2001::/32, benchmarking, ORCHID
    "2001:db8::/32",  # documentation
    "3fff::/20",  # documentation
    "5f00::/16",  # SRv6 segment identifiers
    "fc00::/7",  # unique local (AWS's IPv6 metadata at fd00:ec2::254)
    "fe80::/10",  # link-local
    "fec0::/10",  # site-local (deprecated)
    "ff00::/8",  # multicast
)
"""IPv4-mapped (``::ffff:0:0/96``), NAT64 (``64:ff9b::/96``) and 6to4 (``2002::/16``) addresses are not
listed: they are refused when the IPv4 address they embed is (see :func:`embedded_ipv4`)."""

DEFAULT_ALLOWED_PORTS: Final[frozenset[int]] = frozenset({80, 443, 8080, 8443})
"""The standard web ports and their two common alternates. Any port would let a user probe or talk to
non-HTTP services (SMTP, Redis, databases) on public hosts through the server; documents are
essentially never published elsewhere. A deployment that needs more widens the policy."""

DEFAULT_REFUSED_DOMAINS: Final[frozenset[str]] = frozenset({
    "localhost", "localdomain", "local", "internal", "lan", "home", "corp", "intranet", "private", "svc",
    "arpa", "onion",
})
"""Names that are never public web sites: each refuses itself and every name under it (``localhost``
and ``a.localhost``; ``internal`` covers ``metadata.google.internal``; ``local`` is mDNS; ``svc`` and
``local`` cover Kubernetes service names; ``arpa`` covers ``home.arpa`` and the reverse zones)."""


_GLOBAL_UNICAST: Final = ipaddress.IPv6Network("2000::/3")
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")


@dataclass(frozen=True, slots=True)
class UrlPolicy:
    """Which hosts, addresses and ports a fetch may reach."""

    refused_networks: tuple[IPNetwork, ...] = DEFAULT_REFUSED_NETWORKS
    allowed_networks: tuple[IPNetwork, ...] = ()
    """Exceptions, checked before ``refused_networks`` (tests allow ``127.0.0.1/32`` this way)."""
    allowed_ports: frozenset[int] = DEFAULT_ALLOWED_PORTS
    refused_domains: frozenset[str] = DEFAULT_REFUSED_DOMAINS
    """Lower-case names without a trailing dot; each refuses itself and the names under it."""
    allow_single_label: bool = False
    """Whether a name without a dot (``intranet``, expanded by the resolver's search domains) may be used."""
    ipv6_unicast: ipaddress.IPv6Network | None = _GLOBAL_UNICAST
    """IPv6 destinations must be in this prefix (all the global unicast space IANA has allocated) unless
    they are IPv4-mapped or NAT64 forms, which are judged by the IPv4 address they embed. The rest of
    the IPv6 space is unallocated or special; ``None`` leaves it to ``refused_networks``."""

    def refuses_address(self, address: IPAddress) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            return True
        if any(address in net for net in self.allowed_networks):
            return False
        if any(address in net for net in self.refused_networks):
            return True
        if isinstance(address, ipaddress.IPv6Address):
            if any(self.refuses_address(inner) for inner in embedded_ipv4(address)):
                return True
            translated = address.ipv4_mapped is not None or address in _NAT64
            return self.ipv6_unicast is not None and address not in self.ipv6_unicast and not translated
        return False

    def refuses_name(self, name: str) -> bool:
        """``name``: lower case, without a trailing dot."""
        if "." not in name and not self.allow_single_label:
            return True
        return any(name == d or name.endswith("." + d) for d in self.refused_domains)


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address stands for or carries, by the standard embeddings."""
    value = int(address)
    found: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:  # ::ffff:a.b.c.d
        found.append(address.ipv4_mapped)
    if value >> 32 == 0:  # ::a.b.c.d, IPv4-compatible (deprecated)
        found.append(ipaddress.IPv4Address(value))
    if value >> 32 == 0xFFFF_0000:  # ::ffff:0:a.b.c.d, IPv4-translated
        found.append(ipaddress.IPv4Address(value & 0xFFFF_FFFF))
    if address in _NAT64:  # 64:ff9b::a.b.c.d
        found.append(ipaddress.IPv4Address(value & 0xFFFF_FFFF))
    if address.sixtofour is not None:  # 2002:aabb:ccdd::/48
        found.append(address.sixtofour)
    if address.teredo is not None:  # 2001::/32: (server, client)
        found.extend(address.teredo)
    return found


_NUMERIC_LABEL: Final = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)")
_OCTAL: Final = re.compile(r"0[0-7]*")
_NAME_LABEL: Final = re.compile(r"[a-z0-9_-]{1,63}")


def _ipv4_number_form(name: str) -> ipaddress.IPv4Address | None:
    """``inet_aton``'s (and the WHATWG URL standard's) reading of a host ending in a numeric label:
    one to four parts, each decimal, octal (leading ``0``) or hex (``0x``), the last filling the
    remaining bytes. ``None`` when the host does not end in a number; :class:`ValueError` when it
    does but is no address."""
    labels = name.split(".")
    if not _NUMERIC_LABEL.fullmatch(labels[-1]):
        return None
    if len(labels) > 4:
        raise ValueError(name)
    parts: list[int] = []
    for label in labels:
        if not _NUMERIC_LABEL.fullmatch(label):
            raise ValueError(name)
        if label.startswith("0x"):
            parts.append(int(label[2:] or "0", 16))
        elif len(label) > 1 and label.startswith("0"):
            if not _OCTAL.fullmatch(label):
                raise ValueError(name)
            parts.append(int(label, 8))
        else:
            parts.append(int(label))
    *head, last = parts
    if any(p > 255 for p in head) or last >= 256 ** (4 - len(head)):
        raise ValueError(name)
    value = last
    for i, p in enumerate(head):
        value += p << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def parse_host(host: str) -> IPAddress | str:
    """A URL's host (as httpx gives it: IDNA-encoded, IPv6 without brackets) as an address, or as a
    DNS name in lower case without a trailing dot. :class:`ValueError` when it is neither."""
    if "%" in host:  # an IPv6 zone id, or percent-encoding in a name
        raise ValueError(host)
    if ":" in host:
        return ipaddress.IPv6Address(host)
    name = host.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise ValueError(host)
    number = _ipv4_number_form(name)
    if number is not None:
        return number
    if len(name) > 253 or not all(_NAME_LABEL.fullmatch(label) for label in name.split(".")):
        raise ValueError(host)
    return name


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``getaddrinfo`` gives for a TCP connection, in its (RFC 6724) order."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


def _connectable(address: IPAddress) -> IPAddress:
    """An IPv4-mapped address is connected to as the IPv4 address it is (after both were checked)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True, slots=True)
class Target:
    """A checked hop: where to connect, and what to call the host on the wire."""

    url: httpx.URL
    """Normalised, with the host as given (a name, or the canonical address) and no fragment."""
    host: str
    """The name or address for the ``Host`` header and TLS (IPv6 without brackets)."""
    port: int
    addresses: tuple[IPAddress, ...]
    """Every address the host resolved to, all checked; connections go to these and nowhere else."""


_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_DEFAULT_MAX_BYTES: Final = Limits().max_inflated_bytes
_AUTHORITY: Final = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.\-]*:)?//([^/?#]*)")
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"The document at the URL is larger than the {limit:,} byte limit.", param="url")


class _Body:
    """Collects a response body, decoding gzip/deflate itself, never holding more than ``limit + 1``
    decoded bytes."""

    def __init__(self, encoding: str, limit: int) -> None:
        self.limit = limit
        self.out = bytearray()
        self.wire = 0
        self.encoding = encoding
        self._inflater: Any = None  # zlib's decompress object has no public type
        self._started = False

    def feed(self, chunk: bytes) -> None:
        self.wire += len(chunk)
        if self.wire > self.limit:
            raise _too_large(self.limit)
        if self.encoding == "identity":
            self.out += chunk
        else:
            self._inflate(chunk)
        if len(self.out) > self.limit:
            raise _too_large(self.limit)

    def _inflate(self, data: bytes) -> None:
        while data:
            if self._inflater is None:
                if self._started and self.encoding == "deflate":
                    return  # bytes after the end of a deflate stream are ignored
                if self._started and not b"\x1f\x8b".startswith(data[:2]):
                    return  # bytes after the last gzip member (padding) are ignored; a new member is read
                wbits = zlib.MAX_WBITS | 16 if self.encoding == "gzip" else zlib.MAX_WBITS
                self._inflater = zlib.decompressobj(wbits)
            room = self.limit - len(self.out) + 1
            try:
                piece = self._inflater.decompress(data, room)
            except zlib.error:
                if self.encoding == "deflate" and not self._started and not self.out:
                    # "deflate" is meant to be zlib-wrapped; some servers send raw deflate.
                    self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
                    piece = self._decompress_raw(data, room)
                else:
                    raise UrlFetchError("The document's compressed body is corrupt.", param="url") from None
            self._started = True
            self.out += piece
            if len(self.out) > self.limit:
                raise _too_large(self.limit)
            if self._inflater.eof:
                data = self._inflater.unused_data
                self._inflater = None
            else:
                data = self._inflater.unconsumed_tail

    def _decompress_raw(self, data: bytes, room: int) -> bytes:
        try:
            piece: bytes = self._inflater.decompress(data, room)
        except zlib.error:
            raise UrlFetchError("The document's compressed body is corrupt.", param="url") from None
        return piece

    def finish(self) -> bytes:
        if self._inflater is not None:  # a compressed stream that never ended
            raise UrlFetchError("The document's compressed body is truncated.", param="url")
        return bytes(self.out)


def _content_encoding(header: str | None) -> str:
    codings = [c.strip().lower() for c in (header or "").split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return "identity"
    if len(codings) == 1 and codings[0] in ("gzip", "x-gzip", "deflate"):
        return "deflate" if codings[0] == "deflate" else "gzip"
    raise UrlFetchError(
        "The server sent the document with a content encoding that is not supported (only gzip and deflate).",
        param="url")


def _tls_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class UrlFetcher:
    """Fetches URLs under a :class:`UrlPolicy`. Holds no connections between fetches."""

    def __init__(
        self,
        policy: UrlPolicy | None = None,
        *,
        resolver: Resolver | None = None,
        max_bytes: int = _DEFAULT_MAX_BYTES,
        max_redirects: int = 5,
        connect_timeout: float = 10.0,
        total_timeout: float = 60.0,
        max_url_length: int = 1024,
        ssl_context: ssl.SSLContext | None = None,
        user_agent: str = "thinktank-fetch/1",
    ) -> None:
        """``ssl_context``: the trust store for https (by default httpx's: certifi, or ``SSL_CERT_FILE``),
        made on the first https fetch. ``max_url_length`` matches the documents' ``source`` column."""
        self.policy = policy if policy is not None else UrlPolicy()
        self.resolver: Resolver = resolver if resolver is not None else system_resolver
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        self.connect_timeout = connect_timeout
        self.total_timeout = total_timeout
        self.max_url_length = max_url_length
        self.user_agent = user_agent
        self._ssl_context = ssl_context

    async def fetch(self, url: str) -> Source:
        """The document at ``url``: ``Source(name=<the URL, normalised, without fragment>, data,
        content_type=<the response's Content-Type>, metadata={"final_url": ...})``.

        400 :class:`UrlRefusedError` for a URL or redirect target the policy refuses, 413 for a body
        over ``max_bytes``, 422 :class:`UrlFetchError` when an allowed URL cannot be fetched."""
        try:
            async with asyncio.timeout(self.total_timeout):
                return await self._fetch(url)
        except TimeoutError:
            raise UrlFetchError(f"Fetching the URL took longer than {self.total_timeout:g} s.", param="url") from None

    async def check(self, url: str) -> Target:
        """Validate ``url`` and resolve its host (every address checked) without fetching it."""
        return await self._check(url, "The URL")

    async def _fetch(self, url: str) -> Source:
        target = await self._check(url, "The URL")
        name = str(target.url)
        for hop in range(self.max_redirects + 1):
            async with self._open(target) as response:
                status = response.status_code
                if status not in _REDIRECTS:
                    if not 200 <= status < 300:
                        raise UrlFetchError(f"{self._who(target)} answered HTTP {status}.", param="url")
                    data = await self._read(response)
                    content_type = response.headers.get("content-type")
                    return Source(
                        name=name, data=data,
                        content_type=content_type.strip()[:255] if content_type else None,
                        metadata={"final_url": str(target.url)},
                    )
                location = response.headers.get("location")
            # The redirect's connection is closed before the next hop is checked and opened.
            if not location:
                raise UrlFetchError(f"{self._who(target)} answered HTTP {status} without a Location.", param="url")
            if hop == self.max_redirects:
                raise UrlFetchError(f"The URL redirected more than {self.max_redirects} times.", param="url")
            target = await self._check(location, f"Redirect {hop + 1}", base=target.url)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    @staticmethod
    def _who(target: Target) -> str:
        return f"The server at {target.host}"

    async def _read(self, response: httpx.Response) -> bytes:
        declared = response.headers.get("content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                raise UrlFetchError("The server sent an invalid Content-Length.", param="url") from None
            if length > self.max_bytes:
                raise _too_large(self.max_bytes)
        body = _Body(_content_encoding(response.headers.get("content-encoding")), self.max_bytes)
        async for chunk in response.aiter_raw():
            body.feed(chunk)
        return body.finish()

    @asynccontextmanager
    async def _open(self, target: Target) -> AsyncIterator[httpx.Response]:
        """A response from the first checked address that accepts a connection."""
        https = target.url.scheme == "https"
        transport = httpx.AsyncHTTPTransport(
            verify=self._ssl(), trust_env=False, retries=0,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=0),
        )
        headers = {
            "Host": target.url.netloc.decode("ascii"),
            "Accept": "*/*",
            "Accept-Encoding": "identity",
            "User-Agent": self.user_agent,
        }
        extensions = {"sni_hostname": target.host} if https else {}
        # Reads are bounded by the fetch's total timeout (asyncio.timeout in fetch), connections by connect_timeout.
        timeout = httpx.Timeout(None, connect=self.connect_timeout)
        tls_failed = False
        try:
            async with httpx.AsyncClient(transport=transport, trust_env=False, follow_redirects=False,
                                         timeout=timeout) as client:
                for address in target.addresses:
                    # The URL names the checked address: httpx connects to it without resolving anything.
                    request = client.build_request(
                        "GET", target.url.copy_with(host=str(address)), headers=headers, extensions=extensions)
                    try:
                        response = await client.send(request, stream=True)
                    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                        tls_failed = tls_failed or _tls_failure(exc)
                        continue
                    try:
                        yield response
                    finally:
                        await response.aclose()
                    return
        except httpx.TimeoutException:
            raise UrlFetchError(f"{self._who(target)} did not answer in time.", param="url") from None
        except httpx.HTTPError:
            raise UrlFetchError(f"The connection to {target.host} failed before the document was complete.",
                                param="url") from None
        if tls_failed:
            raise UrlFetchError(f"Could not make a verified TLS connection to {target.host}.", param="url")
        raise UrlFetchError(f"Could not connect to {target.host} on port {target.port}.", param="url")

    def _ssl(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = httpx.create_ssl_context()
        return self._ssl_context

    async def _check(self, raw: str, what: str, base: httpx.URL | None = None) -> Target:
        """``raw``: a URL, or a redirect's Location (relative to ``base``)."""
        def refuse(reason: str) -> UrlRefusedError:
            return UrlRefusedError(f"{what} was refused: {reason}", param="url")

        raw = raw.strip()
        if len(raw) > self.max_url_length:
            raise refuse(f"it is longer than {self.max_url_length} characters.")
        try:
            url = httpx.URL(raw) if base is None else base.join(raw)
        except (httpx.InvalidURL, ValueError):
            raise refuse("it is not a valid URL.") from None
        if url.scheme not in _DEFAULT_PORTS:
            raise refuse("only http and https URLs can be fetched.")
        # httpx drops an empty user part ("http://@host/"); the raw text is checked too.
        authority = _AUTHORITY.match(raw)
        if url.userinfo or (authority is not None and "@" in authority.group(1)):
            raise refuse("URLs with user information (user@host) are not allowed.")
        if not url.raw_host:
            raise refuse("it has no host.")
        given = url.raw_host.decode("ascii")
        try:
            host = parse_host(given)
        except ValueError:
            raise refuse(f"{given[:100]} is not a valid host name or IP address.") from None
        if isinstance(host, str):
            if self.policy.refuses_name(host):
                raise refuse(f"the host {host} is not a public name.")
            wire_host = host
        else:
            if self.policy.refuses_address(host):
                raise refuse(f"the host {host} is not a public address.")
            wire_host = str(_connectable(host))
        port = url.port if url.port is not None else _DEFAULT_PORTS[url.scheme]
        if port not in self.policy.allowed_ports:
            allowed = ", ".join(map(str, sorted(self.policy.allowed_ports)))
            raise refuse(f"port {port} is not allowed (allowed: {allowed}).")
        url = url.copy_with(host=wire_host, fragment=None)
        if len(str(url)) > self.max_url_length:
            raise refuse(f"it is longer than {self.max_url_length} characters.")
        if isinstance(host, str):
            addresses = await self._resolve(host, port, refuse)
        else:
            addresses = (_connectable(host),)
        return Target(url=url, host=wire_host, port=port, addresses=addresses)

    async def _resolve(
        self, name: str, port: int, refuse: Callable[[str], UrlRefusedError],
    ) -> tuple[IPAddress, ...]:
        try:
            async with asyncio.timeout(self.connect_timeout):
                answers = await self.resolver(name, port)
        except TimeoutError:
            raise UrlFetchError(f"Resolving {name} timed out.", param="url") from None
        except (OSError, UnicodeError):
            raise UrlFetchError(f"The host {name} could not be resolved.", param="url") from None
        addresses: list[IPAddress] = []
        for answer in answers:
            try:
                address = ipaddress.ip_address(answer)
            except ValueError:
                raise refuse(f"the host {name} resolves to an address that is not allowed.") from None
            # Every answer is checked, not only the one used: a name with one public and one internal
            # address is refused whole.
            if self.policy.refuses_address(address):
                raise refuse(f"the host {name} resolves to a private, loopback, link-local or otherwise non-public "
                             "address.")
            if _connectable(address) not in addresses:
                addresses.append(_connectable(address))
        if not addresses:
            raise UrlFetchError(f"The host {name} could not be resolved.", param="url")
        return tuple(addresses)
