"""open_writer: one records file, chain and spool per writer, plus the plain --records file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.chain import generate_key, load_key, verify
from agent.config import RecordsSection
from agent.rotation import rotated_files
from agent.shipping import open_writer


def test_each_writer_has_its_own_verifiable_chain(tmp_path: Path) -> None:
    """Two writers on one configured file write two files whose chains verify separately."""
    key = tmp_path / "chain.key"
    generate_key(key)
    section = RecordsSection(file=tmp_path / "records.jsonl", chain_key_file=key)
    also = tmp_path / "plain.jsonl"
    writers = {name: open_writer(section, writer=name, also=also) for name in ("dns", "proxy-2")}
    for n in range(10):
        for name, writer in writers.items():
            assert writer is not None
            writer.write({"event": {"id": f"{name}-{n}"}})
    for writer in writers.values():
        assert writer is not None
        writer.close(5)
    for name in writers:
        files = rotated_files(tmp_path / f"records.{name}.jsonl")
        assert files, name
        result = verify([Path(f) for f in files], load_key(key))
        assert result.ok, result.problem
        assert result.records == 10
    plain = [json.loads(line) for line in also.read_text().splitlines()]
    assert len(plain) == 20
    assert not (tmp_path / "records.jsonl").exists()


def test_no_sinks_no_writer() -> None:
    """Without a records file, syslog or --records there is nothing to write to."""
    assert open_writer(RecordsSection(), writer="dns") is None


@pytest.mark.parametrize(
    ("section", "message"),
    [
        pytest.param(RecordsSection(syslog="collector"), "expected host:port", id="syslog-no-port"),
        pytest.param(
            RecordsSection(syslog="127.0.0.1:6514"),
            "records.spool_dir: required",
            id="syslog-no-spool",
        ),
    ],
)
def test_bad_shipping_settings_say_which_key(section: RecordsSection, message: str) -> None:
    """A bad records: section is refused with the key named, before anything is written."""
    with pytest.raises(ValueError, match=message):
        open_writer(section, writer="dns")


def test_writer_reports_fail_closed_from_the_syslog_spool(tmp_path: Path) -> None:
    """The writer's failing_closed follows the syslog spool's flag (set when it is full)."""
    section = RecordsSection(
        syslog="127.0.0.1:9", spool_dir=tmp_path / "spool", spool_full="fail_closed"
    )
    writer = open_writer(section, writer="dns")
    assert writer is not None
    assert not writer.failing_closed
    assert writer.halt is not None
    writer.halt.set()  # what a full spool does under fail_closed (tests/integration/test_syslog.py)
    assert writer.failing_closed
    writer.halt.clear()
    assert not writer.failing_closed
    writer.close(5)
