"""The enforce addon with mitmproxy's taddons/tflow: decisions become pages, passes and records."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest

with warnings.catch_warnings():  # pyparsing deprecations inside mitmproxy's flowfilter import
    warnings.simplefilter("ignore", DeprecationWarning)
    from mitmproxy import exceptions, tls
    from mitmproxy.addons import proxyserver
    from mitmproxy.proxy import context, server_hooks
    from mitmproxy.test import taddons, tflow, tutils

    from addons import enforce
from agent import streamed
from agent.enforcement import CONTINUE_PATH

POLICY = """\
layer: test
policy:
  timezone: UTC
  default_action: allow
  categories:
    gambling: {{clause: "No gambling on state systems.", lists: [gambling.txt]}}
    games: {{clause: "Games are limited.", lists: [games.txt]}}
    social_networks: {{clause: "Social media is logged.", lists: [social.txt]}}
    bank: {{clause: "Banking.", lists: [bank.txt]}}
  rules:
    - {{id: no-gambling, categories: [gambling], action: block}}
    - {{id: games, categories: [games], action: warn}}
    - {{id: social, categories: [social_networks], action: log}}
    - {{id: bad-bank, categories: [bank], action: block, groups: [blocked-bank]}}
  groups:
    blocked-bank: {{networks: ["10.9.9.9/32"]}}
proxy:
  no_decrypt_categories: [bank]
  warn_minutes: 5
  tenant_headers:
    google.com: {{X-GoogApps-Allowed-Domains: "agency.example.gov"}}
    login.microsoftonline.com: {{Restrict-Access-To-Tenants: "agency.onmicrosoft.com"}}
  token_secret_file: {secret}
  user_map_file: {usermap}
records:
  notice: {{text: "NOTICE OF ELECTRONIC MONITORING. Test notice."}}
lists:
  cache_dir: {cache}
"""


class Sink:
    """Collects records instead of writing them."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any]) -> bool:
        self.records.append(json.loads(json.dumps(record)))
        return True


def write_policy(tmp: Path) -> Path:
    for name, entry in [
        ("gambling", "casino.test"),
        ("games", "games.test"),
        ("social", "social.test"),
        ("bank", "bank.test"),
    ]:
        (tmp / f"{name}.txt").write_text(entry + "\n")
    (tmp / "users.txt").write_text("10.1.1.1 alice\n")
    path = tmp / "policy.yaml"
    path.write_text(
        POLICY.format(secret=tmp / "secret.key", usermap=tmp / "users.txt", cache=tmp / "cache")
    )
    return path


@pytest.fixture
def addon_ctx(tmp_path: Path):
    addon = enforce.Enforce()
    with taddons.context(proxyserver.Proxyserver(), addon) as tctx:
        tctx.configure(addon, aup_policy=str(write_policy(tmp_path)), connection_strategy="lazy")
        addon.writer = Sink()
        yield addon, tctx


def make_flow(
    url: str,
    *,
    accept: str | None = "text/html",
    dest: str | None = None,
    ip: str = "10.0.0.5",
    user: str | None = None,
):
    f = tflow.tflow()
    f.request.url = url
    f.request.headers.clear()
    f.request.headers["host"] = f.request.host
    if accept is not None:
        f.request.headers["accept"] = accept
    if dest is not None:
        f.request.headers["sec-fetch-dest"] = dest
    f.client_conn.peername = (ip, 50000)
    f.client_conn.sni = None
    f.server_conn.address = None
    if user is not None:
        f.metadata["proxyauth"] = (user, "s3cret-password")
    return f


@pytest.mark.parametrize(
    ("url", "status", "mark", "records"),
    [
        pytest.param("http://casino.test/play", 403, "block", 1, id="block"),
        pytest.param("http://games.test/", 403, "warn", 1, id="warn"),
        pytest.param("http://social.test/feed", None, "log", 1, id="log"),
        pytest.param("http://example.org/", None, "allow", 0, id="allow"),
    ],
)
def test_actions(addon_ctx, url, status, mark, records):
    """Each action gives its response (or none) and a record for every non-allow decision."""
    addon, _ = addon_ctx
    f = make_flow(url)
    addon.request(f)
    assert (f.response.status_code if f.response else None) == status
    assert f.metadata[enforce.MARK] == mark
    assert len(addon.writer.records) == records


