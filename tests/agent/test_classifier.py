"""Host normalisation, the compiled index (build, cache, swap) and classify() ranking."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.classifier import Classifier, _split_slow, host_of, is_under, normalize_host, split_url
from agent.index import CompiledIndex, build_index, load_index, open_index
from agent.lists import ListFormat, ListSource
from agent.model import Match

UT1 = Path(__file__).resolve().parents[3] / "shared/blocklists/ut1"


def write_lists(folder: Path, lists: dict[str, str]) -> list[ListSource]:
    """One list file per category, labelled `blocklists/<category>.txt`."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = []
    for category, text in lists.items():
        path = folder / f"{category}.txt"
        path.write_text(text)
        sources.append(ListSource(category, path, ListFormat.AUTO, f"blocklists/{category}.txt"))
    return sources


def make_index(folder: Path, lists: dict[str, str]) -> CompiledIndex:
    build_index(write_lists(folder, lists), folder / "index.aupidx")
    return open_index(folder / "index.aupidx")


def described(matches: tuple[Match, ...]) -> list[str]:
    return [m.describe() for m in matches]


# --- normalisation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "host"),
    [
        pytest.param("example.com", "example.com", id="clean"),
        pytest.param("WWW.Example.COM", "www.example.com", id="case"),
        pytest.param("example.com.", "example.com", id="trailing-dot"),
        pytest.param("example.com:8443", "example.com", id="port"),
        pytest.param("u:pw@Example.com:80", "example.com", id="userinfo"),
        pytest.param("a@b@example.com", "example.com", id="userinfo-with-at"),
        pytest.param("%65xample.com", "example.com", id="percent"),
        pytest.param("b%C3%BCcher.de", "xn--bcher-kva.de", id="percent-utf8-idn"),
        pytest.param("bücher.de", "xn--bcher-kva.de", id="idn"),
        pytest.param(
            "\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25\uff0ecom", "example.com", id="fullwidth"
        ),
        pytest.param("[2001:DB8::0:1]:443", "2001:db8::1", id="bracketed-ipv6-port"),
        pytest.param("2001:db8:0::1", "2001:db8::1", id="bare-ipv6"),
        pytest.param("[::ffff:7f00:1]", "127.0.0.1", id="ipv4-mapped-ipv6"),
        pytest.param("127.0.0.1", "127.0.0.1", id="ipv4"),
        pytest.param("0x7f.1", "127.0.0.1", id="hex-short-ipv4"),
        pytest.param("2130706433", "127.0.0.1", id="integer-ipv4"),
        pytest.param("0177.0.0.01", "127.0.0.1", id="octal-ipv4"),
        pytest.param("127.1", "127.0.0.1", id="two-part-ipv4"),
        pytest.param("0X7F.0x0.0.1:80", "127.0.0.1", id="upper-hex-ipv4-port"),
        pytest.param("_sip._tcp.x.org", "_sip._tcp.x.org", id="underscore"),
    ],
)
def test_normalize_host(raw: str, host: str) -> None:
    """Every spelling a client can send for a host normalises to the form the index holds."""
    assert normalize_host(raw) == host


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("", id="empty"),
        pytest.param("a..b", id="empty-label"),
        pytest.param("exa mple.com", id="space"),
        pytest.param("x.com:port", id="bad-port"),
        pytest.param("[::1", id="unclosed-bracket"),
        pytest.param("[x.com]", id="bracketed-name"),
        pytest.param("256.1.1.1", id="ipv4-octet"),
        pytest.param("1.2.3.4.5", id="ipv4-five-parts"),
        pytest.param("x.0x", id="ends-in-hex-not-ipv4"),
        pytest.param("%zz.com", id="bad-percent"),
        pytest.param("a" * 64 + ".com", id="long-label"),
    ],
)
def test_normalize_host_rejects_garbage(raw: str) -> None:
    """Garbage raises ValueError naming the host."""
    with pytest.raises(ValueError, match="not a valid host"):
        normalize_host(raw)


