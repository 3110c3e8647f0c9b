"""Shared fixtures for integration tests: real servers on loopback, real clients.

DNS fixtures (prefix `dns_`): a small authoritative upstream answering on UDP and TCP, a
policy with its own tiny lists, and the real `aupguard dns` process.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from dnslib import QTYPE, RR, DNSRecord

ROOT = Path(__file__).resolve().parents[2]


def jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of a file another process may be writing right now.

    A last line without its newline is still being written, so it is left for the next read.
    """
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.split("\n")[:-1] if line.strip()]


def wait_jsonl(path: Path, want: int, timeout: float, step: float = 0.1) -> list[dict[str, Any]]:
    """`jsonl(path)` once it holds `want` records, or whatever it holds after `timeout`."""
    deadline = time.monotonic() + timeout
    got: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        got = jsonl(path)
        if len(got) >= want:
            break
        time.sleep(step)
    return got


# --- DNS: a small upstream ------------------------------------------------------------------

# name -> zone-file lines answered for it (every qtype gets the lines of its type, or NODATA)
DNS_ZONE: dict[str, list[str]] = {
    "allowed.test": ["allowed.test. 300 IN A 192.0.2.1", "allowed.test. 300 IN AAAA 2001:db8::1"],
    "short.test": ["short.test. 5 IN A 192.0.2.5"],
    "big.test": [f"big.test. 300 IN A 198.51.100.{i}" for i in range(1, 101)],
    "alias.test": [
        "alias.test. 300 IN CNAME x.cloak-target.test.",
        "x.cloak-target.test. 300 IN A 192.0.2.66",
    ],
    "fine-alias.test": [
        "fine-alias.test. 300 IN CNAME allowed.test.",
        "allowed.test. 300 IN A 192.0.2.1",
    ],
    "ech.test": ["ech.test. 300 IN HTTPS 1 . alpn=h2 echconfig=Z2FyYmFnZQ== ipv4hint=192.0.2.7"],
    "ech-mandatory.test": [
        (
            "ech-mandatory.test. 300 IN HTTPS 1 . mandatory=alpn,echconfig alpn=h2"
            " echconfig=Z2FyYmFnZQ== ipv4hint=192.0.2.7"
        )
    ],
    "newblock.test": ["newblock.test. 300 IN A 192.0.2.9"],
    "slow.test": ["slow.test. 300 IN A 192.0.2.11"],  # answered after SLOW_SECONDS
}
SLOW_SECONDS = 0.5


@dataclass
class DnsUpstream:
    """An authoritative test server for DNS_ZONE on 127.0.0.1 (UDP and TCP, same port)."""

    port: int = 0
    seen: list[tuple[str, str]] = field(default_factory=list)
    loop: asyncio.AbstractEventLoop | None = None

    def answer(self, data: bytes, limit: int | None) -> bytes:
        query = DNSRecord.parse(data)
        name = str(query.q.qname).rstrip(".").lower()
        qtype = QTYPE.get(query.q.qtype)
        self.seen.append((name, str(qtype)))
        reply = query.reply()
        lines = DNS_ZONE.get(name)
        if lines is None and not name.endswith(".test"):
            lines = [f"{name}. 300 IN A 192.0.2.200"]
        for line in lines or []:
            rr = RR.fromZone(line)[0]
            if rr.rtype in (query.q.qtype, QTYPE.CNAME) or query.q.qtype == QTYPE.ANY:
                reply.add_answer(rr)
        if lines is None:
            reply.header.rcode = 3
        wire = bytes(reply.pack())
        if limit is not None and len(wire) > limit:
            reply.rr = []
            reply.header.tc = 1
            wire = bytes(reply.pack())
        return wire

    def count(self, name: str) -> int:
        return sum(1 for n, _ in self.seen if n == name)


