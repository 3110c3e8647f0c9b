"""record_template: a record encoded once renders the same line a dict record would."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from agent.record_template import RecordTemplate, render_stamps, slotted
from agent.records import format_timestamp
from agent.writer import MemorySink, RecordWriter
from tests.agent.test_writer import BlockingSink

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
    """A batch crossing a second (and a millisecond) boundary: every line its own stamp.

    Stamps of one run of datagrams share their time; the next may change only its
    microseconds, or carry into a new millisecond and second.
    """
    template = RecordTemplate.from_record(slotted(dns_record()))
    assert template is not None
    times = [NOW + k // 2 * 0.2999 for k in range(8)] + [
        *(1_795_000_000.9999996, 1_795_000_000.9999996),
        *(1_795_000_001.000042, 1_795_000_001.000043, 1_795_000_001.000043),
    ]
    ids = [k * 7919 % 65536 for k in range(len(times))]  # both bytes of the id in use
    stamps = [(template, t, i) for t, i in zip(times, ids, strict=True)]
    lines = [json.loads(x) for x in render_stamps(stamps)]
    assert [x["@timestamp"] for x in lines] == [format_timestamp(t) for t in times]
    assert [x["dns"]["id"] for x in lines] == ids
    # the id's milliseconds are the timestamp's, also where rounding carries into a new second
    assert [x["event"]["id"][:12] for x in lines] == [
        f"{round(t * 1_000_000) // 1000:012x}" for t in times
    ]
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
        writer.stamp(template, NOW, 7)
        writer.write({"n": 3})
    first, second, third = sink.records()
    assert (first, third) == ({"n": 1}, {"n": 3})
    assert second["dns"]["id"] == 7


def test_stamps_past_the_limit_or_after_close_are_counted_not_queued() -> None:
    """`stamp` is bounded like `write`: over the queue size, or once closed, it counts a drop."""
    sink = BlockingSink()
    template = RecordTemplate.from_record(slotted(dns_record()))
    assert template is not None
    writer = RecordWriter([sink], queue_size=2)
    writer.write({"n": 0})
    assert sink.entered.wait(5)  # the thread is stuck in the sink: stamps wait in the queue
    for k in range(1, 6):
        writer.stamp(template, NOW, k)
    assert writer.dropped == 3
    sink.release.set()
    assert writer.close(5)
    writer.stamp(template, NOW, 9)
    assert writer.dropped == 3 + 1
    assert [r["dns"]["id"] for r in sink.records() if "dns" in r] == [1, 2]


def test_a_stamp_that_cannot_be_rendered_is_counted_and_the_writer_goes_on() -> None:
    """A run of stamps that fails to render is dropped and reported; later records still go."""
    sink = MemorySink()
    template = RecordTemplate.from_record(slotted(dns_record()))
    assert template is not None
    with RecordWriter([sink]) as writer:
        writer.stamp(template, float("nan"), 1)  # a time with no timestamp: the render fails
        assert writer.flush(5)
        writer.write({"n": 2})
    report, after = sink.records()
    assert (report["event"]["action"], report["aupguard"]["dropped"]) == ("records-dropped", 1)
    assert after == {"n": 2}
    assert writer.dropped == 1
