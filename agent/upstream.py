"""Upstream resolver client: several resolvers, failover, health, spoofing-resistant.

Every query gets a fresh random id and a fresh connected UDP socket (so a random source
port chosen by the kernel, and only datagrams from the queried address reach it). Upstreams
are IP addresses, and the socket is made here: an event loop's datagram endpoint given a
`remote_addr` may resolve it on a thread pool for every query (uvloop does). A reply is
accepted only with the same id and question. A truncated UDP reply is retried over TCP.
An upstream that fails is skipped for a back-off period; when every upstream fails the
caller answers SERVFAIL.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dnslib import RCODE

from agent import dns_wire

_BACKOFF = (1.0, 30.0)  # seconds an upstream is skipped after a failure: first, maximum


class UpstreamError(Exception):
    """Every upstream failed (timeout, refused, malformed or mismatched replies)."""


def system_resolvers(
    resolv_conf: Path = Path("/etc/resolv.conf"), exclude: Iterable[tuple[str, int]] = ()
) -> tuple[tuple[str, int], ...]:
    """The host's `nameserver` lines (port 53), minus our own listen addresses (no loops)."""
    try:
        text = resolv_conf.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ()
    skip = set(exclude)
    found = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            addr = (words[1].split("%", 1)[0], 53)
            if addr not in skip and addr not in found:
                found.append(addr)
    return tuple(found)


@dataclass(slots=True)
class Upstream:
    """One resolver and its health: consecutive failures and when to try it again."""

    host: str
    port: int
    failures: int = 0
    retry_at: float = 0.0
    answered: int = 0

    @property
    def family(self) -> socket.AddressFamily:
        """The address family of `host` (an IP address: `parse_upstream`)."""
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    @property
    def label(self) -> str:
        """`1.2.3.4:53` / `[::1]:53` as records show it."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def failed(self, now: float) -> None:
        """Back off exponentially from 1 s to 30 s."""
        self.failures += 1
        doublings = min(self.failures - 1, 16)  # 2**1024 no longer fits a float: a long outage
        self.retry_at = now + min(_BACKOFF[0] * 2**doublings, _BACKOFF[1])

    def succeeded(self) -> None:
        """Healthy again."""
        self.failures = 0
        self.retry_at = 0.0
        self.answered += 1


def build_query(
    ident: int, name: bytes, qtype: int, qclass: int, *, dnssec_ok: bool = False
) -> bytes:
    """A recursive query with EDNS0 (payload 1232, DO as the client asked) for a wire name."""
    header = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 1)
    opt = dns_wire.opt_record(dnssec_ok=dnssec_ok)  # payload dns_wire.EDNS_SIZE (1232)
    return header + name + struct.pack("!HH", qtype, qclass) + opt


def matches(reply: bytes, query: bytes, qend: int) -> bool:
    """True when `reply` answers `query`: same id, QR set, same question (name in any case)."""
    if len(reply) < qend or reply[:2] != query[:2] or not reply[2] & 0x80:
        return False
    if reply[4:6] != b"\x00\x01" or reply[qend - 4 : qend] != query[qend - 4 : qend]:
        return False  # (the type's bytes are not letters: 65, HTTPS, is no case of 97)
    return reply[12 : qend - 4].lower() == query[12 : qend - 4].lower()


class UpstreamPool:
    """Resolve through the first healthy upstream, failing over in order."""

    def __init__(self, addrs: list[tuple[str, int]], timeout: float = 1.5) -> None:
        if not addrs:
            raise ValueError("no upstream resolvers: set dns.upstreams or pass --upstream")
        self.upstreams = [Upstream(h, p) for h, p in addrs]
        self.timeout = timeout

    def order(self, now: float) -> list[Upstream]:
        """Healthy upstreams first (config order), then backed-off ones (soonest first)."""
        healthy = [u for u in self.upstreams if u.retry_at <= now]
        resting = sorted((u for u in self.upstreams if u.retry_at > now), key=lambda u: u.retry_at)
        return healthy + resting

    async def resolve(
        self, name: bytes, qtype: int, qclass: int, *, dnssec_ok: bool = False
    ) -> tuple[bytes, Upstream]:
        """The upstream's reply (id random, to be re-stamped) and who answered; UpstreamError.

        A SERVFAIL/REFUSED reply moves on to the next upstream without marking the first
        unhealthy (one broken zone must not take a resolver out). When no upstream does
        better it is an UpstreamError too: the client gets the filter's SERVFAIL and the
        failure is recorded with each upstream's answer.
        """
        errors = []
        for upstream in self.order(time.monotonic()):
            try:
                query = build_query(secrets.randbits(16), name, qtype, qclass, dnssec_ok=dnssec_ok)
                reply = await self._ask(upstream, query, dns_wire.HEADER + len(name) + 4)
            except (OSError, TimeoutError, EOFError, asyncio.IncompleteReadError) as e:
                upstream.failed(time.monotonic())
                errors.append(f"{upstream.label}: {type(e).__name__} {e}".strip())
                continue
            upstream.succeeded()
            rcode = reply[3] & 0x0F
            if rcode in (dns_wire.RCODE_SERVFAIL, dns_wire.RCODE_REFUSED):
                errors.append(f"{upstream.label}: answered {RCODE.get(rcode, rcode)}")
                continue
            return reply, upstream
        raise UpstreamError("; ".join(errors))

    async def _ask(self, upstream: Upstream, query: bytes, qend: int) -> bytes:
        async with asyncio.timeout(self.timeout):
            reply = await self._udp(upstream, query, qend)
            if reply[2] & 0x02:  # TC: the full answer needs TCP
                reply = await self._tcp(upstream, query, qend)
        return reply

    async def _udp(self, upstream: Upstream, query: bytes, qend: int) -> bytes:
        loop = asyncio.get_running_loop()
        with socket.socket(upstream.family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK) as sock:
            sock.connect((upstream.host, upstream.port))  # an IP: no lookup, no wait
            sock.send(query)
            while True:  # until a matching reply: others (spoofing attempts) are ignored
                reply = await loop.sock_recv(sock, 65535)
                if matches(reply, query, qend):
                    return reply

    async def _tcp(self, upstream: Upstream, query: bytes, qend: int) -> bytes:
        reader, writer = await asyncio.open_connection(upstream.host, upstream.port)
        try:
            writer.write(len(query).to_bytes(2) + query)
            await writer.drain()
            size = int.from_bytes(await reader.readexactly(2))
            reply = await reader.readexactly(size)
        finally:
            writer.close()
        if not matches(reply, query, qend):
            raise EOFError("TCP reply does not match the query")
        return reply
