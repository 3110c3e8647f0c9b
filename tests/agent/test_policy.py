"""decide(): the documented total order as tables (groups x schedules x exceptions x layering)."""

from __future__ import annotations

import datetime as dt
import textwrap
from zoneinfo import ZoneInfo

import pytest

from agent.config import load_config
from agent.identity import Identity
from agent.model import Action, Classification, Match, MatchKind, Request
from agent.policy import Policy

NY = ZoneInfo("America/New_York")

BASELINE = """\
layer: statewide
overlays: [agency.yaml]
policy:
  timezone: America/New_York
  schedules:
    business-hours: {days: [mon, tue, wed, thu, fri], start: "08:00", end: "17:00"}
    night: {days: [fri], start: "22:00", end: "06:00", skip_holidays: false}
  holidays:
    - {date: 2026-11-26, name: Thanksgiving Day}
  categories:
    webmail: {clause: "No personal mail."}
    jobsearch: {clause: "No job searches."}
    games: {clause: "No games."}
    social_networks: {clause: "State business only."}
    audio-video: {clause: "No streaming."}
  groups:
    staff: {networks: [10.0.0.0/8]}
    contractors: {networks: [172.16.0.0/12]}
    hr: {networks: [10.20.30.0/24], user_groups: [hr]}
  never_block: [office365.com]
  rules:
    - {id: personal, categories: [webmail, jobsearch], action: block}
    - {id: games-day, categories: [games], action: block, schedule: business-hours}
    - {id: games-evening, categories: [games], action: warn, schedule: business-hours, outside_schedule: true}
    - {id: social-log, categories: [social_networks], action: log}
    - {id: streaming-night, categories: [audio-video], action: block, schedule: night}
    - {id: streaming-warn, categories: [audio-video], action: warn}
records:
  notice: {text: "We monitor."}
"""

OVERLAY = """\
layer: agency
policy:
  rules:
    - {id: agency-social, categories: [social_networks], action: block, groups: [contractors], schedule: business-hours}
    - {id: agency-mail-log, categories: [webmail], action: log}
  exceptions:
    - {id: hr-jobs, groups: [hr], categories: [jobsearch], hosts: [indeed.com], urls: [linkedin.com/jobs],
       approved_by: State CIO, reference: CIO-1, expires: 2027-06-30}
"""


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Policy, Identity]:
    tmp = tmp_path_factory.mktemp("policy")
    (tmp / "policy.yaml").write_text(textwrap.dedent(BASELINE))
    (tmp / "agency.yaml").write_text(textwrap.dedent(OVERLAY))
    config = load_config(tmp / "policy.yaml")
    return Policy(config), Identity(config.groups)


def at(text: str) -> float:
    """A local New York wall-clock time, or an explicit UTC time ending in Z."""
    if text.endswith("Z"):
        return dt.datetime.fromisoformat(text).timestamp()
    return dt.datetime.fromisoformat(text).replace(tzinfo=NY).timestamp()


def classified(
    host: str, *cats: str, path: str | None = None, never: bool = False
) -> Classification:
    matches = tuple(Match(c, host, f"{c}.txt:1", MatchKind.HOST, (0, 2, 0)) for c in cats)
    if never:
        matches = (Match(None, host, "policy.yaml:20", MatchKind.HOST, (0, 2, 0)),)
    return Classification(host, path, matches)


MON_10 = "2026-11-23T10:00"  # Monday, business hours
MON_20 = "2026-11-23T20:00"  # Monday evening
SAT_10 = "2026-11-28T10:00"  # Saturday
HOLIDAY = "2026-11-26T10:00"  # Thanksgiving, a weekday holiday

