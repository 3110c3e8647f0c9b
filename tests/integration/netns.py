"""Network-namespace helpers for the end-to-end test, and the origin's test services.

`Topology` builds three namespaces (client, gateway, origin) joined by two veth links with
IPv4 and IPv6 addresses that exist only inside them, and removes everything on exit (processes
first, then the namespaces) even when the test fails. Nothing here routes outside them.

Run as a script (`python netns.py origin ...`) inside the origin namespace it serves the test
sites: HTTP on 80, HTTPS on 443, a UDP echo on 443 and 4443 (QUIC stand-ins), a TCP listener on
853 (DoT stand-in) and a DNS responder on 53 that answers every `*.test` name with the origin.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import TracebackType

IP = shutil.which("ip") or "/usr/sbin/ip"


def unavailable() -> str | None:
    """Why namespaces cannot be used here (None when they can)."""
    if os.geteuid() != 0:
        return "not root: the end-to-end test needs `ip netns` and nftables (run as root in CI)"
    for tool in ("ip", "nft", "curl", "dig"):
        if shutil.which(tool) is None:
            return f"`{tool}` is missing (Debian: iproute2, nftables, curl, dnsutils)"
    probe = f"aupg-probe-{os.getpid()}"
    made = subprocess.run([IP, "netns", "add", probe], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        return f"`ip netns add` is not permitted here: {made.stderr.strip()}"
    try:
        nft = subprocess.run(
            [IP, "netns", "exec", probe, "nft", "list", "ruleset"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
        if nft.returncode != 0:
            return f"nftables is not usable in a namespace: {nft.stderr.strip()}"
    finally:
        subprocess.run([IP, "netns", "del", probe], capture_output=True, check=False)
    return None


@dataclass
class Topology:
    """client <-> gateway <-> origin, dual-stack; the gateway forwards."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    # addresses (only inside these namespaces)
    client4: str = "10.99.1.2"
    client6: str = "fd99:1::2"
    lan4: str = "10.99.1.1"  # the gateway's client side (`lan0`)
    lan6: str = "fd99:1::1"
    wan4: str = "10.99.2.1"
    wan6: str = "fd99:2::1"
    origin4: str = "10.99.2.2"
    origin6: str = "fd99:2::2"

    @property
    def client(self) -> str:
        return f"aupg-c-{self.tag}"

    @property
    def gateway(self) -> str:
        return f"aupg-g-{self.tag}"

    @property
    def origin(self) -> str:
        return f"aupg-o-{self.tag}"

    def __enter__(self) -> Self:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        _t: type[BaseException] | None,
        _e: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()

    def _ip(self, *args: str) -> None:
        subprocess.run([IP, *args], check=True, capture_output=True, timeout=10)

    def _build(self) -> None:
        c, g, o = self.client, self.gateway, self.origin
        for ns in (c, g, o):
            self._ip("netns", "add", ns)
            self._ip("-n", ns, "link", "set", "lo", "up")
        # veths are created inside the gateway namespace: no names ever appear on the host
        self._ip("-n", g, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", c)
        self._ip("-n", g, "link", "add", "wan0", "type", "veth", "peer", "name", "eth0", "netns", o)
        self.sysctl(g, "net.ipv4.ip_forward=1")
        self.sysctl(g, "net.ipv6.conf.all.forwarding=1")
        for key in ("all", "default", "lan0", "wan0"):
            self.sysctl(g, f"net.ipv4.conf.{key}.send_redirects=0")
        links = (
            (c, "eth0", self.client4, self.client6),
            (g, "lan0", self.lan4, self.lan6),
            (g, "wan0", self.wan4, self.wan6),
            (o, "eth0", self.origin4, self.origin6),
        )
        for ns, dev, v4, v6 in links:
            self._ip("-n", ns, "addr", "add", f"{v4}/24", "dev", dev)
            self._ip("-n", ns, "-6", "addr", "add", f"{v6}/64", "dev", dev, "nodad")
            self._ip("-n", ns, "link", "set", dev, "up")
        for ns, via4, via6 in ((c, self.lan4, self.lan6), (o, self.wan4, self.wan6)):
            self._ip("-n", ns, "route", "add", "default", "via", via4)
            self._ip("-n", ns, "-6", "route", "add", "default", "via", via6)

    def sysctl(self, ns: str, setting: str) -> None:
        """`sysctl -w` inside `ns` (namespaced sysctls only)."""
        key, _, value = setting.partition("=")
        path = "/proc/sys/" + key.replace(".", "/")
        self.run(ns, ["sh", "-c", f"echo {value} > {path}"], check=True)

    def run(
        self,
        ns: str,
        argv: Sequence[str],
        *,
        timeout: float = 20.0,
        check: bool = False,
        env: dict[str, str] | None = None,
        input_text: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command to completion inside `ns` (bounded by `timeout`)."""
        return subprocess.run(
            [IP, "netns", "exec", ns, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            env=env,
            input=input_text,
        )

    def start(
        self,
        ns: str,
        argv: Sequence[str],
        *,
        log: str,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a long-running command inside `ns`; output goes to the file `log`."""
        with open(log, "ab") as out:  # noqa: PTH123  (the child keeps its own descriptor)
            proc = subprocess.Popen(
                [IP, "netns", "exec", ns, *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
        """SIGTERM one process we started (its session), SIGKILL after `timeout`."""
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(5)
        return proc.returncode

    def close(self) -> None:
        """Stop our processes, kill anything left in our namespaces, delete them."""
        for proc in reversed(self.procs):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self.stop(proc, timeout=5)
        for ns in (self.client, self.gateway, self.origin):
            pids = subprocess.run(
                [IP, "netns", "pids", ns], capture_output=True, text=True, check=False
            ).stdout.split()
            for pid in pids:
                with contextlib.suppress(OSError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run([IP, "netns", "del", ns], capture_output=True, check=False)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, sig)


def wait_for(check: object, *, timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll `check()` until it is truthy; AssertionError naming `what` after `timeout`."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# --- the origin's services (run inside the origin namespace) -----------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path.startswith("/big"):
            size = int(self.path.partition("=")[2] or 1_000_000)
            self.send_response(200)
            self.send_header("content-type", "application/octet-stream")
            self.send_header("content-length", str(size))
            self.end_headers()
            chunk, sent = b"x" * 65536, 0
            while sent < size:
                n = min(len(chunk), size - sent)
                self.wfile.write(chunk[:n])
                sent += n
            return
        body = f"origin:{self.headers.get('host')}{self.path}".encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


class _DualStack(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def _udp(family: socket.AddressFamily, addr: str, port: int) -> socket.socket:
    s = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6 and addr == "::":
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind((addr, port))
    return s


def _udp_echo(s: socket.socket) -> None:
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(b"echo:" + data, peer)


def _tcp_accept(s: socket.socket) -> None:
    while True:
        conn, _ = s.accept()
        conn.sendall(b"dot-origin\n")
        conn.close()


def _dns(s: socket.socket, v4: str, v6: str) -> None:
    from dnslib import AAAA, QTYPE, RR, A, DNSRecord  # noqa: PLC0415  (origin process only)

    while True:
        data, peer = s.recvfrom(4096)
        try:
            q = DNSRecord.parse(data)
        except Exception:  # noqa: S112  (garbage: ignore it)
            continue
        reply = q.reply()
        name = str(q.q.qname).rstrip(".").lower()
        if name.endswith(".test"):
            if q.q.qtype == QTYPE.A:
                reply.add_answer(RR(q.q.qname, QTYPE.A, rdata=A(v4), ttl=30))
            elif q.q.qtype == QTYPE.AAAA:
                reply.add_answer(RR(q.q.qname, QTYPE.AAAA, rdata=AAAA(v6), ttl=30))
        else:
            reply.header.rcode = 3  # NXDOMAIN: nothing outside the test exists
        s.sendto(reply.pack(), peer)


def serve_origin(cert: str, key: str, v4: str, v6: str) -> None:
    """Bind every origin service, say so on stdout, serve until killed."""
    http_srv = _DualStack(("::", 80), _Handler)
    https_srv = _DualStack(("::", 443), _Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    https_srv.socket = ctx.wrap_socket(https_srv.socket, server_side=True)
    dot = socket.create_server(("::", 853), family=socket.AF_INET6, dualstack_ipv6=True)
    jobs = [
        (http_srv.serve_forever, ()),
        (https_srv.serve_forever, ()),
        (_udp_echo, (_udp(socket.AF_INET6, "::", 443),)),
        (_udp_echo, (_udp(socket.AF_INET6, "::", 4443),)),
        (_tcp_accept, (dot,)),
        (_dns, (_udp(socket.AF_INET, v4, 53), v4, v6)),
        (_dns, (_udp(socket.AF_INET6, v6, 53), v4, v6)),
    ]
    for target, args in jobs:
        threading.Thread(target=target, args=args, daemon=True).start()
    print("origin ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=["origin"])
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--v4", required=True)
    p.add_argument("--v6", required=True)
    a = p.parse_args()
    serve_origin(a.cert, a.key, a.v4, a.v6)
