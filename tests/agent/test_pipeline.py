"""The pipeline end to end in-process: real lists -> index -> classify -> decide, and reload."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.model import Action, Source
from agent.pipeline import Engine
from agent.runtime import Runtime

POLICY = """\
layer: statewide
policy:
  timezone: America/New_York
  categories:
    webmail: {{clause: "No personal mail.", lists: [lists/webmail.txt]}}
    shopping: {{clause: "No shopping.", lists: [lists/shopping.txt]}}
    jobsearch: {{clause: "No job searches.", lists: [lists/jobsearch.txt]}}
  groups:
    staff: {{networks: [10.0.0.0/8]}}
    hr: {{user_groups: [hr]}}
  never_block: [aws.amazon.com, example-shop.com/staff]
  rules:
    - {{id: personal, categories: [webmail, shopping, jobsearch], action: block}}
  exceptions:
    - {{id: hr-jobs, groups: [hr], hosts: [indeed.com], approved_by: CIO, reference: R-1, expires: 2099-01-01}}
lists:
  cache_dir: {cache}
records:
  notice: {{text: "We monitor."}}
"""

LISTS = {
    "webmail.txt": "# personal webmail\nmail.yahoo.com\nHOTMAIL.com.\n",
    "shopping.txt": "amazon.com\nexample-shop.com\n",
    "jobsearch.txt": "indeed.com\nlinkedin.com/jobs\n",
}


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    (tmp_path / "lists").mkdir()
    for name, text in LISTS.items():
        (tmp_path / "lists" / name).write_text(text)
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(POLICY.format(cache=tmp_path / "cache")))
    return path


@pytest.fixture
def engine(config_path: Path) -> Engine:
    return Engine.load(config_path)


@pytest.mark.parametrize(
    ("target", "host_only", "action", "category", "rule", "reason"),
    [
        pytest.param(
            "https://mail.yahoo.com/inbox",
            False,
            Action.BLOCK,
            "webmail",
            "personal",
            "webmail.txt:2",
            id="webmail-url",
        ),
        pytest.param(
            "https://user:pw@WWW.Hotmail.COM:443/",
            False,
            Action.BLOCK,
            "webmail",
            "personal",
            "'hotmail.com'",
            id="normalised-host",
        ),
        pytest.param(
            "https://www.amazon.com/dp/1",
            False,
            Action.BLOCK,
            "shopping",
            "personal",
            "",
            id="shop",
        ),
        pytest.param(
            "https://aws.amazon.com/console",
            False,
            Action.ALLOW,
            None,
            "default",
            "never-block entry 'aws.amazon.com'",
            id="never-block-beats-list",
        ),
        pytest.param(
            "https://www.linkedin.com/jobs/view/1",
            False,
            Action.BLOCK,
            "jobsearch",
            "personal",
            "'linkedin.com/jobs'",
            id="url-rule",
        ),
        pytest.param(
            "https://www.linkedin.com/feed",
            False,
            Action.ALLOW,
            None,
            "default",
            "no list matches",
            id="url-rule-other-path",
        ),
        pytest.param(
            "https://notamazon.com/",
            False,
            Action.ALLOW,
            None,
            "default",
            "",
            id="label-aware-suffix",
        ),
        pytest.param(
            "example-shop.com/staff/tickets",
            False,
            Action.ALLOW,
            None,
            "default",
            "never-block",
            id="never-block-url-beats-host",
        ),
    ],
)
def test_evaluate(
    engine: Engine,
    target: str,
    host_only: bool,
    action: Action,
    category: str | None,
    rule: str,
    reason: str,
) -> None:
    """A URL goes through normalisation, the index and the policy to one explained decision."""
    d = engine.evaluate("10.1.1.1", target, host_only=host_only).decision
    assert (d.action, d.category, d.rule) == (action, category, rule), d.reason
    assert reason in d.reason


def test_never_block_explains_what_it_overrode(engine: Engine) -> None:
    """The reason names the list entry a never-block entry overrode."""
    d = engine.evaluate("10.1.1.1", "https://aws.amazon.com/").decision
    assert [m.category for m in d.classification.overridden] == ["shopping"]
    assert "overrides shopping entry 'amazon.com'" in d.reason


@pytest.mark.parametrize(
    ("host", "action", "dns_enforceable"),
    [
        pytest.param("mail.yahoo.com", Action.BLOCK, True, id="host-block-for-everyone"),
        pytest.param("www.indeed.com", Action.BLOCK, False, id="hr-user-could-be-excepted"),
        pytest.param("example-shop.com", Action.BLOCK, False, id="url-never-block-below-host"),
        pytest.param("www.linkedin.com", Action.ALLOW, True, id="url-rule-does-not-block-host"),
    ],
)
def test_host_only_decisions_say_if_dns_may_enforce(
    engine: Engine, host: str, action: Action, dns_enforceable: bool
) -> None:
    """Host-only decisions are enforceable in DNS only when no user or URL could change them."""
    d = engine.evaluate("10.1.1.1", host, source=Source.DNS, host_only=True).decision
    assert d.action is action
    assert d.user_independent is dns_enforceable, d.notes


def test_user_exception_applies_with_user(engine: Engine) -> None:
    """The signed-in HR user gets the approved exception that the bare address does not."""
    ev = engine.evaluate("10.1.1.1", "https://www.indeed.com/", user="pat", user_groups=["hr"])
    assert ev.decision.action is Action.ALLOW
    assert ev.decision.exception == "hr-jobs"
    assert ev.client.groups == {"staff", "hr"}


@pytest.mark.parametrize("target", ["http://exa mple.com/", "https://[::1/", "", "http://a..b/"])
def test_invalid_targets_raise_value_error(engine: Engine, target: str) -> None:
    """Bad URLs are refused with ValueError, never a crash deeper in the pipeline."""
    with pytest.raises(ValueError, match=r".+"):
        engine.evaluate("10.1.1.1", target)


def test_reload_swaps_only_on_success(config_path: Path) -> None:
    """A good reload takes effect; a bad one keeps the last good engine and says why."""
    runtime = Runtime(config_path)
    first = runtime.engine
    assert (
        runtime.engine.evaluate("10.1.1.1", "https://www.ebay.com/").decision.action is Action.ALLOW
    )
    (config_path.parent / "lists" / "shopping.txt").write_text("amazon.com\nebay.com\n")
    assert runtime.reload().ok
    assert runtime.engine is not first
    assert (
        runtime.engine.evaluate("10.1.1.1", "https://www.ebay.com/").decision.action is Action.BLOCK
    )
    good = runtime.engine
    config_path.write_text(config_path.read_text().replace("action: block", "action: blok"))
    result = runtime.reload()
    assert not result.ok
    assert "unknown action 'blok'" in (result.error or "")
    assert runtime.engine is good
    assert first.evaluate("10.1.1.1", "https://www.ebay.com/").decision.action is Action.ALLOW


def test_records_name_the_lists_a_list_only_reload_brings(config_path: Path) -> None:
    """A list update changes no config file: the records' lists version tells it apart."""
    runtime = Runtime(config_path)
    first = runtime.engine
    before = first.record(first.evaluate("10.1.1.1", "https://www.ebay.com/"), 1.8e9)
    (config_path.parent / "lists" / "shopping.txt").write_text("amazon.com\nebay.com\n")
    assert runtime.reload().ok
    fresh = runtime.engine
    after = fresh.record(fresh.evaluate("10.1.1.1", "https://www.ebay.com/"), 1.8e9)
    assert after["aupguard"]["policy_version"] == before["aupguard"]["policy_version"]
    assert before["aupguard"]["lists_version"] == first.classifier.index.lists_version
    assert after["aupguard"]["lists_version"] == fresh.classifier.index.lists_version
    assert after["aupguard"]["lists_version"] != before["aupguard"]["lists_version"]


