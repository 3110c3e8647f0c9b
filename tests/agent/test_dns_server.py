"""dns_server: settings from flags, rate limiting, trip records and the in-process core."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path
from typing import Any

import pytest
from dnslib import RCODE, DNSRecord

from agent.config import DnsRecords, DnsSection
from agent.dns_records import Recorder
from agent.dns_server import DnsFilter, Lookup, make_settings
from agent.runtime import Runtime

POLICY = """\
layer: test
policy:
  timezone: UTC
  categories:
    gambling: {clause: "No gambling.", lists: [blocked.txt]}
  groups:
    local: {networks: [127.0.0.0/8]}
  rules:
    - {id: no-gambling, categories: [gambling], action: block}
dns:
  upstreams: ["127.0.0.1:9"]
records:
  notice: {text: "We monitor."}
lists:
  cache_dir: cache
"""


def args(**kw: Any) -> argparse.Namespace:
    base: dict[str, Any] = {"listen": [], "upstream": [], "allow_clients": None, "records": None}
    return argparse.Namespace(**{**base, **kw})


@pytest.mark.parametrize(
    ("flags", "listen", "upstreams", "nets"),
    [
        pytest.param(
            {}, [("127.0.0.1", 5353)], [("192.0.2.53", 53)], ["127.0.0.0/8", "::1/128"], id="config"
        ),
        pytest.param(
            {
                "listen": ["[::1]:5300", "127.0.0.1:0"],
                "upstream": ["192.0.2.9:5300"],
                "allow_clients": "10.0.0.0/8, 192.168.1.0/24",
            },
            [("::1", 5300), ("127.0.0.1", 0)],
            [("192.0.2.9", 5300)],
            ["10.0.0.0/8", "192.168.1.0/24"],
            id="flags-override",
        ),
    ],
)
def test_make_settings(
    flags: dict[str, Any], listen: list, upstreams: list, nets: list[str]
) -> None:
    """Flags override the dns section; IPv6 listens in brackets."""
    section = DnsSection(upstreams=("192.0.2.53",))
    settings = make_settings(section, args(**flags))
    assert list(settings.listen) == listen
    assert list(settings.upstreams) == upstreams
    assert [str(n) for n in settings.section.allow_clients] == nets


@pytest.mark.parametrize(
    "flags",
    [
        pytest.param({"allow_clients": "10.0.0.0/33"}, id="bad-cidr"),
        pytest.param({"listen": ["[::1"]}, id="bad-listen"),
        pytest.param({}, id="no-upstreams"),
    ],
)
def test_make_settings_rejects(flags: dict[str, Any], tmp_path: Path) -> None:
    """Bad flags (or no upstream at all, not even in resolv.conf) raise ValueError for the CLI."""
    with pytest.raises(ValueError):
        make_settings(DnsSection(), args(**flags), resolv_conf=tmp_path / "no-resolv.conf")


def test_make_settings_falls_back_to_resolv_conf(tmp_path: Path) -> None:
    """With no upstream configured, the host's resolvers are used."""
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 192.0.2.53\n")
    assert make_settings(DnsSection(), args(), resolv_conf=conf).upstreams == (("192.0.2.53", 53),)


class ListWriter:
    failing_closed = False

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any]) -> bool:
        self.records.append(record)
        return True


@pytest.fixture
def runtime(tmp_path: Path) -> Runtime:
    (tmp_path / "blocked.txt").write_text("blocked.test\n")
    (tmp_path / "policy.yaml").write_text(
        POLICY.replace("cache_dir: cache", f"cache_dir: {tmp_path / 'cache'}")
    )
    return Runtime(tmp_path / "policy.yaml")


def core(
    runtime: Runtime, mode: DnsRecords = DnsRecords.DEFAULT, **flags: Any
) -> tuple[DnsFilter, ListWriter]:
    writer = ListWriter()
    recorder = Recorder(mode, writer, runtime)  # type: ignore[arg-type]
    settings = make_settings(runtime.engine.config.dns, args(**flags))
    return DnsFilter(settings, runtime, recorder), writer


def test_trips_are_recorded_once_per_interval(runtime: Runtime) -> None:
    """Refused queries from one client give one record per interval, with the count."""
    dns, writer = core(runtime, allow_clients="10.0.0.0/8")
    packet = bytes(DNSRecord.question("a.example").pack())
    for i in range(50):
        reply = dns.answer(packet, "127.0.0.1", 1000.0 + i * 0.1, udp=True)
        assert isinstance(reply, bytes)
        assert reply[3] & 0x0F == 5
    dns.recorder.sweep(1005.0)
    counts = [r["aupguard"]["dns"]["count"] for r in writer.records]
    assert counts == [1, 49]


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        pytest.param("blocked.test", bytes, id="blocked-prepared"),
        pytest.param("x.blocked.test", bytes, id="subdomain-prepared"),
        pytest.param("fine.example", Lookup, id="allowed-needs-upstream"),
        pytest.param("use-application-dns.net", bytes, id="canary"),
    ],
)
def test_answer_paths(runtime: Runtime, name: str, kind: type) -> None:
    """Blocked and bypass names are answered at once; others need the upstreams."""
    dns, _ = core(runtime)
    result = dns.answer(bytes(DNSRecord.question(name).pack()), "127.0.0.1", 1000.0, udp=True)
    assert isinstance(result, kind)


def test_fail_closed_answers_servfail(runtime: Runtime) -> None:
    """While records cannot be kept under `spool_full: fail_closed`, every query gets SERVFAIL."""
    dns, writer = core(runtime)
    writer.failing_closed = True
    for name in ("fine.example", "blocked.test"):
        reply = dns.answer(bytes(DNSRecord.question(name).pack()), "127.0.0.1", 1000.0, udp=True)
        assert isinstance(reply, bytes)
        assert DNSRecord.parse(reply).header.rcode == RCODE.SERVFAIL
    writer.failing_closed = False
    assert isinstance(dns.answer(bytes(DNSRecord.question("fine.example").pack()), "127.0.0.1", 1000.0, udp=True), Lookup)


def test_reload_swaps_memo(runtime: Runtime, tmp_path: Path) -> None:
    """After a reload the new list decides, even for a memoised name."""
    dns, _ = core(runtime)
    packet = bytes(DNSRecord.question("late.test").pack())
    assert isinstance(dns.answer(packet, "127.0.0.1", 1000.0, udp=True), Lookup)
    (tmp_path / "blocked.txt").write_text("blocked.test\nlate.test\n")
    assert runtime.reload().ok
    assert isinstance(dns.answer(packet, "127.0.0.1", 1000.0, udp=True), bytes)


def test_allow_clients_membership(runtime: Runtime) -> None:
    """IPv6 and scoped addresses are checked against allow_clients."""
    dns, _ = core(runtime, allow_clients="::1/128,10.0.0.0/8")
    assert dns._is_allowed("::1")
    assert dns._is_allowed("10.1.2.3")
    assert not dns._is_allowed("127.0.0.1")
    assert not dns._is_allowed("not-an-ip")
    assert ipaddress.ip_network("10.0.0.0/8") in dns.allow_clients
