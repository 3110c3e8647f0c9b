"""Shipping records to a real rsyslog on loopback: TCP delivery, a collector outage, spool limits.

rsyslog here has no TLS driver (Debian's rsyslog-gnutls/-openssl are not installed), so TLS
(RFC 5425) is tested against a Python TLS collector on loopback with a test CA.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from agent.chain import generate_key, load_key, read_head, verify
from agent.config import RecordsSection
from agent.rotation import rotated_files
from agent.shipping import Spool, SpoolFull, SyslogSink, record_sinks, tls_context
from agent.writer import RecordWriter
from tests import pki
from tests.integration.conftest import (
    Rsyslog,
    fill,
    free_port,
    needs_rsyslog,
)

pytestmark = pytest.mark.integration


def record(i: int) -> dict[str, object]:
    return {"event": {"id": f"{i:08d}", "action": "block"}, "n": i, "pad": "p" * 200}


def sink_to(port: int, tmp: Path, **kw: object) -> SyslogSink:
    spool = Spool(tmp / "spool" / "syslog.spool", int(kw.pop("spool_bytes", 50 << 20)))  # type: ignore[call-overload]
    settings: dict[str, object] = {"retry_seconds": 0.05, "timeout": 2.0, **kw}
    return SyslogSink("127.0.0.1", port, spool=spool, **settings)  # type: ignore[arg-type]


def deliver(sink: SyslogSink, timeout: float = 10) -> float:
    """What the record writer does while idle: tick until the spool is delivered (bounded);
    the longest tick."""
    deadline = time.monotonic() + timeout
    longest = 0.0
    while (sink.spool.depth or sink.dropped) and time.monotonic() < deadline:
        started = time.monotonic()
        more = sink.tick()
        longest = max(longest, time.monotonic() - started)
        if not more and not sink.spool.depth:
            break
        time.sleep(0.02)
    return longest


def slow_reader(server: socket.socket, got: bytearray, chunk: int) -> threading.Thread:
    """A collector taking `chunk` bytes every 10 ms on the first connection, into `got`."""

    def read_slowly() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(chunk):
                got.extend(data)
                time.sleep(0.01)

    reader = threading.Thread(target=read_slowly, daemon=True)
    reader.start()
    return reader


def first_copies(got: list[dict[str, object]]) -> list[str]:
    """Event ids in first-arrival order; every duplicate must equal its first copy."""
    first: dict[str, dict[str, object]] = {}
    for rec in got:
        eid = rec["event"]["id"]  # type: ignore[index]
        if eid in first:
            assert rec == first[eid], f"duplicate {eid} differs from its first copy"
        else:
            first[eid] = rec
    return list(first)


@needs_rsyslog
def test_records_arrive_over_tcp(rsyslog: Rsyslog, tmp_path: Path) -> None:
    """Every record reaches rsyslog as one RFC 5424 message, in order."""
    sink = sink_to(rsyslog.port, tmp_path)
    with RecordWriter([sink]) as writer:
        for i in range(500):
            writer.write(record(i))
    got = rsyslog.records(500)
    assert [r["event"]["id"] for r in got] == [f"{i:08d}" for i in range(500)]  # type: ignore[index]


@needs_rsyslog
def test_collector_outage_loses_nothing(rsyslog: Rsyslog, tmp_path: Path) -> None:
    """Stop rsyslog mid-stream, write 10,000 records, restart: all arrive, in order."""
    sink = sink_to(rsyslog.port, tmp_path)
    writer = RecordWriter([sink], queue_size=50_000)
    for i in range(2_000):
        writer.write(record(i))
    assert rsyslog.records(1, timeout=10)
    rsyslog.stop()  # likely while the writer thread is still sending
    for i in range(2_000, 12_000):
        writer.write(record(i))
    assert writer.flush(30)
    assert sink.spool.pending
    rsyslog.start()
    assert writer.close(60)
    ids = first_copies(rsyslog.records(12_000))
    assert ids == [f"{i:08d}" for i in range(12_000)]
    assert writer.dropped == 0
    assert sink.dropped == 0
    print(
        f"sent={sink.sent} spooled={sink.spooled} resent={sink.resent} reconnects={sink.reconnects}"
    )


def test_spool_full_drops_counts_and_reports(tmp_path: Path) -> None:
    """With the collector down a full spool drops, counts, warns once near full and once
    full, reports the count later."""
    port = free_port()
    sink = sink_to(port, tmp_path, spool_bytes=20_000)
    lines = [json.dumps(record(i)) for i in range(200)]
    metric = ("aupguard_records_dropped_total", {"stage": "spool"})
    before = REGISTRY.get_sample_value(*metric) or 0.0
    with capture_logs() as logs:
        for i in range(0, 200, 10):
            sink.write_lines(lines[i : i + 10])
    assert sink.spool.full
    assert [e["event"] for e in logs].count("records.spool_full") == 1  # not once per batch
    assert sink.dropped > 100
    assert REGISTRY.get_sample_value(*metric) == before + sink.dropped
    assert sink.near_full_alerts == 1
    assert not sink.fail_closed.is_set()
    assert sink.spool.depth == sink.spooled
    received = Collector(port)
    deliver(sink)
    assert sink.spool.depth == 0
    got = received.wait(sink.spooled + 1)
    assert got[-1]["event"]["action"] == "records-dropped"  # type: ignore[index]
    assert got[-1]["aupguard"]["dropped"] == sink.dropped  # type: ignore[index]
    assert [r["n"] for r in got[:-1]] == list(range(sink.spooled))
    received.close()
    sink.close()


def test_spool_full_fail_closed_sets_and_clears_the_flag(tmp_path: Path) -> None:
    """Policy fail_closed raises the enforcement flag while records cannot be kept."""
    port = free_port()
    sink = sink_to(port, tmp_path, spool_bytes=5_000, policy=SpoolFull.FAIL_CLOSED)
    sink.write_lines([json.dumps(record(i)) for i in range(50)])
    assert sink.fail_closed.is_set()
    received = Collector(port)
    deliver(sink)
    assert not sink.fail_closed.is_set()
    received.wait(sink.spooled + 1)
    received.close()
    sink.close()


def test_a_spool_that_cannot_be_emptied_still_ends_fail_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spool on a disk gone read-only is delivered but cannot be truncated: that is logged
    once, and enforcement resumes (it stayed suspended for good, with everything sent)."""
    port = free_port()
    sink = sink_to(port, tmp_path, spool_bytes=5_000, policy=SpoolFull.FAIL_CLOSED)
    sink.write_lines([json.dumps(record(i)) for i in range(50)])
    assert sink.fail_closed.is_set()

    def read_only() -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(sink.spool, "clear", read_only)
    received = Collector(port)
    with capture_logs() as logs:
        for _ in range(3):
            deliver(sink)
    assert not sink.fail_closed.is_set()
    got = received.wait(sink.spooled + 1)
    assert got[-1]["aupguard"]["dropped"] == sink.dropped  # type: ignore[index]
    assert [e["event"] for e in logs].count("records.spool_clear_failed") == 1
    received.close()
    sink.close()


