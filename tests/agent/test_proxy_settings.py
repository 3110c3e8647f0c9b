"""Proxy settings: parsed once at start, bad values refused with the key and what exists."""

import pytest

from agent.config import load_config
from agent.proxy_settings import EnforcerSettings


@pytest.mark.parametrize(
    ("proxy", "message"),
    [
        pytest.param(
            "  acknowledge: {enabled: true, period_days: 0}\n",
            r"period_days: 0: expected >= 1",
            id="ack-period",
        ),
        pytest.param(
            "  page_template: /nonexistent/page.html\n", r"page.html", id="missing-template"
        ),
    ],
)
def test_bad_settings_are_refused_at_start(tmp_path, proxy, message):
    """A setting that would fail on a request fails at start instead, naming it."""
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "layer: t\npolicy:\n  timezone: UTC\n"
        f"proxy:\n  token_secret_file: {tmp_path / 'k'}\n{proxy}"
        'records:\n  notice: {text: "NOTICE."}\n'
    )
    with pytest.raises((ValueError, OSError), match=message):
        EnforcerSettings.from_config(load_config(policy))


def test_unknown_throttle_schedule_lists_names(tmp_path):
    """A throttle schedule that does not exist is refused with the defined names."""
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "layer: t\npolicy:\n  timezone: UTC\n  schedules:\n"
        '    business-hours: {days: [mon], start: "08:00", end: "17:00"}\n'
        f"proxy:\n  throttle_schedule: busines-hours\n  token_secret_file: {tmp_path / 'k'}\n"
        'records:\n  notice: {text: "NOTICE."}\n'
    )
    with pytest.raises(ValueError, match=r"unknown schedule 'busines-hours'.*business-hours"):
        EnforcerSettings.from_config(load_config(policy))
