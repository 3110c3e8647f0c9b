"""aupguard's mitmproxy addon: every HTTP request goes through `Engine.evaluate()`.

    mitmdump -s addons/enforce.py --set aup_policy=/etc/aupguard/policy.yaml \
             --set aup_records=/var/lib/aupguard/records.jsonl

The addon is an adapter: it identifies the client, asks the engine, and acts (page,
pass-through, record). Policy lives in the engine; pages, tokens and throttling in `agent/`.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from mitmproxy import connection, ctx, exceptions, http, tls
from mitmproxy.addonmanager import Loader
from mitmproxy.proxy import server_hooks

if str(Path(__file__).resolve().parent.parent) not in sys.path:  # `mitmdump -s addons/enforce.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent import cert_errors, streamed
from agent.config import NoticeConfig
from agent.enforcement import CONTINUE_PATH, MARK_KEY, SECURITY_HEADERS, Enforcer
from agent.errors import AupguardError
from agent.passthrough import SWEEP_EVERY
from agent.pipeline import Engine
from agent.proxy_settings import EnforcerSettings
from agent.runtime import Runtime, settle_gc
from agent.shipping import open_writer

MARK = MARK_KEY
WEAKENING_OPTIONS = ("emudhra", "emudhra_old")  # carried by the mitmproxy 12.3.1 wheel


class Enforce:
    """Decide, then block (403 page), warn (coaching page), log or allow."""

    def __init__(self, loader: Callable[[Path | None], Engine] = Engine.load) -> None:
        self._load_engine = loader
        self.runtime: Runtime | None = None
        self.enforcer: Enforcer | None = None
        self.writer: Any = None  # RecordWriter (or a test double with .write)
        self._records_key: tuple[object, ...] = ()

    def load(self, loader: Loader) -> None:
        """Register options; answered uploads get their page after the body (agent.streamed)."""
        streamed.install()
        loader.add_option("aup_policy", str, "", "aupguard baseline policy file (YAML).")
        loader.add_option("aup_records", str, "", "aupguard decision records (JSON lines file).")
        loader.add_option(
            "aup_writer", str, "proxy",
            "Name of this record writer: the configured records file, chain and spool are per "
            "writer (records.jsonl -> records.<name>.jsonl).",
        )  # fmt: skip

    def configure(self, updated: set[str]) -> None:
        """Load the policy, open records, and refuse options that weaken TLS or enforcement."""
        self._refuse_weakening()
        if "aup_policy" in updated or self.runtime is None:
            self._load_policy(ctx.options.aup_policy)
        if {"aup_policy", "aup_records", "aup_writer"} & updated:
            self._open_records(ctx.options.aup_records)
        if self.enforcer is not None and self.enforcer.settings.refuses_at_sni:
            strategy = getattr(ctx.options, "connection_strategy", "lazy")
            if strategy != "lazy":
                raise _refuse(
                    "connection_strategy: 'eager' silently passes connections refused at the "
                    "SNI (no-decrypt hosts that are blocked, proxy.no_sni: refuse): "
                    "set connection_strategy=lazy"
                )

    def _refuse_weakening(self) -> None:
        if ctx.options.ssl_insecure:
            raise _refuse("ssl_insecure: aupguard never disables upstream certificate verification")
        for name in WEAKENING_OPTIONS:
            if name in ctx.options and getattr(ctx.options, name):
                raise _refuse(f"{name}: signs with a compromised CA key: refused")

    def _load_policy(self, value: str) -> None:
        path = Path(value) if value else None
        try:
            engine = self._load_engine(path)
            settings = EnforcerSettings.from_config(engine.config)
        except (AupguardError, OSError, ValueError) as e:
            raise _refuse(f"aup_policy: {value!r}: {e}") from e
        # the proxy section is parsed once (EnforcerSettings); dns is the DNS filter's own
        runtime = self.runtime = Runtime(path, engine=engine, restart_only=("proxy", "records"))
        self.enforcer = Enforcer(runtime, settings, self._write, _proxyserver)
        pages = cert_errors.CertErrorPages(
            self.enforcer.pages, lambda: runtime.engine, self._write, SECURITY_HEADERS
        )
        cert_errors.install(pages)  # upstream certificate failures get aupguard's 502 page

    def _open_records(self, value: str) -> None:
        """The configured sinks (`records:` in the policy) plus `aup_records` as JSON lines."""
        if self.runtime is None:
            return
        sinks = replace(self.runtime.engine.config.records, notice=NoticeConfig())  # not the text
        key = (sinks, value, ctx.options.aup_writer)
        if key == self._records_key:
            return  # a policy reload that leaves the records settings alone keeps the writer
        self._records_key = key
        try:
            writer = open_writer(self.runtime.engine.config.records, writer=ctx.options.aup_writer,
                                 also=Path(value) if value else None)  # fmt: skip
        except (OSError, ValueError) as e:
            raise _refuse(f"aup_records/records: {value!r}: {e}") from e
        if self.writer is not None and hasattr(self.writer, "close"):
            self.writer.close(5)
        self.writer = writer

    def _write(self, record: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.write(record)

    def running(self) -> None:
        """Reload on SIGHUP; keep the garbage collector off the loaded engine (settle_gc)."""
        if self.runtime is not None:
            self.runtime.install_sighup(asyncio.get_running_loop())
            self.runtime.on_reload(lambda _engine: settle_gc())
        _every(1.0, self._flush_metrics)
        _every(SWEEP_EVERY, self._sweep)
        settle_gc()
        if not ctx.options.stream_large_bodies:
            # never buffer large bodies
            ctx.options.update(stream_large_bodies="1m")  # type: ignore[no-untyped-call]

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        """No-decrypt hosts pass through untouched (if SNI matches where the connection goes)."""
        if self.enforcer is not None:
            self.enforcer.on_client_hello(data, ctx.options.mode)
            self.enforcer.on_passthrough(data, time.time())  # counted and paced like HTTP

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        """Refuse connections that were refused at the SNI."""
        if self.enforcer is not None and self.enforcer.refused(data.client.id):
            data.server.error = "refused by policy at the TLS server name"

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Unpace the connection; decide now on a body mitmproxy streams (before it goes out)."""
        if self.enforcer is None:
            return
        self.enforcer.on_request_start(flow)
        if streamed.body_may_stream(flow.request) and flow.response is None:
            # a streamed body goes upstream before the `request` hook: decide on the headers
            self.request(flow)
            if flow.response is not None:  # answered (e.g. blocked): the page after the body
                if not streamed.answer_after_body(flow):
                    streamed.refuse(flow, _proxyserver(), _running_loop())
            else:
                self.enforcer.on_upload(flow, time.time())  # large uploads are paced too

    def client_disconnected(self, client: connection.Client) -> None:
        """Drop per-connection state."""
        if self.enforcer is not None:
            self.enforcer.on_client_gone(client)

    def request(self, flow: http.HTTPFlow) -> None:
        """Decide every request; act on the decision."""
        if flow.response is not None or MARK in flow.metadata or self.enforcer is None:
            return  # already handled (e.g. proxyauth's 407)
        if getattr(self.writer, "failing_closed", False):  # records.spool_full: fail_closed
            flow.metadata[MARK] = "suspended"
            flow.response = self.enforcer.suspended(flow, time.time())
            return
        if flow.request.path.startswith(CONTINUE_PATH):
            flow.metadata[MARK] = "continue"
            flow.response = self.enforcer.redeem(flow, time.time())
            return
        flow.metadata[MARK] = self.enforcer.enforce(flow, time.time())

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Stream large bodies (never buffer them) and pace them during the schedule."""
        if self.enforcer is not None:
            self.enforcer.on_response_headers(flow, time.time())

    def response(self, flow: http.HTTPFlow) -> None:
        """Finish throttling bookkeeping for the flow."""
        if self.enforcer is not None:
            self.enforcer.on_done(flow, time.time())

    def error(self, flow: http.HTTPFlow) -> None:
        """Finish throttling bookkeeping for a failed flow."""
        self.response(flow)

    def _sweep(self) -> None:
        """Count and pace pass-through connections from the kernel."""
        if self.enforcer is not None:
            self.enforcer.sweep(time.time())

    def _flush_metrics(self) -> None:
        """Push the hot path's counts into the Prometheus counters."""
        if self.enforcer is not None:
            self.enforcer.tally.flush()

    def done(self) -> None:
        """Drain records and counts on shutdown."""
        if self.enforcer is not None:
            self.enforcer.tally.flush()
        if self.writer is not None and hasattr(self.writer, "close"):
            self.writer.close(10)


def _proxyserver() -> Any:
    """Mitmproxy's proxyserver addon (agent.pacing reaches its connections)."""
    return ctx.master.addons.get("proxyserver")  # type: ignore[no-untyped-call]


def _every(seconds: float, action: Callable[[], None]) -> None:
    """Run `action` now and then every `seconds` on the running loop (a failure ends nothing)."""

    def tick() -> None:
        asyncio.get_running_loop().call_later(seconds, tick)  # first: keeps going if it raises
        action()

    tick()


def _running_loop() -> Any:
    """The event loop mitmproxy runs on (None outside it, e.g. in unit tests)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _refuse(message: str) -> exceptions.OptionsError:
    """An OptionsError (mitmproxy's constructor is untyped)."""
    return exceptions.OptionsError(message)  # type: ignore[no-untyped-call]


addons = [Enforce()]