@pytest.mark.parametrize("policy", list(SpoolFull))
def test_the_spool_is_delivered_when_the_collector_returns_with_no_new_records(
    tmp_path: Path, policy: SpoolFull
) -> None:
    """A full spool drains once the collector is back although no record is written: under
    fail_closed none can be (the DNS filter and the proxy refuse everything), so delivery
    waiting for the next record would keep the gateway suspended for good."""
    port = free_port()
    sink = sink_to(port, tmp_path, spool_bytes=5_000, policy=policy)
    writer = RecordWriter([sink], halt=sink.fail_closed, tick=sink.tick)
    for i in range(50):
        writer.write(record(i))
    assert writer.flush(10)
    assert sink.spool.full
    assert writer.failing_closed is (policy is SpoolFull.FAIL_CLOSED)
    received = Collector(port)
    got = received.wait(sink.spooled + 1, timeout=8)  # a tick a second, back-off under 1 s
    assert [r["n"] for r in got[:-1]] == list(range(sink.spooled))
    assert got[-1]["aupguard"]["dropped"] == sink.dropped  # type: ignore[index]
    assert not writer.failing_closed
    received.close()
    writer.close(10)


def test_queue_full_never_blocks_the_decision_path(tmp_path: Path) -> None:
    """A collector that stops reading stalls the writer thread only; write() stays fast and counts drops."""
    port = free_port()
    stalled = socket.create_server(("127.0.0.1", port))
    sink = sink_to(port, tmp_path, timeout=0.5)
    writer = RecordWriter([sink], queue_size=100)
    slowest = 0.0
    for i in range(50_000):
        t = time.perf_counter()
        writer.write(record(i))
        slowest = max(slowest, time.perf_counter() - t)
    assert writer.dropped > 0
    assert slowest < 0.05
    stalled.close()
    writer.close(30)