CASES = [
    # (client ip, user groups, classification, time) -> (action, rule, layer, reason substring)
    pytest.param(
        "10.1.1.1",
        (),
        classified("mail.yahoo.com", "webmail"),
        MON_10,
        Action.BLOCK,
        "personal",
        "statewide",
        "category webmail entry 'mail.yahoo.com' (webmail.txt:1)",
        id="staff-webmail-business-hours",
    ),
    pytest.param(
        "10.1.1.1",
        (),
        classified("mail.yahoo.com", "webmail"),
        MON_20,
        Action.BLOCK,
        "personal",
        "statewide",
        "layer statewide, always",
        id="staff-webmail-after-hours-still-blocked",
    ),
    pytest.param(
        "10.1.1.1",
        (),
        classified("roblox.com", "games"),
        MON_10,
        Action.BLOCK,
        "games-day",
        "statewide",
        "business-hours",
        id="games-business-hours",
    ),
    pytest.param(
        "10.1.1.1",
        (),
        classified("roblox.com", "games"),
        MON_20,
        Action.WARN,
        "games-evening",
        "statewide",
        "outside business-hours",
        id="games-evening",
    ),
    pytest.param(
        "10.1.1.1",
        (),
        classified("roblox.com", "games"),
        SAT_10,
        Action.WARN,
        "games-evening",
        "statewide",
        "outside business-hours",
        id="games-weekend",
    ),
    pytest.param(
        "10.1.1.1",
        (),
        classified("roblox.com", "games"),
        HOLIDAY,
        Action.WARN,
        "games-evening",
        "statewide",
        "",
        id="games-holiday",
    ),
    pytest.param(
        "10.1.1.1",
        (),
        classified("roblox.com", "games"),
        "2026-03-09T12:30:00Z",
        Action.BLOCK,
        "games-day",
        "statewide",
        "",
        id="dst-start-0830-edt-is-business-hours",
    ),
    pytest.param(
        "10.1.1.1",
        (),
        classified("roblox.com", "games"),
        "2026-11-02T12:30:00Z",
        Action.WARN,
        "games-evening",
        "statewide",
        "",
        id="dst-end-0730-est-is-not-business-hours",
    ),
    pytest.param(
        "10.1.1.1",
        (),
        classified("www.facebook.com", "social_networks"),
        MON_10,
        Action.LOG,
        "social-log",
        "statewide",
        "",
        id="staff-social-logged",
    ),
    pytest.param(
        "172.16.5.5",
        (),
        classified("www.facebook.com", "social_networks"),
        MON_10,
        Action.BLOCK,
        "agency-social",
        "agency",
        "layer agency",
        id="contractor-social-overlay-stricter",
    ),
    pytest.param(
        "172.16.5.5",
        (),
        classified("www.facebook.com", "social_networks"),
        MON_20,
        Action.LOG,
        "social-log",
        "statewide",
        "",
        id="contractor-social-evening-baseline",
    ),
    pytest.param(
        "10.1.1.1",
        (),
        classified("mail.yahoo.com", "webmail"),
        MON_10,
        Action.BLOCK,
        "personal",
        "statewide",
        "",
        id="overlay-cannot-loosen-to-log",
    ),
    pytest.param(
        "10.20.30.4",
        (),
        classified("www.indeed.com", "jobsearch"),
        MON_10,
        Action.ALLOW,
        "exception:hr-jobs",
        "agency",
        "approved by State CIO, CIO-1, until 2027-06-30",
        id="hr-jobsearch-exception",
    ),
    pytest.param(
        "10.1.1.1",
        ("hr",),
        classified("www.indeed.com", "jobsearch"),
        MON_10,
        Action.ALLOW,
        "exception:hr-jobs",
        "agency",
        "lowers block",
        id="hr-by-directory-group",
    ),
    pytest.param(
        "10.1.1.1",
        (),
        classified("www.indeed.com", "jobsearch"),
        MON_10,
        Action.BLOCK,
        "personal",
        "statewide",
        "",
        id="non-hr-jobsearch-blocked",
    ),
    pytest.param(
        "10.20.30.4",
        (),
        classified("www.indeed.com", "jobsearch"),
        "2027-07-01T09:00",
        Action.BLOCK,
        "personal",
        "statewide",
        "",
        id="exception-expired-at-now",
    ),
    pytest.param(
        "10.20.30.4",
        (),
        classified("www.indeed.com", "jobsearch"),
        "2027-06-30T23:59",
        Action.ALLOW,
        "exception:hr-jobs",
        "agency",
        "",
        id="exception-valid-through-expiry-day",
    ),
    pytest.param(
        "10.20.30.4",
        (),
        classified("www.indeed.com", "jobsearch", "webmail"),
        MON_10,
        Action.BLOCK,
        "personal",
        "statewide",
        "",
        id="exception-limited-to-its-categories",
    ),
    pytest.param(
        "10.20.30.4",
        (),
        classified("www.linkedin.com", "jobsearch", path="/jobs/view/1"),
        MON_10,
        Action.ALLOW,
        "exception:hr-jobs",
        "agency",
        "",
        id="exception-url-prefix",
    ),
    pytest.param(
        "10.20.30.4",
        (),
        classified("www.linkedin.com", "jobsearch", path="/feed"),
        MON_10,
        Action.BLOCK,
        "personal",
        "statewide",
        "",
        id="exception-url-other-path",
    ),
    pytest.param(
        "10.1.1.1",
        (),
        classified("example.org"),
        MON_10,
        Action.ALLOW,
        "default",
        None,
        "no list matches; default action",
        id="uncategorized-default",
    ),
    pytest.param(
        "10.1.1.1",
        (),
        classified("outlook.office365.com", never=True),
        MON_10,
        Action.ALLOW,
        "default",
        None,
        "never-block entry",
        id="never-block",
    ),
    pytest.param(
        "10.1.1.1",
        (),
        classified("x.example", "social_networks", "webmail"),
        MON_10,
        Action.BLOCK,
        "personal",
        "statewide",
        "category webmail",
        id="multi-category-most-restrictive",
    ),
    pytest.param(
        "10.1.1.1",
        (),
        classified("tv.example", "audio-video"),
        "2026-11-28T03:00",
        Action.BLOCK,
        "streaming-night",
        "statewide",
        "",
        id="overnight-window-belongs-to-friday",
    ),
    pytest.param(
        "10.1.1.1",
        (),
        classified("tv.example", "audio-video"),
        "2026-11-27T03:00",
        Action.WARN,
        "streaming-warn",
        "statewide",
        "",
        id="overnight-window-not-before-friday",
    ),
    pytest.param(
        "192.0.2.1",
        (),
        classified("mail.yahoo.com", "webmail"),
        MON_10,
        Action.BLOCK,
        "personal",
        "statewide",
        "",
        id="rule-without-groups-applies-to-everyone",
    ),
]


