"""DNS decision records: which queries are recorded, and trips counted per client.

Refused and rate-limited queries are counted per client and recorded once per interval with
the count, so a flood never becomes a record flood.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.config import DnsRecords
from agent.dns_cache import Verdicts
from agent.model import Client, Decision, Request
from agent.pipeline import Evaluation
from agent.record_template import RecordTemplate, slotted
from agent.runtime import Runtime
from agent.writer import RecordWriter

TRIP_INTERVAL = 10.0  # seconds: refused / rate-limited clients are recorded once per interval


class Recorder:
    """Decision records for DNS: which queries, the writer, and once-per-interval trips."""

    def __init__(self, mode: DnsRecords, writer: RecordWriter | None, runtime: Runtime) -> None:
        self.mode = mode
        self.writer = writer if mode is not DnsRecords.OFF else None
        self.runtime = runtime
        self._trips: dict[tuple[str, str], list[float]] = {}  # (kind, ip) -> [pending, last]
        # Queue one templated record (template, time, query bytes): the writer's own lock-free
        # `stamp`, called straight from the hot path; templates exist only with a writer.
        self.stamp: Callable[[RecordTemplate, float, int], None] = (
            self.writer.stamp if self.writer is not None else _no_writer
        )

    def wants(self, decision: Decision | None) -> bool:
        """Default: blocked/warned/logged queries; `all`: every query."""
        if self.writer is None:
            return False
        return self.mode is DnsRecords.ALL or (decision is not None and decision.action > 0)

    def emit(
        self, client: Client, verdict: tuple[Request, Decision], now: float, extra: dict[str, Any]
    ) -> None:
        """Queue one record (never blocks; the writer counts drops)."""
        if self.writer is not None:
            self.writer.write(self._build(client, verdict, now, extra))

    def template(
        self, client: Client, verdict: tuple[Request, Decision], extra: dict[str, Any]
    ) -> RecordTemplate | None:
        """The record of this answer as a template for `stamp` (None: use `emit`)."""
        if self.writer is None:
            return None
        return RecordTemplate.from_record(slotted(self._build(client, verdict, 0.0, extra)))

    def _build(
        self, client: Client, verdict: tuple[Request, Decision], now: float, extra: dict[str, Any]
    ) -> dict[str, Any]:
        request, decision = verdict
        record = self.runtime.engine.record(Evaluation(client, request, decision), now)
        # Every key of `extra` starts with an ECS root (dns, event, network, error, aupguard),
        # so a plain dotted-path set gives what `extra=` would, at a third of the cost.
        for key, value in extra.items():
            *parents, leaf = key.split(".")
            target = record
            for part in parents:
                target = target.setdefault(part, {})
            target[leaf] = value
        return record

    def trip(self, kind: str, client: Client, name: str, now: float) -> None:
        """Count a refused/rate-limited query; record the count at most once per interval."""
        if self.writer is None:
            return
        state = self._trips.setdefault((kind, client.ip), [0.0, 0.0])
        state[0] += 1
        if now - state[1] >= TRIP_INTERVAL:
            self._report(kind, client, name, int(state[0]), now)
            state[0], state[1] = 0.0, now

    def sweep(self, now: float) -> None:
        """Report pending trip counts and forget idle clients (bounded state)."""
        for (kind, ip), state in list(self._trips.items()):
            if state[0]:
                self._report(kind, Client(ip), "", int(state[0]), now)
                state[0], state[1] = 0.0, now
            elif now - state[1] >= TRIP_INTERVAL:
                del self._trips[(kind, ip)]

    def _report(self, kind: str, client: Client, name: str, count: int, now: float) -> None:
        verdict = Verdicts.synthetic(name, kind)
        self.emit(
            client,
            verdict,
            now,
            {
                "aupguard.dns.count": count,
                "aupguard.dns.outcome": kind,
                "dns.response_code": "REFUSED",
                "event.outcome": "failure",
            },
        )


def _no_writer(_template: RecordTemplate, _now: float, _dns_id: int) -> None:
    """`Recorder.stamp` with records off: never called, since no template is made."""
