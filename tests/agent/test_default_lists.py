"""The project's curated default lists (`blocklists/*.txt`): well formed, catching the well-known
consumer services of each category and none of an agency's work services."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

BLOCKLISTS = Path(__file__).resolve().parents[2] / "blocklists"

CATEGORIES = (
    "webmail",
    "shopping",
    "jobsearch",
    "gambling",
    "financial",
    "adult",
    "hacking",
    "warez",
    "social_networks",
    "games",
    "audio-video",
    "filehosting",
    "dating",
    "vpn",
    "doh",
)

MIN_ENTRIES = 20  # a default list is a useful baseline, not a token sample

# `www.` entries that are deliberate: the domain also serves work services, so only the shop
# host is listed. Every name here must be in a list (a stale allowance fails the test).
DELIBERATE_WWW = {
    # amazon.com would also catch aws.amazon.com, console.aws.amazon.com and
    # signin.aws.amazon.com (AWS consoles) and business.amazon.com (procurement).
    "www.amazon.com": "shopping",
}

# Exact entries allowed in two lists; every name here must be in both.
SHARED_ENTRIES: dict[str, frozenset[str]] = {}

_INLINE_COMMENT = re.compile(r"\s#")
_HOST = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]")
_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*")


@dataclass(frozen=True, slots=True)
class Entry:
    """One list line: a domain (covering its subdomains) or a `host/path` URL rule."""

    category: str
    text: str
    host: str
    path: str | None
    line: int

    def where(self) -> str:
        return f"blocklists/{self.category}.txt:{self.line}: {self.text!r}"

    def catches(self, host: str, path: str | None) -> bool:
        """Label-aware suffix match on the host, then (URL rules) a path prefix at a boundary."""
        if host != self.host and not host.endswith("." + self.host):
            return False
        if self.path is None:
            return True
        if path is None or not path.startswith(self.path):
            return False
        rest = path[len(self.path) :]
        return not rest or self.path[-1] in "/?&=" or rest[0] in "/?&;"


def read_list(category: str) -> list[Entry]:
    """Minimal reader: drop comments and blank lines; `domain` or `domain/path` per line."""
    entries = []
    text = (BLOCKLISTS / f"{category}.txt").read_text(encoding="utf-8")
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if m := _INLINE_COMMENT.search(line):
            line = line[: m.start()].rstrip()
        if not line or line.startswith("#"):
            continue
        host, slash, path = line.partition("/")
        entries.append(Entry(category, line, host, "/" + path if slash else None, lineno))
    return entries


@cache
def all_lists() -> dict[str, tuple[Entry, ...]]:
    return {category: tuple(read_list(category)) for category in CATEGORIES}


def split_target(target: str) -> tuple[str, str | None]:
    """`https://host/path` -> (host, path); a bare host -> (host, None), as DNS sees it."""
    scheme, sep, rest = target.partition("://")
    if not sep:
        rest, scheme = target, ""
    host, slash, path = rest.partition("/")
    if slash:
        return host, "/" + path
    return host, ("/" if scheme else None)


def classify(host: str, path: str | None) -> dict[str, list[str]]:
    """Categories of the deciding level (URL rules, else the longest host suffix) -> entries."""
    hits = [e for entries in all_lists().values() for e in entries if e.catches(host, path)]
    urls = [e for e in hits if e.path is not None]
    if urls:
        hits = urls
    elif hits:
        longest = max(len(e.host) for e in hits)
        hits = [e for e in hits if len(e.host) == longest]
    out: dict[str, list[str]] = {}
    for e in hits:
        out.setdefault(e.category, []).append(e.where())
    return out


def all_hits(host: str, path: str | None) -> list[str]:
    """Every entry of every list that matches, whatever its level."""
    return [e.where() for es in all_lists().values() for e in es if e.catches(host, path)]


# -- the files ------------------------------------------------------------------------------


def test_one_file_per_category() -> None:
    """Each UT1 category the baseline policy names has exactly one default list, and no extras."""
    assert sorted(p.stem for p in BLOCKLISTS.glob("*.txt")) == sorted(CATEGORIES)


@pytest.mark.parametrize("category", CATEGORIES)
def test_header_names_category_licence_and_clause(category: str) -> None:
    """Each file opens with a header naming its category, scope, policy clause and CC0 licence."""
    text = (BLOCKLISTS / f"{category}.txt").read_text(encoding="utf-8")
    header = text.split("\n\n", 1)[0]
    assert header.startswith(f"# aupguard default category list: {category}\n")
    for needed in ("# Covers:", "# Policy:", "CC0-1.0", "not derived from UT1", "CC BY-SA 4.0"):
        assert needed in header, f"{category}.txt header lacks {needed!r}"


@pytest.mark.parametrize("category", CATEGORIES)
def test_entries_are_well_formed(category: str) -> None:
    """Entries are lower-case host names without scheme, port or wildcard; URL paths start at `/`."""
    assert [e.where() for e in all_lists()[category] if not _well_formed(e)] == []


def _well_formed(e: Entry) -> bool:
    if e.text != e.text.lower() or len(e.host) > 253 or not _HOST.fullmatch(e.host):
        return False
    return e.path is None or _PATH.fullmatch(e.path) is not None


@pytest.mark.parametrize("category", CATEGORIES)
def test_enough_entries(category: str) -> None:
    """Each list covers its category's well-known services, not a token few."""
    assert len(all_lists()[category]) >= MIN_ENTRIES