@pytest.mark.parametrize(
    ("accept", "ctype"),
    [
        pytest.param("text/html", "text/html; charset=utf-8", id="navigation-page"),
        pytest.param("application/json", "application/json", id="api-json"),
    ],
)
def test_records_fail_closed_suspends_every_request(addon_ctx, accept, ctype):
    """While records cannot be kept (spool_full: fail_closed) even allowed sites get a 503."""
    addon, _ = addon_ctx
    addon.writer.failing_closed = True
    f = make_flow("http://example.org/", accept=accept)
    addon.request(f)
    assert f.response.status_code == 503
    assert f.response.headers["content-type"] == ctype
    assert f.metadata[enforce.MARK] == "suspended"
    addon.writer.failing_closed = False
    again = make_flow("http://example.org/")
    addon.request(again)
    assert again.response is None


def test_unparsable_host_fails_closed(addon_ctx):
    """A Host the engine cannot read gets a 400, never a pass."""
    addon, _ = addon_ctx
    f = make_flow("http://example.org/")
    f.request.headers["host"] = "bad host!"
    f.request.host = "bad host!"
    addon.request(f)
    assert f.response is not None
    assert f.response.status_code == 400
    assert f.metadata[enforce.MARK] == "unparsable"


@pytest.mark.parametrize(
    ("url", "header", "value"),
    [
        pytest.param(
            "https://mail.google.com/",
            "X-GoogApps-Allowed-Domains",
            "agency.example.gov",
            id="google",
        ),
        pytest.param(
            "https://login.microsoftonline.com/x",
            "Restrict-Access-To-Tenants",
            "agency.onmicrosoft.com",
            id="microsoft",
        ),
        pytest.param("https://example.org/", "X-GoogApps-Allowed-Domains", None, id="other-host"),
    ],
)
def test_tenant_headers(addon_ctx, url, header, value):
    """Tenant-restriction headers are set (replacing client values) for configured hosts."""
    addon, _ = addon_ctx
    f = make_flow(url)
    f.request.headers["X-GoogApps-Allowed-Domains"] = "gmail.com" if value else "keep"
    addon.request(f)
    if value is None:
        assert f.request.headers.get(header) == "keep"
    else:
        assert f.request.headers[header] == value


def test_already_handled_407(addon_ctx):
    """A response set before (proxyauth's 407) is left alone and nothing is decided."""
    addon, _ = addon_ctx
    f = make_flow("http://casino.test/")
    f.response = tutils.tresp(status_code=407)
    addon.request(f)
    assert f.response.status_code == 407
    assert enforce.MARK not in f.metadata
    assert addon.writer.records == []


def test_block_page_facts_match_record(addon_ctx):
    """The block page shows the URL, category, clause, notice and the record's reference id."""
    addon, _ = addon_ctx
    f = make_flow("http://casino.test/play?x=1", dest="document")
    addon.request(f)
    page = f.response.get_text()
    (rec,) = addon.writer.records
    assert rec["event"]["id"] in page
    assert f.response.headers["x-aupguard-reference"] == rec["event"]["id"]
    for text in (
        "casino.test/play",
        "gambling",
        "No gambling on state systems.",
        "NOTICE OF ELECTRONIC MONITORING",
        'lang="en"',
        "CIO",
    ):
        assert text in page
    assert f.response.headers["content-type"].startswith("text/html")


def test_url_is_escaped(addon_ctx):
    """A URL carrying markup is shown escaped, never as markup."""
    addon, _ = addon_ctx
    f = make_flow('http://casino.test/"><script>alert(1)</script>')
    addon.request(f)
    page = f.response.get_text()
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;" in page or "%3Cscript%3E" in page


@pytest.mark.parametrize(
    ("accept", "dest", "ctype"),
    [
        pytest.param("application/json", None, "application/json", id="xhr-json"),
        pytest.param("*/*", "empty", "application/json", id="fetch-empty"),
        pytest.param(
            "text/html", "image", "text/plain; charset=utf-8", id="image-with-html-accept"
        ),
        pytest.param(None, None, "application/json", id="no-accept"),
        pytest.param("text/plain", None, "text/plain; charset=utf-8", id="text"),
        pytest.param("text/html", None, "text/html; charset=utf-8", id="navigation-by-accept"),
    ],
)
def test_non_navigation_gets_short_body(addon_ctx, accept, dest, ctype):
    """Only navigations get the HTML page; others get the same 403 with a short body."""
    addon, _ = addon_ctx
    f = make_flow("http://casino.test/api", accept=accept, dest=dest)
    addon.request(f)
    assert f.response.status_code == 403
    assert f.response.headers["content-type"] == ctype


def test_domain_fronting_takes_strictest(addon_ctx):
    """An allowed URL host with a blocked SNI/CONNECT authority is blocked."""
    addon, _ = addon_ctx
    f = make_flow("https://example.org/")
    f.client_conn.sni = "casino.test"
    f.server_conn.address = ("casino.test", 443)
    addon.request(f)
    assert f.response is not None
    assert f.response.status_code == 403


