"""Pass-through connections are counted from the kernel and paced by the same pools."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

from agent import pacing
from agent.passthrough import Passthroughs
from agent.pipeline import Engine
from agent.proxy_settings import EnforcerSettings
from agent.runtime import Runtime
from agent.shaping import Shaper
from agent.throttle import Throttle, ThrottleSpec

with warnings.catch_warnings():  # pyparsing deprecations inside mitmproxy's imports
    warnings.simplefilter("ignore", DeprecationWarning)
    from mitmproxy.test import tflow

    from agent.enforcement import Enforcer
    from tests.addons.test_enforce import client_hello, write_policy

SPEC = ThrottleSpec(
    threshold=100_000, client_rate=500, aggregate_rate=10_000, window=60,
    exempt_groups=frozenset({"backup"}), exempt_hosts=frozenset({"mirror.test"}),
)  # fmt: skip


class Sock:
    """A socket with kernel counts (`acked`, `queued`, `unread`); records pacing rates."""

    def __init__(self) -> None:
        self.acked = self.queued = self.unread = 0
        self.rates: list[int] = []

    def setsockopt(self, _level: int, opt: int, value: Any) -> None:
        if opt == pacing.SO_MAX_PACING_RATE:
            self.rates.append(int.from_bytes(value, "little"))


class IO:
    def __init__(self, sock: Sock) -> None:
        self.writer = self
        self.sock = sock

    def get_extra_info(self, name: str) -> Any:
        return self.sock if name == "socket" else None


class Server:
    """Proxyserver.connections[client.id].transports[conn] with fake sockets."""

    def __init__(self) -> None:
        self.connections: dict[str, Any] = {}

    def add(self, client: Any, conns: dict[Any, Sock]) -> None:
        handler = type("Handler", (), {})()
        handler.transports = {c: IO(s) for c, s in conns.items()}
        self.connections[client.id] = handler


@pytest.fixture(autouse=True)
def kernel_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel's counts (`pacing.kernel_counts`) of the fake sockets."""
    monkeypatch.setattr(pacing, "kernel_counts", lambda s: (s.acked, s.queued, s.unread))


def tunnel(server: Server, *, server_open: bool = True) -> tuple[Any, Any, Sock, Sock]:
    f = tflow.tflow()
    client_sock, server_sock = Sock(), Sock()
    conns = {f.client_conn: client_sock}
    if server_open:
        conns[f.server_conn] = server_sock
    server.add(f.client_conn, conns)
    return f.client_conn, f.server_conn, client_sock, server_sock


def setup(active: bool = True) -> tuple[Passthroughs, Server]:
    server = Server()
    shaper = Shaper(Throttle(SPEC, lambda _n: active), lambda: server)
    return Passthroughs(shaper, lambda: server), server


@pytest.mark.parametrize(
    ("down", "up", "active", "host", "groups", "paced"),
    [
        pytest.param(150_000, 0, True, "big.test", (), True, id="download-over-threshold"),
        pytest.param(0, 150_000, True, "big.test", (), True, id="upload-over-threshold"),
        pytest.param(60_000, 60_000, True, "big.test", (), True, id="both-ways-add-up"),
        pytest.param(50_000, 0, True, "big.test", (), False, id="below-threshold"),
        pytest.param(150_000, 0, False, "big.test", (), False, id="outside-schedule"),
        pytest.param(150_000, 0, True, "cdn.mirror.test", (), False, id="exempt-host"),
        pytest.param(150_000, 0, True, "big.test", ("backup",), False, id="exempt-group"),
    ],
)
def test_sweep_paces_over_threshold(down, up, active, host, groups, paced):
    """Kernel byte counts over the threshold in the schedule pace both sockets at the rate."""
    tunnels, server = setup(active)
    client, upstream, client_sock, server_sock = tunnel(server)
    tunnels.watch(client, upstream, host, groups, 1.0)
    client_sock.acked, server_sock.acked = down, up
    tunnels.sweep(1.5)
    expected = [int(500 * pacing.COMPENSATION)] if paced else []
    assert client_sock.rates == expected
    assert server_sock.rates == expected
    if paced:  # later bytes are counted for the record
        client_sock.acked += 1_000
        tunnels.sweep(2.5)
    summary = tunnels.close(client)
    assert (summary is not None) is paced
    if summary is not None:
        assert summary[0] == host
        assert summary[1]["bytes"] == 1_000