LABEL = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=12)
NAME = (
    st.lists(LABEL, min_size=1, max_size=5)
    .map(".".join)
    .filter(lambda n: not n.rpartition(".")[2][0].isdigit())
)
HOSTISH = st.one_of(
    NAME,
    NAME.map(str.upper),
    NAME.map(lambda n: n + "."),
    st.tuples(NAME, st.integers(0, 65535)).map(lambda t: f"{t[0]}:{t[1]}"),
    st.ip_addresses().map(lambda ip: f"[{ip}]" if ip.version == 6 else str(ip)),
    st.integers(0, 2**32 - 1).map(str),
    st.text(alphabet="abcdeüßé.", min_size=1, max_size=12),
)


@given(HOSTISH)
def test_normalize_host_is_idempotent(raw: str) -> None:
    """normalize_host(normalize_host(x)) == normalize_host(x) for anything it accepts."""
    try:
        host = normalize_host(raw)
    except ValueError:
        return
    assert normalize_host(host) == host


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param("https://u:p@Host.com:8443/path?q#f", ("host.com", "/path?q"), id="full-url"),
        pytest.param("https://www.x.com/a/b?c=d", ("www.x.com", "/a/b?c=d"), id="fast-path"),
        pytest.param("http://x.com", ("x.com", "/"), id="no-path-means-root"),
        pytest.param("https://x.com?q=1", ("x.com", "/?q=1"), id="query-without-path"),
        pytest.param("https://x.com#frag", ("x.com", "/"), id="fragment-only"),
        pytest.param("x.com/Jobs/View", ("x.com", "/Jobs/View"), id="host-path-case-kept"),
        pytest.param("x.com", ("x.com", None), id="bare-host"),
        pytest.param("X.COM.", ("x.com", None), id="bare-host-normalised"),
        pytest.param("x.com/%7euser/%2f", ("x.com", "/~user/%2F"), id="percent-path"),
        pytest.param("HTTPS://bücher.de/x", ("xn--bcher-kva.de", "/x"), id="idn-upper-scheme"),
        pytest.param("//x.com/a", ("x.com", "/a"), id="scheme-relative"),
        pytest.param("ftp://x.com/a", ("x.com", "/a"), id="other-scheme"),
        pytest.param("https://[::1]:8080/a", ("::1", "/a"), id="ipv6"),
        pytest.param("http://0x7f.1/", ("127.0.0.1", "/"), id="odd-ipv4"),
    ],
)
def test_split_url(url: str, expected: tuple[str, str | None]) -> None:
    """URLs, `host/path` and bare hosts split into a normalised host and a path (None if bare)."""
    assert split_url(url) == expected


@given(
    st.sampled_from(["", "http://", "https://"]),
    NAME,
    st.sampled_from(["", "/", "/a/B", "/a?b=c", "?q", "/x#frag"]),
)
def test_split_url_fast_path_agrees_with_full_path(scheme: str, host: str, path: str) -> None:
    """The fast path for clean ASCII URLs gives what the full parser gives."""
    url = scheme + host + path
    assert split_url(url) == _split_slow(url)


# --- suffix matching -------------------------------------------------------------------------


@pytest.fixture
def webmail_index(tmp_path: Path) -> CompiledIndex:
    return make_index(tmp_path, {"webmail": "# mail\nexample.com\nmail.yahoo.co.jp\n1.2.3.4\n"})


@pytest.mark.parametrize(
    ("host", "entry"),
    [
        pytest.param("example.com", "example.com", id="itself"),
        pytest.param("a.b.example.com", "example.com", id="subdomain"),
        pytest.param("notexample.com", None, id="string-prefix-lookalike"),
        pytest.param("example.com.evil.test", None, id="listed-name-as-prefix"),
        pytest.param("xample.com", None, id="shorter"),
        pytest.param("com", None, id="parent"),
        pytest.param("yahoo.co.jp", None, id="parent-of-listed"),
        pytest.param("x.mail.yahoo.co.jp", "mail.yahoo.co.jp", id="deep"),
        pytest.param("1.2.3.4", "1.2.3.4", id="ip"),
        pytest.param("11.2.3.4", None, id="ip-string-suffix"),
        pytest.param("1.2.3.45", None, id="ip-string-prefix"),
    ],
)
def test_label_aware_suffix_matching(
    webmail_index: CompiledIndex, host: str, entry: str | None
) -> None:
    """A listed domain matches itself and subdomains, never a lookalike on a string boundary."""
    result = Classifier(webmail_index).classify(host, None)
    assert [m.entry for m in result.matches] == ([entry] if entry else [])


