"""agent.records: the decision record, the notice version, redaction and the record writer."""

from __future__ import annotations

import doctest
import json
import re
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import ConfigError
from agent.model import Action, Classification, Client, Decision, Match, MatchKind, Request, Source
from agent.records import (
    ECS_ROOTS,
    MAX_URL_FIELD,
    Notice,
    build_record,
    format_timestamp,
    new_event_id,
    notice_version,
    records_required,
    redact_headers,
    redact_url,
)

NOW = 1795957692.123456  # 2026-11-29T13:08:12.123456Z
HOST = "www.casino.example"
GAMBLING = Match(
    "gambling", "casino.example", "blocklists/gambling.txt:1207", MatchKind.HOST, (1, 2, 0)
)
SHOPPING = Match("shopping", "example", "blocklists/shopping.txt:3", MatchKind.HOST, (1, 1, 0))
NOTICE = Notice.from_text("Use of this network is monitored.\n")
DNS = Request(HOST, source=Source.DNS)
TLS = Request(HOST, source=Source.TLS)
HTTP = Request(HOST, "/play", f"https://{HOST}/play?ref=1", Source.HTTP)
ANON = Client("10.0.0.7")
JDOE = Client("10.0.0.8", "jdoe", frozenset({"staff", "contractors"}))
MISSING = object()
DOC = Path(__file__).resolve().parents[2] / "docs" / "records.md"


def decision(action: Action = Action.BLOCK, **changes: Any) -> Decision:
    fields: dict[str, Any] = {
        "action": action,
        "category": "gambling",
        "categories": ("gambling",),
        "rule": "block-gambling",
        "layer": "baseline",
        "schedule": "business-hours",
        "reason": f"{action.label}: group=contractors category=gambling rule=gambling.txt:1207",
        "reason_label": "category",
        "classification": Classification(HOST, None, (GAMBLING,), (SHOPPING,)),
    }
    return Decision(**(fields | changes))


def record_for(
    request: Request = DNS, client: Client = ANON, action: Action = Action.BLOCK, **kw: Any
) -> dict[str, Any]:
    return build_record(
        request=request,
        client=client,
        decision=decision(action),
        now=NOW,
        policy_rev="sha256:0123456789abcdef",
        lists_rev="sha256:fedcba9876543210",
        notice=NOTICE,
        **kw,
    )


def lookup(record: dict[str, Any], dotted: str) -> Any:
    node: Any = record
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


# --- the record -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "client", "action", "expected", "absent"),
    [
        pytest.param(
            DNS,
            ANON,
            Action.BLOCK,
            {
                "event.category": ["network"],
                "event.type": ["denied"],
                "event.action": "block",
                "dns.question.name": HOST,
                "observer.type": "dns",
                "source.ip": "10.0.0.7",
            },
            ["user", "url", "tls"],
            id="dns-block-without-user",
        ),
        pytest.param(
            HTTP,
            JDOE,
            Action.WARN,
            {
                "event.category": ["network", "web"],
                "event.type": ["info"],
                "event.action": "warn",
                "url.full": f"https://{HOST}/play?ref=1",
                "url.domain": HOST,
                "url.path": "/play",
                "url.scheme": "https",
                "url.query": "ref=1",
                "user.name": "jdoe",
                "aupguard.groups": ["contractors", "staff"],
                "observer.type": "proxy",
            },
            ["dns", "aupguard.redacted"],
            id="http-warn-with-user",
        ),
        pytest.param(
            HTTP,
            JDOE,
            Action.LOG,
            {
                "event.type": ["allowed"],
                "event.action": "log",
                "user.name": "jdoe",
            },
            ["dns"],
            id="http-allow-with-log",
        ),
        pytest.param(
            HTTP,
            ANON,
            Action.ALLOW,
            {
                "event.type": ["allowed"],
                "event.action": "allow",
                "aupguard.groups": [],
            },
            ["user"],
            id="http-allow-without-user",
        ),
        pytest.param(
            TLS,
            ANON,
            Action.BLOCK,
            {
                "event.category": ["network"],
                "tls.client.server_name": HOST,
                "observer.type": "proxy",
            },
            ["url", "dns"],
            id="tls-sni-block",
        ),
    ],
)
def test_record_fields(
    request_: Request, client: Client, action: Action, expected: dict[str, Any], absent: list[str]
) -> None:
    """Each enforcement point's record carries its ECS field set and only the user it knows."""
    record = record_for(request_, client, action)
    assert {key: lookup(record, key) for key in expected} == expected
    assert [key for key in absent if lookup(record, key) is not MISSING] == []


