"""Category list parsing: every format's odd lines, error messages and the per-file error budget."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import ListRejected
from agent.lists import (
    ListError,
    ListFormat,
    ListSource,
    normalize_domain,
    normalize_path,
    parse_entry,
    parse_list,
)

AUTO, DOMAINS, HOSTS, ADBLOCK = (
    ListFormat.AUTO,
    ListFormat.DOMAINS,
    ListFormat.HOSTS,
    ListFormat.ADBLOCK,
)


def parse(tmp_path: Path, text: str, fmt: ListFormat = AUTO, **budget: float):
    path = tmp_path / "list.txt"
    path.write_bytes(text.encode())
    return parse_list(ListSource("cat", path, fmt, label="blocklists/list.txt"), **budget)


@pytest.mark.parametrize(
    ("fmt", "line", "hosts"),
    [
        pytest.param(DOMAINS, "example.com", ["example.com"], id="domains-plain"),
        pytest.param(DOMAINS, "  Example.COM.  ", ["example.com"], id="domains-case-dot-space"),
        pytest.param(DOMAINS, "*.x.com", ["x.com"], id="domains-star-wildcard"),
        pytest.param(DOMAINS, ".x.com", ["x.com"], id="domains-dot-wildcard"),
        pytest.param(DOMAINS, "bücher.de", ["xn--bcher-kva.de"], id="domains-idn"),
        pytest.param(DOMAINS, "BÜCHER.de", ["xn--bcher-kva.de"], id="domains-idn-upper"),
        pytest.param(DOMAINS, "i❤.ws", ["xn--i-7iq.ws"], id="domains-idna2003-fallback"),
        pytest.param(DOMAINS, "_dmarc.x.org", ["_dmarc.x.org"], id="domains-underscore"),
        pytest.param(DOMAINS, "1.2.3.4", ["1.2.3.4"], id="domains-ipv4"),
        pytest.param(DOMAINS, "2001:DB8::0:1", ["2001:db8::1"], id="domains-ipv6"),
        pytest.param(DOMAINS, "https://s.com/", ["s.com"], id="domains-url-without-path"),
        pytest.param(DOMAINS, "x.com # note", ["x.com"], id="domains-inline-comment"),
        pytest.param(DOMAINS, "# x.com", [], id="domains-comment"),
        pytest.param(HOSTS, "0.0.0.0 a.com b.com", ["a.com", "b.com"], id="hosts-two-names"),
        pytest.param(HOSTS, "127.0.0.1 localhost", [], id="hosts-localhost-skipped"),
        pytest.param(HOSTS, "::1 ip6-localhost ip6-loopback", [], id="hosts-v6-local-skipped"),
        pytest.param(HOSTS, ":: ads.x.com", ["ads.x.com"], id="hosts-v6-sink"),
        pytest.param(HOSTS, "0.0.0.0\tT.com\t# c", ["t.com"], id="hosts-tabs-comment"),
        pytest.param(HOSTS, "lone.com", ["lone.com"], id="hosts-bare-name"),
        pytest.param(ADBLOCK, "||x.com^", ["x.com"], id="adblock-domain"),
        pytest.param(ADBLOCK, "||x.com^|", ["x.com"], id="adblock-domain-pipe"),
        pytest.param(ADBLOCK, "! comment", [], id="adblock-comment"),
        pytest.param(ADBLOCK, "[Adblock Plus 2.0]", [], id="adblock-header"),
        pytest.param(AUTO, "||x.com^", ["x.com"], id="auto-adblock"),
        pytest.param(AUTO, "0.0.0.0 x.com", ["x.com"], id="auto-hosts"),
        pytest.param(AUTO, "1.2.3.4", ["1.2.3.4"], id="auto-bare-ip"),
        pytest.param(AUTO, "*.x.com", ["x.com"], id="auto-wildcard"),
    ],
)
def test_accepted_lines(tmp_path: Path, fmt: ListFormat, line: str, hosts: list[str]) -> None:
    """Each format's odd but valid lines become normalised host entries with their line number."""
    parsed = parse(tmp_path, f"# header\n{line}\n", fmt)
    assert parsed.hosts == [(h, 2) for h in hosts]
    assert parsed.errors == []
    assert parsed.unsupported == []


