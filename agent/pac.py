"""The proxy auto-config (PAC) file for explicit-proxy sites, and a tiny server for it.

Browsers fetch it from `http://<gateway>/proxy.pac` or, with WPAD, `/wpad.dat`: everything
goes through the proxy except plain host names, the agency's own domains and networks.
"""

from __future__ import annotations

import ipaddress
import json
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from agent.config import IPNetwork

PATHS = ("/proxy.pac", "/wpad.dat")
CONTENT_TYPE = "application/x-ns-proxy-autoconfig"


def pac_script(
    proxy: str, direct_domains: Sequence[str], direct_networks: Sequence[IPNetwork]
) -> str:
    """FindProxyForURL: DIRECT for plain names and the listed domains/IPv4 networks, else PROXY."""
    tests = ["isPlainHostName(host)"]
    for domain in direct_domains:
        name = domain.strip(".").lower()
        tests.append(f"host == {json.dumps(name)} || dnsDomainIs(host, {json.dumps('.' + name)})")
    tests.extend(  # PAC's isInNet speaks IPv4 only
        f"isInNet(host, {json.dumps(str(net.network_address))}, {json.dumps(str(net.netmask))})"
        for net in direct_networks
        if isinstance(net, ipaddress.IPv4Network)
    )
    condition = "\n      || ".join(tests)
    return (
        "function FindProxyForURL(url, host) {\n"
        f"  if ({condition})\n"
        '    return "DIRECT";\n'
        f"  return {json.dumps('PROXY ' + proxy)};\n"
        "}\n"
    )


class _Handler(BaseHTTPRequestHandler):
    script = b""

    def do_GET(self) -> None:
        """The PAC file on its two paths; 404 elsewhere."""
        if self.path.partition("?")[0] not in PATHS:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(self.script)))
        self.send_header("Cache-Control", "max-age=300")
        self.end_headers()
        self.wfile.write(self.script)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002  (stdlib's name)
        """Quiet: fetching the PAC file is not a decision and not an operational event."""


def serve_pac(host: str, port: int, script: str) -> ThreadingHTTPServer:
    """Serve `script` at /proxy.pac and /wpad.dat from a daemon thread; shut it down to stop."""
    handler = type("PacHandler", (_Handler,), {"script": script.encode()})
    server = ThreadingHTTPServer((host, port), handler)
    threading.Thread(target=server.serve_forever, name="aupguard-pac", daemon=True).start()
    return server