def test_record_provenance() -> None:
    """A record says what matched, which rule and layer decided, and which policy and notice applied."""
    record = record_for(event_id="01h2x")
    assert record["@timestamp"] == "2026-11-29T13:08:12.123456Z"
    assert record["event"] | {"category": None, "type": None, "action": None} == {
        "id": "01h2x",
        "kind": "event",
        "category": None,
        "type": None,
        "action": None,
        "dataset": "aupguard.decision",
        "reason": decision().reason,
    }
    assert record["rule"] == {"name": "block-gambling", "ruleset": "baseline"}
    assert record["aupguard"] == {
        "category": "gambling",
        "categories": ["gambling"],
        "groups": [],
        "layer": "baseline",
        "schedule": "business-hours",
        "reference_id": "01h2x",
        "policy_version": "sha256:0123456789abcdef",
        "lists_version": "sha256:fedcba9876543210",
        "notice_version": NOTICE.version,
        "reason_label": "category",
        "matched": [
            {
                "category": "gambling",
                "entry": "casino.example",
                "source": "blocklists/gambling.txt:1207",
            }
        ],
        "overridden": [
            {"category": "shopping", "entry": "example", "source": "blocklists/shopping.txt:3"}
        ],
        "exception": None,
        "user_independent": True,
    }


@pytest.mark.parametrize(
    "request_", [DNS, TLS, HTTP, Request(HOST)], ids=["dns", "tls", "http", "cli"]
)
def test_record_uses_ecs_names_and_is_json_ready(request_: Request) -> None:
    """Top-level keys are ECS field sets (or `aupguard`), and the record survives a JSON round trip unchanged."""
    record = record_for(request_, JDOE)
    assert set(record) - ECS_ROOTS == {"@timestamp"}
    assert json.loads(json.dumps(record)) == record


def test_record_redacts_before_it_exists() -> None:
    """Credentials in the URL never reach the record; what was removed is listed."""
    request = Request(
        HOST,
        "/cart;jsessionid=ABC?token=t0k",
        f"https://bob:pw@{HOST}/cart?token=t0k&q=1",
        Source.HTTP,
    )
    record = record_for(request)
    assert record["url"]["full"] == f"https://REDACTED@{HOST}/cart?token=REDACTED&q=1"
    assert record["url"]["query"] == "token=REDACTED&q=1"
    assert record["url"]["path"] == "/cart;jsessionid=REDACTED"
    assert record["aupguard"]["redacted"] == [
        "url.userinfo",
        "url.query.token",
        "url.path.jsessionid",
    ]
    assert not re.search("pw|t0k|ABC", json.dumps(record))


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param(
            {"http.response.status_code": 403},
            {"http.response.status_code": 403},
            id="dotted-ecs-key",
        ),
        pytest.param(
            {"dns": {"response_code": "NXDOMAIN"}},
            {"dns.response_code": "NXDOMAIN", "dns.question.name": HOST},
            id="ecs-mapping-merges",
        ),
        pytest.param(
            {"dns.question.type": "AAAA"},
            {"dns.question.type": "AAAA", "dns.question.name": HOST},
            id="dotted-key-merges-deep",
        ),
        pytest.param(
            {"latency_ms": 1.5}, {"aupguard.latency_ms": 1.5}, id="other-key-under-aupguard"
        ),
        pytest.param(
            {"event.action": "acknowledge", "event.type": ["allowed"]},
            {"event.action": "acknowledge", "event.type": ["allowed"], "event.id": "e1"},
            id="adapter-sets-event-action",
        ),
        pytest.param(
            {"aupguard": {"throttle_bps": 1000}},
            {"aupguard.throttle_bps": 1000, "aupguard.reference_id": "e1"},
            id="aupguard-mapping-merges",
        ),
    ],
)
def test_record_extra(extra: dict[str, Any], expected: dict[str, Any]) -> None:
    """`extra` extends ECS field sets at the top level and everything else under `aupguard`."""
    record = record_for(event_id="e1", extra=extra)
    assert {key: lookup(record, key) for key in expected} == expected