def test_host_header_fronting(addon_ctx):
    """A blocked Host header behind an allowed authority is blocked too."""
    addon, _ = addon_ctx
    f = make_flow("http://example.org/")
    f.request.headers["host"] = "casino.test"
    addon.request(f)
    assert f.response is not None
    assert f.response.status_code == 403


def _continue_href(addon, flow_kwargs=None):
    f = make_flow("http://games.test/page", **(flow_kwargs or {}))
    addon.request(f)
    href = json.loads(make_json(addon, flow_kwargs))["continue"]
    assert href.startswith(CONTINUE_PATH)
    return href


def make_json(addon, flow_kwargs=None):
    f = make_flow("http://games.test/page", accept="application/json", **(flow_kwargs or {}))
    addon.request(f)
    return f.response.get_text()


def redeem(addon, href, host="games.test", **kw):
    f = make_flow(f"http://{host}{href}", **kw)
    addon.request(f)
    return f


def test_continue_allows_then_passes(addon_ctx):
    """A genuine token redirects back, records an acknowledgment and lets the next visit pass."""
    addon, _ = addon_ctx
    href = _continue_href(addon)
    f = redeem(addon, href)
    assert f.response.status_code == 302
    assert f.response.headers["location"] == "http://games.test/page"
    assert addon.writer.records[-1]["event"]["action"] == "acknowledged"
    again = make_flow("http://games.test/page")
    addon.request(again)
    assert again.response is None
    assert again.metadata[enforce.MARK] == "warn-continued"


@pytest.mark.parametrize(
    ("mutate", "kw", "host"),
    [
        pytest.param(
            lambda h: h[:-3] + ("AAA" if not h.endswith("AAA") else "BBB"),
            {},
            "games.test",
            id="forged",
        ),
        pytest.param(lambda h: h, {"ip": "10.0.0.99"}, "games.test", id="other-client"),
        pytest.param(lambda h: h, {"user": "mallory"}, "games.test", id="other-user"),
        pytest.param(lambda h: h, {}, "casino.test", id="other-host"),
    ],
)
def test_continue_rejects(addon_ctx, mutate, kw, host):
    """Forged tokens and tokens replayed by another user/client or on another host are refused."""
    addon, _ = addon_ctx
    href = mutate(_continue_href(addon))
    f = redeem(addon, href, host=host, **kw)
    assert f.response.status_code == 403
    assert "invalid continue link" in f.response.get_text()


def test_continue_expired(addon_ctx, monkeypatch):
    """A token redeemed after its lifetime is refused."""
    addon, _ = addon_ctx
    href = _continue_href(addon)
    real = enforce.time.time
    monkeypatch.setattr(enforce.time, "time", lambda: real() + 3600)
    f = redeem(addon, href)
    assert f.response.status_code == 403


def test_proxyauth_user_recorded_without_password(addon_ctx):
    """Records name the proxyauth user and never carry the password."""
    addon, _ = addon_ctx
    f = make_flow("http://social.test/", user="bob")
    f.request.headers["authorization"] = "Basic Ym9iOnMzY3JldA=="
    f.request.headers["cookie"] = "session=abc"
    addon.request(f)
    (rec,) = addon.writer.records
    assert rec["user"]["name"] == "bob"
    text = json.dumps(rec)
    assert "s3cret" not in text
    assert "Ym9i" not in text


def test_user_map(addon_ctx):
    """An address in the user map file names the user."""
    addon, _ = addon_ctx
    f = make_flow("http://social.test/", ip="10.1.1.1")
    addon.request(f)
    assert addon.writer.records[0]["user"]["name"] == "alice"


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        pytest.param({"aup_policy": "/nonexistent/policy.yaml"}, "aup_policy", id="missing-policy"),
        pytest.param({"ssl_insecure": True}, "ssl_insecure", id="ssl-insecure"),
        pytest.param(
            {"connection_strategy": "eager"}, "connection_strategy", id="eager-with-sni-refusal"
        ),
        pytest.param(
            {"aup_records": "/nonexistent/dir/records.jsonl"}, "aup_records", id="bad-records"
        ),
    ],
)
def test_bad_options(addon_ctx, options, needle):
    """Bad or weakening option values are refused with an error naming the option."""
    addon, tctx = addon_ctx
    with pytest.raises(exceptions.OptionsError, match=needle):
        tctx.configure(addon, **options)


