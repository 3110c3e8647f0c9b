"""`aupguard dns` as a real process, queried by dnspython and dig over loopback."""

from __future__ import annotations

import contextlib
import json
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import (
    SLOW_SECONDS,
    DnsProcess,
    DnsUpstream,
    dns_command,
    dns_free_udp_port,
    dns_start,
    dns_write_config,
    jsonl,
)

pytestmark = pytest.mark.integration
HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def dns_server(
    dns_upstream: DnsUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DnsProcess]:
    """One filter for the module: the test upstream, records to a file."""
    folder = tmp_path_factory.mktemp("dns")
    config = dns_write_config(folder)
    server = dns_start(
        config,
        "--listen",
        f"{HOST}:0",
        "--upstream",
        f"{HOST}:{dns_upstream.port}",
        "--records",
        str(folder / "records.jsonl"),
    )
    server.ready["folder"] = str(folder)
    yield server
    assert server.stop() == 0


def ask(
    server: DnsProcess, name: str, qtype: str = "A", *, tcp: bool = False, edns: int | None = None
) -> dns.message.Message:
    query = dns.message.make_query(name, qtype, use_edns=0 if edns else None, payload=edns or 512)
    if tcp:
        return dns.query.tcp(query, HOST, port=server.port, timeout=3)
    return dns.query.udp(query, HOST, port=server.port, timeout=3)


def addresses(reply: dns.message.Message) -> set[str]:
    return {rd.to_text() for rrset in reply.answer for rd in rrset}


def records(server: DnsProcess, name: str) -> list[dict]:
    """The records about `name` (waiting up to 3 s for the writer thread)."""
    path = Path(server.ready["folder"]) / "records.jsonl"
    deadline = time.monotonic() + 3
    out: list[dict] = []
    while time.monotonic() < deadline:
        out = [r for r in jsonl(path) if r.get("dns", {}).get("question", {}).get("name") == name]
        if out:
            break
        time.sleep(0.05)
    return out


def test_ready_line_says_how_udp_is_read(dns_server: DnsProcess) -> None:
    """On Linux with glibc a run of datagrams is one system call each way (`datagrams`)."""
    batched = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"
    assert dns_server.ready["udp_io"] == (["recvmmsg"] if batched else ["recvfrom"])


@pytest.mark.parametrize(
    ("name", "qtype"),
    [
        pytest.param("blocked.test", "A", id="listed-a"),
        pytest.param("www.blocked.test", "AAAA", id="subdomain-aaaa"),
        pytest.param("blocked.test", "HTTPS", id="https"),
        pytest.param("blocked.test", "SVCB", id="svcb"),
        pytest.param("Deep.WWW.Blocked.Test", "ANY", id="any-mixed-case"),
        pytest.param("use-application-dns.net", "A", id="firefox-canary"),
        pytest.param("mask.icloud.com", "A", id="private-relay"),
        pytest.param("mask-h2.icloud.com", "AAAA", id="private-relay-h2"),
    ],
)
def test_blocked_names_get_nxdomain(dns_server: DnsProcess, name: str, qtype: str) -> None:
    """Listed names, their subdomains, every query type and bypass canaries get NXDOMAIN."""
    reply = ask(dns_server, name, qtype)
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert not reply.answer
    assert (
        reply.question[0].name.to_text()
        == dns.message.make_query(name, qtype).question[0].name.to_text()
    )


def test_ddr_gets_nodata(dns_server: DnsProcess) -> None:
    """`_dns.resolver.arpa` SVCB gets NOERROR with no answers, so no DoH server is advertised."""
    reply = ask(dns_server, "_dns.resolver.arpa", "SVCB")
    assert reply.rcode() == dns.rcode.NOERROR
    assert not reply.answer


def test_allowed_name_resolves_through_upstream(dns_server: DnsProcess) -> None:
    """An unlisted name is answered with the upstream's records; id and RD are kept."""
    query = dns.message.make_query("allowed.test", "A", use_edns=0)
    reply = dns.query.udp(query, HOST, port=dns_server.port, timeout=3)
    assert reply.id == query.id
    assert reply.flags & dns.flags.RD
    assert reply.edns == 0
    assert addresses(reply) == {"192.0.2.1"}