@pytest.mark.parametrize(
    ("fmt", "line", "why"),
    [
        pytest.param(
            DOMAINS, "*bet..com", "not a valid domain pattern", id="inner-star-empty-label"
        ),
        pytest.param(DOMAINS, "a" * 64 + ".com", "label is longer than 63 bytes", id="long-label"),
        pytest.param(DOMAINS, ("a" * 60 + ".") * 5 + "com", "longer than 253", id="long-name"),
        pytest.param(DOMAINS, "ex ample.com", "several words", id="space"),
        pytest.param(DOMAINS, "exa$mple.com", "not a valid domain pattern", id="bad-char"),
        pytest.param(DOMAINS, "x.com/path", "a URL with a path", id="domains-url-path"),
        pytest.param(DOMAINS, "0.0.0.0 x.com", "several words", id="domains-hosts-line"),
        pytest.param(DOMAINS, "1.2.3.999", "not a valid IPv4 address", id="bad-ipv4"),
        pytest.param(HOSTS, "0.0.0.0", "without a name", id="hosts-no-name"),
        pytest.param(HOSTS, "nothere x.com", "expected 'ADDRESS NAME...'", id="hosts-no-address"),
        pytest.param(
            HOSTS, "0.0.0.0 ok.com bad..com", "not a valid domain pattern", id="hosts-bad-name"
        ),
        pytest.param(ADBLOCK, "||bad..com^", "not a valid domain pattern", id="adblock-bad-domain"),
    ],
)
def test_bad_lines(tmp_path: Path, fmt: ListFormat, line: str, why: str) -> None:
    """Bad lines are collected with file, line and reason; parsing goes on."""
    parsed = parse(tmp_path, f"ok.com\n{line}\nok2.com\n", fmt)
    assert parsed.hosts == [("ok.com", 1), ("ok2.com", 3)]
    [error] = parsed.errors
    assert (error.label, error.line) == ("blocklists/list.txt", 2)
    assert why in error.why
    assert parsed.bad_lines == {"blocklists/list.txt": 1}