def test_records_file_written(tmp_path):
    """With aup_records set, records reach the JSON lines file."""
    addon = enforce.Enforce()
    out = tmp_path / "records.jsonl"
    with taddons.context(proxyserver.Proxyserver(), addon) as tctx:
        tctx.configure(
            addon,
            aup_policy=str(write_policy(tmp_path)),
            aup_records=str(out),
            connection_strategy="lazy",
        )
        addon.request(make_flow("http://casino.test/"))
        addon.done()
    (line,) = out.read_text().splitlines()
    assert json.loads(line)["event"]["action"] == "block"


def client_hello(sni: str, authority: str | None, ip: str = "10.0.0.5"):
    ctx_ = context.Context(
        tflow.tclient_conn(), tutils.test_options if hasattr(tutils, "test_options") else None
    )
    ctx_.client.peername = (ip, 50000)
    ctx_.server.address = (authority, 443) if authority else None
    hello = tls.ClientHello(_client_hello_bytes(sni))
    return tls.ClientHelloData(ctx_, hello)


def _client_hello_bytes(sni: str) -> bytes:
    """A minimal TLS 1.2 ClientHello body (after the handshake header) naming `sni`."""
    name = sni.encode()
    sni_ext = (len(name) + 3).to_bytes(2, "big") + b"\x00" + len(name).to_bytes(2, "big") + name
    ext = b"\x00\x00" + len(sni_ext).to_bytes(2, "big") + sni_ext
    return (
        b"\x03\x03"
        + b"\x00" * 32
        + b"\x00"
        + b"\x00\x02\x00\x2f"
        + b"\x01\x00"
        + len(ext).to_bytes(2, "big")
        + ext
    )


@pytest.mark.parametrize(
    ("sni", "authority", "ip", "ignored", "refused"),
    [
        pytest.param("bank.test", "bank.test", "10.0.0.5", True, False, id="no-decrypt-pass"),
        pytest.param(
            "bank.test", "casino.test", "10.0.0.5", False, False, id="sni-mismatch-intercepted"
        ),
        pytest.param(
            "bank.test", "bank.test", "10.9.9.9", True, True, id="blocked-no-decrypt-refused"
        ),
        pytest.param(
            "casino.test", "casino.test", "10.0.0.5", False, False, id="blocked-intercepted"
        ),
    ],
)
def test_tls_clienthello(addon_ctx, sni, authority, ip, ignored, refused):
    """No-decrypt hosts pass only when SNI matches the CONNECT authority; blocked ones are refused."""
    addon, _ = addon_ctx
    data = client_hello(sni, authority, ip)
    addon.tls_clienthello(data)
    assert data.ignore_connection is ignored
    conn = server_hooks.ServerConnectionHookData(
        server=tflow.tserver_conn(), client=data.context.client
    )
    conn.server.error = None
    addon.server_connect(conn)
    assert (conn.server.error is not None) is refused


@pytest.mark.parametrize(
    ("url", "headers", "stream", "answered", "actions"),
    [
        pytest.param("http://casino.test/up", {}, True, True, ["block"], id="streamed-blocked"),
        pytest.param("http://games.test/up", {}, True, True, ["warn"], id="streamed-warned"),
        pytest.param(
            "http://casino.test/up", {"transfer-encoding": "chunked"}, False, True, ["block"],
            id="chunked-blocked-on-headers",
        ),
        pytest.param("http://social.test/up", {}, True, False, ["log"], id="streamed-logged-passes"),
        pytest.param(
            "http://social.test/up", {"transfer-encoding": "chunked"}, False, False, ["log"],
            id="chunked-logged-passes",
        ),
        pytest.param("http://casino.test/up", {}, False, False, [], id="buffered-decided-later"),
    ],
)  # fmt: skip
def test_upload_decided_on_headers(addon_ctx, url, headers, stream, answered, actions):
    """A body mitmproxy streams (or may) is decided at requestheaders; answered ones get the page
    after the body is read and dropped (never a reset, nothing upstream)."""
    addon, _ = addon_ctx
    flow = make_flow(url)
    flow.request.method = "POST"
    flow.request.headers.update(headers)
    flow.request.stream = stream
    flow.live = True
    addon.requestheaders(flow)
    assert flow.error is None  # never killed while the body can be dropped
    assert (flow.response is not None) is answered
    assert [r["event"]["action"] for r in addon.writer.records] == actions
    if answered:
        assert flow.response.status_code == 403
        assert flow.response.headers["connection"] == "close"
        assert flow.request.stream is False  # buffered and dropped chunk by chunk, not sent
        assert flow.metadata[streamed.DROPPED] == 0
    if not stream and not headers:  # the ordinary `request` hook decides it, once
        addon.request(flow)
        assert flow.response is not None
        assert flow.response.status_code == 403
        assert len(addon.writer.records) == 1