@settings(max_examples=60, deadline=None)
@given(
    listed=st.lists(LABEL, min_size=1, max_size=4),
    sub=st.lists(LABEL, max_size=3),
    junk=LABEL,
)
def test_suffix_matching_property(
    tmp_path_factory: pytest.TempPathFactory, listed: list[str], sub: list[str], junk: str
) -> None:
    """For random names: the domain and every subdomain match; lookalikes never do."""
    domain = ".".join([*listed, "test"])
    index = make_index(tmp_path_factory.mktemp("prop"), {"cat": domain + "\n"})
    classify = Classifier(index).classify
    for host in (domain, ".".join([*sub, domain])):
        assert [m.entry for m in classify(host, None).matches] == [domain]
    for lookalike in (junk + domain, f"{domain}.{junk}", domain[1:], f"{junk}-{domain}"):
        if lookalike != domain and not lookalike.endswith("." + domain):
            assert classify(lookalike, None).matches == ()


# --- ranking ---------------------------------------------------------------------------------


@pytest.fixture
def ranked(tmp_path: Path) -> Classifier:
    index = make_index(
        tmp_path,
        {
            "shopping": "amazon.com\nexample.com\n",
            "cloud": "aws.amazon.com\n",
            "jobsearch": "linkedin.com/jobs\nexample.com/careers/\n",
            "social_networks": "linkedin.com\n",
            "webmail": "office365.com\nexample.com\nexample.com\n",
            "games": "example.com\n",
        },
    )
    never = [
        ("office365.com", "config/policy.yaml:40"),
        ("example.com/help", "config/policy.yaml:41"),
    ]
    return Classifier(index, never_block=never)


@pytest.mark.parametrize(
    ("url", "matches", "overridden"),
    [
        pytest.param(
            "https://www.linkedin.com/jobs/view/1",
            ["jobsearch entry 'linkedin.com/jobs' (blocklists/jobsearch.txt:1)"],
            ["social_networks entry 'linkedin.com' (blocklists/social_networks.txt:1)"],
            id="url-rule-beats-host",
        ),
        pytest.param(
            "https://www.linkedin.com/jobsearch-tips",
            ["social_networks entry 'linkedin.com' (blocklists/social_networks.txt:1)"],
            [],
            id="url-rule-ends-at-boundary",
        ),
        pytest.param(
            "https://aws.amazon.com/",
            ["cloud entry 'aws.amazon.com' (blocklists/cloud.txt:1)"],
            ["shopping entry 'amazon.com' (blocklists/shopping.txt:1)"],
            id="longer-suffix-beats-shorter",
        ),
        pytest.param(
            "https://outlook.office365.com/",
            ["never-block entry 'office365.com' (config/policy.yaml:40)"],
            ["webmail entry 'office365.com' (blocklists/webmail.txt:1)"],
            id="never-block-beats-same-level",
        ),
        pytest.param(
            "https://example.com/",
            [
                "games entry 'example.com' (blocklists/games.txt:1)",
                "shopping entry 'example.com' (blocklists/shopping.txt:2)",
                "webmail entry 'example.com' (blocklists/webmail.txt:2)",
            ],
            [],
            id="multi-category-duplicate-line-once",
        ),
        pytest.param(
            "https://example.com/help/x",
            ["never-block entry 'example.com/help' (config/policy.yaml:41)"],
            [
                "games entry 'example.com' (blocklists/games.txt:1)",
                "shopping entry 'example.com' (blocklists/shopping.txt:2)",
                "webmail entry 'example.com' (blocklists/webmail.txt:2)",
            ],
            id="never-block-url-beats-hosts",
        ),
        pytest.param(
            "https://example.com/careers/x",
            ["jobsearch entry 'example.com/careers/' (blocklists/jobsearch.txt:2)"],
            [
                "games entry 'example.com' (blocklists/games.txt:1)",
                "shopping entry 'example.com' (blocklists/shopping.txt:2)",
                "webmail entry 'example.com' (blocklists/webmail.txt:2)",
            ],
            id="overridden-sorted-by-category",
        ),
        pytest.param("https://example.org/", [], [], id="unlisted"),
    ],
)
def test_ranking(ranked: Classifier, url: str, matches: list[str], overridden: list[str]) -> None:
    """URL rule > longer suffix > shorter; never-block wins its level; the rest is overridden."""
    result = ranked.classify(*split_url(url))
    assert (described(result.matches), described(result.overridden)) == (matches, overridden)