def test_invalid_utf8_bytes_are_a_bad_line(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 make that line bad, not the file unreadable."""
    path = tmp_path / "list.txt"
    path.write_bytes(b"ok.com\n\xff\xfe.com\n")
    parsed = parse_list(ListSource("cat", path))
    assert parsed.hosts == [("ok.com", 1)]
    assert [e.line for e in parsed.errors] == [2]


@pytest.mark.parametrize(
    ("line", "why"),
    [
        pytest.param("||x.com^$third-party", "options '$third-party'", id="options"),
        pytest.param("@@||ok.com^", "exception rule: not applied", id="exception"),
        pytest.param("example.com##.ad", "element-hiding", id="cosmetic"),
        pytest.param("/banner[0-9]+/", "other than '||domain^'", id="regex"),
        pytest.param("||x.com/ads^", "URL or wildcard", id="url-rule"),
    ],
)
def test_adblock_unsupported_rules(tmp_path: Path, line: str, why: str) -> None:
    """AdBlock rules we cannot apply are reported as unsupported, never applied, not budgeted."""
    parsed = parse(tmp_path, f"{line}\n" * 50, ADBLOCK)
    assert parsed.hosts == []
    assert parsed.errors == []
    assert len(parsed.unsupported) == 50
    assert why in parsed.unsupported[0].why


def test_crlf_and_blank_lines(tmp_path: Path) -> None:
    """CRLF line ends and blank lines are handled; line numbers count every line."""
    parsed = parse(tmp_path, "a.com\r\n\r\n  \r\nB.com\r\n", DOMAINS)
    assert parsed.hosts == [("a.com", 1), ("b.com", 4)]
    assert parsed.lines == 4


def test_auto_url_rules(tmp_path: Path) -> None:
    """In auto lists `host/path` lines are URL rules: query kept, fragment dropped, %7e decoded."""
    parsed = parse(tmp_path, "X.com/Path?q=1#frag\nhttps://y.com/%7ea/%2f\nz.com/\n")
    assert parsed.urls == [("x.com", "/Path?q=1", 1), ("y.com", "/~a/%2F", 2), ("z.com", "/", 3)]
    assert parsed.hosts == []


def test_ut1_folder(tmp_path: Path) -> None:
    """A UT1 folder reads `domains` and `urls`, naming each file in positions."""
    (tmp_path / "webmail").mkdir()
    (tmp_path / "webmail" / "domains").write_text("mail.x.com\n1.2.3.4\n")
    (tmp_path / "webmail" / "urls").write_text("x.com/webmail/\nbad..com/x\n")
    source = ListSource("webmail", tmp_path / "webmail", ListFormat.UT1, label="ut1/webmail")
    parsed = parse_list(source)
    assert parsed.hosts == [("mail.x.com", 1), ("1.2.3.4", 2)]
    assert parsed.urls == [("x.com", "/webmail/", 1)]
    assert (parsed.host_label, parsed.url_label) == ("ut1/webmail/domains", "ut1/webmail/urls")
    assert [str(e) for e in parsed.errors] == [
        "ut1/webmail/urls:2: 'bad..com/x': not a valid domain pattern"
    ]


def test_ut1_folder_with_one_file(tmp_path: Path) -> None:
    """A UT1 folder may lack `domains` (like UT1's adult) or `urls`."""
    (tmp_path / "adult").mkdir()
    (tmp_path / "adult" / "urls").write_text("x.com/a\n")
    parsed = parse_list(ListSource("adult", tmp_path / "adult", ListFormat.UT1))
    assert (parsed.hosts, parsed.urls) == ([], [("x.com", "/a", 1)])


@pytest.mark.parametrize(
    "source",
    [
        pytest.param(ListSource("c", Path("/nonexistent/ut1/x"), ListFormat.UT1), id="ut1-missing"),
        pytest.param(ListSource("c", Path("/nonexistent/list.txt")), id="file-missing"),
    ],
)
def test_missing_source_is_rejected(source: ListSource) -> None:
    """A missing list file or UT1 folder rejects the list (the caller keeps the last good index)."""
    with pytest.raises(ListRejected, match="/nonexistent/"):
        parse_list(source)


def test_error_text_format() -> None:
    """Errors read `file:line: 'text': why`, with long text cut to about 80 characters."""
    error = ListError("blocklists/gambling.txt", 1207, "*bet..com", "not a valid domain pattern")
    assert str(error) == "blocklists/gambling.txt:1207: '*bet..com': not a valid domain pattern"
    long = str(ListError("f", 1, "x" * 200, "why"))
    assert long == f"f:1: '{'x' * 77}...': why"


@pytest.mark.parametrize(
    ("good", "bad", "rejected"),
    [
        pytest.param(10, 20, False, id="small-file-within-absolute-floor"),
        pytest.param(10, 21, True, id="small-file-over-floor"),
        pytest.param(1000, 111, False, id="big-file-within-10-percent"),
        pytest.param(1000, 113, True, id="big-file-over-10-percent"),
    ],
)
def test_error_budget(tmp_path: Path, good: int, bad: int, rejected: bool) -> None:
    """A file may have max(20, 10 % of its entry lines) bad lines; more rejects it, naming why."""
    text = "# comments do not count\n" * 50 + "ok.com\n" * good + "bad..com\n" * bad
    if not rejected:
        assert parse(tmp_path, text, DOMAINS).bad_lines == {"blocklists/list.txt": bad}
        return
    with pytest.raises(ListRejected) as e:
        parse(tmp_path, text, DOMAINS)
    assert f"blocklists/list.txt: {bad} bad lines of {good + bad} entries" in str(e.value)
    assert "blocklists/list.txt:" + str(51 + good) + ": 'bad..com'" in str(e.value)


def test_error_budget_parameters(tmp_path: Path) -> None:
    """The budget's fraction and floor are parameters."""
    with pytest.raises(ListRejected):
        parse(tmp_path, "ok.com\nbad..com\n", DOMAINS, max_bad=0.0, max_bad_abs=0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("Example.COM.", "example.com", id="case-dot"),
        pytest.param("xn--bcher-kva.de", "xn--bcher-kva.de", id="punycode-kept"),
        pytest.param("bücher.de", "xn--bcher-kva.de", id="idn"),
        pytest.param("faß.de", "xn--fa-hia.de", id="idna2008-sharp-s"),
        pytest.param("例え.テスト", "xn--r8jz45g.xn--zckzah", id="idn-cjk"),
        pytest.param("0x7f.1", "127.0.0.1", id="hex-ipv4"),
        pytest.param("[::1]", "::1", id="bracketed-ipv6"),
    ],
)
def test_normalize_domain(text: str, expected: str) -> None:
    """Entries normalise to lower-case ASCII (`xn--`) names or canonical IP literals."""
    assert normalize_domain(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param(".", id="dot"),
        pytest.param("a..b", id="empty-label"),
        pytest.param("x.com..", id="two-trailing-dots"),
        pytest.param("-.*", id="star"),
        pytest.param("example.123", id="numeric-tld-not-ipv4"),
        pytest.param("1.2.3.4.5", id="five-part-ipv4"),
        pytest.param("09.1.1.1", id="bad-octal"),
    ],
)
def test_normalize_domain_rejects(text: str) -> None:
    """Garbage raises ValueError."""
    with pytest.raises(ValueError, match="not a valid"):
        normalize_domain(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("linkedin.com/jobs", ("linkedin.com", "/jobs"), id="host-path"),
        pytest.param("https://LinkedIn.com/Jobs?x#y", ("linkedin.com", "/Jobs?x"), id="url"),
        pytest.param("*.office365.com", ("office365.com", None), id="wildcard-domain"),
        pytest.param("aws.amazon.com", ("aws.amazon.com", None), id="domain"),
    ],
)
def test_parse_entry(text: str, expected: tuple[str, str | None]) -> None:
    """Config and URL-list entries split into a normalised host and a path (or None)."""
    assert parse_entry(text) == expected


def test_normalize_path() -> None:
    """Escapes of unreserved characters are decoded, others upper-cased; the rest is untouched."""
    assert normalize_path("/a%7eb/%2f%C3%b1?q=%41") == "/a~b/%2F%C3%B1?q=A"
    assert normalize_path("/Plain") == "/Plain"


LABEL = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=20)
NAME = (
    st.lists(LABEL, min_size=1, max_size=5)
    .map(".".join)
    .filter(lambda n: not n.rpartition(".")[2][0].isdigit())
)


@given(NAME, st.booleans(), st.booleans())
def test_normalize_domain_properties(name: str, upper: bool, dot: bool) -> None:
    """Case and one trailing dot never matter, and normalising is idempotent."""
    text = (name.upper() if upper else name) + ("." if dot else "")
    assert normalize_domain(text) == name
    assert normalize_domain(normalize_domain(text)) == name


@given(st.text(max_size=40))
def test_normalize_domain_never_crashes(text: str) -> None:
    """Any text either normalises idempotently or raises ValueError (fuzz, like blocky's)."""
    try:
        name = normalize_domain(text)
    except ValueError:
        return
    assert normalize_domain(name) == name