def test_warned_name_resolves_and_is_recorded(dns_server: DnsProcess) -> None:
    """A `warn` name resolves (the proxy shows the warning) and yields a record."""
    reply = ask(dns_server, "warned.test")
    assert reply.rcode() == dns.rcode.NXDOMAIN  # the upstream does not know it: it still asked
    found = records(dns_server, "warned.test")
    assert found
    assert found[0]["event"]["action"] == "warn"


def test_blocked_query_is_recorded(dns_server: DnsProcess) -> None:
    """A blocked query yields one record with the DNS fields."""
    ask(dns_server, "record-me.blocked.test", "AAAA")
    found = records(dns_server, "record-me.blocked.test")
    assert len(found) == 1
    assert found[0]["dns"]["question"]["type"] == "AAAA"
    assert found[0]["dns"]["response_code"] == "NXDOMAIN"
    assert found[0]["rule"]["name"] == "no-gambling"


def test_cname_into_blocked_domain_is_blocked(
    dns_server: DnsProcess, dns_upstream: DnsUpstream
) -> None:
    """An allowed name whose answer CNAMEs into a blocked domain is blocked (cloaking)."""
    assert ask(dns_server, "alias.test").rcode() == dns.rcode.NXDOMAIN
    assert ask(dns_server, "alias.test").rcode() == dns.rcode.NXDOMAIN  # cached answer too
    assert dns_upstream.count("alias.test") == 1
    assert addresses(ask(dns_server, "fine-alias.test")) >= {"192.0.2.1"}


@pytest.mark.parametrize("name", ["ech.test", "ech-mandatory.test"])
def test_ech_is_stripped_from_https_answers(dns_server: DnsProcess, name: str) -> None:
    """HTTPS answers keep alpn and hints but lose `ech`, so the proxy sees a readable SNI;
    a `mandatory` list naming ech loses it too, or dnspython (like a browser) rejects the
    record."""
    reply = ask(dns_server, name, "HTTPS", edns=1232)
    (rrset,) = reply.answer
    (rdata,) = list(rrset)
    assert "ech" not in rdata.to_text()
    assert "alpn" in rdata.to_text()
    assert "192.0.2.7" in rdata.to_text()


def test_cache_serves_second_query_with_lower_ttl(
    dns_server: DnsProcess, dns_upstream: DnsUpstream
) -> None:
    """A repeated query is answered from the cache with its TTL counting down."""
    first = ask(dns_server, "cached.example")
    time.sleep(1.2)
    second = ask(dns_server, "cached.example")
    assert dns_upstream.count("cached.example") == 1
    assert second.answer[0].ttl < first.answer[0].ttl


def test_large_answer_truncates_over_udp_and_completes_over_tcp(dns_server: DnsProcess) -> None:
    """An answer over the client's size sets TC on UDP; TCP carries all 100 records."""
    udp = ask(dns_server, "big.test")
    assert udp.flags & dns.flags.TC
    assert not udp.answer
    tcp = ask(dns_server, "big.test", tcp=True)
    assert len(addresses(tcp)) == 100
    assert not tcp.flags & dns.flags.TC


