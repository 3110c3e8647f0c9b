"""Upstream certificate failures: plain-word reasons, aupguard's 502 page, record, and the hook."""

from __future__ import annotations

import json
import warnings
from typing import Any

import pytest

with warnings.catch_warnings():  # pyparsing deprecations inside mitmproxy's imports
    warnings.simplefilter("ignore", DeprecationWarning)
    from mitmproxy import http
    from mitmproxy.proxy.layers.http import HttpStream
    from mitmproxy.proxy.layers.http._events import ErrorCode, ResponseProtocolError
    from mitmproxy.test import tflow

from agent import cert_errors
from agent.cert_errors import CertErrorPages, reason_of
from agent.pages import Pages
from agent.pipeline import Engine


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        pytest.param(
            "Certificate verify failed: self-signed certificate",
            "the site's certificate is not trusted",
            id="self-signed",
        ),
        pytest.param(
            "Certificate verify failed: unable to get local issuer certificate",
            "the site's certificate is not trusted",
            id="unknown-issuer",
        ),
        pytest.param(
            "Certificate verify failed: certificate has expired",
            "the site's certificate has expired",
            id="expired",
        ),
        pytest.param(
            "Certificate verify failed: certificate is not yet valid",
            "the site's certificate is not valid yet",
            id="not-yet-valid",
        ),
        pytest.param(
            "Certificate verify failed: hostname mismatch",
            "the site's certificate is for another name",
            id="other-name",
        ),
        pytest.param(
            "Certificate verify failed: certificate revoked",
            "the site's certificate has been revoked",
            id="revoked",
        ),
        pytest.param("Connection refused", None, id="not-a-certificate-failure"),
    ],
)
def test_reason_of(message: str, reason: str | None) -> None:
    """OpenSSL's verify errors become plain words; other connect failures are not ours."""
    assert reason_of(message) == reason


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load(None)


def _pages(engine: Engine, records: list[dict[str, Any]]) -> CertErrorPages:
    return CertErrorPages(Pages(), lambda: engine, records.append, {"cache-control": "no-store"})


def _flow(url: str, headers: dict[str, str]) -> http.HTTPFlow:
    f = tflow.tflow()
    f.request.url = url
    f.request.headers.clear()
    f.request.headers.update(headers)
    f.client_conn.peername = ("10.0.0.5", 50000)
    return f


@pytest.mark.parametrize(
    ("headers", "ctype", "needle"),
    [
        pytest.param(
            {"accept": "text/html", "sec-fetch-dest": "document"},
            "text/html",
            "This site could not be reached safely",
            id="navigation-page",
        ),
        pytest.param({"accept": "application/json"}, "application/json", '"reason"', id="json"),
        pytest.param({"accept": "text/plain"}, "text/plain", "upstream_error", id="text"),
    ],
)
def test_page_and_record(engine: Engine, headers: dict[str, str], ctype: str, needle: str) -> None:
    """A verify failure gives a 502 with the reason, the escaped URL and a recorded reference."""
    records: list[dict[str, Any]] = []
    flow = _flow("https://bad.example/<script>x</script>", headers)
    response = _pages(engine, records)(flow, "Certificate verify failed: certificate has expired")
    assert response is not None
    assert response.status_code == 502
    assert response.headers["content-type"].startswith(ctype)
    text = response.get_text() or ""
    assert needle in text
    assert "certificate has expired" in text
    if ctype == "text/html":
        assert "<script>x" not in text  # escaped
    (record,) = json.loads(json.dumps(records))
    assert record["event"]["id"] == response.headers["x-aupguard-reference"]
    assert record["event"]["action"] == "error"
    assert record["event"]["outcome"] == "failure"
    assert record["error"]["message"].endswith("certificate has expired")


def test_other_failures_left_to_mitmproxy(engine: Engine) -> None:
    """A connect failure that is no certificate problem gets no page and no record."""
    records: list[dict[str, Any]] = []
    flow = _flow("https://down.example/", {"accept": "text/html"})
    assert _pages(engine, records)(flow, "Connection refused") is None
    assert records == []


class _Stream:
    """Stands in for an HttpStream whose connect failed (the attributes the hook reads)."""

    def __init__(self, done: bool) -> None:
        self.flow = tflow.tflow()
        self.flow.response = None
        self.client_state = self.state_done if done else self.state_other
        self.sent: list[str] = []

    def state_done(self) -> None:
        """The request has been read in full."""

    def state_other(self) -> None:
        """The request body is still streaming."""

    def send_response(self) -> Any:
        self.sent.append("ours")
        yield "sent"


@pytest.mark.parametrize(
    ("done", "message", "ours"),
    [
        pytest.param(True, "Certificate verify failed: x", True, id="cert-failure-ours"),
        pytest.param(True, "Connection refused", False, id="other-failure-mitmproxy"),
        pytest.param(False, "Certificate verify failed: x", False, id="streamed-mitmproxy"),
    ],
)
def test_installed_hook(
    monkeypatch: pytest.MonkeyPatch, done: bool, message: str, ours: bool
) -> None:
    """The wrapped HttpStream sends our response for a read request; else mitmproxy's path runs."""
    original_calls: list[object] = []

    def original(self: Any, event: Any) -> Any:
        original_calls.append(event)
        yield "mitmproxy"

    monkeypatch.setattr(HttpStream, "handle_protocol_error", original)
    monkeypatch.setattr(cert_errors, "_handler", [])
    page = http.Response.make(502, b"aupguard")
    cert_errors.install(lambda _flow, msg: page if "verify failed" in msg else None)
    stream = _Stream(done)
    event = ResponseProtocolError(1, message, ErrorCode.CONNECT_FAILED)
    out = list(HttpStream.handle_protocol_error(stream, event))  # type: ignore[arg-type]
    assert out == (["sent"] if ours else ["mitmproxy"])
    assert (stream.flow.response is page) is ours
    assert len(original_calls) == (0 if ours else 1)


def test_mitmproxy_internals_unchanged() -> None:
    """Fails loudly on a mitmproxy upgrade that moves what `install` wraps or calls."""
    assert callable(HttpStream.handle_protocol_error)
    assert callable(HttpStream.send_response)
    assert callable(HttpStream.state_done)
    assert ErrorCode.CONNECT_FAILED.http_status_code() == 502
    assert "message" in ResponseProtocolError.__dataclass_fields__
    assert "code" in ResponseProtocolError.__dataclass_fields__