def quiet_collector(port: int, rcvbuf: int) -> socket.socket:
    """A listening collector that accepts connections (in the kernel) and reads nothing itself."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # inherited by connections
    server.bind(("127.0.0.1", port))
    server.listen(64)
    return server


def test_a_stalled_collector_is_dropped_and_retried_with_back_off(tmp_path: Path) -> None:
    """A collector that accepts, then stops reading: after `stall_seconds` it is dropped,
    and the sink spools without trying again for a growing back-off, never holding up the
    writer thread (and every records file it writes) meanwhile.
    """
    port = free_port()
    server = quiet_collector(port, 4096)  # never reads: fills at once
    sink = sink_to(port, tmp_path, retry_seconds=0.1, send_timeout=0.3, stall_seconds=0.3)
    lines = [json.dumps(record(i)) for i in range(20)]
    blocked = 0.0
    batches = 0
    end = time.monotonic() + 4.0
    while time.monotonic() < end:  # bounded: 4 s of 20-line batches every 5 ms
        t = time.monotonic()
        sink.write_lines(lines)
        blocked += time.monotonic() - t
        batches += 1
        time.sleep(0.005)
    # back-offs 0.2, 0.4, 0.8, 1.6 s: about 4 stalls of 0.3 s (reconnecting at once: ~10)
    assert blocked < 0.5, f"writer blocked {blocked:.1f} s of 4 s over {batches} batches"
    assert 2 <= sink.reconnects <= 5
    assert sink.spool.depth > 0
    server.close()
    sink.close()


def test_a_collector_pausing_for_less_than_stall_seconds_keeps_its_connection(
    tmp_path: Path,
) -> None:
    """A collector that stops reading for 1.5 s (a loopback one reading 50 KB/s takes a 64 KiB
    segment every 1.3 s) is not dropped: its lines spool meanwhile and follow when it reads
    again. Dropping it after one `send_timeout` sent the whole resend window again each time.
    """
    port = free_port()
    server = quiet_collector(port, 4096)
    got = bytearray()
    paused = threading.Event()

    def read_after_a_pause() -> None:
        conn, _ = server.accept()
        with conn:
            paused.wait(10)
            time.sleep(1.5)
            while chunk := conn.recv(65536):
                got.extend(chunk)

    reader = threading.Thread(target=read_after_a_pause, daemon=True)
    reader.start()
    sink = sink_to(port, tmp_path, send_timeout=0.3)
    lines = [json.dumps(record(i)) for i in range(20_000)]  # ~5 MB: more than the buffers
    for i in range(0, len(lines), 100):
        sink.write_lines(lines[i : i + 100])
    paused.set()
    assert sink.spool.depth > 0  # the precondition: the buffers filled
    deliver(sink, timeout=30)
    assert sink.spool.depth == 0
    assert (sink.reconnects, sink.resent) == (1, 0)
    sink.close()
    reader.join(30)
    assert got.count(b"aupguard") == len(lines)
    server.close()


@pytest.mark.parametrize(
    "text",
    ["plain", "caf\u00e9 \U0001f600", "a\u2028b", "a\u2029b", "a\x85b", "a\x0bb\x0cc\x1c"],
)
def test_spooled_lines_come_back_whole(tmp_path: Path, text: str) -> None:
    """Only "\\n" ends a spooled line: str.splitlines() also split at U+2028 and the like,
    which orjson leaves raw in a record, so one record went out as two broken frames, and
    the spool's offsets and counts went wrong."""
    spool = Spool(tmp_path / "s", 1 << 20)
    lines = [json.dumps({"n": i, "text": text}, ensure_ascii=False) for i in range(3)]
    assert spool.append(lines) == 3
    got, end = spool.read(1 << 20)
    assert got == lines
    spool.advance(end, len(got))
    assert (spool.depth, spool.pending) == (0, False)
    spool.rewind(got[1:])
    assert spool.read(1 << 20)[0] == lines[1:]
    spool.close()