@pytest.mark.parametrize("category", CATEGORIES)
def test_no_duplicates(category: str) -> None:
    """No entry is written twice in one file."""
    seen: dict[str, Entry] = {}
    dupes = []
    for e in all_lists()[category]:
        if e.text in seen:
            dupes.append(f"{e.where()} repeats line {seen[e.text].line}")
        seen.setdefault(e.text, e)
    assert not dupes


@pytest.mark.parametrize("category", CATEGORIES)
def test_no_entry_covered_by_another_in_the_same_file(category: str) -> None:
    """An entry whose parent domain is in the same file is dead weight (the parent covers it)."""
    entries = all_lists()[category]
    hosts = [e for e in entries if e.path is None]
    redundant = [
        f"{e.where()} is covered by {p.where()}"
        for e in entries
        for p in hosts
        if p is not e and p.catches(e.host, e.path or "")
    ]
    assert not redundant


@pytest.mark.parametrize("category", CATEGORIES)
def test_no_www_prefix_unless_deliberate(category: str) -> None:
    """Entries cover subdomains, so `www.` is redundant except where the bare domain is a work service."""
    www = [e for e in all_lists()[category] if e.host.startswith("www.")]
    unexpected = [e.where() for e in www if DELIBERATE_WWW.get(e.host) != category]
    assert not unexpected


def test_deliberate_www_entries_are_still_listed() -> None:
    """Every allowed `www.` entry is still in its list (the allowance is not stale)."""
    for host, category in DELIBERATE_WWW.items():
        assert any(e.host == host for e in all_lists()[category]), host


@pytest.mark.parametrize("category", CATEGORIES)
def test_no_government_entries(category: str) -> None:
    """No entry is a government or military domain, nor a locality-based `.us` name (`state.xx.us`)."""
    assert [e.where() for e in all_lists()[category] if _government(e.host)] == []


def _government(host: str) -> bool:
    labels = host.split(".")
    if {"gov", "mil"} & set(labels[-2:]):  # .gov, .mil, and .gov.xx / .mil.xx abroad
        return True
    return labels[-1] == "us" and len(labels) > 2  # state.xx.us, ci.city.xx.us, k12.xx.us


def test_an_exact_entry_is_in_one_list_only() -> None:
    """A name is written in one list; a second category would be an unreviewed double match."""
    owners: dict[str, set[str]] = {}
    for category, entries in all_lists().items():
        for e in entries:
            owners.setdefault(e.text, set()).add(category)
    shared = {text: cats for text, cats in owners.items() if len(cats) > 1}
    assert shared == {k: set(v) for k, v in SHARED_ENTRIES.items()}


