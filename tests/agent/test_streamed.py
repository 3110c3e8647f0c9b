"""Refusing a streamed request: the flow is killed and its client transport aborted soon after."""

from __future__ import annotations

import warnings
from typing import Any

import pytest

with warnings.catch_warnings():  # pyparsing deprecations inside mitmproxy's imports
    warnings.simplefilter("ignore", DeprecationWarning)
    from mitmproxy import http
    from mitmproxy.addons import proxyserver
    from mitmproxy.test import tflow

from agent import streamed


class _Transport:
    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


class _Loop:
    """Runs `call_later` callbacks on demand."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, Any]] = []

    def call_later(self, delay: float, fn: Any) -> None:
        self.calls.append((delay, fn))


def _server_with(client: Any, transport: _Transport) -> Any:
    writer = type("W", (), {"transport": transport})()
    io = type("IO", (), {"writer": writer})()
    handler = type("H", (), {"transports": {client: io}})()
    return type("P", (), {"connections": {client.id: handler}})()


@pytest.mark.parametrize(
    ("live", "known", "refused", "aborted"),
    [
        pytest.param(True, True, True, True, id="live-flow-killed-and-aborted"),
        pytest.param(True, False, True, False, id="connection-gone-killed-only"),
        pytest.param(False, True, False, False, id="finished-flow-untouched"),
    ],
)
def test_refuse(live: bool, known: bool, refused: bool, aborted: bool) -> None:
    """A live flow is killed (no page) and its client transport aborted after ABORT_AFTER."""
    flow = tflow.tflow()
    flow.live = live
    flow.response = http.Response.make(403, b"page")
    transport, loop = _Transport(), _Loop()
    server = _server_with(flow.client_conn, transport) if known else None
    assert streamed.refuse(flow, server, loop) is refused  # type: ignore[arg-type]
    assert (flow.error is not None) is refused
    for delay, fn in loop.calls:
        assert delay == streamed.ABORT_AFTER
        fn()
    assert transport.aborted is aborted


def test_mitmproxy_internals_unchanged() -> None:
    """Fails loudly on a mitmproxy upgrade that moves the client transport or the kill."""
    assert isinstance(proxyserver.Proxyserver().connections, dict)
    flow = tflow.tflow()
    flow.live = True
    assert flow.killable
    from mitmproxy.proxy.server import ConnectionHandler  # noqa: PLC0415

    assert "transports" in ConnectionHandler.__init__.__code__.co_names


def _request(method: str, version: str, headers: dict[str, str], *, stream: bool) -> Any:
    flow = tflow.tflow()
    req = flow.request
    req.method, req.http_version = method, version
    req.headers.clear()
    req.headers.update(headers)
    req.stream = stream
    return req


@pytest.mark.parametrize(
    ("method", "version", "headers", "stream", "may"),
    [
        pytest.param("POST", "HTTP/1.1", {"content-length": "9"}, True, True, id="streamed-already"),
        pytest.param("POST", "HTTP/1.1", {"content-length": "9"}, False, False, id="small-known-size"),
        pytest.param("POST", "HTTP/1.1", {"transfer-encoding": "chunked"}, False, True, id="h1-chunked"),
        pytest.param("POST", "HTTP/1.1", {}, False, False, id="h1-no-body"),
        pytest.param("POST", "HTTP/2.0", {}, False, True, id="h2-unknown-size"),
        pytest.param("GET", "HTTP/2.0", {}, False, False, id="h2-get"),
    ],
)  # fmt: skip
def test_body_may_stream(
    method: str, version: str, headers: dict[str, str], stream: bool, may: bool
) -> None:
    """Bodies mitmproxy streams now, or may once buffered past stream_large_bodies, are known."""
    assert streamed.body_may_stream(_request(method, version, headers, stream=stream)) is may


@pytest.mark.parametrize(
    ("version", "expect", "close", "now"),
    [
        pytest.param("HTTP/1.1", False, True, False, id="h1-page-after-body-then-close"),
        pytest.param("HTTP/1.1", True, True, True, id="h1-expect-answered-at-once"),
        pytest.param("HTTP/2.0", True, False, False, id="h2-page-after-body"),
    ],
)
def test_answer_after_body(version: str, expect: bool, close: bool, now: bool) -> None:
    """An answered request's body is dropped, not streamed; Expect requests are answered at once."""
    streamed.install()
    flow = tflow.tflow()
    flow.request.http_version = version
    flow.request.stream = True
    if expect:
        flow.request.headers["expect"] = "100-continue"
    flow.response = http.Response.make(403, b"page")
    assert streamed.answer_after_body(flow)
    assert flow.request.stream is False
    assert flow.metadata[streamed.DROPPED] == 0
    assert (flow.response.headers.get("connection") == "close") is close
    assert flow.metadata.get(streamed.ANSWER_NOW, False) is now
    assert ("expect" in flow.request.headers) is (expect and not now)


