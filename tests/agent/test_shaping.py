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
    if size is None:
        f.request.headers.pop("content-length", None)
        f.request.headers["transfer-encoding"] = "chunked"
    else:
        f.request.headers["content-length"] = str(size)
    f.request.stream = stream
    handler = Handler(f.client_conn, client_sock)
    handler.transports[f.server_conn] = IO(server_sock)
    server.connections[f.client_conn.id] = handler
    return shaper, f, client_sock, server_sock


PACED = [int(500 * pacing.COMPENSATION)]


@pytest.mark.parametrize(
    ("size", "stream", "active", "groups", "chunks", "counted", "paced_from"),
    [
        pytest.param(500_000, True, True, (), [1000], True, 0, id="large-streamed-upload-paced"),
        pytest.param(50_000, True, True, (), [1000], True, None, id="below-threshold-counted"),
        pytest.param(500_000, False, True, (), [], False, None, id="buffered-body"),
        pytest.param(500_000, True, False, (), [1000], True, None, id="outside-schedule"),
        pytest.param(500_000, True, True, ("backup",), [], False, None, id="exempt-group"),
        pytest.param(
            None, False, True, (), [60_000, 60_000, 1000], True, 1, id="chunked-paced-once-over"
        ),
        pytest.param(None, False, True, (), [60_000], True, None, id="chunked-small-unpaced"),
        pytest.param(None, False, False, (), [200_000], True, None, id="chunked-outside-schedule"),
    ],
)
def test_upload_paced_on_server_socket(size, stream, active, groups, chunks, counted, paced_from):
    """Streamed (or unknown-size) uploads are counted; in the schedule, once over the threshold
    by Content-Length or by their counted bytes, the server socket is paced, unpaced when done."""
    shaper, f, client_sock, server_sock = setup_upload(size, stream=stream, active=active)
    shaper.on_request_headers(f, groups, 10.0)
    assert callable(f.request.stream) is counted
    for i, chunk in enumerate(chunks):
        assert f.request.stream(b"x" * chunk) == b"x" * chunk
        assert server_sock.rates == (PACED if paced_from is not None and i >= paced_from else [])
    assert client_sock.rates == []  # the download side is untouched
    window = shaper.throttle.window.total("127.0.0.1", 10.0)
    summary = shaper.on_done(f, 12.0)
    assert (summary is not None) is (paced_from is not None)
    if summary is not None:
        assert summary["bytes"] == sum(chunks[paced_from:])
        assert server_sock.rates[-1] == pacing.UNLIMITED  # the server socket may be reused
    assert window == sum(chunks)  # every streamed byte counts in the client's window


def test_upload_paces_the_server_connection_chosen_after_headers():
    """mitmproxy picks the server connection after requestheaders: the first chunk finds it."""
    shaper, f, _client_sock, old_sock = setup_upload(500_000)
    shaper.on_request_headers(f, (), 10.0)
    reused, reused_sock = tflow.tserver_conn(), Sock()
    shaper_server = shaper.proxyserver()
    shaper_server.connections[f.client_conn.id].transports[reused] = IO(reused_sock)
    f.server_conn = reused
    f.request.stream(b"x")
    assert reused_sock.rates == PACED
    assert old_sock.rates == []