@pytest.mark.parametrize("category", CATEGORIES)
def test_project_parser_reads_every_line(category: str) -> None:
    """`agent.lists.parse_list` reads each file with no errors and the same entries as this test."""
    try:
        from agent.lists import ListSource, parse_list  # noqa: PLC0415
    except ImportError as e:
        pytest.skip(f"agent.lists.parse_list is not importable (written separately): {e}")
    path = BLOCKLISTS / f"{category}.txt"
    parsed = parse_list(ListSource(category, path, label=f"blocklists/{category}.txt"))
    assert [str(e) for e in parsed.errors] == []
    assert [str(e) for e in parsed.unsupported] == []
    mine = all_lists()[category]
    assert sorted(parsed.hosts) == sorted((e.host, e.line) for e in mine if e.path is None)
    assert sorted(parsed.urls) == sorted((e.host, e.path, e.line) for e in mine if e.path)


# -- an agency's work services: no default list may catch them -------------------------------

WORK_HOSTS = [
    # Microsoft 365, Entra ID, Azure; the Microsoft account sign-in; consumer OneDrive
    # (not listed anywhere: see blocklists/README.md)
    pytest.param("outlook.office365.com", id="m365-outlook"),
    pytest.param("outlook.office.com", id="m365-outlook-office"),
    pytest.param("outlook.cloud.microsoft", id="m365-outlook-cloud"),
    pytest.param("agency-gov.mail.protection.outlook.com", id="m365-exchange-protection"),
    pytest.param("www.office.com", id="m365-portal"),
    pytest.param("login.microsoftonline.com", id="entra-sign-in"),
    pytest.param("login.live.com", id="microsoft-account-sign-in"),
    pytest.param("account.microsoft.com", id="microsoft-account"),
    pytest.param("onedrive.live.com", id="onedrive-consumer"),
    pytest.param("portal.azure.com", id="azure-portal"),
    pytest.param("teams.microsoft.com", id="teams"),
    pytest.param("agency.sharepoint.com", id="sharepoint"),
    pytest.param("microsoft.com", id="microsoft"),
    pytest.param("www.microsoft.com", id="microsoft-www"),
    pytest.param("bing.com", id="bing"),
    # AWS (under amazon.com) and Amazon Business
    pytest.param("aws.amazon.com", id="aws"),
    pytest.param("console.aws.amazon.com", id="aws-console"),
    pytest.param("signin.aws.amazon.com", id="aws-sign-in"),
    pytest.param("docs.aws.amazon.com", id="aws-docs"),
    pytest.param("s3.amazonaws.com", id="aws-s3"),
    pytest.param("business.amazon.com", id="amazon-business"),
    # Google Cloud and Workspace (mail.google.com excepted: see README)
    pytest.param("console.cloud.google.com", id="gcp-console"),
    pytest.param("accounts.google.com", id="google-sign-in"),
    pytest.param("docs.google.com", id="google-docs"),
    pytest.param("drive.google.com", id="google-drive"),
    pytest.param("workspace.google.com", id="google-workspace"),
    pytest.param("meet.google.com", id="google-meet"),
    pytest.param("calendar.google.com", id="google-calendar"),
    pytest.param("google.com", id="google"),
    pytest.param("www.google.com", id="google-www"),
    # Apple: support, Apple ID and iCloud sign-in (iCloud Mail is a URL rule)
    pytest.param("apple.com", id="apple"),
    pytest.param("www.apple.com", id="apple-www"),
    pytest.param("support.apple.com", id="apple-support"),
    pytest.param("appleid.apple.com", id="apple-id"),
    pytest.param("www.icloud.com", id="icloud"),
    # Development, collaboration, conferencing, CRM and ITSM, file sharing under contract
    pytest.param("github.com", id="github"),
    pytest.param("gitlab.com", id="gitlab"),
    pytest.param("zoom.us", id="zoom"),
    pytest.param("agency.zoom.us", id="zoom-tenant"),
    pytest.param("webex.com", id="webex"),
    pytest.param("agency.webex.com", id="webex-tenant"),
    pytest.param("slack.com", id="slack"),
    pytest.param("salesforce.com", id="salesforce"),
    pytest.param("agency.my.salesforce.com", id="salesforce-tenant"),
    pytest.param("servicenow.com", id="servicenow"),
    pytest.param("agency.service-now.com", id="servicenow-tenant"),
    pytest.param("box.com", id="box"),
    pytest.param("app.box.com", id="box-app"),
    pytest.param("dropbox.com", id="dropbox"),
    pytest.param("www.dropbox.com", id="dropbox-www"),
    pytest.param("paypal.com", id="paypal-payments"),
    # Professional networking (only linkedin.com/jobs is job search)
    pytest.param("linkedin.com", id="linkedin"),
    pytest.param("www.linkedin.com", id="linkedin-www"),
    # Government hiring and workforce job banks
    pytest.param("usajobs.gov", id="usajobs"),
    pytest.param("www.governmentjobs.com", id="neogov-governmentjobs"),
    pytest.param("neogov.com", id="neogov"),
    pytest.param("www.careeronestop.org", id="careeronestop"),
    pytest.param("www.workintexas.com", id="work-in-texas"),
    pytest.param("www.employflorida.com", id="employ-florida"),
    # State lotteries are state agencies; multi-state games are run by them
    pytest.param("www.calottery.com", id="california-lottery"),
    pytest.param("www.txlottery.org", id="texas-lottery"),
    pytest.param("www.masslottery.com", id="massachusetts-lottery"),
    pytest.param("www.powerball.com", id="powerball"),
    # Exchanges' own sites: primary sources for treasury, pension and securities staff
    pytest.param("www.nasdaq.com", id="nasdaq"),
    pytest.param("www.nyse.com", id="nyse"),
    # Government
    pytest.param("irs.gov", id="irs"),
    pytest.param("ny.gov", id="ny-gov"),
    pytest.param("ca.gov", id="ca-gov"),
    pytest.param("treasury.gov", id="treasury"),
    pytest.param("sec.gov", id="sec"),
    pytest.param("login.gov", id="login-gov"),
    pytest.param("weather.gov", id="weather"),
    pytest.param("cisa.gov", id="cisa"),
    pytest.param("nist.gov", id="nist"),
    pytest.param("nvd.nist.gov", id="nvd"),
    # Reference and news
    pytest.param("wikipedia.org", id="wikipedia"),
    pytest.param("en.wikipedia.org", id="wikipedia-en"),
    pytest.param("www.nytimes.com", id="nytimes"),
]


