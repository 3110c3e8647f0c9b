"""Record templates: a decision record encoded once, stamped per query in the writer thread.

The DNS filter answers the same decided question many times a second, and building plus
encoding the same record each time cost about 20 µs of every recorded query. A template is
that record built by the one record builder (`Engine.record`) and encoded once, with slots
for what changes per query: `@timestamp`, `event.id` (= `aupguard.reference_id`) and
`dns.id`. The hot path queues a `Stamp` (template, time, DNS id); the writer thread renders
it (`agent.writer`), so a templated record is the same line a dict record would have been.
"""

from __future__ import annotations

import operator
import re
from typing import Any

from agent.records import format_timestamp, new_event_id
from agent.writer import encode

_TS, _ID, _DNS_ID = "@@aupguard-slot:ts@@", "@@aupguard-slot:id@@", "@@aupguard-slot:dns-id@@"
# each marker as encoded (a quoted string) -> (index of its value in `render`, its format)
_SLOTS = {f'"{_TS}"': (0, '"%s"'), f'"{_ID}"': (1, '"%s"'), f'"{_DNS_ID}"': (2, "%d")}
_EXPECTED = sorted([f'"{_TS}"', f'"{_ID}"', f'"{_ID}"', f'"{_DNS_ID}"'])  # the id appears twice
_SPLIT = re.compile("(" + "|".join(re.escape(m) for m in _SLOTS) + ")")


class RecordTemplate:
    """One record's JSON with `%s` slots for its timestamp, event id and DNS id."""

    __slots__ = ("_format", "_order")

    def __init__(self, fmt: str, order: tuple[int, ...]) -> None:
        self._format = fmt
        self._order = operator.itemgetter(*order)  # slot values in the order they appear

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> RecordTemplate | None:
        """Encode a record whose per-query fields hold the slot markers (`slotted`).

        None when the record does not hold each marker exactly where expected (a value that
        happens to contain a marker, say): such records are written as dicts instead.
        """
        text = encode(record).replace("%", "%%")
        pieces = _SPLIT.split(text)  # text, marker, text, marker, ..., text
        markers = pieces[1::2]
        if sorted(markers) != _EXPECTED or any(
            key in piece for piece in pieces[::2] for key in (_TS, _ID, _DNS_ID)
        ):
            return None
        fmt = "".join(_SLOTS[p][1] if i % 2 else p for i, p in enumerate(pieces))
        return cls(fmt, tuple(_SLOTS[m][0] for m in markers))

    def render(self, now: float, dns_id: int) -> str:
        """The record's JSON line for a query at `now` with this DNS transaction id."""
        line: str = self._format % self._order((format_timestamp(now), new_event_id(now), dns_id))
        return line


Stamp = tuple[RecordTemplate, float, int]  # what the hot path queues: template, time, DNS id


def slotted(record: dict[str, Any]) -> dict[str, Any]:
    """Put the slot markers into a freshly built DNS record's per-query fields (in place)."""
    record["@timestamp"] = _TS
    record["event"]["id"] = _ID
    record["aupguard"]["reference_id"] = _ID
    record["dns"]["id"] = _DNS_ID
    return record