def test_a_torn_last_line_is_cut_off_when_the_spool_opens(tmp_path: Path) -> None:
    """A crash mid-append leaves a line without its end; the next line appended was glued to
    it, and that record lost in one unparseable frame."""
    path = tmp_path / "s"
    path.write_bytes(b'{"n": 0}\n{"n": 1}\n{"n": 2, "pad": "tor')
    with capture_logs() as logs:
        spool = Spool(path, 1 << 20)
    assert (spool.count, spool.size) == (2, 18)
    assert [e["event"] for e in logs] == ["records.spool_torn_line"]
    spool.append(['{"n": 3}'])
    assert spool.read(1 << 20)[0] == ['{"n": 0}', '{"n": 1}', '{"n": 3}']
    spool.close()


@pytest.mark.parametrize("room", [20_000, 0], ids=["fills-up", "full-from-the-start"])
def test_a_spool_on_a_full_disk_drops_counts_and_recovers(small_disk: Path, room: int) -> None:
    """The collector is down and the disk under the spool fills: what the disk refuses is
    dropped and counted like a full spool's (under fail_closed, enforcement stops); the spool
    holds whole lines only and still reads, drains once the collector is back, and
    enforcement resumes. The spool used to count lines it never wrote and then fail every
    read, so it could not drain."""
    port = free_port()
    spool = Spool(small_disk / "syslog.spool", 50 << 20)
    sink = SyslogSink("127.0.0.1", port, spool=spool, retry_seconds=0.05, timeout=2.0,
                      policy=SpoolFull.FAIL_CLOSED)  # fmt: skip
    fill(small_disk, leave=room)
    for i in range(0, 400, 10):
        sink.write_lines([json.dumps(record(n)) for n in range(i, i + 10)])
    assert (sink.spooled > 0) is (room > 0)
    assert sink.spooled < 400
    assert sink.dropped == 400 - sink.spooled
    assert sink.fail_closed.is_set()
    assert spool.size == (small_disk / "syslog.spool").stat().st_size
    received = Collector(port)
    deadline = time.monotonic() + 10
    while (sink.fail_closed.is_set() or spool.depth) and time.monotonic() < deadline:
        deliver(sink)  # as the writer ticks while idle, until the collector is reached
        time.sleep(0.05)
    assert not sink.fail_closed.is_set()
    got = received.wait(sink.spooled + 1)
    received.close()
    sink.close()
    assert [r["n"] for r in got[: sink.spooled]] == list(range(sink.spooled))
    assert got[sink.spooled]["aupguard"]["dropped"] == sink.dropped  # type: ignore[index]