@pytest.mark.parametrize("host", WORK_HOSTS)
def test_work_service_is_not_caught(host: str) -> None:
    """No default list catches a work service, by name (DNS) or at its front page (proxy)."""
    assert all_hits(host, None) == []
    assert all_hits(host, "/") == []


WORK_URLS = [
    pytest.param("https://www.linkedin.com/in/jane-doe", id="linkedin-profile"),
    pytest.param("https://www.linkedin.com/feed/", id="linkedin-feed"),
    pytest.param("https://www.linkedin.com/company/state-agency/", id="linkedin-company"),
    pytest.param("https://www.google.com/search?q=procurement+rules", id="google-search"),
    pytest.param("https://www.google.com/maps/place/Capitol", id="google-maps"),
    pytest.param("https://www.apple.com/support/", id="apple-support-path"),
    pytest.param("https://www.icloud.com/", id="icloud-home"),
    pytest.param("https://www.nytimes.com/section/politics", id="nytimes-news"),
    pytest.param("https://aws.amazon.com/gp/", id="aws-gp-path"),
    pytest.param("https://www.facebook.com/marketplaceguidelines", id="url-rule-boundary"),
]


@pytest.mark.parametrize("target", WORK_URLS)
def test_work_url_beside_a_url_rule_is_not_caught(target: str) -> None:
    """URL rules catch only their path prefix (at a boundary), never the rest of the host."""
    host, path = split_target(target)
    rules = [e for es in all_lists().values() for e in es if e.path is not None]
    assert [e.where() for e in rules if e.catches(host, path)] == []


def test_linkedin_jobs_is_a_url_rule() -> None:
    """LinkedIn Jobs is listed as a URL rule, so the rest of linkedin.com stays uncategorised."""
    entries = all_lists()["jobsearch"]
    assert any(e.host == "linkedin.com" and e.path == "/jobs" for e in entries)
    assert list(classify("www.linkedin.com", "/jobs/view/1")) == ["jobsearch"]
    assert all_hits("www.linkedin.com", None) == []


