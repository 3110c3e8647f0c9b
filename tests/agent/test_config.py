"""Config loading: layering, cross-references and file:line errors, all reported at once."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from agent.config import DEFAULT_CONFIG, BlockMode, load_config
from agent.errors import ConfigError
from agent.model import Action

BASE = """\
layer: statewide
policy:
  timezone: America/New_York
  schedules:
    business-hours: {days: [mon, tue, wed, thu, fri], start: "08:00", end: "17:00"}
  categories:
    webmail: {clause: "No personal mail.", lists: [webmail.txt]}
    jobsearch: {clause: "No job searches.", lists: [jobsearch.txt]}
  groups:
    staff: {networks: [10.0.0.0/8]}
    hr: {user_groups: [hr]}
  rules:
    - {id: personal, categories: [webmail, jobsearch], action: block}
records:
  notice: {text: "We monitor."}
"""


def write(tmp_path: Path, text: str, name: str = "policy.yaml") -> Path:
    (tmp_path / "webmail.txt").write_text("mail.yahoo.com\n")
    (tmp_path / "jobsearch.txt").write_text("indeed.com\n")
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def errors_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.errors


def test_shipped_policy_and_overlay_load() -> None:
    """The shipped baseline and its example agency overlay are valid."""
    config = load_config(DEFAULT_CONFIG)
    assert [layer.name for layer in config.layers] == ["statewide", "example-agency"]
    assert {
        "webmail",
        "shopping",
        "jobsearch",
        "gambling",
        "financial",
        "adult",
        "hacking",
        "warez",
    } <= set(config.categories)
    assert config.timezone.key == "America/New_York"
    assert config.dns.block_mode is BlockMode.NXDOMAIN
    assert config.notice_text().startswith("NOTICE OF ELECTRONIC MONITORING")
    assert all(src.path.exists() for src in config.list_sources())


def test_minimal_config_loads(tmp_path: Path) -> None:
    """A small valid config loads with its rule, groups and resolved list paths."""
    config = load_config(write(tmp_path, BASE))
    assert config.default_action is Action.ALLOW
    assert config.layers[0].rules[0].action is Action.BLOCK
    assert config.categories["webmail"].lists[0].path == tmp_path / "webmail.txt"
    assert config.revision.startswith("sha256:")


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        pytest.param(
            ("action: block}", "action: blok}"),
            "policy.yaml:13: policy.rules[0].action: 'blok': unknown action 'blok': expected one of block, warn, log, allow",
            id="bad-action",
        ),
        pytest.param(
            ("[webmail, jobsearch]", "[webmail, gamblng]"),
            "policy.yaml:13: policy.rules[personal].categories: unknown category 'gamblng': expected one of jobsearch, webmail",
            id="unknown-category",
        ),
        pytest.param(
            ("timezone: America/New_York", "timezone: America/NewYork"),
            "policy.yaml:3: policy.timezone: 'America/NewYork': unknown time zone",
            id="bad-zone",
        ),
        pytest.param(
            ('start: "08:00"', 'start: "8am"'),
            "policy.yaml:5: policy.schedules.business-hours.start: '8am': expected a time of day as HH:MM",
            id="bad-clock",
        ),
        pytest.param(
            ("[10.0.0.0/8]", "[10.0.0.0/33]"),
            "policy.yaml:10: policy.groups.staff.networks[0]: '10.0.0.0/33': expected an address or CIDR",
            id="bad-cidr",
        ),
        pytest.param(
            ("  groups:\n", "  colour: blue\n  groups:\n"),
            "policy.yaml:9: policy.colour: unknown key 'colour': expected one of categories, default_action",
            id="unknown-key",
        ),
        pytest.param(
            ('notice: {text: "We monitor."}', "notice: {}"),
            "policy.yaml:1: records.notice: missing: electronic monitoring requires the notice",
            id="no-notice",
        ),
        pytest.param(
            ("lists: [webmail.txt]", "lists: [nowhere.txt]"),
            "policy.yaml:7: policy.categories.webmail.lists: ",
            id="missing-list-file",
        ),
        pytest.param(
            ("action: block}", "action: block, schedule: busines-hours}"),
            "unknown schedule 'busines-hours': expected one of business-hours",
            id="unknown-schedule",
        ),
        pytest.param(
            ("timezone: America/New_York\n", "timezone: [a]\n"),
            "policy.yaml:3: policy.timezone: expected an IANA time zone name such as America/New_York, found a list",
            id="zone-not-scalar",
        ),
        pytest.param(
            ("  rules:\n", "  rules:\n    - {id: personal, categories: [webmail], action: warn}\n"),
            "id 'personal' already used at",
            id="duplicate-rule-id",
        ),
        pytest.param(
            ("layer: statewide\n", "layer: statewide\n  bad: [\n"),
            "YAML syntax error",
            id="yaml-syntax",
        ),
        pytest.param(
            ("layer: statewide\n", "layer: statewide\ndns: {recent_answers_min_ttl: -5}\n"),
            "policy.yaml:2: dns.recent_answers_min_ttl: '-5': expected a whole number of seconds, 0 or more",
            id="negative-seconds",
        ),
        pytest.param(
            ("layer: statewide\n", "layer: statewide\ndns: {upstreams: [resolver.example]}\n"),
            "policy.yaml:2: dns.upstreams[0]: 'resolver.example': expected an IP address (not a name)",
            id="upstream-name",
        ),
        pytest.param(
            ("layer: statewide\n", "layer: statewide\ndns: {listen: ['127.0.0.1:53x']}\n"),
            "policy.yaml:2: dns.listen[0]: '127.0.0.1:53x': expected ADDR:PORT",
            id="listen-port",
        ),
    ],
)
def test_config_errors_name_file_line_key_and_expectation(
    tmp_path: Path, patch: tuple[str, str], expected: str
) -> None:
    """Each invalid config produces an error that says where, what was found and what is expected."""
    old, new = patch
    assert old in BASE
    errors = errors_of(write(tmp_path, BASE.replace(old, new, 1)))
    assert any(expected in e for e in errors), errors


def test_all_errors_reported_together_sorted(tmp_path: Path) -> None:
    """Several mistakes are reported in one run, in line order."""
    text = BASE.replace("action: block}", "action: blok}").replace("America/New_York", "Mars/Base")
    errors = errors_of(write(tmp_path, text))
    assert len(errors) >= 2
    lines = [int(e.split(":")[1]) for e in errors]
    assert lines == sorted(lines)


EXCEPTION = """\
  exceptions:
    - id: hr-jobs
      groups: [hr]
      hosts: [indeed.com]
      approved_by: {approved_by}
      reference: CIO-1
      expires: {expires}
