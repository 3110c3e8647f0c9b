"""Fixtures for the proxy integration tests: a test PKI, local origins and a real mitmdump."""

from __future__ import annotations

import http.server
import ipaddress
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
from cryptography import x509

from tests import pki
from tests.integration.conftest import wait_jsonl

ROOT = Path(__file__).resolve().parents[2]
MITMDUMP = Path(sys.executable).parent / "mitmdump"

POLICY = """\
layer: proxy-test
policy:
  timezone: UTC
  default_action: allow
  schedules:
    always: {{days: [mon, tue, wed, thu, fri, sat, sun], start: "00:00", end: "23:59", skip_holidays: false}}
  categories:
    gambling: {{clause: "Gambling on state systems is prohibited.", lists: [gambling.txt]}}
    games: {{clause: "Games are limited on state systems.", lists: [games.txt]}}
    social_networks: {{clause: "Social media use is recorded.", lists: [social.txt]}}
  rules:
    - {{id: no-gambling, categories: [gambling], action: block}}
    - {{id: games, categories: [games], action: warn}}
    - {{id: social, categories: [social_networks], action: log}}
proxy:
  no_decrypt_hosts: [localhost]
  token_secret_file: {tmp}/continue.key
  tenant_headers:
    localhost: {{X-GoogApps-Allowed-Domains: "agency.example.gov"}}
{proxy_extra}
records:
  notice: {{text: "NOTICE OF ELECTRONIC MONITORING. Integration test notice."}}
lists:
  cache_dir: {tmp}/cache
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Pki:
    ca_pem: Path
    cert_pem: Path
    key_pem: Path
    self_signed_pem: Path
    self_signed_key: Path


@pytest.fixture(scope="module")
def proxy_pki(tmp_path_factory) -> Pki:
    """A test CA, an origin certificate it signs, and a self-signed (untrusted) certificate."""
    d = tmp_path_factory.mktemp("pki")
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    ca, ca_key = pki.self_signed_ca("aupguard test CA")
    leaf_key, bad_key = pki.new_key(), pki.new_key()
    leaf = pki.cert("localhost", leaf_key, ca.subject, ca_key, ca=False, sans=sans)
    bad = pki.cert("localhost", bad_key, pki.name("localhost"), bad_key, ca=False, sans=sans)
    for path, cert in (("ca.pem", ca), ("leaf.pem", leaf), ("bad.pem", bad)):
        (d / path).write_bytes(pki.pem(cert))
    return Pki(
        d / "ca.pem",
        d / "leaf.pem",
        pki.write_key(d / "leaf.key", leaf_key),
        d / "bad.pem",
        pki.write_key(d / "bad.key", bad_key),
    )


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path.startswith("/big"):
            size = int(self.path.partition("=")[2] or 1_000_000)
            self.send_response(200)
            self.send_header("content-length", str(size))
            self.end_headers()
            chunk = b"x" * 65536
            sent = 0
            while sent < size:
                n = min(len(chunk), size - sent)
                self.wfile.write(chunk[:n])
                sent += n
            return
        body = f"origin:{self.path}".encode()
        status = 200
        if self.path.startswith("/tenant"):  # like Google: only the agency's tenant may sign in
            allowed = self.headers.get("X-GoogApps-Allowed-Domains")
            status = 200 if allowed == "agency.example.gov" else 403
            body = f"tenant:{allowed}".encode()
        self.send_response(status)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    uploads: ClassVar[list[tuple[str, int]]] = []  # (path, bytes) of every POST received
    progress: ClassVar[dict[str, list[tuple[int, float]]]] = {}  # path -> (bytes so far, when)

    def do_POST(self) -> None:
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            received = self._read_chunked()
        else:
            received = self._read_exactly(int(self.headers.get("content-length") or 0))
        Handler.uploads.append((self.path, received))
        body = f"origin-post:{received}".encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _read_exactly(self, size: int) -> int:
        received = 0
        progress = Handler.progress.setdefault(self.path, [])
        base = progress[-1][0] if progress else 0
        while received < size:  # bounded by the declared length
            chunk = self.rfile.read(min(65536, size - received))
            if not chunk:
                break
            received += len(chunk)
            progress.append((base + received, time.monotonic()))
        return received

    def _read_chunked(self, max_chunks: int = 100_000) -> int:
        received = 0
        for _ in range(max_chunks):  # bounded: a test body has far fewer chunks
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                break
            received += self._read_exactly(size)
            self.rfile.readline()  # the CRLF after the chunk
        return received

    def log_message(self, *args) -> None:
        pass


@dataclass
class Origins:
    http: int
    https: int
    bad_https: int


def _serve(ctx: ssl.SSLContext | None) -> tuple[http.server.ThreadingHTTPServer, int]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    if ctx is not None:
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    return srv, srv.server_address[1]


@pytest.fixture(scope="module")
def proxy_origins(proxy_pki) -> Iterator[Origins]:
    """A plain HTTP origin, an HTTPS origin with a test-CA certificate, one with a self-signed one."""
    good = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    good.load_cert_chain(proxy_pki.cert_pem, proxy_pki.key_pem)
    bad = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    bad.load_cert_chain(proxy_pki.self_signed_pem, proxy_pki.self_signed_key)
    servers = [_serve(None), _serve(good), _serve(bad)]
    yield Origins(*(port for _, port in servers))
    for srv, _ in servers:
        srv.shutdown()
        srv.server_close()


@dataclass
class Proxy:
    port: int
    url: str
    confdir: Path
    records: Path
    ca: Path
    proc: subprocess.Popen[bytes]

    def read_records(self, want: int, timeout: float = 5.0) -> list[dict]:
        """Poll the records file until it holds `want` records (bounded wait)."""
        return wait_jsonl(self.records, want, timeout, step=0.05)

    def wait_record(self, match: Callable[[dict], bool], timeout: float = 5.0) -> dict:
        """The first record `match` accepts, polled for at most `timeout` s (writes are async)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((x for x in self.read_records(1, timeout=0.2) if match(x)), None)
            if found is not None:
                return found
            time.sleep(0.05)
        return {"event": {}}