def test_record_query_is_not_taken_from_the_fragment() -> None:
    """A `?` inside the fragment does not make a url.query."""
    record = record_for(Request(HOST, "/p", f"https://{HOST}/p#top?x=1", Source.HTTP))
    assert "query" not in record["url"]


@pytest.mark.parametrize(
    ("path", "query", "truncated"),
    [
        pytest.param("/p", "q=1", None, id="short"),
        pytest.param("/p", "q=" + "x" * 20_000, ["url.full", "url.query"], id="long-query"),
        pytest.param("/" + "p" * 9_000, "", ["url.full", "url.path"], id="long-path"),
    ],
)
def test_record_url_fields_are_cut_at_max_url_field(
    path: str, query: str, truncated: list[str] | None
) -> None:
    """A huge URL does not make a huge record (each field at most MAX_URL_FIELD characters),
    and the record says which fields were cut."""
    url = f"https://{HOST}{path}" + (f"?{query}" if query else "")
    record = record_for(Request(HOST, path + (f"?{query}" if query else ""), url, Source.HTTP))
    assert all(len(value) <= MAX_URL_FIELD for value in record["url"].values())
    assert record["aupguard"].get("truncated") == truncated
    assert record["url"]["full"] == url[:MAX_URL_FIELD]


def test_record_extra_is_copied() -> None:
    """The record owns its dicts: changing it later does not change the caller's `extra`."""
    extra = {"http": {"request": {"method": "GET"}}}
    record = record_for(extra=extra)
    record["http"]["request"]["method"] = "POST"
    assert extra == {"http": {"request": {"method": "GET"}}}


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        pytest.param(0.0, "1970-01-01T00:00:00.000000Z", id="epoch"),
        pytest.param(NOW, "2026-11-29T13:08:12.123456Z", id="microseconds"),
        pytest.param(1.9999996, "1970-01-01T00:00:02.000000Z", id="rounding-carries-into-seconds"),
    ],
)
def test_format_timestamp(now: float, expected: str) -> None:
    """Timestamps are ISO 8601 UTC with six fraction digits and a Z."""
    assert format_timestamp(now) == expected


def test_event_ids_are_unique_and_time_sortable() -> None:
    """Generated ids are 26 hex digits, unique within a millisecond and ordered by time across milliseconds."""
    same_ms = {new_event_id(NOW) for _ in range(10_000)}
    assert len(same_ms) == 10_000
    assert all(re.fullmatch(r"[0-9a-f]{26}", i) for i in same_ms)
    ordered = [new_event_id(t) for t in (NOW, NOW + 0.001, NOW + 1, NOW + 86400)]
    assert sorted(ordered) == ordered
    record = record_for()
    assert record["event"]["id"] == record["aupguard"]["reference_id"]


# --- notice -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        pytest.param("Monitored.\nBy IT.", "Monitored.\r\nBy IT.\r\n", True, id="crlf"),
        pytest.param("Monitored.\nBy IT.", "Monitored.\rBy IT.", True, id="cr"),
        pytest.param(
            "Monitored.\nBy IT.", "Monitored.  \nBy IT.\t\n\n\n", True, id="trailing-whitespace"
        ),
        pytest.param("Monitored.\nBy IT.", "Monitored.\nBy HR.", False, id="changed-word"),
        pytest.param(
            "Monitored.\nBy IT.", "Monitored.\n  By IT.", False, id="leading-whitespace-is-content"
        ),
    ],
)
def test_notice_version(a: str, b: str, same: bool) -> None:
    """The version changes with the notice's words, not with line endings or trailing whitespace."""
    assert re.fullmatch(r"sha256:[0-9a-f]{16}", notice_version(a))
    assert (notice_version(a) == notice_version(b)) is same
    assert Notice.from_text(b).version == notice_version(b)


@pytest.mark.parametrize("notice", [None, Notice.from_text(" \n")], ids=["none", "blank"])
def test_records_required_refuses_missing_notice(notice: Notice | None) -> None:
    """Monitoring without a notice is a config error naming the keys to set."""
    with pytest.raises(ConfigError) as err:
        records_required(notice)
    assert err.value.errors[0].startswith("records.notice: electronic monitoring requires a notice")
    assert "records.notice.text" in str(err.value)


def test_records_required_accepts_notice() -> None:
    """A notice with text is enough."""
    records_required(NOTICE)


