"""Upstream certificate failures: aupguard's error page (502) and record, never the content.

mitmproxy verifies every origin's certificate; when that fails it answers the client with
its own bare 502 page from inside its HTTP layer, with no hook to replace it (the `error`
hook runs, but what it sets is not sent). `install()` wraps that one spot,
`HttpStream.handle_protocol_error`, so that a failed connect on a fully received request
asks `handler(flow, message)` first and sends its response instead. This and
`agent/pacing.py` are the only modules that reach into mitmproxy internals (verified on
12.2.3); `tests/agent/test_cert_errors.py` fails loudly when an upgrade changes them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from mitmproxy import http

from agent.model import Source
from agent.pages import PageFacts, Pages, page_time
from agent.records import new_event_id

Handler = Callable[[http.HTTPFlow, str], "http.Response | None"]
_PATCHED = "_aupguard_cert_errors"
_handler: list[Handler] = []  # the current handler (the addon's); empty: mitmproxy's page

# lower-case fragment of OpenSSL's verify error -> the reason in plain words (first wins)
REASONS = (
    ("has expired", "the site's certificate has expired"),
    ("not yet valid", "the site's certificate is not valid yet"),
    ("mismatch", "the site's certificate is for another name"),
    ("revoked", "the site's certificate has been revoked"),
)
UNTRUSTED = "the site's certificate is not trusted"


def reason_of(message: str) -> str | None:
    """The certificate problem in plain words; None when `message` is no verify failure."""
    low = message.lower()
    if "certificate verify failed" not in low:
        return None
    return next((plain for needle, plain in REASONS if needle in low), UNTRUSTED)


def install(handler: Handler) -> None:
    """Route mitmproxy's connect failures through `handler` (idempotent; the last one wins)."""
    from mitmproxy.proxy.layers.http import HttpStream  # noqa: PLC0415  (internals, kept here)
    from mitmproxy.proxy.layers.http._events import (  # noqa: PLC0415
        ErrorCode,
        ResponseProtocolError,
    )

    _handler[:] = [handler]
    original = HttpStream.handle_protocol_error
    if getattr(original, _PATCHED, False):
        return

    def handle_protocol_error(self: Any, event: Any) -> Any:
        if (
            _handler
            and isinstance(event, ResponseProtocolError)
            and event.code is ErrorCode.CONNECT_FAILED
            and self.flow.response is None
            and self.client_state == self.state_done  # the request was read in full
        ):
            response = _handler[0](self.flow, event.message)
            if response is not None:
                self.flow.response = response
                yield from self.send_response()  # as if an addon had answered
                return
        yield from original(self, event)

    setattr(handle_protocol_error, _PATCHED, True)
    HttpStream.handle_protocol_error = handle_protocol_error  # type: ignore[method-assign]


class CertErrorPages:
    """Turn a certificate failure into aupguard's error page (502) and an `error` record."""

    def __init__(
        self,
        pages: Pages,
        engine: Callable[[], Any],
        emit: Callable[[dict[str, Any]], None],
        headers: dict[str, str],
    ) -> None:
        self.pages = pages
        self.engine = engine  # the runtime's current Engine (policy reloads)
        self.emit = emit
        self.headers = headers

    def __call__(self, flow: http.HTTPFlow, message: str) -> http.Response | None:
        """The 502 page for a certificate failure, recorded; None for other failures."""
        reason = reason_of(message)
        if reason is None:
            return None
        now = time.time()
        engine = self.engine()
        eid = new_event_id(now)
        category = clause = None
        auth = flow.metadata.get("proxyauth")
        user = str(auth[0]) if isinstance(auth, tuple) and auth and auth[0] else None
        extra = {
            "event.action": "error",
            "event.outcome": "failure",
            "event.type": ["error"],
            "error.message": message,
            "aupguard.error_reason": reason,
        }
        try:
            ev = engine.evaluate(
                flow.client_conn.peername[0], flow.request.pretty_url,
                now=now, user=user, source=Source.HTTP,
            )  # fmt: skip
        except ValueError:
            ev = None
        if ev is not None:
            category, clause = ev.decision.category, ev.decision.clause
            self.emit(engine.record(ev, now, event_id=eid, extra=extra))
        facts = PageFacts(
            url=flow.request.pretty_url,
            category=category,
            clause=clause,
            time=page_time(engine.config, now),
            reference=eid,
            notice=engine.notice.text,
            detail=f"{reason[0].upper()}{reason[1:]} ({flow.request.pretty_host}).",
        )
        body, ctype = self.pages.body("error", facts, flow.request.headers)
        headers = {**self.headers, "x-aupguard-reference": eid, "content-type": ctype}
        return http.Response.make(502, body, headers)
