"""upstream: address parsing, reply matching (anti-spoofing), failover, TC -> TCP."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from dnslib import QTYPE, RCODE, RR, DNSRecord

from agent import dns_wire
from agent.config import parse_addr, parse_upstream
from agent.upstream import (
    Upstream,
    UpstreamError,
    UpstreamPool,
    build_query,
    matches,
    system_resolvers,
)

NAME = dns_wire.to_wire("example.com")


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        pytest.param("192.0.2.1", ("192.0.2.1", 53), id="v4-default-port"),
        pytest.param("192.0.2.1:5353", ("192.0.2.1", 5353), id="v4-port"),
        pytest.param("[::1]:5353", ("::1", 5353), id="v6-port"),
        pytest.param("::1", ("::1", 53), id="v6-bare"),
        pytest.param("127.0.0.1:0", ("127.0.0.1", 0), id="port-zero"),
    ],
)
def test_parse_addr(text: str, expect: tuple[str, int]) -> None:
    """ADDR[:PORT] with IPv6 in brackets."""
    assert parse_addr(text) == expect


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("[::1", id="unclosed-bracket"),
        pytest.param("1.2.3.4:99999", id="port-range"),
        pytest.param(":53", id="no-host"),
        pytest.param("1.2.3.4:x", id="port-not-number"),
        pytest.param("[::1]:5x", id="v6-port-not-number"),
    ],
)
def test_parse_addr_rejects(text: str) -> None:
    """Bad addresses raise ValueError naming the address."""
    with pytest.raises(ValueError, match=re.escape(repr(text))):
        parse_addr(text)


def _reply_to(query: bytes, *, ident: int | None = None, name: str = "example.com") -> bytes:
    rec = DNSRecord.parse(query)
    reply = DNSRecord.question(name).reply() if name != "example.com" else rec.reply()
    reply.header.id = rec.header.id if ident is None else ident
    reply.add_answer(*RR.fromZone(f"{name}. 60 IN A 192.0.2.1"))
    return bytes(reply.pack())


@pytest.mark.parametrize(
    ("mutate", "ok"),
    [
        pytest.param(_reply_to, True, id="match"),
        pytest.param(
            lambda q: _reply_to(q).replace(b"example", b"EXAMPLE", 1), True, id="case-insensitive"
        ),
        pytest.param(
            lambda q: _reply_to(q, ident=(int.from_bytes(q[:2]) + 1) % 65536), False, id="wrong-id"
        ),
        pytest.param(lambda q: _reply_to(q, name="other.com"), False, id="wrong-question"),
        pytest.param(lambda q: q, False, id="not-a-response"),
        pytest.param(lambda q: q[:10], False, id="short"),
    ],
)
def test_matches(mutate, ok: bool) -> None:
    """Only a response with our id and question is accepted."""
    query = build_query(0x1234, NAME, QTYPE.A, 1)
    assert matches(mutate(query), query, 12 + len(NAME) + 4) is ok


def test_matches_compares_the_type_exactly() -> None:
    """Only the name is compared in any case: type 65 (HTTPS, byte `A`) is no case of 97."""
    query = build_query(0x1234, NAME, QTYPE.HTTPS, 1)
    qend = 12 + len(NAME) + 4
    reply = bytearray(query)
    reply[2] |= 0x80
    assert matches(bytes(reply), query, qend)
    reply[qend - 3] = 97  # the low byte of QTYPE
    assert not matches(bytes(reply), query, qend)


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        pytest.param("192.0.2.1", ("192.0.2.1", 53), id="v4"),
        pytest.param("[2001:db8::1]:5353", ("2001:db8::1", 5353), id="v6"),
        pytest.param("fe80::1%eth0", ("fe80::1%eth0", 53), id="v6-scoped"),
    ],
)
def test_parse_upstream(text: str, expect: tuple[str, int]) -> None:
    """Upstreams are IP addresses, with or without a port."""
    assert parse_upstream(text) == expect


@pytest.mark.parametrize("text", ["resolver.example", "localhost:53", "192.0.2.1.5"])
def test_parse_upstream_rejects_names(text: str) -> None:
    """A name is refused with the value: the filter cannot look up its own upstream."""
    with pytest.raises(ValueError, match=re.escape(f"bad upstream {text!r}: expected an IP")):
        parse_upstream(text)


def test_lookups_start_no_thread_pool() -> None:
    """On uvloop a lookup starts no thread (a datagram endpoint's `remote_addr` would be
    resolved on libuv's thread pool, one hand-off per query)."""
    pytest.importorskip("uvloop")
    script = f"""
import asyncio, os, socket, sys, uvloop
sys.path.insert(0, {str(Path(__file__).parents[2])!r})
from agent.dns_wire import to_wire
from agent.upstream import UpstreamPool

async def main():
    loop = asyncio.get_running_loop()
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.setblocking(False)
    def answer():
        data, addr = server.recvfrom(512)
        server.sendto(data[:2] + bytes([data[2] | 0x80]) + data[3:], addr)
    loop.add_reader(server.fileno(), answer)
    before = len(os.listdir("/proc/self/task"))
    pool = UpstreamPool([("127.0.0.1", server.getsockname()[1])], timeout=2.0)
    for _ in range(3):
        await pool.resolve(to_wire("example.com"), 1, 1)
    print(before, len(os.listdir("/proc/self/task")))

uvloop.run(main())
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    before, after = out.stdout.split()
    assert after == before, "a lookup started threads"


async def test_a_closed_port_fails_at_once() -> None:
    """A closed upstream port (ICMP port unreachable) is a refusal, not a wait for the timeout."""
    pool = UpstreamPool([("127.0.0.1", _dead_port())], timeout=30.0)
    with pytest.raises(UpstreamError, match="ConnectionRefusedError"):
        await asyncio.wait_for(pool.resolve(NAME, QTYPE.A, 1), 10.0)


class _Fake(asyncio.DatagramProtocol):
    """Answers with a spoofed (wrong id) datagram first, then the real one; TC if asked."""

    def __init__(self, truncate: bool) -> None:
        self.truncate = truncate
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        assert self.transport is not None
        self.transport.sendto(_reply_to(data, ident=(int.from_bytes(data[:2]) + 1) % 65536), addr)
        reply = _reply_to(data)
        if self.truncate:
            reply = (
                reply[:2]
                + bytes([reply[2] | 0x02])
                + reply[3:6]
                + b"\x00\x00"
                + reply[8:12]
                + data[12:-11]
            )
        self.transport.sendto(reply, addr)


@pytest.fixture
async def fake_upstream(request: pytest.FixtureRequest) -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()
    truncate = getattr(request, "param", False)
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _Fake(truncate), local_addr=("127.0.0.1", 0)
    )
    port = transport.get_extra_info("sockname")[1]

    async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        size = int.from_bytes(await reader.readexactly(2))
        reply = _reply_to(await reader.readexactly(size))
        writer.write(len(reply).to_bytes(2) + reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(tcp, "127.0.0.1", port)
    yield port
    server.close()
    await server.wait_closed()
    transport.close()


def _dead_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_spoofed_reply_ignored_and_failover(fake_upstream: int) -> None:
    """A dead first upstream is skipped and backed off; a wrong-id datagram is ignored."""
    pool = UpstreamPool([("127.0.0.1", _dead_port()), ("127.0.0.1", fake_upstream)], timeout=1.0)
    reply, upstream = await pool.resolve(NAME, QTYPE.A, 1)
    assert upstream.port == fake_upstream
    assert DNSRecord.parse(reply).a.rdata is not None
    assert pool.upstreams[0].failures == 1
    assert pool.order(pool.upstreams[0].retry_at + 0.1)[0] is pool.upstreams[0]  # back again
    assert pool.order(pool.upstreams[0].retry_at - 0.1)[0] is pool.upstreams[1]


@pytest.mark.parametrize("fake_upstream", [True], indirect=True)
async def test_truncated_udp_reply_retried_over_tcp(fake_upstream: int) -> None:
    """TC over UDP -> the full answer over TCP."""
    pool = UpstreamPool([("127.0.0.1", fake_upstream)], timeout=1.0)
    reply, _ = await pool.resolve(NAME, QTYPE.A, 1)
    assert not reply[2] & 0x02
    assert len(DNSRecord.parse(reply).rr) == 1


async def test_all_dead_raises() -> None:
    """With every upstream failing the caller gets UpstreamError (-> SERVFAIL)."""
    pool = UpstreamPool([("127.0.0.1", _dead_port())], timeout=0.3)
    with pytest.raises(UpstreamError):
        await pool.resolve(NAME, QTYPE.A, 1)


class _Answering(asyncio.DatagramProtocol):
    """Answers every query with `rcode` (and no records)."""

    def __init__(self, rcode: int) -> None:
        self.rcode = rcode
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        assert self.transport is not None
        reply = DNSRecord.parse(data).reply()
        reply.header.rcode = self.rcode
        self.transport.sendto(bytes(reply.pack()), addr)


@pytest.mark.parametrize(
    ("rcodes", "answered_by", "error"),
    [
        pytest.param([RCODE.SERVFAIL, RCODE.NOERROR], 1, None, id="servfail-then-answer"),
        pytest.param([RCODE.REFUSED, RCODE.NXDOMAIN], 1, None, id="refused-then-nxdomain"),
        pytest.param(
            [RCODE.SERVFAIL, RCODE.REFUSED],
            None,
            r"127\.0\.0\.1:\d+: answered SERVFAIL; 127\.0\.0\.1:\d+: answered REFUSED$",
            id="every-upstream-fails-is-an-error",
        ),
    ],
)
async def test_servfail_and_refused_move_on(
    rcodes: list[int], answered_by: int | None, error: str | None
) -> None:
    """SERVFAIL/REFUSED moves on without marking the upstream down; from all, UpstreamError."""
    loop = asyncio.get_running_loop()
    endpoints = [
        await loop.create_datagram_endpoint(
            lambda rcode=rcode: _Answering(rcode), local_addr=("127.0.0.1", 0)
        )
        for rcode in rcodes
    ]
    ports = [transport.get_extra_info("sockname")[1] for transport, _ in endpoints]
    pool = UpstreamPool([("127.0.0.1", port) for port in ports], timeout=1.0)
    try:
        if error is not None:
            with pytest.raises(UpstreamError, match=error):
                await pool.resolve(NAME, QTYPE.A, 1)
        else:
            reply, upstream = await pool.resolve(NAME, QTYPE.A, 1)
            assert upstream.port == ports[answered_by or 0]
            assert reply[3] & 0x0F == rcodes[answered_by or 0]
        assert [u.failures for u in pool.upstreams] == [0, 0]
    finally:
        for transport, _ in endpoints:
            transport.close()


def test_no_upstreams_is_an_error() -> None:
    """An empty upstream list is refused at start."""
    with pytest.raises(ValueError, match="no upstream"):
        UpstreamPool([])


@pytest.mark.parametrize(
    ("text", "exclude", "expected"),
    [
        pytest.param("nameserver 10.255.255.53\n", (), (("10.255.255.53", 53),), id="one"),
        pytest.param(
            "# c\nsearch x\nnameserver ::1\nnameserver 192.0.2.1\n",
            (),
            (("::1", 53), ("192.0.2.1", 53)),
            id="several-and-v6",
        ),
        pytest.param("nameserver fe80::1%eth0\n", (), (("fe80::1", 53),), id="scope-id-dropped"),
        pytest.param(
            "nameserver 127.0.0.1\n", (("127.0.0.1", 53),), (), id="own-listener-excluded"
        ),
        pytest.param("options ndots:2\n", (), (), id="none"),
    ],
)
def test_system_resolvers(
    tmp_path: Path,
    text: str,
    exclude: tuple[tuple[str, int], ...],
    expected: tuple[tuple[str, int], ...],
) -> None:
    """With no dns.upstreams, the host's own resolvers are used, never our own listener."""
    conf = tmp_path / "resolv.conf"
    conf.write_text(text)
    assert system_resolvers(conf, exclude) == expected
    assert system_resolvers(tmp_path / "missing") == ()


@pytest.mark.parametrize(
    ("failures", "wait"),
    [
        pytest.param(1, 1.0, id="first"),
        pytest.param(3, 4.0, id="doubling"),
        pytest.param(6, 30.0, id="capped"),
        pytest.param(5_000, 30.0, id="long-outage-no-overflow"),
    ],
)
def test_backoff(failures: int, wait: float) -> None:
    """Failures back off 1 s, 2 s, 4 s... up to 30 s, however long the outage lasts."""
    upstream = Upstream("192.0.2.53", 53)
    for _ in range(failures):
        upstream.failed(100.0)
    assert upstream.retry_at == 100.0 + wait


@pytest.mark.parametrize("dnssec_ok", [False, True])
def test_build_query_passes_the_do_bit(*, dnssec_ok: bool) -> None:
    """The upstream query asks for DNSSEC records exactly when the client did."""
    rec = DNSRecord.parse(build_query(7, NAME, QTYPE.A, 1, dnssec_ok=dnssec_ok))
    (opt,) = [rr for rr in rec.ar if rr.rtype == QTYPE.OPT]
    assert bool(opt.ttl & 0x8000) is dnssec_ok
