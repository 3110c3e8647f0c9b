"""Helpers of the proxy's act stage: host normalisation, the hosts a flow names, settings errors."""

from __future__ import annotations

import warnings

import pytest

with warnings.catch_warnings():  # pyparsing deprecations inside mitmproxy's imports
    warnings.simplefilter("ignore", DeprecationWarning)
    from mitmproxy.test import tflow

    from agent.enforcement import flow_hosts, host_of


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
def test_host_of(value, expected):
    """Hosts are compared lower-case without port, brackets or trailing dot."""
    assert host_of(value) == expected


def test_flow_hosts_distinct():
    """URL host, Host header, SNI and CONNECT authority are all collected, once each."""
    f = tflow.tflow()
    f.request.url = "https://a.test/x"
    f.request.headers["host"] = "B.test"
    f.client_conn.sni = "c.test"
    f.server_conn.address = ("a.test", 443)
    assert set(flow_hosts(f)) == {"a.test", "b.test", "c.test"}