DNS_FILTER, PROXY = ("dns", "records"), ("proxy", "records")  # what each cannot reload


@pytest.mark.parametrize(
    ("edit", "restart_only", "pending"),
    [
        ('  notice: {text: "We monitor all use."}', DNS_FILTER, []),  # the notice is reloaded
        ('  notice: {text: "We monitor."}\n  file: /var/log/aupguard/r.jsonl', PROXY, ["records"]),
        ('  notice: {text: "We monitor."}\ndns:\n  block_ttl: 5', DNS_FILTER, ["dns"]),
        ('  notice: {text: "We monitor."}\ndns:\n  block_ttl: 5', PROXY, []),  # not its own
        ('  notice: {text: "We monitor."}\nproxy:\n  warn_minutes: 5', PROXY, ["proxy"]),
        ('  notice: {text: "We monitor."}\nproxy:\n  warn_minutes: 5', DNS_FILTER, []),
    ],
)
def test_a_reload_says_which_changes_wait_for_a_restart(
    config_path: Path, edit: str, restart_only: tuple[str, ...], pending: list[str]
) -> None:
    """SIGHUP applies policy, lists and notice; where records go and the DNS filter's and
    the proxy's settings need a restart, and the log says so instead of implying they took
    effect. Each service speaks only of its own: the proxy said `dns`, and nothing of its
    own section, which it parses once at start."""
    runtime = Runtime(config_path, restart_only=restart_only)
    text = config_path.read_text()
    config_path.write_text(text.replace('  notice: {text: "We monitor."}', edit))
    with capture_logs() as logs:
        assert runtime.reload().ok
    said = [e["sections"] for e in logs if e["event"] == "reload_needs_restart"]
    assert said == ([pending] if pending else [])


def test_rejected_list_falls_back_to_last_good_index(config_path: Path) -> None:
    """A list over its error budget does not stop the gateway: the last good index is used."""
    first = Engine.load(config_path)
    assert first.evaluate("10.1.1.1", "https://www.amazon.com/").decision.action is Action.BLOCK
    (config_path.parent / "lists" / "shopping.txt").write_text("*bad..entry\n" * 50)
    engine = Engine.load(config_path)
    assert engine.evaluate("10.1.1.1", "https://www.amazon.com/").decision.action is Action.BLOCK
