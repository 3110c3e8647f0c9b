"""The PAC file: DIRECT for the agency's own names and networks, the proxy for everything else."""

from __future__ import annotations

import ipaddress
import urllib.error
import urllib.request

import pytest

from agent.pac import CONTENT_TYPE, pac_script, serve_pac

NETS = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


def test_script_lists_direct_names_and_networks() -> None:
    """Plain names, the agency's domains and IPv4 networks go DIRECT; the rest via the proxy."""
    script = pac_script("gateway.agency.example:8080", ["agency.example", ".state.gov"], NETS)
    assert 'dnsDomainIs(host, ".agency.example")' in script
    assert 'host == "state.gov" || dnsDomainIs(host, ".state.gov")' in script
    assert 'isInNet(host, "10.0.0.0", "255.0.0.0")' in script
    assert "fd00" not in script  # isInNet is IPv4-only
    assert script.rstrip().endswith('return "PROXY gateway.agency.example:8080";\n}')


def test_names_are_quoted_not_injected() -> None:
    """A hostile name in config cannot break out of the JavaScript string."""
    script = pac_script('x"); alert(1); ("', ['a"b.example'], ())
    assert '"PROXY x\\"); alert(1); (\\""' in script
    assert '".a\\"b.example"' in script


@pytest.mark.parametrize(
    ("path", "status"),
    [
        pytest.param("/proxy.pac", 200, id="pac"),
        pytest.param("/wpad.dat", 200, id="wpad"),
        pytest.param("/wpad.dat?x=1", 200, id="query-ignored"),
        pytest.param("/etc/passwd", 404, id="nothing-else"),
    ],
)
def test_served_on_loopback(path: str, status: int) -> None:
    """The PAC file is served with its media type on both well-known paths, nothing else."""
    server = serve_pac("127.0.0.1", 0, pac_script("127.0.0.1:8080", [], ()))
    url = f"http://127.0.0.1:{server.server_address[1]}{path}"
    try:
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                got, ctype, body = reply.status, reply.headers["Content-Type"], reply.read()
        except urllib.error.HTTPError as e:
            got, ctype, body = e.code, "", b""
            e.close()
    finally:
        server.shutdown()
        server.server_close()
    assert got == status
    if status == 200:
        assert ctype == CONTENT_TYPE
        assert b"FindProxyForURL" in body