def test_a_slow_collector_that_keeps_reading_is_not_dropped(tmp_path: Path) -> None:
    """`send_timeout` bounds a wait for a collector taking nothing, not a delivery: a 5 MB
    batch to a reader taking 16 KiB every 10 ms outlasts it many times over and goes
    through on one connection, what it does not take at once by way of the spool, without
    a call holding the writer for a send timeout."""
    port = free_port()
    server = quiet_collector(port, 65536)
    got = bytearray()
    reader = slow_reader(server, got, 16384)
    sink = sink_to(port, tmp_path, send_timeout=0.15)
    lines = [json.dumps(record(i)) for i in range(16_000)]  # ~5 MB framed
    started = time.monotonic()
    sink.write_lines(lines)
    longest = max(time.monotonic() - started, deliver(sink, timeout=30))
    assert sink.spool.depth == 0
    assert (sink.reconnects, sink.resent) == (1, 0)
    assert longest < 0.5, f"a call held the writer {longest:.2f} s"  # sending it all: ~3 s
    sink.close()
    reader.join(30)
    assert got.count(b"aupguard") == len(lines)
    server.close()


def test_a_slow_collector_catches_up_with_a_spool_without_holding_up_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A collector back after an outage, reading ~200 KB/s, gets a 1 MB spool and the new
    records on one connection, in order, while no batch holds the writer. Linux calls a
    full send buffer writable again only once a third of it is free; that wait outlasted
    `send_timeout`, so the connection was dropped and the spool sent again from its start,
    for ever (a 4 MiB buffer at 50 KB/s; here a 192 KiB one at 200 KB/s).
    """
    connect = socket.create_connection

    def small_buffer(*args: Any, **kwargs: Any) -> socket.socket:
        sock = connect(*args, **kwargs)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 96 << 10)
        return sock

    monkeypatch.setattr(socket, "create_connection", small_buffer)
    port = free_port()
    sink = sink_to(port, tmp_path, send_timeout=0.2)
    spooled = [json.dumps(record(i)) for i in range(4_000)]  # ~1 MB
    sink.write_lines(spooled)  # nobody listens: all spooled
    assert sink.spool.depth == len(spooled)
    server = quiet_collector(port, 4096)
    got = bytearray()
    reader = slow_reader(server, got, 2048)
    fresh = [json.dumps(record(i)) for i in range(4_000, 4_400)]
    longest = 0.0
    for i in range(0, len(fresh), 5):  # 5 records each 20 ms: ~60 KB/s
        started = time.monotonic()
        sink.write_lines(fresh[i : i + 5])
        longest = max(longest, time.monotonic() - started)
        time.sleep(0.02)
    longest = max(longest, deliver(sink, timeout=30))
    assert sink.spool.depth == 0
    assert (sink.reconnects, sink.resent) == (1, 0)
    assert longest < 0.2, f"a call held the writer {longest:.2f} s"  # a wait: 64 KiB, 0.3 s
    sink.close()
    reader.join(30)
    numbers = [int(n) for n in re.findall(rb'"n": (\d+)', got)]
    assert numbers == list(range(len(spooled) + len(fresh)))  # each once, in order
    server.close()


def test_a_connection_lost_while_draining_sends_again_what_it_may_have_swallowed(
    tmp_path: Path,
) -> None:
    """What a dead connection may have swallowed goes again: spool lines from where they were
    in the spool, lines sent before the spool began behind it. Rewinding to the spool's
    start resent all of it on every loss (a slow collector never caught up)."""
    sink = sink_to(free_port(), tmp_path)
    direct = [json.dumps(record(i)) for i in range(3)]
    spooled = [json.dumps(record(i)) for i in range(3, 13)]
    sink._to_spool(spooled)  # the state of a catch-up, without sockets
    sink.spool.advance(sum(len(line) + 1 for line in spooled[:6]), 6)  # 6 of them drained
    sink._remember(direct + spooled[:6])
    sink._drained = 6
    sink._lost("test")
    again, _ = sink.spool.read(1 << 20)
    assert [json.loads(line)["n"] for line in again] == [*range(3, 13), 0, 1, 2]
    assert sink.resent == 9
    assert sink.spool.depth == 13
    sink.close()


def test_an_unanswering_collector_never_holds_up_the_writer_thread(tmp_path: Path) -> None:
    """A collector whose SYNs are dropped: the lines spool at once; the attempt waits elsewhere.

    A full accept queue drops SYNs the way a firewall does, so a connect hangs for its whole
    timeout; that wait must not be the writer thread's (it writes every other sink too).
    """
    port = free_port()
    blackhole = socket.create_server(("127.0.0.1", port), backlog=0)
    filler = socket.create_connection(("127.0.0.1", port))  # fills the accept queue
    with pytest.raises(TimeoutError):  # the precondition: a connect now hangs
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    sink = sink_to(port, tmp_path, timeout=4.0)
    lines = [json.dumps(record(i)) for i in range(20)]
    started = time.monotonic()
    for i in range(0, 20, 5):
        sink.write_lines(lines[i : i + 5])
    assert time.monotonic() - started < 2.0  # not the 4 s connect timeout
    assert sink.spool.depth == 20
    assert sink.reconnects == 0
    started = time.monotonic()
    sink.flush()  # a chain head's: no waiting for the attempt either
    assert time.monotonic() - started < 1.0
    started = time.monotonic()
    sink.close()  # waits for the attempt under way, not for another: one connect timeout
    assert time.monotonic() - started < 5.0
    assert sink.spool.depth == 20
    filler.close()
    blackhole.close()


class Collector:
    """A tiny octet-counting syslog receiver (optionally TLS) in a thread."""

    def __init__(self, port: int, tls: ssl.SSLContext | None = None) -> None:
        self.server = socket.create_server(("127.0.0.1", port))
        self.tls = tls
        self.messages: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            conn, _ = self.server.accept()
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
        except OSError:
            return
        buf = b""
        with conn:
            while chunk := conn.recv(65536):
                buf += chunk
                while b" " in buf:
                    size, _, rest = buf.partition(b" ")
                    if len(rest) < int(size):
                        break
                    self.messages.append(rest[: int(size)].decode())
                    buf = rest[int(size) :]

    def wait(self, n: int, timeout: float = 10) -> list[dict[str, object]]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return [json.loads(m[m.index("{") :]) for m in self.messages]

    def close(self) -> None:
        self.server.close()


def make_ca(tmp: Path) -> tuple[Path, Path, Path]:
    """A new CA and the collector's certificate: (ca.pem, cert.pem, key.pem)."""
    return pki.ca_and_server(tmp, "collector.test", [x509.DNSName("collector.test")])


