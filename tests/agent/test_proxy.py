"""`aupguard proxy` / `aupguard ca show` argument handling (the running proxy is in tests/integration)."""

from __future__ import annotations

import pytest

from agent.cli import main
from agent.proxy import parse_listen


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("127.0.0.1:8080", ("127.0.0.1", 8080), id="v4"),
        pytest.param("[::1]:3128", ("::1", 3128), id="v6"),
        pytest.param("0.0.0.0:1", ("0.0.0.0", 1), id="any"),
    ],
)
def test_parse_listen(text, expected):
    """ADDR:PORT forms parse."""
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["8080", "host:", "host:0", "host:70000", "host:x"])
def test_parse_listen_rejects(text):
    """Bad listen values are refused with the expected form."""
    with pytest.raises(ValueError, match="ADDR:PORT"):
        parse_listen(text)


def test_ca_show_missing(tmp_path, capsys):
    """`ca show` exits 1 naming the missing certificate."""
    policy = tmp_path / "p.yaml"
    policy.write_text(
        f"layer: t\npolicy:\n  timezone: UTC\nproxy:\n  ca_dir: {tmp_path / 'ca'}\n"
        'records:\n  notice: {text: "NOTICE."}\n'
    )
    assert main(["ca", "show", "--config", str(policy)]) == 1
    assert "mitmproxy-ca-cert.pem" in capsys.readouterr().err


def test_proxy_bad_listen(tmp_path, capsys):
    """A malformed --listen exits 2."""
    policy = tmp_path / "p.yaml"
    policy.write_text('layer: t\npolicy:\n  timezone: UTC\nrecords:\n  notice: {text: "NOTICE."}\n')
    assert main(["proxy", "--config", str(policy), "--listen", "nope"]) == 2
