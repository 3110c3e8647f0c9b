"""ClientHellos without SNI: intercepted or refused at the ClientHello per `proxy.no_sni`."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest

with warnings.catch_warnings():  # pyparsing deprecations inside mitmproxy's imports
    warnings.simplefilter("ignore", DeprecationWarning)
    from mitmproxy import tls
    from mitmproxy.addons import proxyserver
    from mitmproxy.proxy import context, server_hooks
    from mitmproxy.test import taddons, tflow

    from addons import enforce
from agent.config import NoSni
from agent.pipeline import Engine
from agent.tls_policy import NO_SNI_REASON, no_sni_record, refuses_without_sni
from tests.addons.test_enforce import Sink, _client_hello_bytes, write_policy


@pytest.mark.parametrize(
    ("policy", "sni", "refused"),
    [
        pytest.param(NoSni.INTERCEPT, "example.org", False, id="sni-intercept"),
        pytest.param(NoSni.INTERCEPT, None, False, id="no-sni-intercept"),
        pytest.param(NoSni.REFUSE, "example.org", False, id="sni-refuse-setting"),
        pytest.param(NoSni.REFUSE, None, True, id="no-sni-refused"),
    ],
)
def test_refuses_without_sni(policy: NoSni, sni: str | None, refused: bool) -> None:
    """Only a ClientHello without SNI under `no_sni: refuse` is refused."""
    assert refuses_without_sni(policy, sni) is refused


@pytest.mark.parametrize(
    ("destination", "recorded"),
    [
        pytest.param("192.0.2.7", True, id="address"),
        pytest.param(None, False, id="unknown-destination"),
    ],
)
def test_no_sni_record(destination: str | None, recorded: bool) -> None:
    """The refusal is recorded against the destination address with reason "no SNI"."""
    ctx_ = context.Context(tflow.tclient_conn(), None)  # type: ignore[arg-type]
    ctx_.client.peername = ("10.0.0.5", 50000)
    ctx_.server.address = (destination, 443) if destination else None
    record = no_sni_record(Engine.load(None), ctx_, 1_700_000_000.0)
    assert (record is not None) is recorded
    if record is not None:
        assert record["event"]["action"] == "refuse"
        assert record["event"]["reason"] == NO_SNI_REASON
        assert record["destination"]["address"] == destination
        assert "tls" not in record


def _hello_without_sni() -> bytes:
    """A minimal TLS 1.2 ClientHello body with no extensions at all (so no SNI)."""
    return b"\x03\x03" + b"\x00" * 32 + b"\x00" + b"\x00\x02\x00\x2f" + b"\x01\x00"


@pytest.fixture(params=[NoSni.INTERCEPT, NoSni.REFUSE], ids=["intercept", "refuse"])
def addon(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    policy = write_policy(tmp_path)
    text = policy.read_text().replace("proxy:\n", f"proxy:\n  no_sni: {request.param.value}\n", 1)
    policy.write_text(text)
    addon = enforce.Enforce()
    with taddons.context(proxyserver.Proxyserver(), addon) as tctx:
        tctx.configure(addon, aup_policy=str(policy), connection_strategy="lazy")
        addon.writer = Sink()
        yield addon, request.param


@pytest.mark.parametrize(
    ("sni", "refused_when_refuse"),
    [
        pytest.param("example.org", False, id="sni-present"),
        pytest.param(None, True, id="sni-absent"),
    ],
)
def test_addon_no_sni(addon: Any, sni: str | None, refused_when_refuse: bool) -> None:
    """SNI present/absent x intercept/refuse: only absent+refuse is refused and recorded."""
    plugin, policy = addon
    ctx_ = context.Context(tflow.tclient_conn(), None)  # type: ignore[arg-type]
    ctx_.client.peername = ("10.0.0.5", 50000)
    ctx_.server.address = ("192.0.2.7", 443)
    raw = _hello_without_sni() if sni is None else _client_hello_bytes(sni)
    data = tls.ClientHelloData(ctx_, tls.ClientHello(raw))
    plugin.tls_clienthello(data)
    refused = refused_when_refuse and policy is NoSni.REFUSE
    assert data.ignore_connection is refused  # refused before decrypting, else intercepted
    conn = server_hooks.ServerConnectionHookData(server=tflow.tserver_conn(), client=ctx_.client)
    conn.server.error = None
    plugin.server_connect(conn)
    assert (conn.server.error is not None) is refused
    records = json.loads(json.dumps(plugin.writer.records))
    assert [r["event"]["action"] for r in records] == (["refuse"] if refused else [])


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        pytest.param("intercept", True, id="intercept"),
        pytest.param("refuse", True, id="refuse"),
        pytest.param("drop", False, id="unknown-value"),
    ],
)
def test_config_value(tmp_path: Path, value: str, ok: bool) -> None:
    """`proxy.no_sni` accepts intercept or refuse; anything else is a config error."""
    policy = write_policy(tmp_path)
    policy.write_text(policy.read_text().replace("proxy:\n", f"proxy:\n  no_sni: {value}\n", 1))
    if ok:
        assert Engine.load(policy).config.proxy.no_sni == value
    else:
        with pytest.raises(Exception, match="no_sni"):
            Engine.load(policy)