class _UpstreamUdp(asyncio.DatagramProtocol):
    def __init__(self, upstream: DnsUpstream) -> None:
        self.upstream = upstream
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        query = DNSRecord.parse(data)
        edns = [rr.rclass for rr in query.ar if rr.rtype == QTYPE.OPT]
        reply = self.upstream.answer(data, edns[0] if edns else 512)
        if str(query.q.qname).lower() == "slow.test.":
            asyncio.get_running_loop().call_later(SLOW_SECONDS, self.transport.sendto, reply, addr)
        else:
            self.transport.sendto(reply, addr)


def _run_upstream(upstream: DnsUpstream, ready: threading.Event) -> None:
    loop = asyncio.new_event_loop()
    upstream.loop = loop

    async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            size = int.from_bytes(await reader.readexactly(2))
            reply = upstream.answer(await reader.readexactly(size), None)
            writer.write(len(reply).to_bytes(2) + reply)
            await writer.drain()
        finally:
            writer.close()

    async def start() -> tuple[asyncio.BaseTransport, asyncio.Server]:
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UpstreamUdp(upstream), local_addr=("127.0.0.1", 0)
        )
        upstream.port = transport.get_extra_info("sockname")[1]
        server = await asyncio.start_server(tcp, "127.0.0.1", upstream.port)
        ready.set()
        return transport, server

    transport, server = loop.run_until_complete(start())
    try:
        loop.run_forever()
    finally:
        transport.close()
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()


@pytest.fixture(scope="module")
def dns_upstream() -> Iterator[DnsUpstream]:
    """The test upstream, running in a daemon thread for the whole module."""
    upstream = DnsUpstream()
    ready = threading.Event()
    thread = threading.Thread(target=_run_upstream, args=(upstream, ready), daemon=True)
    thread.start()
    assert ready.wait(5), "test upstream did not start"
    yield upstream
    assert upstream.loop is not None
    upstream.loop.call_soon_threadsafe(upstream.loop.stop)
    thread.join(5)


# --- DNS: policy and the real server process --------------------------------------------------

DNS_POLICY = """\
layer: test
policy:
  timezone: UTC
  default_action: allow
  categories:
    gambling: {{clause: "No gambling.", lists: [blocked.txt]}}
    games: {{clause: "No games.", lists: [warned.txt]}}
  groups:
    local: {{networks: [127.0.0.0/8, "::1/128"]}}
  rules:
    - {{id: no-gambling, categories: [gambling], action: block}}
    - {{id: games-warn, categories: [games], action: warn}}
dns:
  block_ttl: 30
  records: {records}
  block_mode: {block_mode}
  blockpage_ipv4: 192.0.2.80
{dns_extra}records:
  notice: {{text: "We monitor."}}
lists:
  cache_dir: {cache}
"""


