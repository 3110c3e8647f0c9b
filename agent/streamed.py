"""Requests whose body mitmproxy may stream are decided on their headers, before any byte leaves.

mitmproxy streams request bodies over `stream_large_bodies` (and bodies of unknown size once
they pass it) upstream *before* the `request` hook runs, so aupguard decides those at
`requestheaders`. An answered one (block/warn page) gets its page once the client has sent
its body: mitmproxy cannot send a response while the body streams, so the body is read and
dropped instead of streamed (`answer_after_body`), never forwarded; past a cap the flow is
killed. A client that sent `Expect: 100-continue` gets the page at once, without the body.

This reaches into mitmproxy internals (verified on 12.2.3): `install()` wraps
`HttpStream.check_body_size` (called after each buffered chunk) and
`HttpStream.state_wait_for_request_headers`; `refuse` (the fallback when the wrapper is not
installed) uses `Proxyserver.connections[client.id].transports[client].writer`.
`tests/agent/test_streamed.py` fails loudly when an upgrade changes them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from mitmproxy import http

from agent import pacing

ABORT_AFTER = 0.5  # seconds: mitmproxy has closed (or leaked) the connection by then
DISCARD_MAX_BYTES = 64 << 20  # a blocked body is read and dropped up to this, then reset
DISCARD_MAX_SECONDS = 60.0  # ... or for this long
DROPPED = "aup_dropped"  # flow.metadata: bytes of the answered request's body dropped so far
ANSWER_NOW = "aup_answer_now"  # flow.metadata: answer before the body (Expect: 100-continue)
_PATCHED = "_aupguard_streamed"
NO_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "CONNECT"})


def body_may_stream(request: http.Request) -> bool:
    """True when mitmproxy streams the body now or may once it has buffered enough of it.

    That is: streamed already (Content-Length over `stream_large_bodies`), or of unknown
    size (HTTP/1 chunked; HTTP/2 and 3 without Content-Length).
    """
    if request.stream:
        return True
    if "content-length" in request.headers or request.method.upper() in NO_BODY_METHODS:
        return False
    chunked = "chunked" in request.headers.get("transfer-encoding", "").lower()
    return chunked or not request.http_version.startswith("HTTP/1")


def answer_after_body(flow: http.HTTPFlow) -> bool:
    """Send the flow's response after its body is read and dropped; False if not installed.

    HTTP/1 answers carry `Connection: close`; an `Expect: 100-continue` request is answered
    at once (its body never comes: the 100 is not sent).
    """
    from mitmproxy.proxy.layers.http import HttpStream  # noqa: PLC0415  (internals, kept here)

    if flow.response is None or not getattr(HttpStream.check_body_size, _PATCHED, False):
        return False
    flow.request.stream = False  # buffered instead, chunk by chunk, and dropped (`install`)
    flow.metadata[DROPPED] = 0
    if flow.request.http_version.startswith("HTTP/1"):
        flow.response.headers["connection"] = "close"
        if flow.request.headers.get("expect", "").lower() == "100-continue":
            del flow.request.headers["expect"]
            flow.metadata[ANSWER_NOW] = True
    return True


def install() -> None:
    """Drop the buffered body of answered requests; answer Expect requests at once (idempotent)."""
    from mitmproxy.proxy import commands  # noqa: PLC0415  (internals, kept here)
    from mitmproxy.proxy.layers.http import HttpStream  # noqa: PLC0415
    from mitmproxy.proxy.layers.http._hooks import HttpResponseHeadersHook  # noqa: PLC0415

    check_body_size = HttpStream.check_body_size
    if getattr(check_body_size, _PATCHED, False):
        return
    wait_for_headers = HttpStream.state_wait_for_request_headers

    def dropping_check_body_size(self: Any, request: bool) -> Any:  # noqa: FBT001  (mitmproxy's)
        dropped = self.flow.metadata.get(DROPPED) if request else None
        if dropped is None or self.flow.response is None:
            return (yield from check_body_size(self, request))
        dropped += len(self.request_body_buf)
        self.request_body_buf.clear()
        self.flow.metadata[DROPPED] = dropped
        started = self.flow.request.timestamp_start
        if dropped > DISCARD_MAX_BYTES or time.time() - started > DISCARD_MAX_SECONDS:
            if self.flow.killable:
                self.flow.kill()  # over the cap: reset, as for a refused stream
            return (yield from self.check_killed(emit_error_hook=True))
        return False

    def answering_wait_for_headers(self: Any, event: Any) -> Any:
        yield from wait_for_headers(self, event)
        flow = getattr(self, "flow", None)
        if (
            flow is not None
            and flow.metadata.pop(ANSWER_NOW, False)
            and flow.response is not None
            and self.client_state == self.state_consume_request_body
        ):
            self.client_state = self.state_done  # the body is not awaited
            yield HttpResponseHeadersHook(flow)
            yield from self.send_response()
            yield commands.CloseConnection(self.context.client)

    setattr(dropping_check_body_size, _PATCHED, True)
    HttpStream.check_body_size = dropping_check_body_size  # type: ignore[method-assign]
    HttpStream.state_wait_for_request_headers = answering_wait_for_headers  # type: ignore[method-assign]


def client_transport(proxyserver: Any, client: Any) -> Any:
    """The asyncio transport of `client`'s connection, or None when it is gone."""
    writer = None if proxyserver is None else pacing.connection_writer(proxyserver, client, client)
    return None if writer is None else writer.transport


def refuse(flow: Any, proxyserver: Any, loop: asyncio.AbstractEventLoop | None) -> bool:
    """Kill `flow` (a refused streamed request) and abort its client transport soon after.

    False when the flow cannot be killed (already over). The abort is a no-op on a transport
    mitmproxy closed itself.
    """
    if not flow.killable:
        return False
    flow.response = None  # a page cannot follow a body that is being streamed
    transport = client_transport(proxyserver, flow.client_conn)
    flow.kill()
    if transport is not None and loop is not None:
        loop.call_later(ABORT_AFTER, transport.abort)
    return True