# --- redaction --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected", "what"),
    [
        pytest.param("https://e.org/a", "https://e.org/a", (), id="plain"),
        pytest.param(
            "https://e.org/s?q=cats&page=2", "https://e.org/s?q=cats&page=2", (), id="benign-query"
        ),
        pytest.param(
            "https://e.org/s?q=%41", "https://e.org/s?q=%41", (), id="encoded-benign-query"
        ),
        pytest.param("https://medium.com/@bob/x", "https://medium.com/@bob/x", (), id="at-in-path"),
        pytest.param("https://e.org/?token=", "https://e.org/?token=", (), id="empty-value"),
        pytest.param(
            "https://alice:hunter2@e.org/",
            "https://REDACTED@e.org/",
            ("url.userinfo",),
            id="userinfo",
        ),
        pytest.param(
            "https://ghp_x@github.com/o",
            "https://REDACTED@github.com/o",
            ("url.userinfo",),
            id="token-as-username",
        ),
        pytest.param(
            "https://e.org/l?user=bob&password=hunter2",
            "https://e.org/l?user=bob&password=REDACTED",
            ("url.query.password",),
            id="password",
        ),
        pytest.param(
            "https://e.org/?Token=abc",
            "https://e.org/?Token=REDACTED",
            ("url.query.Token",),
            id="token-any-case",
        ),
        pytest.param(
            "https://e.org/cb?code=abc&state=s",
            "https://e.org/cb?code=REDACTED&state=s",
            ("url.query.code",),
            id="oauth-code",
        ),
        pytest.param(
            "https://b.s3.example/o?X-Amz-Signature=f0&X-Amz-Credential=AK%2F1&X-Amz-Date=2026",
            "https://b.s3.example/o?X-Amz-Signature=REDACTED&X-Amz-Credential=REDACTED&X-Amz-Date=2026",
            ("url.query.X-Amz-Signature", "url.query.X-Amz-Credential"),
            id="presigned-url",
        ),
        pytest.param(
            "https://e.org/?pass%77ord=hunter2",
            "https://e.org/?pass%77ord=REDACTED",
            ("url.query.password",),
            id="percent-encoded-name",
        ),
        pytest.param(
            "https://e.org/?a=1;sid=xyz",
            "https://e.org/?a=1;sid=REDACTED",
            ("url.query.sid",),
            id="semicolon-pairs",
        ),
        pytest.param(
            "https://e.org/#access_token=abc&expires_in=3600",
            "https://e.org/#access_token=REDACTED&expires_in=3600",
            ("url.fragment.access_token",),
            id="fragment",
        ),
        pytest.param(
            "https://shop.example/cart;jsessionid=0A?i=1",
            "https://shop.example/cart;jsessionid=REDACTED?i=1",
            ("url.path.jsessionid",),
            id="path-parameter",
        ),
        pytest.param(
            "http://[::1/x?token=abc", "REDACTED", ("url.full",), id="unparseable-fails-closed"
        ),
    ],
)
def test_redact_url(url: str, expected: str, what: tuple[str, ...]) -> None:
    """Secret values and userinfo are replaced; names, other parameters and encodings stay as they were."""
    assert redact_url(url) == (expected, what)


SECRET_NAMES = [
    "password",
    "passwd",
    "pwd",
    "pass",
    "token",
    "access_token",
    "id_token",
    "refresh_token",
    "key",
    "api_key",
    "apikey",
    "secret",
    "client_secret",
    "session",
    "sessionid",
    "sid",
    "auth",
    "code",
    "signature",
    "sig",
    "X-Amz-Signature",
    "x-amz-security-token",
    "JSESSIONID",
]
SAFE = string.ascii_letters + string.digits + "-._~"


@st.composite
def secret_pairs(draw: st.DrawFn) -> str:
    name = draw(st.sampled_from(SECRET_NAMES))
    name = draw(st.sampled_from([name, name.upper(), name.title()]))
    if draw(st.booleans()):
        name = f"%{ord(name[0]):02X}{name[1:]}"
    return f"{name}=S3CR3T{draw(st.text(SAFE, max_size=12))}"


@pytest.mark.parametrize(
    "name", [*SECRET_NAMES, "db_password", "X-Goog-Api-Key", "PHPSESSID", "csrf_token"]
)
def test_every_secret_name_is_redacted(name: str) -> None:
    """Each listed secret name (and its `_suffix`/embedded forms) has its value redacted in query and fragment."""
    for url in (f"https://e.org/p?{name}=S3CR3T&q=1", f"https://e.org/p#{name.upper()}=S3CR3T"):
        assert "S3CR3T" not in redact_url(url)[0]


