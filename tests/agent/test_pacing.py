"""agent.pacing: kernel pacing works here, and mitmproxy's internals still have the expected shape.

If this file fails after a mitmproxy upgrade, agent/pacing.py must be adapted before release.
"""

from __future__ import annotations

import dataclasses
import inspect
import socket

import pytest

from agent import pacing


def test_mitmproxy_internals_shape():
    """Proxyserver.connections, ConnectionHandler.transports and ConnectionIO.writer exist."""
    import warnings  # noqa: PLC0415

    with warnings.catch_warnings():  # pyparsing deprecations inside mitmproxy's imports
        warnings.simplefilter("ignore", DeprecationWarning)
        from mitmproxy.addons import proxyserver  # noqa: PLC0415
        from mitmproxy.proxy import server  # noqa: PLC0415

    assert "self.connections" in inspect.getsource(proxyserver.Proxyserver.__init__), (
        "mitmproxy changed Proxyserver.connections: update agent/pacing.py"
    )
    assert "transports" in server.ConnectionHandler.__annotations__, (
        "mitmproxy changed ConnectionHandler.transports: update agent/pacing.py"
    )
    fields = {f.name for f in dataclasses.fields(server.ConnectionIO)}
    assert {"reader", "writer"} <= fields, "mitmproxy changed ConnectionIO: update agent/pacing.py"


def test_connection_socket_lookup():
    """The lookup walks connections -> transports -> writer socket, None when gone."""

    class Writer:
        def get_extra_info(self, name):
            return "SOCK" if name == "socket" else None

    class IO:
        writer = Writer()

    class Handler:
        def __init__(self):
            self.transports = {"conn": IO()}

    class Client:
        id = "c1"

    class Server:
        def __init__(self):
            self.connections = {"c1": Handler()}

    assert pacing.connection_socket(Server(), Client(), "conn") == "SOCK"
    assert pacing.connection_socket(Server(), Client(), "other") is None
    with pytest.raises(pacing.PacingUnavailableError):
        pacing.connection_socket(object(), Client(), "conn")


def test_set_and_reset_rate():
    """SO_MAX_PACING_RATE is set (compensated) and reset to unlimited."""
    a = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with a:
        pacing.set_rate(a, 1_000_000)
        assert pacing.get_rate(a) == int(1_000_000 * pacing.COMPENSATION)
        pacing.set_rate(a, None)
        assert pacing.get_rate(a) == pacing.UNLIMITED


def test_kernel_counts_read_the_kernel():
    """Sent bytes are queued until acknowledged; the receiver counts them unread until read.

    None once the socket is closed.
    """
    import time  # noqa: PLC0415

    with socket.create_server(("127.0.0.1", 0)) as srv:
        sender = socket.create_connection(srv.getsockname())
        receiver, _ = srv.accept()
        with sender, receiver:
            acked, queued, unread = pacing.kernel_counts(sender) or (-1, -1, -1)
            assert (acked, queued, unread) in {(0, 0, 0), (1, 0, 0)}  # +1: the SYN once acked
            sender.sendall(b"x" * 100_000)  # fits the socket buffers: the receiver reads nothing
            acked, queued, _ = pacing.kernel_counts(sender) or (-1, -1, -1)
            assert 100_000 <= acked + queued <= 100_001
            deadline = time.monotonic() + 2
            while queued and time.monotonic() < deadline:  # loopback ACKs come within ms
                time.sleep(0.01)
                acked, queued, _ = pacing.kernel_counts(sender) or (-1, -1, -1)
            assert (queued, acked - acked % 100_000) == (0, 100_000)
            _, _, unread = pacing.kernel_counts(receiver) or (-1, -1, -1)
            assert unread == 100_000
            receiver.recv(30_000, socket.MSG_WAITALL)
            assert pacing.kernel_counts(receiver) in {(0, 0, 70_000), (1, 0, 70_000)}
        assert pacing.kernel_counts(sender) is None
