"""Requests whose body mitmproxy streams are decided on their headers, before any byte leaves.

mitmproxy streams request bodies over `stream_large_bodies` upstream *before* the `request`
hook runs, so aupguard decides those at `requestheaders`. A blocked or warned one cannot get
a page (mitmproxy refuses a response while the body streams), so its flow is killed: the
connection is closed and the decision recorded. mitmproxy 12.2.3 then leaks the client
socket when the body already sat in its buffers (the close lands while the connection's
task is inside a hook and skips `writer.close()`), so the client transport is aborted
shortly after. Like `agent/pacing.py`, this reaches into mitmproxy internals
(`Proxyserver.connections[client.id].transports[client].writer`);
`tests/agent/test_streamed.py` fails loudly when an upgrade changes them.
"""

from __future__ import annotations

import asyncio
from typing import Any

ABORT_AFTER = 0.5  # seconds: mitmproxy has closed (or leaked) the connection by then


def client_transport(proxyserver: Any, client: Any) -> Any:
    """The asyncio transport of `client`'s connection, or None when it is gone."""
    handler = proxyserver.connections.get(client.id) if proxyserver is not None else None
    if handler is None:
        return None
    io = handler.transports.get(client)
    writer = getattr(io, "writer", None)
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
