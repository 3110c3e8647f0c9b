"""Helpers of the proxy's act stage: host normalisation, the hosts a flow names, settings errors."""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from dnslib import AAAA, QTYPE, RR, A, DNSRecord

from agent.dns_wire import to_wire
from agent.pipeline import Engine
from agent.proxy_settings import EnforcerSettings
from agent.recent_answers import AnswerRecorder, RecentAnswers, store_path
from agent.runtime import Runtime

with warnings.catch_warnings():  # pyparsing deprecations inside mitmproxy's imports
    warnings.simplefilter("ignore", DeprecationWarning)
    from mitmproxy.test import tflow

    from agent.enforcement import Enforcer, flow_hosts
    from tests.addons.test_enforce import client_hello, write_policy


def test_flow_hosts_distinct():
    """URL host, Host header, SNI and CONNECT authority are all collected, once each."""
    f = tflow.tflow()
    f.request.url = "https://a.test/x"
    f.request.headers["host"] = "B.test"
    f.client_conn.sni = "c.test"
    f.server_conn.address = ("a.test", 443)
    assert set(flow_hosts(f)) == {"a.test", "b.test", "c.test"}


# --- no-decrypt pass-through in transparent mode ---------------------------------------------

BANK_V4, BANK_V6 = "192.0.2.10", "2001:db8::10"


@pytest.fixture
def enforcer(tmp_path: Path) -> tuple[Enforcer, list[dict[str, Any]]]:
    """An Enforcer on the addon tests' policy (bank.test: no-decrypt; blocked for 10.9.9.9)."""
    engine = Engine.load(write_policy(tmp_path))
    settings = dataclasses.replace(EnforcerSettings.from_config(engine.config), record_allowed=True)
    records: list[dict[str, Any]] = []
    return Enforcer(Runtime(None, engine=engine), settings, records.append), records


def answer(enforcer: Enforcer, name: str, when: float) -> None:
    """The DNS filter answered `name` with BANK_V4 and BANK_V6 (TTL 30) at `when`."""
    rec = DNSRecord.question(name).reply()
    rec.add_answer(RR(name, QTYPE.A, rdata=A(BANK_V4), ttl=30))
    rec.add_answer(RR(name, QTYPE.AAAA, rdata=AAAA(BANK_V6), ttl=30))
    recorder = AnswerRecorder(
        store_path(enforcer.runtime.engine.config), min_ttl=600, max_ttl=86_400
    )
    recorder.record(to_wire(name), bytes(rec.pack()), when)
    assert recorder.flush()
    recorder.close()


@pytest.mark.parametrize(
    ("modes", "sni", "dest", "ip", "answered_ago", "ignored", "refused", "reason"),
    [
        pytest.param(
            ["transparent"], "bank.test", BANK_V4, "10.0.0.5", 1, True, False, None,
            id="answered-passes",
        ),
        pytest.param(
            ["transparent"], "bank.test", BANK_V6, "10.0.0.5", 1, True, False, None,
            id="answered-v6-passes",
        ),
        pytest.param(
            ["transparent"], "bank.test", f"::ffff:{BANK_V4}", "10.0.0.5", 1, True, False, None,
            id="v4-mapped-destination-passes",
        ),
        pytest.param(
            ["transparent"], "bank.test", "198.51.100.9", "10.0.0.5", 1, False, False,
            "destination_not_answered", id="other-destination-intercepted",
        ),
        pytest.param(
            ["transparent"], "www.bank.test", BANK_V4, "10.0.0.5", 1, False, False,
            "destination_not_answered", id="name-never-answered-intercepted",
        ),
        pytest.param(
            ["transparent"], "bank.test", BANK_V4, "10.0.0.5", 10_000, False, False,
            "destination_not_answered", id="answer-expired-intercepted",
        ),
        pytest.param(
            ["transparent"], "bank.test", BANK_V4, "10.9.9.9", 1, True, True, None,
            id="blocked-answered-refused",
        ),
        pytest.param(
            ["transparent"], "bank.test", "198.51.100.9", "10.9.9.9", 1, True, True,
            "destination_not_answered", id="blocked-mismatch-refused-not-decrypted",
        ),
        pytest.param(
            ["regular"], "bank.test", "bank.test", "10.0.0.5", None, True, False, None,
            id="explicit-authority-is-sni-passes",
        ),
        pytest.param(
            ["regular"], "bank.test", BANK_V4, "10.0.0.5", 1, False, False,
            "sni_not_connect_authority", id="explicit-dns-answer-is-not-enough",
        ),
        pytest.param(
            ["socks5"], "bank.test", BANK_V4, "10.0.0.5", 1, False, False,
            "mode_unverified", id="other-mode-intercepted",
        ),
    ],
)  # fmt: skip
def test_passthrough_needs_a_proven_destination(
    enforcer: tuple[Enforcer, list[dict[str, Any]]],
    modes: list[str],
    sni: str,
    dest: str,
    ip: str,
    answered_ago: float | None,
    ignored: bool,
    refused: bool,
    reason: str | None,
) -> None:
    """Transparent mode passes a no-decrypt host only to an address DNS answered for its SNI."""
    enf, records = enforcer
    if answered_ago is not None:
        answer(enf, "bank.test", time.time() - answered_ago)
    data = client_hello(sni, dest, ip)
    enf.on_client_hello(data, modes)
    assert data.ignore_connection is ignored
    assert enf.refused(data.context.client.id) is refused
    (record,) = records
    assert record["aupguard"]["passthrough"] is (reason is None)
    assert record["aupguard"].get("passthrough_refused_reason") == reason
    assert record["event"]["action"] == ("block" if refused else "allow")


def test_not_no_decrypt_is_left_alone(enforcer: tuple[Enforcer, list[dict[str, Any]]]) -> None:
    """Other hosts are intercepted as before, with no store lookup and no TLS record."""
    enf, records = enforcer
    data = client_hello("example.org", BANK_V4)
    enf.on_client_hello(data, ["transparent"])
    assert not data.ignore_connection
    assert records == []


def test_unreadable_store_intercepts(
    enforcer: tuple[Enforcer, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """A store the proxy cannot open reads as "not answered": the connection is intercepted."""
    enf, records = enforcer
    answer(enf, "bank.test", time.time())
    (tmp_path / "file").write_text("")
    enf.answers = RecentAnswers(tmp_path / "file" / "dns-answers.sqlite3")
    data = client_hello("bank.test", BANK_V4)
    enf.on_client_hello(data, ["transparent"])
    assert not data.ignore_connection
    assert records[0]["aupguard"]["passthrough_refused_reason"] == "destination_not_answered"
