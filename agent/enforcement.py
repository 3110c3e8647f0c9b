"""The proxy's act stage: turn `Engine` decisions on mitmproxy flows into pages and records.

`addons/enforce.py` is the thin hook layer; this module holds what it does per flow, with
settings parsed once from `ProxySection` (`EnforcerSettings`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote

from mitmproxy import http, tls

from agent.acknowledge import Acknowledgments
from agent.classifier import host_of
from agent.metrics import DECISIONS, HTTP_REQUESTS, THROTTLED_BYTES, Tally
from agent.model import Action, Source
from agent.pages import PageFacts, Pages, page_time
from agent.passthrough import Passthroughs
from agent.pipeline import Evaluation
from agent.proxy_settings import EnforcerSettings
from agent.recent_answers import RecentAnswers, store_path
from agent.records import new_event_id
from agent.runtime import Runtime
from agent.shaping import Shaper
from agent.shared_state import (
    PacedCensus,
    SharedState,
    after_commit,
)
from agent.throttle import Throttle
from agent.tls_policy import (
    no_decrypt,
    no_sni_record,
    passthrough_fields,
    refuses_without_sni,
    unproven_destination,
)
from agent.tokens import Grant, TokenError, TokenSigner
from agent.usermap import UserMap

CONTINUE_PATH = "/.aupguard/continue"
MARK_KEY = "aup_decision"
TOKEN_TTL = 600.0
SECURITY_HEADERS = {
    "cache-control": "no-store",
    "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
Emit = Callable[[dict[str, Any]], None]


def flow_hosts(flow: http.HTTPFlow) -> list[str]:
    """Every distinct host this request names: URL/Host header, SNI and CONNECT authority."""
    server = flow.server_conn.address[0] if flow.server_conn.address else None
    host_header = flow.request.host_header  # host_of strips the port (pretty_host re-parses)
    candidates = (host_header, flow.request.host, flow.client_conn.sni, server)
    return list(dict.fromkeys(h for h in map(host_of, candidates) if h))


class Enforcer:
    """Per-flow enforcement with the runtime's current engine."""

    def __init__(
        self,
        runtime: Runtime,
        settings: EnforcerSettings,
        emit: Emit,
        proxyserver: Callable[[], Any] = lambda: None,
    ) -> None:
        self.runtime = runtime
        self.settings = settings
        self.emit = emit
        self.pages = Pages(settings.texts, settings.template)
        self.signer = TokenSigner(settings.secret)
        self.state = SharedState(settings.state_file)
        self.acks: Acknowledgments | None = None
        if settings.acknowledge_days is not None:
            days = settings.acknowledge_days
            self.acks = Acknowledgments(self.state, settings.secret, days, self.pages)
        self.users = UserMap(settings.user_map)
        self.tally = Tally()  # flushed into the Prometheus counters by the addon, once a second
        self._refused: OrderedDict[str, None] = OrderedDict()
        self.answers = RecentAnswers(store_path(runtime.engine.config))  # opened on first use
        self.shaper: Shaper | None = None
        self.passthroughs: Passthroughs | None = None
        if settings.throttle is not None:
            throttle = Throttle(settings.throttle, self._in_throttle_schedule)
            census = PacedCensus(self.state, settings.workers) if settings.workers > 1 else None
            self.shaper = Shaper(throttle, proxyserver, census)
            self.passthroughs = Passthroughs(self.shaper, proxyserver)

    def _in_throttle_schedule(self, now: float) -> bool:
        schedule = self.runtime.engine.policy.schedules.get(self.settings.throttle_schedule or "")
        return schedule is not None and schedule.is_active(now)

    # --- identify + decide ------------------------------------------------------------

    def user_of(self, flow: http.HTTPFlow) -> str | None:
        """Proxyauth's user (never the password), else the address map (transparent mode)."""
        auth = flow.metadata.get("proxyauth")
        if isinstance(auth, tuple) and auth and auth[0]:
            return str(auth[0])
        return self.users.lookup(flow.client_conn.peername[0])

    def evaluate(self, flow: http.HTTPFlow, now: float) -> Evaluation:
        """The strictest decision over every host the request names (no domain fronting)."""
        ip, user = flow.client_conn.peername[0], self.user_of(flow)
        engine = self.runtime.engine
        url = flow.request.pretty_url
        best = engine.evaluate(ip, url, now=now, user=user, source=Source.HTTP)
        path = flow.request.path if flow.request.path.startswith("/") else "/"
        for host in flow_hosts(flow):
            if host == best.request.host:
                continue
            try:
                ev = engine.evaluate(
                    ip,
                    f"{flow.request.scheme}://{host}{path}",
                    now=now,
                    user=user,
                    source=Source.HTTP,
                )
            except ValueError:
                continue  # not a host name (e.g. a raw address the lists cannot name)
            if ev.decision.action > best.decision.action:
                best = Evaluation(best.client, best.request, ev.decision)
        return best

    # --- act --------------------------------------------------------------------------

    def enforce(self, flow: http.HTTPFlow, now: float) -> str:
        """Decide and act on one request; returns the action label for `flow.metadata`."""
        if self.acks is not None and (label := self._notice_first(flow, now)) is not None:
            return label
        try:
            ev = self.evaluate(flow, now)
        except ValueError:
            # fail closed: a target the engine cannot read must not bypass the policy
            body = b"aupguard: the request names no valid host\n"
            headers = {"content-type": "text/plain; charset=utf-8", **SECURITY_HEADERS}
            flow.response = http.Response.make(400, body, headers)
            return "unparsable"
        d = ev.decision
        self.tally.add(HTTP_REQUESTS, flow.request.scheme)
        self.tally.add(DECISIONS, "http", d.action.label, d.category or "none")
        flow.metadata["aup_groups"] = ev.client.groups
        subject = ev.client.user or ev.client.ip
        if d.action is Action.WARN and self.state.allowed(subject, f"continue:{d.category}", now):
            self._record(ev, now, extra={"aupguard.continued": True})
            self.add_tenant_headers(flow, ev.request.host)
            return "warn-continued"
        eid = ""
        if d.action is not Action.ALLOW or self.settings.record_allowed:
            eid = self._record(ev, now)
        if d.action is Action.BLOCK:
            flow.response = self._page("block", flow, ev, now, reference=eid)
        elif d.action is Action.WARN:
            grant = Grant(
                subject, d.category or "", ev.request.host, flow.request.pretty_url, now + TOKEN_TTL
            )
            href = f"{CONTINUE_PATH}?token={quote(self.signer.issue(grant))}"
            flow.response = self._page("warn", flow, ev, now, reference=eid, href=href)
        else:
            self.add_tenant_headers(flow, ev.request.host)
        return d.action.label

    def add_tenant_headers(self, flow: http.HTTPFlow, host: str) -> None:
        """Add the configured tenant-restriction headers for `host` (most specific suffix)."""
        table = self.settings.tenant_headers
        if not table:
            return
        parts = host.split(".")
        for i in range(len(parts)):
            headers = table.get(".".join(parts[i:]))
            if headers is not None:
                for name, value in headers:
                    flow.request.headers[name] = value  # replaces any client-sent value
                return

    def redeem(self, flow: http.HTTPFlow, now: float) -> http.Response:
        """Verify a continue token, record the acknowledgment, allow, and redirect back."""
        raw = flow.request.query.get("token", "")
        user = self.user_of(flow)
        subject = user or flow.client_conn.peername[0]
        host = host_of(flow.request.pretty_host) or ""
        try:
            grant = self.signer.verify(raw, subject=subject, host=host, now=now)
        except TokenError as e:
            body, ctype = f"invalid continue link: {e}\n".encode(), "text/plain; charset=utf-8"
            return http.Response.make(403, body, {"content-type": ctype, **SECURITY_HEADERS})
        until = now + self.settings.warn_seconds
        durable = self.state.grant(grant.subject, f"continue:{grant.category}", until)
        after_commit(durable, flow.intercept, flow.resume)  # valid on every worker on redirect
        extra = {"event.action": "acknowledged", "aupguard.acknowledged_category": grant.category}
        self._record_url(flow, grant.url, user, now, extra)
        return http.Response.make(302, b"", {"location": grant.url, "cache-control": "no-store"})

    def _notice_first(self, flow: http.HTTPFlow, now: float) -> str | None:
        """Redeem an acknowledgment, or show the notice to a first navigation; None otherwise."""
        assert self.acks is not None  # noqa: S101  (the caller checked)
        user = self.user_of(flow)
        subject = user or flow.client_conn.peername[0]
        notice = self.runtime.engine.notice
        return self.acks.handle(
            flow,
            user=user,
            subject=subject,
            notice=(notice.text, notice.version),
            now=now,
            record=lambda url, u, extra: self._record_url(flow, url, u, now, extra),
        )

    def _record_url(
        self, flow: http.HTTPFlow, url: str, user: str | None, now: float, extra: dict[str, Any]
    ) -> None:
        """Record an event about `url` (Continue, acknowledgment) through the record writer."""
        ip = flow.client_conn.peername[0]
        try:
            ev = self.runtime.engine.evaluate(ip, url, now=now, user=user, source=Source.HTTP)
        except ValueError:
            return  # the URL came from a request the engine already refused to read
        self._record(ev, now, extra=extra)

    def _record(self, ev: Evaluation, now: float, extra: dict[str, Any] | None = None) -> str:
        eid = new_event_id(now)
        self.emit(self.runtime.engine.record(ev, now, event_id=eid, extra=extra))
        return eid

    def _page(  # noqa: PLR0913  (one page needs all of these)
        self,
        kind: str,
        flow: http.HTTPFlow,
        ev: Evaluation,
        now: float,
        *,
        reference: str,
        href: str | None = None,
    ) -> http.Response:
        engine = self.runtime.engine
        facts = PageFacts(
            url=flow.request.pretty_url,
            category=ev.decision.category,
            clause=ev.decision.clause,
            time=page_time(engine.config, now),
            reference=reference,
            notice=engine.notice.text,
            continue_href=href,
        )
        body, ctype = self.pages.body(kind, facts, flow.request.headers)
        headers = {**SECURITY_HEADERS, "x-aupguard-reference": reference, "content-type": ctype}
        return http.Response.make(403, body, headers)

    def suspended(self, flow: http.HTTPFlow, now: float) -> http.Response:
        """503 for every request while records cannot be kept (`spool_full: fail_closed`)."""
        engine = self.runtime.engine
        reference = new_event_id(now)
        facts = PageFacts(
            url=flow.request.pretty_url, category=None, clause=None,
            time=page_time(engine.config, now), reference=reference, notice=engine.notice.text,
        )  # fmt: skip
        body, ctype = self.pages.body("suspended", facts, flow.request.headers)
        headers = {**SECURITY_HEADERS, "x-aupguard-reference": reference, "retry-after": "60"}
        return http.Response.make(503, body, {**headers, "content-type": ctype})

    # --- TLS ----------------------------------------------------------------------------

    def on_client_hello(self, data: tls.ClientHelloData, modes: Iterable[str]) -> None:
        """Pass no-decrypt hosts through when the SNI is where the connection goes."""
        sni, client = host_of(data.client_hello.sni), data.context.client
        if refuses_without_sni(self.settings.no_sni, sni):
            data.ignore_connection = True  # not decrypted: server_connect refuses it
            self._refuse(client.id)
            if (
                record := no_sni_record(self.runtime.engine, data.context, time.time())
            ) is not None:
                self.emit(record)
            return
        if sni is None or not (
            self.settings.no_decrypt_hosts or self.settings.no_decrypt_categories
        ):
            return
        try:
            ev = self.runtime.engine.evaluate(
                client.peername[0], sni, source=Source.TLS, host_only=True
            )
        except ValueError:
            return
        if not no_decrypt(self.settings, ev):
            return
        now, destination = time.time(), data.context.server.address
        unproven = unproven_destination(sni, destination, tuple(modes), self.answers, now)
        blocked = ev.decision.action is Action.BLOCK
        if unproven is None or blocked:  # a refusal needs no proof: nothing is decrypted
            data.ignore_connection = True
            if blocked:
                self._refuse(client.id)
        # else: not provably where the connection goes: intercept and decide per request
        if ev.decision.action is not Action.ALLOW or self.settings.record_allowed:
            self._record(ev, now, extra=passthrough_fields(destination, unproven))

    def _refuse(self, client_id: str) -> None:
        self._refused[client_id] = None
        while len(self._refused) > 10_000:
            self._refused.popitem(last=False)

    def refused(self, client_id: str) -> bool:
        """True (once) for a client connection refused at the SNI."""
        return self._refused.pop(client_id, 0) is None

    # --- throttling (agent.shaping) ---------------------------------------------------

    def on_response_headers(self, flow: http.HTTPFlow, now: float) -> None:
        """Stream, count and pace large transfers in the throttle schedule."""
        if self.settings.worker is not None and flow.response is not None:
            flow.response.headers["x-aupguard-worker"] = self.settings.worker
        if self.shaper is not None and flow.metadata.get(MARK_KEY) not in {"block", "warn"}:
            groups = flow.metadata.get("aup_groups", frozenset())
            self.shaper.on_response_headers(flow, groups, now)

    def on_done(self, flow: http.HTTPFlow, now: float) -> None:
        """End a paced transfer (log and record it) and count buffered bodies."""
        if self.shaper is not None:
            paced = self.shaper.on_done(flow, now)
            if paced is not None:  # the `throttle` record that `aupguard report` counts
                extra = _throttle_extra(paced)
                self._record_url(flow, flow.request.pretty_url, self.user_of(flow), now, extra)

    def on_upload(self, flow: http.HTTPFlow, now: float) -> None:
        """Pace a large streamed upload in the throttle schedule (decided, not refused)."""
        if self.shaper is not None and flow.metadata.get(MARK_KEY) not in {"block", "warn"}:
            self.shaper.on_request_headers(flow, flow.metadata.get("aup_groups", ()), now)

    def on_request_start(self, flow: http.HTTPFlow) -> None:
        """A new request on a connection: its previous paced response has been delivered."""
        if self.shaper is not None:
            self.shaper.release(flow.client_conn)

    def on_client_gone(self, client: Any) -> None:
        """Forget per-connection pacing state; record a paced pass-through connection's end."""
        if self.shaper is not None:
            self.shaper.forget(client)
        ended = self.passthroughs.close(client) if self.passthroughs is not None else None
        if ended is None:
            return
        host, paced = ended
        now = time.time()
        try:
            ev = self.runtime.engine.evaluate(
                client.peername[0], host, now=now, source=Source.TLS, host_only=True
            )
        except ValueError:
            return  # an address the lists cannot name: logged (throttled_transfer), not recorded
        extra = {**_throttle_extra(paced), "aupguard.passthrough": True}
        self._record(ev, now, extra=extra)

    def on_passthrough(self, data: tls.ClientHelloData, now: float) -> None:
        """Count (and in the schedule pace) a connection passed through undecrypted."""
        client = data.context.client
        if self.passthroughs is None or not data.ignore_connection or client.id in self._refused:
            return
        address = data.context.server.address
        host = host_of(data.client_hello.sni) or host_of(address[0] if address else None)
        ip = client.peername[0]
        groups = self.runtime.engine.identity.identify(ip, self.users.lookup(ip)).groups
        self.passthroughs.watch(client, data.context.server, host or "", groups, now)

    def sweep(self, now: float) -> None:
        """Read pass-through connections' byte counts from the kernel (every SWEEP_EVERY s)."""
        if self.passthroughs is not None:
            self.passthroughs.sweep(now)


def _throttle_extra(paced: dict[str, Any]) -> dict[str, Any]:
    """The record fields of a paced transfer (the `throttle` record `aupguard report` counts)."""
    THROTTLED_BYTES.inc(paced["bytes"])
    return {
        "event.action": "throttle",
        "event.duration": int(paced["duration_s"] * 1e9),
        "aupguard.throttled": True,
        "aupguard.throttled_bytes": paced["bytes"],
    }