"""


@pytest.mark.parametrize(
    ("approved_by", "expires", "error", "warning"),
    [
        pytest.param("State CIO", "2099-01-01", None, None, id="approved"),
        pytest.param('""', "2099-01-01", "exceptions need CIO approval", None, id="no-approver"),
        pytest.param(
            "State CIO", "2001-01-01", None, "expired on 2001-01-01: ignored", id="expired-warns"
        ),
        pytest.param("State CIO", "someday", "expected a date as YYYY-MM-DD", None, id="bad-date"),
    ],
)
def test_exception_approval_and_expiry(
    tmp_path: Path, approved_by: str, expires: str, error: str | None, warning: str | None
) -> None:
    """Exceptions need an approver; expired ones load with a warning, never silently."""
    text = BASE.replace(
        "records:", EXCEPTION.format(approved_by=approved_by, expires=expires) + "records:"
    )
    path = write(tmp_path, text)
    if error:
        assert any(error in e for e in errors_of(path))
        return
    config = load_config(path)
    assert any(warning in w for w in config.warnings) if warning else not config.warnings


@pytest.mark.parametrize(
    ("overlay", "expected"),
    [
        pytest.param(
            "layer: agency\npolicy:\n  never_block: [mail.yahoo.com]\n",
            "not allowed in an overlay",
            id="overlay-never-block",
        ),
        pytest.param(
            "layer: agency\npolicy:\n  groups:\n    staff: {networks: [10.1.0.0/16]}\n",
            "already defined at",
            id="overlay-redefines-group",
        ),
        pytest.param(
            "layer: agency\ndns:\n  block_mode: null\n",
            "dns: not allowed in an overlay",
            id="overlay-sets-service",
        ),
        pytest.param(
            "layer: agency\npolicy:\n  rules:\n    - {id: x, categories: [nope], action: block}\n",
            "agency.yaml:4: policy.rules[x].categories: unknown category 'nope'",
            id="overlay-bad-category",
        ),
    ],
)
def test_overlay_cannot_loosen_or_redefine(tmp_path: Path, overlay: str, expected: str) -> None:
    """Overlays may add restrictions; loosening, redefinition and service settings are errors."""
    (tmp_path / "agency.yaml").write_text(overlay)
    path = write(
        tmp_path, BASE.replace("layer: statewide\n", "layer: statewide\noverlays: [agency.yaml]\n")
    )
    assert any(expected in e for e in errors_of(path)), errors_of(path)


def test_overlay_default_action_only_tightens(tmp_path: Path) -> None:
    """An overlay's default action applies only when stricter than the baseline's."""
    (tmp_path / "agency.yaml").write_text("layer: agency\npolicy:\n  default_action: log\n")
    path = write(
        tmp_path, BASE.replace("layer: statewide\n", "layer: statewide\noverlays: [agency.yaml]\n")
    )
    assert load_config(path).default_action is Action.LOG
