"""Acknowledgment of the monitoring notice through the enforce addon (taddons + tflow)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from urllib.parse import unquote

import pytest

with warnings.catch_warnings():  # pyparsing deprecations inside mitmproxy's flowfilter import
    warnings.simplefilter("ignore", DeprecationWarning)
    from mitmproxy.addons import proxyserver
    from mitmproxy.test import taddons

    from addons import enforce
from agent.acknowledge import ACK_PATH, Acknowledgments
from agent.pages import Pages
from agent.shared_state import SharedState
from tests.addons.test_enforce import Sink, make_flow, write_policy

ACK = "proxy:\n  acknowledge: {enabled: true, period_days: 30}\n"
NEW_NOTICE = "NOTICE OF ELECTRONIC MONITORING. Revised notice."


def policy(tmp: Path, notice: str | None = None) -> Path:
    path = write_policy(tmp)
    text = path.read_text().replace("proxy:\n", ACK, 1)
    if notice is not None:
        text = text.replace("NOTICE OF ELECTRONIC MONITORING. Test notice.", notice)
    path.write_text(text)
    return path


@pytest.fixture
def ack_ctx(tmp_path: Path):
    addon = enforce.Enforce()
    with taddons.context(proxyserver.Proxyserver(), addon) as tctx:
        tctx.configure(addon, aup_policy=str(policy(tmp_path)), connection_strategy="lazy")
        addon.writer = Sink()
        yield addon, tctx, tmp_path


def button(flow) -> str:
    """The acknowledge action (path and query) of a notice page."""
    m = re.search(r'<form method="post" action="([^"]+)">', flow.response.get_text())
    assert m is not None
    return unquote(m.group(1).replace("&amp;", "&"))


def acknowledge(addon, action: str, *, host: str = "example.org", method: str = "POST", **kw):
    f = make_flow(f"http://{host}{action}", **kw)
    f.request.method = method
    addon.request(f)
    return f


@pytest.mark.parametrize(
    ("method", "accept", "dest", "noticed"),
    [
        pytest.param("GET", "text/html", None, True, id="html-navigation"),
        pytest.param("GET", "*/*", "document", True, id="sec-fetch-document"),
        pytest.param("GET", "text/html", "image", False, id="sec-fetch-image"),
        pytest.param("GET", "text/html", "iframe", False, id="sec-fetch-iframe"),
        pytest.param("GET", "application/json", None, False, id="api"),
        pytest.param("GET", None, None, False, id="no-accept"),
        pytest.param("POST", "text/html", "document", False, id="form-post"),
    ],
)
def test_only_first_navigation_gets_notice(ack_ctx, method, accept, dest, noticed):
    """Only top-level GET navigations are interrupted; the rest goes on to the decision."""
    addon, _, _ = ack_ctx
    f = make_flow("http://example.org/a?b=1", accept=accept, dest=dest)
    f.request.method = method
    addon.request(f)
    if noticed:
        assert f.metadata[enforce.MARK] == "notice"
        assert f.response.status_code == 200
        text = f.response.get_text()
        assert "Test notice." in text
        assert addon.runtime.engine.notice.version in text
        assert button(f).startswith(ACK_PATH + "?token=")
        assert addon.writer.records == []
    else:
        assert f.metadata[enforce.MARK] == "allow"
        assert f.response is None


def test_acknowledge_records_redirects_and_passes(ack_ctx):
    """The button records an acknowledge event, redirects back, and later navigations pass."""
    addon, _, _ = ack_ctx
    first = make_flow("http://example.org/a?b=1")
    addon.request(first)
    f = acknowledge(addon, button(first))
    assert f.response.status_code == 303
    assert f.response.headers["location"] == "http://example.org/a?b=1"
    assert not f.intercepted
    (rec,) = addon.writer.records
    assert rec["event"]["action"] == "acknowledge"
    version = addon.runtime.engine.notice.version
    assert rec["aupguard"]["acknowledged_notice_version"] == version
    assert rec["aupguard"]["notice_version"] == version
    again = make_flow("http://casino.test/")
    addon.request(again)
    assert again.metadata[enforce.MARK] == "block"  # the decision applies as before


@pytest.mark.parametrize(
    ("mutate", "kw", "host", "method", "status"),
    [
        pytest.param(lambda a: a[:-2] + "AA", {}, "example.org", "POST", 403, id="forged"),
        pytest.param(
            lambda a: a, {"ip": "10.0.0.99"}, "example.org", "POST", 403, id="other-client"
        ),
        pytest.param(lambda a: a, {}, "casino.test", "POST", 403, id="other-host"),
        pytest.param(lambda a: a, {}, "example.org", "GET", 405, id="get"),
        pytest.param(lambda _: ACK_PATH, {}, "example.org", "POST", 403, id="no-token"),
    ],
)
def test_acknowledge_rejects(ack_ctx, mutate, kw, host, method, status):
    """Forged, replayed, cross-host, tokenless or GET acknowledgments grant nothing."""
    addon, _, _ = ack_ctx
    first = make_flow("http://example.org/")
    addon.request(first)
    f = acknowledge(addon, mutate(button(first)), host=host, method=method, **kw)
    assert f.response.status_code == status
    assert addon.writer.records == []
    again = make_flow("http://example.org/")
    addon.request(again)
    assert again.metadata[enforce.MARK] == "notice"


def test_acknowledgment_survives_restart_until_notice_changes(ack_ctx):
    """A reload keeps acknowledgments (shared store); a new notice version asks again."""
    addon, tctx, tmp = ack_ctx
    first = make_flow("http://example.org/")
    addon.request(first)
    acknowledge(addon, button(first))
    tctx.configure(addon, aup_policy=str(policy(tmp)))  # a new Enforcer: as after a restart
    same = make_flow("http://example.org/")
    addon.request(same)
    assert same.metadata[enforce.MARK] == "allow"
    tctx.configure(addon, aup_policy=str(policy(tmp, NEW_NOTICE)))
    revised = make_flow("http://example.org/")
    addon.request(revised)
    assert revised.metadata[enforce.MARK] == "notice"
    assert "Revised notice." in revised.response.get_text()


def test_button_of_an_old_notice_shows_the_new_one(ack_ctx):
    """A button rendered for a replaced notice grants nothing and leads back to the new notice."""
    addon, tctx, tmp = ack_ctx
    first = make_flow("http://example.org/x")
    addon.request(first)
    tctx.configure(addon, aup_policy=str(policy(tmp, NEW_NOTICE)))
    f = acknowledge(addon, button(first))
    assert f.response.status_code == 303
    assert addon.writer.records == []
    again = make_flow("http://example.org/x")
    addon.request(again)
    assert again.metadata[enforce.MARK] == "notice"


def test_user_is_the_subject(ack_ctx):
    """With proxy authentication the acknowledgment belongs to the user, on any address."""
    addon, _, _ = ack_ctx
    first = make_flow("http://example.org/", user="alice", ip="10.0.0.7")
    addon.request(first)
    acknowledge(addon, button(first), user="alice", ip="10.0.0.7")
    moved = make_flow("http://example.org/", user="alice", ip="10.0.0.8")
    addon.request(moved)
    assert moved.metadata[enforce.MARK] == "allow"
    assert addon.writer.records[0]["user"]["name"] == "alice"


def test_notice_text_is_escaped(tmp_path: Path):
    """The notice and URL are escaped on the page (no markup from config or the request)."""
    state = SharedState(tmp_path / "s.sqlite3")
    acks = Acknowledgments(state, b"k" * 32, 1, Pages())
    f = make_flow('http://example.org/"><script>x</script>')
    page = acks.notice_page(f, "10.0.0.5", ("<b>notice</b>\n\nsecond", "v1"), 0.0).get_text()
    state.close()
    assert "<script>" not in page
    assert "&lt;b&gt;notice&lt;/b&gt;" in page
    assert "<p>second</p>" in page


@pytest.mark.parametrize("days", [pytest.param(0, id="zero"), pytest.param(-1, id="negative")])
def test_bad_period_refused(tmp_path: Path, days: int):
    """A period below one day is refused."""
    state = SharedState(tmp_path / "s.sqlite3")
    with pytest.raises(ValueError, match="period_days"):
        Acknowledgments(state, b"k" * 32, days, Pages())
    state.close()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        pytest.param(
            "  acknowledge: {enabled: true, period_days: 0}\n", "period_days", id="period"
        ),
        pytest.param("  state_file: /proc/nope/state.sqlite3\n", "/proc/nope", id="state-file"),
    ],
)
def test_bad_settings_refused_at_start(tmp_path: Path, extra: str, needle: str):
    """A bad period or an unusable state file refuses the policy at start (OptionsError)."""
    from mitmproxy import exceptions  # noqa: PLC0415

    path = write_policy(tmp_path)
    path.write_text(path.read_text().replace("proxy:\n", "proxy:\n" + extra, 1))
    addon = enforce.Enforce()
    with (
        taddons.context(proxyserver.Proxyserver(), addon) as tctx,
        pytest.raises(exceptions.OptionsError, match=needle),
    ):
        tctx.configure(addon, aup_policy=str(path), connection_strategy="lazy")