benign_pairs = st.builds(
    "{}={}".format,
    st.sampled_from(["q", "page", "lang", "utm_source"]),
    st.text(string.ascii_lowercase + string.digits, max_size=8),
)


@given(
    host=st.from_regex(r"[a-z]{1,10}\.(com|org|example)", fullmatch=True),
    path=st.text(string.ascii_lowercase + "/", max_size=12),
    pairs=st.lists(st.one_of(secret_pairs(), benign_pairs), min_size=1, max_size=6),
    password=st.one_of(st.none(), st.text(SAFE, max_size=8).map(lambda p: f"S3CR3T{p}")),
    sep=st.sampled_from("&;"),
    where=st.sampled_from("?#"),
)
def test_no_secret_survives_redaction(
    host: str, path: str, pairs: list[str], password: str | None, sep: str, where: str
) -> None:
    """For generated URLs, no secret value (query, fragment or userinfo) is left in the redacted URL."""
    userinfo = f"bob:{password}@" if password is not None else ""
    url = f"https://{userinfo}{host}/{path}{where}{sep.join(pairs)}"
    redacted, _ = redact_url(url)
    assert "S3CR3T" not in redacted


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param(
            {"Authorization": "Bearer abc.def"}, {"Authorization": "Bearer REDACTED"}, id="bearer"
        ),
        pytest.param(
            {"Proxy-Authorization": "Basic YWxpY2U6aHVudGVyMg=="},
            {"Proxy-Authorization": "Basic REDACTED"},
            id="proxy-basic",
        ),
        pytest.param({"authorization": "opaque"}, {"authorization": "REDACTED"}, id="no-scheme"),
        pytest.param({"Cookie": "sid=abc"}, {"Cookie": "REDACTED"}, id="cookie"),
        pytest.param(
            {"Set-Cookie": "sid=abc; HttpOnly"}, {"Set-Cookie": "REDACTED"}, id="set-cookie"
        ),
        pytest.param({"X-Api-Key": "k"}, {"X-Api-Key": "REDACTED"}, id="x-api-key"),
        pytest.param(
            {"X-Amz-Security-Token": "t"}, {"X-Amz-Security-Token": "REDACTED"}, id="token-header"
        ),
        pytest.param(
            {"Referer": "https://e.org/?token=abc"},
            {"Referer": "https://e.org/?token=REDACTED"},
            id="referer-url",
        ),
        pytest.param(
            {"Accept": "text/html", "User-Agent": "curl/8"},
            {"Accept": "text/html", "User-Agent": "curl/8"},
            id="benign",
        ),
    ],
)
def test_redact_headers(headers: dict[str, str], expected: dict[str, str]) -> None:
    """Credential headers are redacted (keeping the auth scheme), URL headers are URL-redacted, others kept."""
    assert redact_headers(headers) == expected


# --- the documented schema --------------------------------------------------------------


def leaf_paths(node: dict[str, Any], prefix: str = "") -> set[str]:
    paths: set[str] = set()
    for key, value in node.items():
        path = f"{prefix}{key}"
        paths |= leaf_paths(value, f"{path}.") if isinstance(value, dict) else {path}
    return paths


def documented_fields() -> set[str]:
    return set(re.findall(r"^\| `([^`]+)` \|", DOC.read_text(encoding="utf-8"), re.MULTILINE))


def test_docs_document_every_field() -> None:
    """Every field build_record writes, and every field in the documented examples, is in the field table."""
    fields = documented_fields()
    examples = re.findall(r"```json\n(.*?)\n```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    assert len(examples) == 4
    in_examples = set().union(*(leaf_paths(json.loads(e)) for e in examples))
    built = set().union(
        *(
            leaf_paths(record_for(r, JDOE, extra={"latency_ms": 1}))
            for r in (DNS, TLS, HTTP, Request(HOST, "/a;sid=1"))
        )
    )
    assert in_examples - fields == set()
    assert built - fields == set()


def test_docs_examples_run() -> None:
    """The doctest examples in docs/records.md hold."""
    result = doctest.testfile(str(DOC), module_relative=False)
    assert (result.attempted, result.failed) == (3, 0)
