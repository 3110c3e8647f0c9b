"""A full disk under the records file, for real: `aupguard dns` answering while a tmpfs fills.

Needs root to mount a small tmpfs; skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from agent.chain import generate_key
from tests.integration.conftest import (
    DnsProcess,
    DnsUpstream,
    Rsyslog,
    dns_start,
    dns_write_config,
    fill,
    needs_rsyslog,
)

pytestmark = pytest.mark.integration
HOST = "127.0.0.1"


def blocked(port: int, name: str) -> None:
    reply = dns.query.udp(dns.message.make_query(name, "A"), HOST, port=port, timeout=3)
    assert reply.rcode() == dns.rcode.NXDOMAIN, name


def records_config(tmp_path: Path, records: Path, extra: str = "") -> Path:
    """The DNS test config with its records file at `records` (plus `extra` records keys)."""
    config = dns_write_config(tmp_path / "cfg")
    text = config.read_text().replace(
        'records:\n  notice: {text: "We monitor."}',
        f'records:\n  notice: {{text: "We monitor."}}\n  file: {records}{extra}',
    )
    assert "file:" in text
    config.write_text(text)
    return config


def through_a_full_disk(
    config: Path, upstream: DnsUpstream, disk: Path, *, restart: bool = False
) -> list[str]:
    """Run `aupguard dns`: 300 blocked queries while `disk` is full, 20 once space is back,
    then SIGTERM; its log lines. With `restart`, it is stopped while the disk is still full
    and started again once space is back."""
    filler = fill(disk, leave=6000)
    output: list[str] = []
    server, reader = start(config, upstream, output)
    try:
        for n in range(300):  # ~700 bytes of record each: the disk is full after ~10
            blocked(server.port, f"before{n}.blocked.test")
            if n % 20 == 0:
                time.sleep(0.01)  # let the writer take batches, each of which fails
        time.sleep(0.5)
        if restart:
            stop(server, reader)
        filler.unlink()
        if restart:
            server, reader = start(config, upstream, output)
        for n in range(20):
            blocked(server.port, f"after{n}.blocked.test")
        time.sleep(1.5)  # the writer lingers 1 ms; a second is ample for 20 records
    finally:
        stop(server, reader)
    return output


def start(
    config: Path, upstream: DnsUpstream, output: list[str]
) -> tuple[DnsProcess, threading.Thread]:
    """`aupguard dns` on `config`, its log lines collected into `output` as they come."""
    server = dns_start(config, "--listen", f"{HOST}:0", "--upstream", f"{HOST}:{upstream.port}")
    output.extend(server.output)
    reader = threading.Thread(target=lambda: output.extend(server.proc.stdout or ()), daemon=True)
    reader.start()
    return server, reader


def stop(server: DnsProcess, reader: threading.Thread) -> None:
    """SIGTERM; it must exit cleanly."""
    try:
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(20) == 0
    finally:
        server.stop()
    reader.join(5)


def test_a_full_records_disk_neither_stops_answers_nor_floods_the_log(
    dns_upstream: DnsUpstream, tmp_path: Path, small_disk: Path
) -> None:
    """The filter keeps answering while its records file cannot grow; the log says so once
    (not per batch) and again when space is back; the records written after that parse."""
    config = records_config(tmp_path, small_disk / "records.jsonl")
    output = through_a_full_disk(config, dns_upstream, small_disk)
    events = [json.loads(line).get("event") for line in output if line.startswith("{")]
    sink_events = [e for e in events if e and e.startswith("records.sink")]
    assert sink_events == ["records.sink_failed", "records.sink_recovered"], sink_events
    lines = (small_disk / "records.dns.jsonl").read_text().splitlines()
    names = []
    for line in lines[:-20]:
        try:
            names.append(json.loads(line)["dns"]["question"]["name"])
        except ValueError:
            names.append("torn")
    assert names.count("torn") <= 1
    assert names[0] == "before0.blocked.test"
    after = [json.loads(line)["dns"]["question"]["name"] for line in lines[-20:]]
    assert after == [f"after{n}.blocked.test" for n in range(20)]


@pytest.mark.parametrize("restart", [False, True], ids=["running", "restarted-while-full"])
def test_a_full_disk_under_a_chained_file_verifies_as_a_declared_loss(
    dns_upstream: DnsUpstream, tmp_path: Path, small_disk: Path, restart: bool
) -> None:
    """With a hash chain, what the full disk refused is declared in the chain, and
    `logs verify` reports it as lost (exit 3); it used to report tampering (`inserted` at
    the torn line, or `deleted`). Stopped while the disk is full, the gateway goes on after
    the last seq it issued (saved beside the file) instead of issuing those seqs again."""
    key = tmp_path / "chain.key"
    generate_key(key)
    config = records_config(tmp_path, small_disk / "records.jsonl", f"\n  chain_key_file: {key}")
    through_a_full_disk(config, dns_upstream, small_disk, restart=restart)
    verified = subprocess.run(
        [sys.executable, "-m", "agent", "logs", "verify", "--key", str(key),
         str(small_disk / "records.dns.jsonl")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert verified.returncode == 3, verified.stdout + verified.stderr
    lost = [line for line in verified.stdout.splitlines() if ": lost: records seq " in line]
    assert len(lost) == 1, verified.stdout
    assert "intact, with losses" in verified.stdout


@needs_rsyslog
def test_a_loss_the_disk_never_took_back_verifies_against_the_collectors_head(
    dns_upstream: DnsUpstream, tmp_path: Path, small_disk: Path, rsyslog: Rsyslog
) -> None:
    """The records file's disk is full, the collector (a real rsyslog) takes every record,
    and the gateway stops before space comes back. The head it ships at the end names what
    the file missed, so `logs verify --head` against the collector's output reports a loss
    (exit 3), not a cut tail or a torn line."""
    key = tmp_path / "chain.key"
    generate_key(key)
    extra = (f"\n  chain_key_file: {key}\n  syslog: 127.0.0.1:{rsyslog.port}"
             f"\n  spool_dir: {tmp_path / 'spool'}")  # fmt: skip
    config = records_config(tmp_path, small_disk / "records.jsonl", extra)
    filler = fill(small_disk, leave=6000)
    output: list[str] = []
    server, reader = start(config, dns_upstream, output)
    try:
        for n in range(100):
            blocked(server.port, f"lost{n}.blocked.test")
        time.sleep(0.5)
    finally:
        stop(server, reader)
    filler.unlink()
    got = rsyslog.records(101)  # the 100 records and the head shipped at the end
    names = [r["dns"]["question"]["name"] for r in got if "dns" in r]  # type: ignore[index]
    assert names == [f"lost{n}.blocked.test" for n in range(100)]
    head = [r for r in got if r["event"]["action"] == "chain-head"][-1]  # type: ignore[index]
    assert head["aupguard"]["chain_head"]["lost"], head  # type: ignore[index]
    verified = subprocess.run(
        [sys.executable, "-m", "agent", "logs", "verify", "--key", str(key), "--head",
         str(rsyslog.out), str(small_disk / "records.dns.jsonl")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert verified.returncode == 3, verified.stdout + verified.stderr
    assert ": lost: records seq " in verified.stdout
    assert "reaches the shipped head" in verified.stdout