GTLS = Path("/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so")


@needs_rsyslog
@pytest.mark.skipif(
    not GTLS.exists(),
    reason="LOUD SKIP: rsyslog's TLS driver is missing (apt-get install rsyslog-gnutls); "
    "delivery to a real rsyslog over TLS was not tested",
)
def test_records_arrive_at_a_real_rsyslog_over_tls(tmp_path: Path) -> None:
    """RFC 5425: a real rsyslog with the gtls driver receives every record in order."""
    server = Rsyslog(tmp_path, tls=make_ca(tmp_path))
    server.start()
    try:
        sink = sink_to(server.port, tmp_path, tls=tls_context(tmp_path / "ca.pem"),
                       server_name="collector.test")  # fmt: skip
        sink.write_lines([json.dumps(record(i)) for i in range(500)])
        sink.close()
        assert [r["n"] for r in server.records(500)] == list(range(500))
    finally:
        server.stop()


def test_tls_delivery_verifies_the_collector(tmp_path: Path) -> None:
    """Records go over TLS to a collector whose certificate chains to the configured CA."""
    ca, cert, key = make_ca(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    port = free_port()
    received = Collector(port, server_ctx)
    sink = sink_to(port, tmp_path, tls=tls_context(ca), server_name="collector.test")
    sink.write_lines([json.dumps(record(i)) for i in range(100)])
    sink.close()
    assert [r["n"] for r in received.wait(100)] == list(range(100))
    received.close()


def test_tls_refuses_an_unknown_collector(tmp_path: Path) -> None:
    """A certificate from another CA is refused and records stay in the spool."""
    ca, _, _ = make_ca(tmp_path / "a" if (tmp_path / "a").mkdir() is None else tmp_path)
    b = tmp_path / "b"
    b.mkdir()
    _, cert, key = make_ca(b)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    port = free_port()
    received = Collector(port, server_ctx)
    sink = sink_to(port, tmp_path, tls=tls_context(ca), server_name="collector.test")
    sink.write_lines([json.dumps(record(1))])
    assert sink.spool.pending
    assert received.messages == []
    received.close()
    sink.close()


def test_configured_sinks_chain_files_and_ship_heads(tmp_path: Path) -> None:
    """`records:` settings build chained rotating files plus syslog; the shipped head verifies them."""
    port = free_port()
    received = Collector(port)
    key = tmp_path / "keys" / "chain.key"
    key.parent.mkdir()
    generate_key(key)
    section = RecordsSection(
        file=tmp_path / "rec" / "records.jsonl",
        rotate_bytes=20_000,
        chain_key_file=key,
        syslog=f"127.0.0.1:{port}",
        spool_dir=tmp_path / "spool",
    )
    sinks, syslog = record_sinks(section)
    assert syslog is not None
    with RecordWriter(sinks) as writer:
        for i in range(300):
            writer.write(record(i))
            if i % 50 == 49:  # rotation happens between batches
                writer.flush()
    got = received.wait(301)
    heads = [json.dumps(r) for r in got if r["event"]["action"] == "chain-head"]  # type: ignore[index]
    files = rotated_files(section.file)  # type: ignore[arg-type]
    result = verify(files, load_key(key), read_head(heads))
    assert result.ok, result.problem
    assert result.records == 300
    assert len(files) > 2
    received.close()
    with pytest.raises(ValueError, match="spool_full"):
        record_sinks(RecordsSection(syslog="h:1", spool_dir=tmp_path, spool_full="panic"))


def test_spool_survives_a_restart_and_is_sent_first(tmp_path: Path) -> None:
    """Lines spooled before a gateway restart are delivered, in order, before new ones."""
    port = free_port()
    first = sink_to(port, tmp_path)
    first.write_lines([json.dumps(record(i)) for i in range(20)])
    first.close()
    again = sink_to(port, tmp_path)
    assert again.spool.depth == 20
    received = Collector(port)
    again.write_lines([json.dumps(record(i)) for i in range(20, 30)])
    again.flush()
    assert [r["n"] for r in received.wait(30)] == list(range(30))
    received.close()
    again.close()


@pytest.mark.parametrize("policy", [SpoolFull.FAIL_CLOSED, SpoolFull.DROP])
def test_a_resend_window_the_full_spool_cannot_take_is_unconfirmed_not_dropped(
    tmp_path: Path, policy: SpoolFull
) -> None:
    """A collector connection dies while the spool is full: the lines sent on it, which it
    may have swallowed, cannot go back to the spool. They were sent, and most arrived: they
    are counted as unconfirmed and stop no enforcement. They used to count as dropped (31
    reported where 1 was lost) and set fail_closed."""
    sink = sink_to(free_port(), tmp_path, spool_bytes=300, policy=policy)
    sink._to_spool([json.dumps(record(0))])  # the spool is full after this one
    assert (sink.spooled, sink.dropped) == (1, 0)
    sink._remember([json.dumps(record(i)) for i in range(1, 4)])  # sent, unconfirmed
    sink._lost("test")
    assert (sink.unconfirmed, sink.dropped, sink.resent) == (3, 0, 3)
    assert not sink.fail_closed.is_set()
    sink._to_spool([json.dumps(record(4))])  # a new record the full spool refuses: dropped
    assert sink.dropped == 1
    assert sink.fail_closed.is_set() is (policy is SpoolFull.FAIL_CLOSED)
    sink.close()
