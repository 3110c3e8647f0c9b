"""DNS decision records: which queries are recorded, and trips counted per client.

Refused and rate-limited queries are counted per client and recorded once per interval with
the count, so a flood never becomes a record flood. At most `MAX_TRIP_CLIENTS` clients are
tracked: trips from more (a flood from spoofed addresses) are counted together and recorded
once per interval as one record from `0.0.0.0`, so neither memory nor records grow with the
number of addresses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dnslib import QTYPE

from agent.config import DnsRecords
from agent.dns_cache import Verdicts
from agent.model import Client, Decision, Request
from agent.pipeline import Evaluation
from agent.record_template import RecordTemplate, slotted
from agent.runtime import Runtime
from agent.writer import RecordWriter

TRIP_INTERVAL = 10.0  # seconds: refused / rate-limited clients are recorded once per interval
MAX_TRIP_CLIENTS = 10_000
UNTRACKED = Client("0.0.0.0")  # the client of a record counting trips from many addresses


@dataclass(slots=True)
class _Trips:
    """One client's refused or rate-limited queries since its last record."""

    count: int = 0
    reported: float = float("-inf")  # when the last record was written
    name: str = ""  # the last name asked, for the record
    qtype: int = 0  # and its type


class Recorder:
    """Decision records for DNS: which queries, the writer, and once-per-interval trips."""

    def __init__(self, mode: DnsRecords, writer: RecordWriter | None, runtime: Runtime) -> None:
        self.mode = mode
        self.writer = writer if mode is not DnsRecords.OFF else None
        self.runtime = runtime
        self._trips: dict[tuple[str, str], _Trips] = {}  # (kind, ip)
        # Queue one templated record (template, time, DNS id): the writer's own lock-free
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

    def trip(self, kind: str, client: Client, name: str, qtype: int, now: float) -> None:
        """Count a refused/rate-limited query; record the count at most once per interval."""
        if self.writer is None:
            return
        state = self._trips.get((kind, client.ip))
        if state is None:
            untracked = len(self._trips) >= MAX_TRIP_CLIENTS
            key = (kind, UNTRACKED.ip if untracked else client.ip)
            state = self._trips.setdefault(key, _Trips())
            client = UNTRACKED if untracked else client
        state.count += 1
        state.name, state.qtype = name, qtype
        if now - state.reported >= TRIP_INTERVAL:
            self._report(kind, client, state, now)

    def sweep(self, now: float, *, final: bool = False) -> None:
        """Record the counts that are due (all of them when `final`); forget idle clients."""
        for (kind, ip), state in list(self._trips.items()):
            if state.count and (final or now - state.reported >= TRIP_INTERVAL):
                self._report(kind, Client(ip), state, now)
            elif not state.count and now - state.reported >= TRIP_INTERVAL:
                del self._trips[(kind, ip)]

    def _report(self, kind: str, client: Client, state: _Trips, now: float) -> None:
        count, name = state.count, state.name
        state.count, state.reported = 0, now
        extra: dict[str, Any] = {
            "aupguard.dns.count": count,
            "aupguard.dns.outcome": kind,
            "dns.question.type": str(QTYPE.get(state.qtype, state.qtype)),
            "dns.response_code": "REFUSED",
            "event.outcome": "failure",
        }
        if client.ip == UNTRACKED.ip:
            extra["aupguard.dns.untracked"] = True  # from clients beyond MAX_TRIP_CLIENTS
        self.emit(client, Verdicts.synthetic(name, kind), now, extra)


def _no_writer(_template: RecordTemplate, _now: float, _dns_id: int) -> None:
    """`Recorder.stamp` with records off: never called, since no template is made."""
