"""Acknowledgment of the monitoring notice: the first navigation in a period shows the notice.

When `proxy.acknowledge.enabled`, a user (else client address) who has not acknowledged the
current notice version within `period_days` gets the notice page on their next GET
navigation (`agent.pages.wants_html`); every other request passes untouched. The page's
"I acknowledge" button POSTs to `/.aupguard/acknowledge?token=...` on the same host; the token
is HMAC-bound (key derived from the Continue secret) to the subject, host, original URL and
notice version. Redeeming it grants ``notice:<version>`` in `agent.shared_state` (valid on
every worker, across restarts), records an `acknowledge` event and redirects back (303).
A new notice text is a new version, so it needs a new acknowledgment.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from mitmproxy import http

from agent.pages import Pages, wants_html
from agent.shared_state import SharedState, after_commit
from agent.tokens import Grant, TokenError, TokenSigner

ACK_PATH = "/.aupguard/acknowledge"
SCOPE_PREFIX = "notice:"
TOKEN_TTL = 3_600.0  # a notice page may stay open this long before its button expires
_KEY_LABEL = b"aupguard-acknowledge-v1"
_HEADERS = {
    "cache-control": "no-store",
    "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
# (url, user, extra) -> records one acknowledge event through the record writer
Record = Callable[[str, "str | None", dict[str, Any]], None]


def scope(version: str) -> str:
    """The shared-state scope of an acknowledgment of notice `version`."""
    return SCOPE_PREFIX + version


@dataclass(frozen=True, slots=True)
class Outcome:
    """What redeeming an acknowledge request produced: the response and the write to wait for."""

    response: http.Response
    durable: Future[None] | None = None


class Acknowledgments:
    """Shows the notice to subjects who have not acknowledged it, and redeems their button."""

    def __init__(self, state: SharedState, secret: bytes, period_days: int, pages: Pages) -> None:
        if period_days <= 0:
            raise ValueError(f"proxy.acknowledge.period_days: {period_days}: expected >= 1")
        self.state = state
        self.period = period_days * 86_400.0
        self.pages = pages
        self.signer = TokenSigner(hmac.new(secret, _KEY_LABEL, hashlib.sha256).digest())

    def handle(  # noqa: PLR0913  (the request, who makes it, and the notice in force)
        self,
        flow: http.HTTPFlow,
        *,
        user: str | None,
        subject: str,
        notice: tuple[str, str],
        now: float,
        record: Record,
    ) -> str | None:
        """Answer an acknowledge request or a first navigation (sets `flow.response`).

        Returns the label for `flow.metadata` ("acknowledge", "notice"), or None to go on with
        the decision. `notice` is (text, version).
        """
        if flow.request.path.startswith(ACK_PATH):
            out = self.redeem(
                flow, subject=subject, user=user, version=notice[1], now=now, record=record
            )
            flow.response = out.response
            if out.durable is not None:  # answer once the grant holds on every worker
                after_commit(out.durable, flow.intercept, flow.resume)
            return "acknowledge"
        if self.needs_notice(flow, subject, notice[1], now):
            flow.response = self.notice_page(flow, subject, notice, now)
            return "notice"
        return None

    def needs_notice(self, flow: http.HTTPFlow, subject: str, version: str, now: float) -> bool:
        """True for a top-level GET navigation by a subject without a current acknowledgment."""
        req = flow.request
        if req.method not in {"GET", "HEAD"} or not top_level(req.headers):
            return False
        return not self.state.allowed(subject, scope(version), now)

    def notice_page(
        self, flow: http.HTTPFlow, subject: str, notice: tuple[str, str], now: float
    ) -> http.Response:
        """The notice page (`notice` = (text, version)) whose button acknowledges it."""
        text, version = notice
        url = flow.request.pretty_url
        host = flow.request.pretty_host.lower().rstrip(".")
        token = self.signer.issue(Grant(subject, version, host, url, now + TOKEN_TTL))
        body = self.pages.render_notice(
            url=url, notice=text, version=version, action=f"{ACK_PATH}?token={quote(token)}"
        )
        headers = {**_HEADERS, "content-type": "text/html; charset=utf-8"}
        return http.Response.make(200, body.encode(), headers)

    def redeem(  # noqa: PLR0913  (the request and what it is checked against)
        self,
        flow: http.HTTPFlow,
        *,
        subject: str,
        user: str | None,
        version: str,
        now: float,
        record: Record,
    ) -> Outcome:
        """Verify the button's token, grant and record the acknowledgment, redirect back."""
        if flow.request.method != "POST":
            return Outcome(_text(405, "acknowledge with the button (POST)\n", allow="POST"))
        host = flow.request.pretty_host.lower().rstrip(".")
        try:
            grant = self.signer.verify(
                flow.request.query.get("token", ""), subject=subject, host=host, now=now
            )
        except TokenError as e:
            return Outcome(_text(403, f"invalid acknowledgment: {e}\n"))
        back = http.Response.make(303, b"", {"location": grant.url, "cache-control": "no-store"})
        if grant.category != version:
            return Outcome(back)  # the notice changed meanwhile: show the new one
        durable = self.state.grant(subject, scope(version), now + self.period)
        record(
            grant.url,
            user,
            {"event.action": "acknowledge", "aupguard.acknowledged_notice_version": version},
        )
        return Outcome(back, durable)


def top_level(headers: Mapping[str, str]) -> bool:
    """A top-level navigation: `Sec-Fetch-Dest: document` (not a frame), else `wants_html`."""
    dest = headers.get("sec-fetch-dest")
    if dest is not None:
        return dest.strip().lower() == "document"
    return wants_html(headers)


def _text(status: int, message: str, **extra: str) -> http.Response:
    headers = {**_HEADERS, "content-type": "text/plain; charset=utf-8", **extra}
    return http.Response.make(status, message.encode(), headers)