def test_categories_and_never_blocked(ranked: Classifier) -> None:
    """Classification reports sorted categories, and none when never-block decided."""
    assert ranked.classify("example.com", "/").categories == ("games", "shopping", "webmail")
    office = ranked.classify("office365.com", None)
    assert office.never_blocked
    assert office.categories == ()


def test_url_rules_need_a_path(ranked: Classifier) -> None:
    """Host-only lookups (DNS, SNI) never apply URL rules; has_url_rules_for says they exist."""
    result = ranked.classify("www.linkedin.com", None)
    assert [m.category for m in result.matches] == ["social_networks"]
    assert ranked.has_url_rules_for("www.linkedin.com")
    assert ranked.has_url_rules_for("example.com")
    assert not ranked.has_url_rules_for("amazon.com")
    assert not ranked.has_url_rules_for("notlinkedin.com")


@pytest.mark.parametrize(
    ("rule", "path", "hit"),
    [
        pytest.param("/jobs", "/jobs", True, id="equal"),
        pytest.param("/jobs", "/jobs/view/1", True, id="below"),
        pytest.param("/jobs", "/jobs?id=1", True, id="query"),
        pytest.param("/jobs", "/jobsearch", False, id="not-a-boundary"),
        pytest.param("/jobs", "/Jobs", False, id="case-sensitive"),
        pytest.param("/jobs/", "/jobs", False, id="rule-with-slash"),
        pytest.param("/?v=1", "/?v=1&x=2", True, id="query-rule"),
        pytest.param("/?v=1", "/?v=12", False, id="query-rule-boundary"),
        pytest.param("/search?q=", "/search?q=cats", True, id="rule-ends-in-equals"),
        pytest.param("/a~b", "/a%7Eb", True, id="percent-normalised"),
    ],
)
def test_url_rule_paths(tmp_path: Path, rule: str, path: str, hit: bool) -> None:
    """URL rules are case-sensitive path prefixes ending at a boundary."""
    index = make_index(tmp_path, {"jobsearch": f"x.com{rule}\n"})
    host, norm = split_url("x.com" + path)
    assert bool(Classifier(index).classify(host, norm).matches) is hit


def test_extra_entries(tmp_path: Path) -> None:
    """Config entries with a category join the list entries with their config positions."""
    index = make_index(tmp_path, {"games": "x.com\n"})
    clf = Classifier(
        index,
        extra_entries=[("games", "y.com", "policy.yaml:9"), ("news", "x.com/n", "policy.yaml:10")],
    )
    assert described(clf.classify("a.y.com", None).matches) == [
        "games entry 'y.com' (policy.yaml:9)"
    ]
    assert clf.classify("x.com", "/n/1").categories == ("news",)


