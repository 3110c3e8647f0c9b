"""Record templates: a decision record encoded once, stamped per query in the writer thread.

The DNS filter answers the same decided question many times a second, and building plus
encoding the same record each time cost about 20 µs of every recorded query. A template is
that record built by the one record builder (`Engine.record`) and encoded once, split around
what changes per query: `@timestamp`, `event.id` (= `aupguard.reference_id`) and `dns.id`.
The hot path queues a `Stamp` (template, time, DNS id); the writer thread renders runs of
them with `render_stamps` (`agent.writer`), so a templated record is the same line a dict
record would have been.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

from agent.records import encode, iso_second

_TS, _ID, _DNS_ID = "@@aupguard-slot:ts@@", "@@aupguard-slot:id@@", "@@aupguard-slot:dns-id@@"
# The markers as encoded (quoted strings), in the order a DNS record holds them.
_ORDER = [f'"{_TS}"', f'"{_ID}"', f'"{_DNS_ID}"', f'"{_ID}"']
_SPLIT = re.compile("(" + "|".join(re.escape(m) for m in set(_ORDER)) + ")")


class RecordTemplate:
    """One record's JSON cut into the five pieces around its per-query values."""

    __slots__ = ("pieces",)

    def __init__(self, pieces: tuple[str, str, str, str, str]) -> None:
        self.pieces = pieces

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> RecordTemplate | None:
        """Encode a record whose per-query fields hold the slot markers (`slotted`).

        None when the record does not hold each marker exactly where expected (a value that
        happens to contain a marker, say): such records are written as dicts instead.
        """
        parts = _SPLIT.split(encode(record))  # text, marker, text, marker, ..., text
        text = parts[::2]
        if parts[1::2] != _ORDER or any(m in t for t in text for m in (_TS, _ID, _DNS_ID)):
            return None
        a, b, c, d, e = text
        return cls((a, b, c, d, e))

    def render(self, now: float, dns_id: int) -> str:
        """The record's JSON line for a query at `now` with this DNS transaction id."""
        (line,) = render_stamps([(self, now, dns_id)])
        return line


# What the hot path queues: template, time and DNS id. The id, not the query it comes from:
# a queued query outlives its answer by a batch, which cost more than reading the id (bench_dns).
Stamp = tuple[RecordTemplate, float, int]


_DIGITS3 = [f"{n:03d}" for n in range(1000)]  # zero-padded, cheaper than a format spec
_BIT48 = 1 << 48  # hex(ms | _BIT48)[3:]: the 12 hex digits of 48-bit milliseconds


def render_stamps(stamps: Sequence[Stamp]) -> list[str]:
    """Each stamp's JSON line, in order: the writer thread's inner loop, so kept flat.

    The timestamp is `records.format_timestamp` and the event id `records.new_event_id`
    (48-bit milliseconds + 56 random bits), inlined, and built only when the time changes:
    the UDP listener reads the clock once per run of datagrams, so most stamps of a batch
    share theirs. The random parts come from one `hex` split. A third of the cost of
    calling those functions per stamp (tested against them). The id's milliseconds are
    the timestamp's.
    """
    randoms = os.urandom(7 * len(stamps)).hex(" ", 7).split()
    lines: list[str] = []
    append = lines.append
    last_now, last_ms, ts, ts_ms, id_ms = -1.0, -1, "", "", ""
    for (template, now, dns_id), random in zip(stamps, randoms, strict=True):
        if now != last_now:
            last_now = now
            micros = round(now * 1_000_000)
            ms = micros // 1000
            if ms != last_ms:
                last_ms = ms
                sec, in_sec = divmod(ms, 1000)
                ts_ms = f'"{iso_second(sec)}.{_DIGITS3[in_sec]}'
                id_ms = '"' + hex(ms | _BIT48)[3:]
            ts = f'{ts_ms}{_DIGITS3[micros % 1000]}Z"'
        a, b, c, d, e = template.pieces
        append(f'{a}{ts}{b}{id_ms}{random}"{c}{dns_id}{d}{id_ms}{random}"{e}')
    return lines


def slotted(record: dict[str, Any]) -> dict[str, Any]:
    """Put the slot markers into a freshly built DNS record's per-query fields (in place)."""
    record["@timestamp"] = _TS
    record["event"]["id"] = _ID
    record["dns"]["id"] = _DNS_ID
    record["aupguard"]["reference_id"] = _ID
    return record