def dns_write_config(
    folder: Path, *, records: str = "default", block_mode: str = "nxdomain", dns_extra: str = ""
) -> Path:
    """A policy blocking blocked.test and cloak-target.test, warning on warned.test.

    `dns_extra` is more `dns:` keys, e.g. `rate_limit: 5`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "blocked.txt").write_text("blocked.test\ncloak-target.test\n")
    (folder / "warned.txt").write_text("warned.test\n")
    path = folder / "policy.yaml"
    extra = "".join(f"  {line}\n" for line in dns_extra.splitlines())
    path.write_text(
        DNS_POLICY.format(
            records=records, block_mode=block_mode, dns_extra=extra, cache=folder / "cache"
        )
    )
    return path


@dataclass
class DnsProcess:
    """A running `aupguard dns` process and where it listens."""

    proc: subprocess.Popen[str]
    port: int
    ready: dict[str, Any]
    output: list[str] = field(default_factory=list)

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM and wait; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
            if self.proc.stdout is not None:
                self.proc.stdout.close()


def dns_command() -> list[str]:
    """`aupguard` from the venv when installed as a script, else `python -m agent`."""
    script = Path(sys.executable).parent / "aupguard"
    return [str(script)] if script.exists() else [sys.executable, "-m", "agent"]


def dns_start(config: Path, *args: str, timeout: float = 30) -> DnsProcess:
    """Start `aupguard dns --config CONFIG ARGS` and wait for its `dns_ready` line."""
    cmd = [*dns_command(), "dns", "--config", str(config), *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if '"dns_ready"' in line:
            event = json.loads(line)
            # structlog's JSON lines, like every other service's (not a format of its own)
            assert {"timestamp", "level", "logger"} <= event.keys(), line
            port = int(event["listen"][0].rpartition(":")[2])
            return DnsProcess(proc, port, event, lines)
    proc.kill()
    proc.wait(5)
    proc.stdout.close()
    pytest.fail("aupguard dns did not become ready:\n" + "".join(lines))


def dns_free_udp_port() -> int:
    """A loopback UDP port nobody listens on (a dead upstream)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- a small disk that fills up (root: a tmpfs) --------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs, unmounted afterwards."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("FULL-DISK TEST SKIPPED: mounting a tmpfs needs root and mount(8)")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(disk)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if mounted.returncode:
        pytest.skip(f"FULL-DISK TEST SKIPPED: mount failed: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], timeout=30, check=False)


def fill(disk: Path, leave: int) -> Path:
    """A filler file taking all but about `leave` bytes of the disk."""
    filler = disk / "filler"
    st = os.statvfs(disk)
    size = st.f_bavail * st.f_frsize - leave
    with filler.open("wb") as f:
        f.write(b"\0" * max(size, 0))
    return filler


# --- a real collector ---------------------------------------------------------------

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
needs_rsyslog = pytest.mark.skipif(
    not Path(RSYSLOGD).exists(),
    reason="LOUD SKIP: rsyslogd is not installed (apt-get install rsyslog); "
    "the collector integration tests did not run",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Rsyslog:
    """A private rsyslogd: imtcp on a loopback port, every message's MSG to one file."""

    def __init__(self, tmp: Path, tls: tuple[Path, Path, Path] | None = None) -> None:
        self.tmp, self.port = tmp, free_port()
        self.out = tmp / "received.log"
        (tmp / "work").mkdir()
        self.conf = tmp / "rsyslog.conf"
        driver, stream = "", ""
        if tls is not None:  # RFC 5425: the gtls driver (Debian rsyslog-gnutls)
            ca, cert, key = tls
            driver = (f' DefaultNetstreamDriver="gtls" DefaultNetstreamDriverCAFile="{ca}"'
                      f' DefaultNetstreamDriverCertFile="{cert}" DefaultNetstreamDriverKeyFile="{key}"')  # fmt: skip
            stream = ' StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="anon"'
        self.conf.write_text(f"""
global(workDirectory="{tmp / "work"}" maxMessageSize="64k"{driver})
main_queue(queue.type="Direct")
module(load="imtcp"{stream})
template(name="msgonly" type="string" string="%msg%\\n")
ruleset(name="records") {{
  action(type="omfile" file="{self.out}" template="msgonly" flushOnTXEnd="on" asyncWriting="off")
}}
input(type="imtcp" address="127.0.0.1" port="{self.port}" ruleset="records")
""")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        pid = self.tmp / "rsyslogd.pid"
        pid.unlink(missing_ok=True)
        with (self.tmp / "rsyslogd.err").open("ab") as err:
            self.proc = subprocess.Popen(
                [RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(pid)],
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            except OSError:
                time.sleep(0.05)
            else:
                return
        raise RuntimeError((self.tmp / "rsyslogd.err").read_text())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        self.proc = None

    def records(self, expect: int, timeout: float = 30) -> list[dict[str, Any]]:
        """The records rsyslog has written so far, waiting (bounded) for `expect` of them."""
        return wait_jsonl(self.out, expect, timeout)


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[Rsyslog]:
    server = Rsyslog(tmp_path)
    server.start()
    yield server
    server.stop()