@pytest.fixture(scope="session")
def fuzz_classifier(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    folder = tmp_path_factory.mktemp("fuzz")
    index = make_index(folder, {"c": "com\nexample.com\n1.2.3.4\n::1\n", "u": "example.com/a\n"})
    return Classifier(index, never_block=[("example.com", "p:1")])


@given(HOSTISH)
@settings(max_examples=200)
def test_classify_never_raises(fuzz_classifier: Classifier, raw: str) -> None:
    """classify() accepts any normalised host."""
    try:
        host = normalize_host(raw)
    except ValueError:
        return
    assert fuzz_classifier.classify(host, "/").host == host
    assert fuzz_classifier.classify(host, None).path is None


# --- the real UT1 snapshot -------------------------------------------------------------------


@pytest.fixture(scope="session")
def ut1_index(tmp_path_factory: pytest.TempPathFactory) -> CompiledIndex:
    if not UT1.is_dir():
        pytest.skip(f"UT1 snapshot ../shared/blocklists/ut1 not present: {UT1} is missing")
    sources = [
        ListSource(d.name, d, ListFormat.UT1, f"ut1/{d.name}")
        for d in sorted(UT1.iterdir())
        if d.is_dir() and not d.name.startswith("_")
    ]
    return load_index(sources, tmp_path_factory.mktemp("ut1-index"))


def test_ut1_loads_every_category(ut1_index: CompiledIndex) -> None:
    """Every UT1 category loads with plausible counts and few bad lines."""
    entries = ut1_index.stats.entries
    assert entries["webmail"] >= 400
    assert entries["shopping"] >= 30000
    assert entries["adult"] >= 1000  # urls only
    assert 300_000 <= ut1_index.stats.domains <= 400_000
    assert sum(ut1_index.stats.bad_lines.values()) < 100


def test_ut1_never_block_corrects_third_party_lists(ut1_index: CompiledIndex) -> None:
    """office365.com (UT1 webmail) and aws.amazon.com (under UT1 shopping) are corrected by never-block."""
    plain = Classifier(ut1_index)
    assert "webmail" in plain.classify("outlook.office365.com", "/").categories
    assert plain.classify("aws.amazon.com", "/").categories == ("shopping",)
    never = [
        ("office365.com", "config/policy.yaml:40"),
        ("aws.amazon.com", "config/policy.yaml:41"),
    ]
    fixed = Classifier(ut1_index, never_block=never)
    office = fixed.classify("outlook.office365.com", "/")
    assert office.never_blocked
    assert any(m.source.startswith("ut1/webmail/domains:") for m in office.overridden)
    assert fixed.classify("aws.amazon.com", "/").categories == ()
    assert fixed.classify("www.amazon.com", "/").categories == ("shopping",)


def test_ut1_url_rules(ut1_index: CompiledIndex) -> None:
    """UT1 `urls` entries match below their host and path."""
    result = Classifier(ut1_index).classify(*split_url("https://www.home.pl/webmail/inbox"))
    assert described(result.matches) == ["webmail entry 'home.pl/webmail' (ut1/webmail/urls:4)"]


def test_opening_an_index_creates_few_objects(ut1_index: CompiledIndex) -> None:
    """Opening a 324k-domain index does not create per-entry Python objects (gc stays cheap)."""
    gc.collect()
    before = len(gc.get_objects())
    index = open_index(ut1_index.path)
    after = len(gc.get_objects())
    assert after - before < 50_000  # the URL rules in the header, not the domains
    assert len(index) > 300_000


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        pytest.param("bank.test", True, id="itself"),
        pytest.param("www.bank.test", True, id="subdomain"),
        pytest.param("notbank.test", False, id="string-suffix-not-label"),
        pytest.param("test", False, id="parent"),
    ],
)
def test_is_under(host: str, expected: bool) -> None:
    """A host is under a domain at label boundaries only; an empty set matches nothing."""
    assert is_under(host, frozenset({"bank.test"})) is expected
    assert not is_under(host, frozenset())


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("Example.COM.", "example.com", id="case-and-dot"),
        pytest.param("example.com:8443", "example.com", id="port"),
        pytest.param("[2001:db8::1]:443", "2001:db8::1", id="v6-bracketed"),
        pytest.param("2001:db8::1", "2001:db8::1", id="v6-bare"),
        pytest.param("", None, id="empty"),
        pytest.param(None, None, id="none"),
    ],
)
def test_host_of(value: str | None, expected: str | None) -> None:
    """Hosts are compared lower-case without port, brackets or trailing dot."""
    assert host_of(value) == expected