def test_bytes_still_on_this_host_count_as_paced():
    """A connection that ends between sweeps is recorded whole.

    What the relay had not yet read from the origin, and what the kernel had not yet
    delivered, was on its way to the client at the last sweep.
    """
    tunnels, server = setup()
    client, upstream, client_sock, server_sock = tunnel(server)
    tunnels.watch(client, upstream, "big.test", (), 1.0)
    client_sock.acked = 150_000
    tunnels.sweep(1.5)  # paced from here
    client_sock.acked, client_sock.queued, server_sock.unread = 160_000, 20_000, 300_000
    tunnels.sweep(2.0)  # the last sweep: the origin has sent everything
    server.connections.clear()  # both sockets close before the next sweep
    summary = tunnels.close(client)
    assert summary is not None
    assert summary[1]["bytes"] == 10_000 + 20_000 + 300_000


def test_window_over_threshold_paces_from_the_hello():
    """A client whose recent bytes already passed the threshold is paced from the start."""
    tunnels, server = setup()
    tunnels.shaper.throttle.window.add("127.0.0.1", 200_000, 1.0)
    client, upstream, client_sock, server_sock = tunnel(server, server_open=False)
    tunnels.watch(client, upstream, "big.test", (), 1.0)
    assert client_sock.rates == [int(500 * pacing.COMPENSATION)]
    server.add(client, {client: client_sock, upstream: server_sock})  # the origin answered
    tunnels.sweep(1.5)
    assert server_sock.rates == [int(500 * pacing.COMPENSATION)]


def test_closed_sockets_and_unknown_connections():
    """Gone sockets count nothing; closing an unwatched connection is a no-op."""
    tunnels, server = setup()
    client, upstream, *_ = tunnel(server)
    tunnels.watch(client, upstream, "big.test", (), 1.0)
    server.connections.clear()
    tunnels.sweep(1.5)
    assert tunnels.close(client) is None
    assert tunnels.close(client) is None


def test_enforcer_records_paced_passthrough(tmp_path: Path) -> None:
    """A no-decrypt connection is watched from its ClientHello and recorded when it ends."""
    policy = write_policy(tmp_path)
    text = policy.read_text().replace(
        "proxy:\n",
        "proxy:\n  throttle_schedule: always\n  throttle_threshold: 100000\n"
        "  throttle_client_rate: 500\n  throttle_aggregate_rate: 10000\n",
    )
    text = text.replace(
        "  categories:\n",
        "  schedules:\n    always: {days: [mon, tue, wed, thu, fri, sat, sun], start: '00:00', "
        "end: '23:59', skip_holidays: false}\n  categories:\n",
        1,
    )
    policy.write_text(text)
    engine = Engine.load(policy)
    server = Server()
    settings = EnforcerSettings.from_config(engine.config)
    records: list[dict[str, Any]] = []
    enforcer = Enforcer(Runtime(None, engine=engine), settings, records.append, lambda: server)
    data = client_hello("bank.test", "bank.test", "10.0.0.5")
    enforcer.on_client_hello(data, ["regular"])
    assert data.ignore_connection
    client_sock = Sock()
    server.add(data.context.client, {data.context.client: client_sock})
    enforcer.on_passthrough(data, 1.0)
    client_sock.acked = 300_000
    enforcer.sweep(1.5)
    assert client_sock.rates == [int(500 * pacing.COMPENSATION)]
    client_sock.acked = 310_000
    enforcer.sweep(2.0)
    enforcer.on_client_gone(data.context.client)
    throttled = [r for r in records if r["event"]["action"] == "throttle"]
    assert len(throttled) == 1
    assert throttled[0]["aupguard"]["passthrough"] is True
    assert throttled[0]["aupguard"]["throttled_bytes"] == 10_000
    assert throttled[0]["tls"]["client"]["server_name"] == "bank.test"


def test_queued_bytes_count_and_leave_paced():
    """Bytes still queued in the kernel are counted (delivered after the close, at the rate)."""
    tunnels, server = setup()
    client, upstream, client_sock, _server_sock = tunnel(server)
    tunnels.watch(client, upstream, "big.test", (), 1.0)
    client_sock.acked, client_sock.queued = 150_000, 50_000  # paced: the queue leaves paced
    tunnels.sweep(1.5)
    client_sock.acked, client_sock.queued = 150_400, 49_900  # 400 delivered, 300 more queued
    tunnels.sweep(2.0)
    summary = tunnels.close(client)
    assert summary is not None
    assert summary[1]["bytes"] == 50_300
    assert summary[1]["duration_s"] == 50_300 / 500  # the queue drains at the paced rate