def test_garbage_does_not_stop_the_server(dns_server: DnsProcess) -> None:
    """Garbage, truncated headers, pointer loops and long labels get FORMERR or nothing."""
    header = bytes.fromhex("abcd01000001000000000000")
    packets = [
        b"",
        b"\x00",
        b"garbage!" * 3,
        header[:7],
        header + b"\xc0\x0c\x00\x01\x00\x01",
        header + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01",
        bytes.fromhex("abcd01000000000000000000"),
        bytes.fromhex("abcd01000002000000000000"),
        header + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01",
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.3)
        for packet in packets:
            sock.sendto(packet, (HOST, dns_server.port))
            try:
                reply, _ = sock.recvfrom(4096)
            except TimeoutError:
                continue
            assert reply[:2] == packet[:2]
            assert reply[3] & 0x0F == dns.rcode.FORMERR
    assert ask(dns_server, "allowed.test").rcode() == dns.rcode.NOERROR


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(min_size=0, max_size=300))
def test_fuzzed_packets_never_break_the_server(dns_server: DnsProcess, packet: bytes) -> None:
    """Random datagrams are answered or dropped; the process stays up."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(packet, (HOST, dns_server.port))
    assert dns_server.proc.poll() is None


def test_server_answers_after_fuzzing(dns_server: DnsProcess) -> None:
    """After the fuzz run a good query is still answered."""
    assert ask(dns_server, "blocked.test").rcode() == dns.rcode.NXDOMAIN


def test_slow_tcp_client_does_not_stall_others(dns_server: DnsProcess) -> None:
    """A TCP client that sends half a length prefix and an oversized one does not block UDP/TCP."""
    with (
        socket.create_connection((HOST, dns_server.port)) as slow,
        socket.create_connection((HOST, dns_server.port)) as huge,
    ):
        slow.sendall(b"\x00")
        huge.sendall(b"\xff\xff" + b"x" * 100)
        assert ask(dns_server, "allowed.test", tcp=True).rcode() == dns.rcode.NOERROR
        assert ask(dns_server, "allowed.test").rcode() == dns.rcode.NOERROR
        huge.settimeout(2)
        assert huge.recv(10) == b""  # closed: larger than any query


@pytest.mark.parametrize(
    ("mode", "flags", "code"),
    [
        pytest.param("blockpage", [], 1, id="config-error-blockpage-without-address"),
        pytest.param("nxdomain", ["--upstream", "1.2.3.4:x"], 2, id="bad-flag"),
    ],
)
def test_dns_exit_codes(tmp_path: Path, mode: str, flags: list[str], code: int) -> None:
    """1 for a config error, 2 for a bad flag (docs/dns.md), each with the reason."""
    config = dns_write_config(tmp_path, block_mode=mode)
    text = config.read_text().replace("  blockpage_ipv4: 192.0.2.80\n", "")
    config.write_text(text)
    done = subprocess.run(
        [*dns_command(), "dns", "--config", str(config), "--listen", f"{HOST}:0", *flags],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == code, done.stderr
    assert ("blockpage" if code == 1 else "1.2.3.4:x") in done.stderr


def test_pipelined_tcp_queries_are_answered_as_they_are_ready(dns_server: DnsProcess) -> None:
    """RFC 7766: a query waiting for a slow upstream does not hold up the next one on the
    same connection; and after the client's EOF the answer under way is still sent."""
    slow, blocked = (dns.message.make_query(name, "A") for name in ("slow.test", "blocked.test"))
    slow.id, blocked.id = 1, 2
    wire = b"".join(len(m.to_wire()).to_bytes(2) + m.to_wire() for m in (slow, blocked))
    with socket.create_connection((HOST, dns_server.port)) as conn:
        conn.settimeout(5)
        conn.sendall(wire)
        conn.shutdown(socket.SHUT_WR)  # asked everything
        started = time.monotonic()
        first = dns.query.receive_tcp(conn, time.time() + 5)[0]
        first_took = time.monotonic() - started
        second = dns.query.receive_tcp(conn, time.time() + 5)[0]
    assert (first.id, first.rcode()) == (2, dns.rcode.NXDOMAIN)
    assert first_took < SLOW_SECONDS  # not after the slow lookup
    assert (second.id, second.rcode()) == (1, dns.rcode.NOERROR)


def test_an_edns_version_beyond_0_gets_badvers(dns_server: DnsProcess) -> None:
    """RFC 6891: a query with EDNS version 1 is answered BADVERS with an OPT of version 0."""
    query = dns.message.make_query("allowed.test", "A", use_edns=1)
    reply = dns.query.udp(query, HOST, port=dns_server.port, timeout=3)
    assert reply.rcode() == dns.rcode.BADVERS
    assert reply.edns == 0


def test_one_address_cannot_take_every_tcp_connection(
    dns_upstream: DnsUpstream, tmp_path: Path
) -> None:
    """With `tcp_max_connections: 16` one address holds 2 connections; its third is closed at
    once, while another address is still served over TCP."""
    config = dns_write_config(tmp_path, dns_extra="tcp_max_connections: 16")
    server = dns_start(config, "--listen", f"{HOST}:0", "--upstream", f"{HOST}:{dns_upstream.port}")
    try:
        with contextlib.ExitStack() as held:
            for _ in range(2):
                held.enter_context(socket.create_connection((HOST, server.port))).sendall(b"\x00")
            third = held.enter_context(socket.create_connection((HOST, server.port)))
            third.settimeout(2)
            assert third.recv(10) == b""  # closed at once, not after the idle timeout
            other = dns.query.tcp(
                dns.message.make_query("allowed.test", "A"), HOST, port=server.port, timeout=3,
                source="127.0.0.2",
            )  # fmt: skip
            assert other.rcode() == dns.rcode.NOERROR
    finally:
        assert server.stop() == 0