# -- well-known consumer services: each must be caught in its category ----------------------

CONSUMER = [
    # webmail
    pytest.param("mail.yahoo.com", "webmail", id="webmail-yahoo"),
    pytest.param("outlook.live.com", "webmail", id="webmail-outlook-com"),
    pytest.param("www.hotmail.com", "webmail", id="webmail-hotmail"),
    pytest.param("gmail.com", "webmail", id="webmail-gmail"),
    pytest.param("mail.google.com", "webmail", id="webmail-gmail-host"),
    pytest.param("mail.aol.com", "webmail", id="webmail-aol"),
    pytest.param("proton.me", "webmail", id="webmail-proton"),
    pytest.param("mail.proton.me", "webmail", id="webmail-proton-mail"),
    pytest.param("app.tuta.com", "webmail", id="webmail-tuta"),
    pytest.param("www.gmx.com", "webmail", id="webmail-gmx"),
    pytest.param("mail.zoho.com", "webmail", id="webmail-zoho"),
    pytest.param("app.fastmail.com", "webmail", id="webmail-fastmail"),
    pytest.param("https://www.icloud.com/mail/", "webmail", id="webmail-icloud-url"),
    # shopping
    pytest.param("www.amazon.com", "shopping", id="shopping-amazon"),
    pytest.param("smile.amazon.com", "shopping", id="shopping-amazon-smile"),
    pytest.param("www.amazon.co.uk", "shopping", id="shopping-amazon-uk"),
    pytest.param("www.ebay.com", "shopping", id="shopping-ebay"),
    pytest.param("www.walmart.com", "shopping", id="shopping-walmart"),
    pytest.param("www.target.com", "shopping", id="shopping-target"),
    pytest.param("www.etsy.com", "shopping", id="shopping-etsy"),
    pytest.param("www.temu.com", "shopping", id="shopping-temu"),
    pytest.param("us.shein.com", "shopping", id="shopping-shein"),
    pytest.param(
        "https://www.facebook.com/marketplace/item/1", "shopping", id="shopping-fb-marketplace"
    ),
    pytest.param("https://www.apple.com/shop/buy-iphone", "shopping", id="shopping-apple-store"),
    # jobsearch
    pytest.param("www.indeed.com", "jobsearch", id="jobsearch-indeed"),
    pytest.param("www.monster.com", "jobsearch", id="jobsearch-monster"),
    pytest.param("www.ziprecruiter.com", "jobsearch", id="jobsearch-ziprecruiter"),
    pytest.param("www.glassdoor.com", "jobsearch", id="jobsearch-glassdoor"),
    pytest.param("https://www.linkedin.com/jobs/view/1", "jobsearch", id="jobsearch-linkedin-url"),
    # gambling
    pytest.param("sportsbook.draftkings.com", "gambling", id="gambling-draftkings"),
    pytest.param("sportsbook.fanduel.com", "gambling", id="gambling-fanduel"),
    pytest.param("sports.betmgm.com", "gambling", id="gambling-betmgm"),
    pytest.param("www.bet365.com", "gambling", id="gambling-bet365"),
    pytest.param("www.pokerstars.com", "gambling", id="gambling-pokerstars"),
    pytest.param("www.bovada.lv", "gambling", id="gambling-bovada"),
    pytest.param(
        "https://www.caesars.com/sportsbook-and-casino/nj", "gambling", id="gambling-caesars-url"
    ),
    # financial
    pytest.param("finance.yahoo.com", "financial", id="financial-yahoo-finance"),
    pytest.param(
        "https://www.google.com/finance/quote/SPY:NYSEARCA", "financial", id="financial-google-url"
    ),
    pytest.param("robinhood.com", "financial", id="financial-robinhood"),
    pytest.param("us.etrade.com", "financial", id="financial-etrade"),
    pytest.param("www.schwab.com", "financial", id="financial-schwab"),
    pytest.param("www.fidelity.com", "financial", id="financial-fidelity"),
    pytest.param("www.marketwatch.com", "financial", id="financial-marketwatch"),
    pytest.param("www.coinbase.com", "financial", id="financial-coinbase"),
    pytest.param("mint.intuit.com", "financial", id="financial-mint"),
    # adult
    pytest.param("www.pornhub.com", "adult", id="adult-pornhub"),
    pytest.param("www.xvideos.com", "adult", id="adult-xvideos"),
    pytest.param("onlyfans.com", "adult", id="adult-onlyfans"),
    pytest.param("chaturbate.com", "adult", id="adult-chaturbate"),
    # hacking
    pytest.param("www.exploit-db.com", "hacking", id="hacking-exploit-db"),
    pytest.param("hackforums.net", "hacking", id="hacking-hackforums"),
    # warez
    pytest.param("thepiratebay.org", "warez", id="warez-piratebay"),
    pytest.param("1337x.to", "warez", id="warez-1337x"),
    pytest.param("nyaa.si", "warez", id="warez-nyaa"),
    pytest.param("fitgirl-repacks.site", "warez", id="warez-fitgirl"),
    # social_networks
    pytest.param("www.facebook.com", "social_networks", id="social-facebook"),
    pytest.param("www.instagram.com", "social_networks", id="social-instagram"),
    pytest.param("www.tiktok.com", "social_networks", id="social-tiktok"),
    pytest.param("x.com", "social_networks", id="social-x"),
    pytest.param("twitter.com", "social_networks", id="social-twitter"),
    pytest.param("www.reddit.com", "social_networks", id="social-reddit"),
    pytest.param("bsky.app", "social_networks", id="social-bluesky"),
    # games
    pytest.param("store.steampowered.com", "games", id="games-steam"),
    pytest.param("www.roblox.com", "games", id="games-roblox"),
    pytest.param("www.chess.com", "games", id="games-chess"),
    pytest.param("https://www.nytimes.com/games/wordle/index.html", "games", id="games-wordle-url"),
    # audio-video
    pytest.param("www.youtube.com", "audio-video", id="av-youtube"),
    pytest.param("www.netflix.com", "audio-video", id="av-netflix"),
    pytest.param("www.twitch.tv", "audio-video", id="av-twitch"),
    pytest.param("open.spotify.com", "audio-video", id="av-spotify"),
    pytest.param(
        "https://www.amazon.com/gp/video/detail/B0", "audio-video", id="av-prime-video-url"
    ),
    # filehosting
    pytest.param("mega.nz", "filehosting", id="filehosting-mega"),
    pytest.param("www.mediafire.com", "filehosting", id="filehosting-mediafire"),
    pytest.param("wetransfer.com", "filehosting", id="filehosting-wetransfer"),
    # dating
    pytest.param("tinder.com", "dating", id="dating-tinder"),
    pytest.param("www.match.com", "dating", id="dating-match"),
    pytest.param("bumble.com", "dating", id="dating-bumble"),
    # vpn
    pytest.param("nordvpn.com", "vpn", id="vpn-nordvpn"),
    pytest.param("www.expressvpn.com", "vpn", id="vpn-expressvpn"),
    pytest.param("www.torproject.org", "vpn", id="vpn-tor"),
    pytest.param("mask.icloud.com", "vpn", id="vpn-icloud-private-relay"),
    # doh
    pytest.param("dns.google", "doh", id="doh-google"),
    pytest.param("cloudflare-dns.com", "doh", id="doh-cloudflare"),
    pytest.param("mozilla.cloudflare-dns.com", "doh", id="doh-cloudflare-mozilla"),
    pytest.param("dns.quad9.net", "doh", id="doh-quad9"),
    pytest.param("abc123.dns.nextdns.io", "doh", id="doh-nextdns-profile"),
    pytest.param("dns.mullvad.net", "doh", id="doh-mullvad"),
]


@pytest.mark.parametrize(("target", "category"), CONSUMER)
def test_consumer_service_is_caught(target: str, category: str) -> None:
    """A well-known consumer service is caught in its category, and only there."""
    host, path = split_target(target)
    assert list(classify(host, path)) == [category]
