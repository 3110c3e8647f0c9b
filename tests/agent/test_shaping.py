"""The shaper streams, counts and paces large transfers and unpaces the socket afterwards."""

from __future__ import annotations

import warnings
from dataclasses import replace

import pytest

with warnings.catch_warnings():  # pyparsing deprecations inside mitmproxy's imports
    warnings.simplefilter("ignore", DeprecationWarning)
    from mitmproxy.test import tflow, tutils

    from agent import pacing
    from agent.shaping import Shaper
from agent.throttle import Throttle, ThrottleSpec


class Sock:
    def __init__(self) -> None:
        self.rates: list[int] = []

    def setsockopt(self, _level, opt, value):
        if opt == pacing.SO_MAX_PACING_RATE:
            self.rates.append(int.from_bytes(value, "little"))


class Writer:
    def __init__(self, sock) -> None:
        self.sock = sock

    def get_extra_info(self, name):
        return self.sock if name == "socket" else None


class IO:
    def __init__(self, sock) -> None:
        self.writer = Writer(sock)


class Handler:
    def __init__(self, conn, sock) -> None:
        self.transports = {conn: IO(sock)}


class Server:
    def __init__(self) -> None:
        self.connections = {}


SPEC = ThrottleSpec(threshold=100_000, client_rate=500, aggregate_rate=10_000, window=60)


def setup(active=True, size=500_000):
    server, sock = Server(), Sock()
    shaper = Shaper(Throttle(SPEC, lambda _n: active), lambda: server)
    f = tflow.tflow(resp=tutils.tresp(content=b""))
    f.response.headers["content-length"] = str(size)
    server.connections[f.client_conn.id] = Handler(f.client_conn, sock)
    return shaper, f, sock


def test_large_transfer_is_paced_then_released():
    """Above the threshold in the schedule: streamed, paced at the client rate, reset later."""
    shaper, f, sock = setup()
    shaper.on_response_headers(f, (), 10.0)
    assert callable(f.response.stream)
    assert sock.rates == [int(500 * pacing.COMPENSATION)]
    assert f.response.stream(b"x" * 100) == b"x" * 100
    shaper.on_done(f, 11.0)
    assert sock.rates[-1] == int(500 * pacing.COMPENSATION)  # still draining
    shaper.release(f.client_conn)
    assert sock.rates[-1] == pacing.UNLIMITED


def test_outside_schedule_not_paced():
    """Outside the schedule nothing is paced (large bodies are still streamed and counted)."""
    shaper, f, sock = setup(active=False, size=5_000_000)
    shaper.on_response_headers(f, (), 10.0)
    assert sock.rates == []
    assert callable(f.response.stream)


def test_window_kicks_in_mid_stream():
    """An unknown-size body starts pacing once the client's window passes the threshold."""
    shaper, f, sock = setup()
    del f.response.headers["content-length"]
    shaper.on_response_headers(f, (), 10.0)
    assert sock.rates == []
    f.response.stream(b"x" * 150_000)
    assert sock.rates == [int(500 * pacing.COMPENSATION)]


def setup_upload(size, *, stream=True, active=True):
    server, client_sock, server_sock = Server(), Sock(), Sock()
    spec = replace(SPEC, exempt_groups=frozenset({"backup"}))
    shaper = Shaper(Throttle(spec, lambda _n: active), lambda: server)
    f = tflow.tflow()
    f.request.method = "POST"
    f.request.headers["content-length"] = str(size)
    f.request.stream = stream
    handler = Handler(f.client_conn, client_sock)
    handler.transports[f.server_conn] = IO(server_sock)
    server.connections[f.client_conn.id] = handler
    return shaper, f, client_sock, server_sock


@pytest.mark.parametrize(
    ("size", "stream", "active", "groups", "paced"),
    [
        pytest.param(500_000, True, True, (), True, id="large-streamed-upload-paced"),
        pytest.param(50_000, True, True, (), False, id="below-threshold"),
        pytest.param(500_000, False, True, (), False, id="buffered-body"),
        pytest.param(500_000, True, False, (), False, id="outside-schedule"),
        pytest.param(500_000, True, True, ("backup",), False, id="exempt-group"),
    ],
)
def test_upload_paced_on_server_socket(size, stream, active, groups, paced):
    """A large streamed upload in the schedule paces the server socket, unpaced when done."""
    shaper, f, client_sock, server_sock = setup_upload(size, stream=stream, active=active)
    shaper.on_request_headers(f, groups, 10.0)
    assert callable(f.request.stream) is paced
    if paced:
        assert f.request.stream(b"x" * 1000) == b"x" * 1000
    assert server_sock.rates == ([int(500 * pacing.COMPENSATION)] if paced else [])
    assert client_sock.rates == []  # the download side is untouched
    summary = shaper.on_done(f, 12.0)
    assert (summary is not None) is paced
    if paced:
        assert summary["bytes"] == 1000
        assert server_sock.rates[-1] == pacing.UNLIMITED  # the server socket may be reused