def write_lists(d: Path) -> None:
    (d / "gambling.txt").write_text("casino.test\nlocalhost/forbidden\n")
    (d / "games.txt").write_text("localhost/games\n")
    (d / "social.txt").write_text("localhost/social\n")


def start_mitmdump(
    d: Path, pki: Pki, proxy_extra: str = "", extra_args: tuple[str, ...] = ()
) -> Proxy:
    """Start `mitmdump -s addons/enforce.py` on a free loopback port; wait until it listens."""
    write_lists(d)
    policy = d / "policy.yaml"
    policy.write_text(POLICY.format(tmp=d, proxy_extra=proxy_extra))
    port, confdir, records = free_port(), d / "confdir", d / "records.jsonl"
    cmd = [
        str(MITMDUMP),
        "-q",
        "--listen-host",
        "127.0.0.1",
        "--listen-port",
        str(port),
        "-s",
        str(ROOT / "addons" / "enforce.py"),
        "--set",
        f"confdir={confdir}",
        "--set",
        "connection_strategy=lazy",
        "--set",
        f"ssl_verify_upstream_trusted_ca={pki.ca_pem}",
        "--set",
        f"aup_policy={policy}",
        "--set",
        f"aup_records={records}",
        *extra_args,
    ]
    with (d / "mitmdump.log").open("wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=d,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"mitmdump exited {proc.returncode}: {(d / 'mitmdump.log').read_text()}"
            )
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("mitmdump did not start listening within 30 s")
    return Proxy(
        port, f"http://127.0.0.1:{port}", confdir, records, confdir / "mitmproxy-ca-cert.pem", proc
    )


def stop(proxy: Proxy) -> None:
    proxy.proc.terminate()
    try:
        proxy.proc.wait(10)
    except subprocess.TimeoutExpired:
        proxy.proc.kill()
        proxy.proc.wait(5)


@pytest.fixture(scope="module")
def proxy_mitmdump(tmp_path_factory, proxy_pki, proxy_origins) -> Iterator[Proxy]:
    """A real mitmdump with the addon and a small test policy, on a free loopback port."""
    proxy = start_mitmdump(tmp_path_factory.mktemp("proxy"), proxy_pki)
    yield proxy
    stop(proxy)


THROTTLE_RATE = 2_000_000
THROTTLE = f"""\
  throttle_schedule: always
  throttle_threshold: 1000000
  throttle_client_rate: {THROTTLE_RATE}
  throttle_aggregate_rate: {THROTTLE_RATE * 4}
  throttle_window: 60
"""


@pytest.fixture(scope="module")
def proxy_throttled(tmp_path_factory, proxy_pki, proxy_origins) -> Iterator[Proxy]:
    """A real mitmdump whose policy throttles transfers above 1 MB to 2 MB/s, all week."""
    proxy = start_mitmdump(tmp_path_factory.mktemp("throttled"), proxy_pki, THROTTLE)
    yield proxy
    stop(proxy)


@pytest.fixture(scope="module")
def proxy_no_sni_refused(tmp_path_factory, proxy_pki, proxy_origins) -> Iterator[Proxy]:
    """A real mitmdump whose policy refuses TLS ClientHellos without SNI (`no_sni: refuse`)."""
    proxy = start_mitmdump(tmp_path_factory.mktemp("nosni"), proxy_pki, "  no_sni: refuse\n")
    yield proxy
    stop(proxy)
