"""record_template: a record encoded once renders the same line a dict record would."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from agent.record_template import RecordTemplate, render_stamps, slotted
from agent.records import format_timestamp
from agent.writer import MemorySink, RecordWriter

NOW = 1_795_000_000.123456


def dns_record(name: str = "poker.example", reason: str = "block: gambling") -> dict[str, Any]:
    return {
        "@timestamp": "",
        "event": {"id": "", "action": "block", "reason": reason},
        "dns": {"question": {"name": name}, "id": 0, "type": "answer"},
        "source": {"ip": "10.1.2.3"},
        "aupguard": {"reference_id": "", "category": "gambling", "count": 3},
    }


@pytest.mark.parametrize(
    "record",
    [
        pytest.param(dns_record(), id="plain"),
        pytest.param(dns_record(reason="100% personal use"), id="percent-sign"),
        pytest.param(dns_record(reason='café \u2028 "quoted" \\ back'), id="escapes"),
    ],
)
def test_render_is_the_record_with_its_per_query_fields(record: dict[str, Any]) -> None:
    """Rendering fills timestamp, event id (twice) and DNS id; everything else is unchanged."""
    template = RecordTemplate.from_record(slotted(copy.deepcopy(record)))
    assert template is not None
    line = json.loads(template.render(NOW, 4242))
    expected = copy.deepcopy(record)
    expected["@timestamp"] = format_timestamp(NOW)
    expected["event"]["id"] = expected["aupguard"]["reference_id"] = line["event"]["id"]
    expected["dns"]["id"] = 4242
    assert line == expected
    assert line["event"]["id"].startswith(f"{int(NOW * 1000):012x}")


def test_each_render_has_its_own_event_id() -> None:
    template = RecordTemplate.from_record(slotted(dns_record()))
    assert template is not None
    ids = {json.loads(template.render(NOW, 1))["event"]["id"] for _ in range(5000)}
    assert len(ids) == 5000


def test_a_run_of_stamps_renders_each_with_its_own_time_and_id() -> None:
    """A batch crossing a second (and a millisecond) boundary: every line its own stamp."""
    template = RecordTemplate.from_record(slotted(dns_record()))
    assert template is not None
    times = [NOW + k * 0.2999 for k in range(8)] + [1_795_000_000.9999996, 1_795_000_001.000042]
    lines = [json.loads(x) for x in render_stamps([(template, t, k) for k, t in enumerate(times)])]
    assert [x["@timestamp"] for x in lines] == [format_timestamp(t) for t in times]
    assert [x["dns"]["id"] for x in lines] == list(range(len(times)))
    assert [x["event"]["id"][:12] for x in lines] == [f"{int(t * 1000):012x}" for t in times]
    assert all(x["event"]["id"] == x["aupguard"]["reference_id"] for x in lines)
    assert len({x["event"]["id"] for x in lines}) == len(times)


def test_a_record_with_its_fields_in_another_order_is_not_templated() -> None:
    """The pieces assume the DNS record's key order; anything else is written as a dict."""
    record = dns_record()
    record = {"dns": record.pop("dns"), **record}
    assert RecordTemplate.from_record(slotted(record)) is None


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("@@aupguard-slot:id@@", id="marker-in-a-value"),
        pytest.param('"@@aupguard-slot:ts@@"', id="quoted-marker-in-a-value"),
    ],
)
def test_a_value_holding_a_marker_is_not_templated(name: str) -> None:
    """Such records are written as dicts instead (the caller falls back to `emit`)."""
    assert RecordTemplate.from_record(slotted(dns_record(name=name))) is None


def test_writer_renders_stamps_in_order_with_dicts() -> None:
    """The writer thread renders queued stamps between dict records, in queue order."""
    sink = MemorySink()
    template = RecordTemplate.from_record(slotted(dns_record()))
    assert template is not None
    with RecordWriter([sink]) as writer:
        writer.write({"n": 1})
        writer.write((template, NOW, 7))
        writer.write({"n": 3})
    first, second, third = sink.records()
    assert (first, third) == ({"n": 1}, {"n": 3})
    assert second["dns"]["id"] == 7