@pytest.mark.skipif(
    shutil.which("dig") is None, reason="dig (Debian dnsutils) is NOT installed: dig cases skipped"
)
@pytest.mark.parametrize(
    ("args", "expect"),
    [
        pytest.param(["blocked.test"], "status: NXDOMAIN", id="blocked"),
        pytest.param(["allowed.test"], "192.0.2.1", id="allowed"),
        pytest.param(["+tcp", "allowed.test", "AAAA"], "2001:db8::1", id="tcp-aaaa"),
        pytest.param(["+noedns", "big.test"], "198.51.100.100", id="tc-retry-tcp"),
        pytest.param(["+noedns", "+ignore", "big.test"], "flags: qr tc", id="tc-flag"),
        pytest.param(["+dnssec", "allowed.test"], "; EDNS: version: 0, flags: do;", id="do-echoed"),
        pytest.param(["+dnssec", "blocked.test"], "; EDNS: version: 0, flags: do;", id="do-block"),
    ],
)
def test_dig(dns_server: DnsProcess, args: list[str], expect: str) -> None:
    """dig, the admin's tool, sees the same answers."""
    out = subprocess.run(
        ["dig", "-p", str(dns_server.port), f"@{HOST}", "+tries=1", "+time=3", *args],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    ).stdout
    assert expect in out, out


def test_refused_outside_allowed_clients(dns_upstream: DnsUpstream, tmp_path: Path) -> None:
    """A client outside --allow-clients gets REFUSED, and the refusal is recorded once."""
    config = dns_write_config(tmp_path)
    server = dns_start(
        config,
        "--listen",
        f"{HOST}:0",
        "--upstream",
        f"{HOST}:{dns_upstream.port}",
        "--allow-clients",
        "10.0.0.0/8",
        "--records",
        str(tmp_path / "r.jsonl"),
    )
    try:
        for _ in range(5):
            assert ask(server, "allowed.test").rcode() == dns.rcode.REFUSED
    finally:
        assert server.stop() == 0
    lines = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    refused = [r for r in lines if r["aupguard"].get("dns", {}).get("outcome") == "refused"]
    assert sum(r["aupguard"]["dns"]["count"] for r in refused) == 5
    assert len(refused) <= 2


def test_failover_to_second_upstream_and_servfail_when_all_fail(
    dns_upstream: DnsUpstream, tmp_path: Path
) -> None:
    """A dead first upstream is skipped; with only dead upstreams the answer is SERVFAIL."""
    dead = dns_free_udp_port()
    config = dns_write_config(tmp_path)
    server = dns_start(
        config,
        "--listen",
        f"{HOST}:0",
        "--upstream",
        f"{HOST}:{dead}",
        "--upstream",
        f"{HOST}:{dns_upstream.port}",
    )
    only_dead = dns_start(config, "--listen", f"{HOST}:0", "--upstream", f"{HOST}:{dead}")
    try:
        assert addresses(ask(server, "allowed.test")) == {"192.0.2.1"}
        assert ask(server, "failover.example").rcode() == dns.rcode.NOERROR
        assert ask(only_dead, "allowed.test").rcode() == dns.rcode.SERVFAIL
    finally:
        assert server.stop() == 0
        assert only_dead.stop() == 0


@pytest.mark.parametrize(
    ("mode", "qtype", "expect"),
    [
        pytest.param("null", "A", "0.0.0.0", id="null-a"),
        pytest.param("null", "AAAA", "::", id="null-aaaa"),
        pytest.param("blockpage", "A", "192.0.2.80", id="blockpage-a"),
    ],
)
def test_block_modes(
    dns_upstream: DnsUpstream, tmp_path: Path, mode: str, qtype: str, expect: str
) -> None:
    """null answers 0.0.0.0/::, blockpage the block-page server, with the short block TTL."""
    server = dns_start(
        dns_write_config(tmp_path, block_mode=mode),
        "--listen",
        f"{HOST}:0",
        "--upstream",
        f"{HOST}:{dns_upstream.port}",
    )
    try:
        reply = ask(server, "blocked.test", qtype)
        assert addresses(reply) == {expect}
        assert reply.answer[0].ttl == 30
        assert not ask(server, "blocked.test", "HTTPS").answer
    finally:
        assert server.stop() == 0


