"""datagrams: both ways of reading and answering a run of datagrams, on real loopback sockets."""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent import datagrams
from agent.datagrams import BatchedDatagrams, Datagrams, PlainDatagrams

RUN, MAX = 8, 512
HOSTS = ["127.0.0.1", "::1"]


def plain(sock: socket.socket) -> Datagrams:
    return PlainDatagrams(sock, RUN, MAX)


def batched(sock: socket.socket) -> Datagrams:
    calls = datagrams._mmsg_calls()
    if calls is None:
        pytest.skip(f"recvmmsg/sendmmsg are not used on {sys.platform} with this C library")
    return BatchedDatagrams(sock, RUN, MAX, calls)


KINDS = [pytest.param(plain, id="plain"), pytest.param(batched, id="batched")]
Kind = Callable[[socket.socket], Datagrams]


@contextlib.contextmanager
def listening(host: str) -> Iterator[socket.socket]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        sock.setblocking(False)
        yield sock


def client(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.settimeout(0.5)
    return sock


def drain(sock: socket.socket) -> list[bytes]:
    got = []
    with contextlib.suppress(TimeoutError):
        while True:
            got.append(sock.recv(70_000))
            sock.settimeout(0.1)
    return got


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("host", HOSTS)
def test_replies_reach_the_sender_of_each_slot(kind: Kind, host: str) -> None:
    """Two clients' datagrams interleaved: each reply goes back to its own sender."""
    with listening(host) as sock, client(host) as one, client(host) as two:
        batch = kind(sock)
        assert batch.receive() == []
        for i in range(3):
            one.sendto(b"one%d" % i, sock.getsockname())
            two.sendto(b"two%d" % i, sock.getsockname())
        time.sleep(0.05)
        received = batch.receive()
        assert sorted(d for _, d, _ in received) == sorted(
            [b"one0", b"one1", b"one2", b"two0", b"two1", b"two2"]
        )
        assert {ip for _, _, ip in received} == {host}
        ports = {batch.address(slot)[1] for slot, _, _ in received}
        assert ports == {one.getsockname()[1], two.getsockname()[1]}
        assert all(batch.address(s)[:2] == (host, batch.address(s)[1]) for s, _, _ in received)
        assert batch.send([(slot, data.upper()) for slot, data, _ in received]) == 0
        assert drain(one) == [b"ONE0", b"ONE1", b"ONE2"]
        assert drain(two) == [b"TWO0", b"TWO1", b"TWO2"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("sizes", "runs"),
    [
        pytest.param([10, MAX + 1, MAX, 10], [[10, MAX, 10], []], id="over-max-dropped"),
        pytest.param([10] * (RUN + 3), [[10] * RUN, [10] * 3, []], id="a-run-is-bounded"),
        pytest.param([0, 10], [[0, 10], []], id="empty-datagram-kept"),
    ],
)
def test_runs(kind: Kind, sizes: list[int], runs: list[list[int]]) -> None:
    """Datagrams come in order, at most RUN a call; one longer than the maximum is dropped."""
    with listening("127.0.0.1") as sock, client("127.0.0.1") as sender:
        batch = kind(sock)
        for size in sizes:
            sender.sendto(b"x" * size, sock.getsockname())
        time.sleep(0.05)
        assert [[len(d) for _, d, _ in batch.receive()] for _ in runs] == runs


class Refusing:
    """The kernel's send calls, refusing the replies numbered in `refuse` (0-based)."""

    def __init__(self, refuse: set[int]) -> None:
        self.refuse = refuse
        self.replies = 0

    def sendto(self, real: Callable[..., int], *args: Any) -> int:
        number, self.replies = self.replies, self.replies + 1
        if number in self.refuse:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return real(*args)

    def sendmmsg(self, real: Any, batch: BatchedDatagrams) -> Callable[..., int]:
        """`sendmmsg` as the kernel fails it: the call stops at a refused message."""

        def call(fd: int, headers: int, count: int, flags: int) -> int:
            first = (headers - batch.out_headers_addr) // batch.header_size
            refused = [i for i in range(count) if first + i in self.refuse]
            if refused and refused[0] == 0:
                return -1
            return int(real(fd, headers, refused[0] if refused else count, flags))

        return call


class Shim:
    """A socket whose `sendto` is the given function (nothing else is used after `receive`)."""

    def __init__(self, sendto: Callable[..., int]) -> None:
        self.sendto = sendto


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("refuse", "delivered"),
    [
        pytest.param(set(), [0, 1, 2, 3, 4], id="none"),
        pytest.param({0}, [1, 2, 3, 4], id="first"),
        pytest.param({2}, [0, 1, 3, 4], id="middle"),
        pytest.param({1, 2, 4}, [0, 3], id="several"),
    ],
)
def test_refused_replies_are_counted_and_the_rest_sent(
    kind: Kind, refuse: set[int], delivered: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    with listening("127.0.0.1") as sock, client("127.0.0.1") as sender:
        batch = kind(sock)
        for i in range(5):
            sender.sendto(b"%d" % i, sock.getsockname())
        time.sleep(0.05)
        received = batch.receive()
        refusing = Refusing(refuse)
        if isinstance(batch, BatchedDatagrams):
            monkeypatch.setattr(batch, "sendmmsg", refusing.sendmmsg(batch.sendmmsg, batch))
        else:
            real = sock.sendto
            monkeypatch.setattr(batch, "sock", Shim(lambda *a: refusing.sendto(real, *a)))
        assert batch.send([(slot, data) for slot, data, _ in received]) == len(refuse)
        assert drain(sender) == [b"%d" % i for i in delivered]


@pytest.mark.parametrize("kind", KINDS)
def test_a_reply_longer_than_a_slot_goes_out_alone(kind: Kind) -> None:
    """A reply over the slot size is sent with its own call; one over UDP's limit is refused."""
    with listening("127.0.0.1") as sock, client("127.0.0.1") as sender:
        batch = kind(sock)
        for i in range(3):
            sender.sendto(b"%d" % i, sock.getsockname())
        time.sleep(0.05)
        (a, _, _), (b, _, _), (c, _, _) = batch.receive()
        big, too_big = b"B" * 4 * MAX, b"X" * 70_000
        assert batch.send([(a, b"small"), (b, big), (c, too_big)]) == 1
        assert sorted(drain(sender)) == [big, b"small"]  # (the order of a run's replies is free)


@pytest.mark.parametrize(
    ("family", "key", "host"),
    [
        pytest.param(socket.AF_INET, bytes([192, 0, 2, 7]), "192.0.2.7", id="ipv4"),
        pytest.param(
            socket.AF_INET6,
            socket.inet_pton(socket.AF_INET6, "2001:db8::5") + bytes(4),
            "2001:db8::5",
            id="ipv6",
        ),
        pytest.param(
            socket.AF_INET6,
            socket.inet_pton(socket.AF_INET6, "fe80::1") + (1).to_bytes(4, sys.byteorder),
            f"fe80::1%{socket.if_indextoname(1)}",
            id="ipv6-link-local-keeps-its-scope",
        ),
    ],
)
def test_sender_addresses_read_as_recvfrom_gives_them(family: int, key: bytes, host: str) -> None:
    with listening("::1" if family == socket.AF_INET6 else "127.0.0.1") as sock:
        batch = batched(sock)
        assert isinstance(batch, BatchedDatagrams)
        assert batch._host(key) == host
        assert batch.hosts[key] == host


def test_remembered_sender_addresses_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flood from spoofed sources cannot grow the address memo without bound."""
    monkeypatch.setattr(datagrams, "MAX_HOSTS", 10)
    with listening("127.0.0.1") as sock:
        batch = batched(sock)
        assert isinstance(batch, BatchedDatagrams)
        for i in range(25):
            batch._host(bytes([10, 0, 0, i]))
        assert 0 < len(batch.hosts) <= 10


@pytest.mark.parametrize(
    ("calls", "kind"),
    [
        pytest.param("libc", BatchedDatagrams, id="linux-glibc-batches"),
        pytest.param("refused", PlainDatagrams, id="seccomp-refusal-falls-back"),
        pytest.param(None, PlainDatagrams, id="elsewhere-plain"),
    ],
)
def test_open_picks_what_the_system_allows(
    calls: str | None, kind: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = datagrams._mmsg_calls()
    if calls == "libc" and real is None:
        pytest.skip(f"recvmmsg/sendmmsg are not used on {sys.platform} with this C library")
    refused = (lambda *_: -1, lambda *_: -1)
    chosen = {"libc": real, "refused": refused, None: None}[calls]
    monkeypatch.setattr(datagrams, "_mmsg_calls", lambda: chosen)
    with listening("127.0.0.1") as sock:
        assert type(datagrams.open_datagrams(sock, RUN, MAX)) is kind
