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