@pytest.mark.parametrize(
    ("ip", "user_groups", "cls", "when", "action", "rule", "layer", "reason"), CASES
)
def test_decide_total_order(
    policy: tuple[Policy, Identity],
    ip: str,
    user_groups: tuple[str, ...],
    cls: Classification,
    when: str,
    action: Action,
    rule: str,
    layer: str | None,
    reason: str,
) -> None:
    """The decision follows classification -> most restrictive rule in force -> approved exception."""
    pol, identity = policy
    client = identity.identify(ip, "someone" if user_groups else None, user_groups)
    request = Request(cls.host, cls.path)
    d = pol.decide(client, request, cls, at(when))
    assert (d.action, d.rule, d.layer) == (action, rule, layer), d.reason
    assert reason in d.reason
    assert d.reason.startswith(action.label + ":")


def test_user_dependent_when_a_user_group_has_an_exception(policy: tuple[Policy, Identity]) -> None:
    """A block that an HR user could be excepted from is not enforceable for the whole address."""
    pol, identity = policy
    client = identity.identify("10.1.1.1")
    cls = classified("www.indeed.com", "jobsearch")
    req = Request(cls.host, None)
    d = pol.decide(client, req, cls, at(MON_10))
    assert pol.user_dependent(client, req, at(MON_10), d)
    mail = classified("mail.yahoo.com", "webmail")
    d2 = pol.decide(client, Request(mail.host), mail, at(MON_10))
    assert not pol.user_dependent(client, Request(mail.host), at(MON_10), d2)