def test_sighup_reload_picks_up_list_without_dropping_queries(
    dns_upstream: DnsUpstream, tmp_path: Path
) -> None:
    """After a list change and SIGHUP the new name is blocked; no query fails meanwhile."""
    config = dns_write_config(tmp_path)
    server = dns_start(config, "--listen", f"{HOST}:0", "--upstream", f"{HOST}:{dns_upstream.port}")
    failures: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        for _ in range(2000):
            if stop.is_set():
                return
            try:
                ask(server, "allowed.test")
            except Exception as e:
                failures.append(repr(e))

    worker = threading.Thread(target=hammer)
    try:
        assert ask(server, "newblock.test").rcode() == dns.rcode.NOERROR
        worker.start()
        (tmp_path / "blocked.txt").write_text("blocked.test\ncloak-target.test\nnewblock.test\n")
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while ask(server, "newblock.test").rcode() != dns.rcode.NXDOMAIN:
            assert time.monotonic() < deadline, "reload not picked up"
            time.sleep(0.1)
    finally:
        stop.set()
        worker.join(10)
        assert server.stop() == 0
    assert failures == []


def test_rate_limit_trips_are_recorded_once_with_a_count(
    dns_upstream: DnsUpstream, tmp_path: Path
) -> None:
    """Over the per-client rate the answer is REFUSED; one record carries the count."""
    config = dns_write_config(tmp_path, dns_extra="rate_limit: 5")
    server = dns_start(
        config,
        "--listen",
        f"{HOST}:0",
        "--upstream",
        f"{HOST}:{dns_upstream.port}",
        "--records",
        str(tmp_path / "r.jsonl"),
    )
    try:
        codes = [ask(server, "blocked.test").rcode() for _ in range(40)]
    finally:
        assert server.stop() == 0
    refused = codes.count(dns.rcode.REFUSED)
    assert 20 <= refused < 40
    trips = [
        r
        for r in jsonl(tmp_path / "r.jsonl")
        if r["aupguard"].get("dns", {}).get("outcome") == "rate-limited"
    ]
    assert 1 <= len(trips) <= 2
    assert sum(r["aupguard"]["dns"]["count"] for r in trips) == refused


@pytest.mark.parametrize(
    ("mode", "expect"),
    [
        pytest.param("all", 2, id="all"),
        pytest.param("off", 0, id="off"),
        pytest.param("default", 1, id="default-blocked-only"),
    ],
)
def test_records_modes(dns_upstream: DnsUpstream, tmp_path: Path, mode: str, expect: int) -> None:
    """`records: all` records every query, `default` the blocked one, `off` none."""
    config = dns_write_config(tmp_path, records=mode)
    server = dns_start(
        config,
        "--listen",
        f"{HOST}:0",
        "--upstream",
        f"{HOST}:{dns_upstream.port}",
        "--records",
        str(tmp_path / "r.jsonl"),
    )
    try:
        ask(server, "allowed.test")
        ask(server, "blocked.test")
    finally:
        assert server.stop() == 0
    assert len(jsonl(tmp_path / "r.jsonl")) == expect


def test_ipv6_listener(dns_upstream: DnsUpstream, tmp_path: Path) -> None:
    """`--listen [::1]:0` serves IPv6 clients (UDP and TCP) next to IPv4."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    config = dns_write_config(tmp_path)
    server = dns_start(config, "--listen", "[::1]:0", "--upstream", f"{HOST}:{dns_upstream.port}")
    try:
        query = dns.message.make_query("blocked.test", "A")
        assert (
            dns.query.udp(query, "::1", port=server.port, timeout=3).rcode() == dns.rcode.NXDOMAIN
        )
        assert addresses(
            dns.query.tcp(
                dns.message.make_query("allowed.test", "A"), "::1", port=server.port, timeout=3
            )
        ) == {"192.0.2.1"}
    finally:
        assert server.stop() == 0