def test_answer_after_body_needs_a_response_and_the_wrapper(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a response, or with mitmproxy's own check (not wrapped), the caller refuses."""
    from mitmproxy.proxy.layers.http import HttpStream  # noqa: PLC0415

    streamed.install()
    flow = tflow.tflow()
    flow.response = None
    assert not streamed.answer_after_body(flow)
    flow.response = http.Response.make(403, b"page")
    monkeypatch.setattr(HttpStream, "check_body_size", lambda *_: None)
    assert not streamed.answer_after_body(flow)


class _Buf:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def clear(self) -> None:
        self.n = 0


class _Stream:
    """The parts of mitmproxy's HttpStream the wrapper uses."""

    def __init__(self, flow: Any, buffered: int) -> None:
        self.flow = flow
        self.request_body_buf = _Buf(buffered)
        self.killed_checks = 0

    def check_killed(self, *, emit_error_hook: bool) -> Any:
        self.killed_checks += emit_error_hook
        yield from ()
        return True


@pytest.mark.parametrize(
    ("dropped", "buffered", "age", "killed"),
    [
        pytest.param(0, 65_536, 0.0, False, id="dropped"),
        pytest.param(streamed.DISCARD_MAX_BYTES, 65_536, 0.0, True, id="over-byte-cap-reset"),
        pytest.param(0, 65_536, streamed.DISCARD_MAX_SECONDS + 1, True, id="over-time-cap-reset"),
    ],
)
def test_dropping_check_body_size(dropped: int, buffered: int, age: float, killed: bool) -> None:
    """Each buffered chunk of an answered request is dropped; past the caps the flow is killed."""
    import time  # noqa: PLC0415

    from mitmproxy.proxy.layers.http import HttpStream  # noqa: PLC0415

    streamed.install()
    flow = tflow.tflow()
    flow.live = True
    flow.response = http.Response.make(403, b"page")
    flow.metadata[streamed.DROPPED] = dropped
    flow.request.timestamp_start = time.time() - age
    stream = _Stream(flow, buffered)
    list(HttpStream.check_body_size(stream, True))  # type: ignore[arg-type]
    assert len(stream.request_body_buf) == 0  # never kept, never forwarded
    assert flow.metadata[streamed.DROPPED] == dropped + buffered
    assert (flow.error is not None) is killed
    assert stream.killed_checks == int(killed)


def test_wrapped_internals_unchanged() -> None:
    """Fails loudly on a mitmproxy upgrade that changes what `install()` wraps or calls."""
    import inspect  # noqa: PLC0415

    from mitmproxy.proxy.layers.http import HttpStream  # noqa: PLC0415

    for name in ("check_body_size", "state_wait_for_request_headers", "state_consume_request_body",
                 "send_response", "check_killed", "state_done"):  # fmt: skip
        assert callable(getattr(HttpStream, name)), name
    consume = inspect.getsource(HttpStream.state_consume_request_body)
    assert "self.request_body_buf += event.data" in consume
    assert "self.check_body_size(True)" in consume
    assert "elif self.flow.response:" in consume  # an addon's response is sent after the body
