"""Datagrams in and out in runs: one system call per run each way where the kernel allows it.

A DNS server on one core spends most of a cached query in the kernel and in the Python calls
around two system calls. Linux's `recvmmsg`/`sendmmsg` read and send a whole run of datagrams
in one call each; the standard library has neither, so `BatchedDatagrams` calls them through
`ctypes` on buffers it owns for its lifetime. Everywhere else (another OS or C library, or a
seccomp filter refusing the calls) `PlainDatagrams` does the same with `recvfrom_into` and
`sendto`. Both answer the same three questions: what arrived (`receive`), who sent slot i
(`address`), and send these replies to the senders of these slots (`send`).
"""

from __future__ import annotations

import ctypes
import platform
import socket
import sys
from typing import Any, Protocol, override

# (slot, datagram, sender's IP) for each datagram of a run; a slot names its sender until the
# next `receive`.
Received = list[tuple[int, bytes, str]]
Replies = list[tuple[int, bytes]]

MSG_DONTWAIT = 0x40  # Linux; only the batched path (Linux) uses it
MAX_HOSTS = 4096  # sender addresses remembered as text; spoofed floods only clear it


class Datagrams(Protocol):
    """A listening UDP socket read and answered a run at a time."""

    io: str  # the system calls used, for `dns_ready`: "recvmmsg" or "recvfrom"

    def receive(self) -> Received:
        """The datagrams waiting, up to a run; [] when none (never blocks)."""
        ...

    def address(self, slot: int) -> tuple[Any, ...]:
        """The sender of `slot` of the last run, as `socket.sendto` takes it."""
        ...

    def send(self, replies: Replies) -> int:
        """Send each reply to its slot's sender; returns how many the kernel refused."""
        ...


def open_datagrams(sock: socket.socket, run: int, max_size: int) -> Datagrams:
    """The fastest `Datagrams` this system allows for `sock` (non-blocking, bound)."""
    calls = _mmsg_calls()
    if calls is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        recvmmsg, sendmmsg = calls
        # seccomp or an old kernel refuse a call by number: ask with no messages first
        if recvmmsg(sock.fileno(), None, 0, MSG_DONTWAIT, None) == 0 and (
            sendmmsg(sock.fileno(), None, 0, MSG_DONTWAIT) == 0
        ):
            return BatchedDatagrams(sock, run, max_size, calls)
    return PlainDatagrams(sock, run, max_size)


class PlainDatagrams(Datagrams):
    """One `recvfrom_into` per datagram and one `sendto` per reply: works everywhere."""

    io = "recvfrom"

    def __init__(self, sock: socket.socket, run: int, max_size: int) -> None:
        self.sock = sock
        self.run = run
        self.max_size = max_size
        # one buffer copied out at each datagram's size (see `BatchedDatagrams` for why)
        self.buffer = memoryview(bytearray(max_size + 1))
        self.senders: list[tuple[Any, ...]] = []

    @override
    def receive(self) -> Received:
        recv, buffer, max_size = self.sock.recvfrom_into, self.buffer, self.max_size
        self.senders = senders = list[tuple[Any, ...]]()
        received: Received = []
        for _ in range(self.run):
            try:
                size, addr = recv(buffer)
            except BlockingIOError:
                break
            except OSError:
                continue  # an error queued on the socket (Linux: none without IP_RECVERR)
            if size <= max_size:
                received.append((len(senders), buffer[:size].tobytes(), addr[0]))
                senders.append(addr)
        return received

    @override
    def address(self, slot: int) -> tuple[Any, ...]:
        return self.senders[slot]

    @override
    def send(self, replies: Replies) -> int:
        sendto, senders, refused = self.sock.sendto, self.senders, 0
        for slot, reply in replies:
            try:
                sendto(reply, senders[slot])
            except OSError:  # EAGAIN (buffer full), or a destination the kernel refuses
                refused += 1
        return refused


class _IoVec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))


class _MsgHdr(ctypes.Structure):
    _fields_ = (
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.c_void_p),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    )


class _MMsgHdr(ctypes.Structure):
    _fields_ = (("hdr", _MsgHdr), ("len", ctypes.c_uint))


_SOCKADDR_SIZE = {socket.AF_INET: 16, socket.AF_INET6: 28}
# where the address (IPv6: with its scope id) sits in a sockaddr_in / sockaddr_in6
_HOST_BYTES = {socket.AF_INET: (4, 8), socket.AF_INET6: (8, 28)}


def _mmsg_calls() -> tuple[Any, Any] | None:
    """Libc's recvmmsg and sendmmsg, where their layout above is known to be right."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return None  # musl and others lay msghdr out differently on some architectures
    if ctypes.sizeof(ctypes.c_void_p) != 8 or ctypes.sizeof(_MMsgHdr) % 8:
        return None  # the views below read pointers and lengths as 64-bit words
    libc = ctypes.CDLL(None)
    recvmmsg, sendmmsg = libc.recvmmsg, libc.sendmmsg
    recvmmsg.argtypes = (
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_void_p,
    )
    sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
    recvmmsg.restype = sendmmsg.restype = ctypes.c_int
    return recvmmsg, sendmmsg


class BatchedDatagrams(Datagrams):
    """`recvmmsg` into `run` fixed slots, `sendmmsg` from `run` more (Linux, glibc).

    Every buffer the kernel is pointed at is a `ctypes` array held by this object, so the
    pointers stay valid as long as it lives. Datagrams are copied out at their size, so that
    a query kept by a lookup or a record owns nothing of the slots; replies are copied into
    send slots, and one that does not fit a slot goes out with its own `sendto`. A datagram
    longer than `max_size` (it fills its slot) is dropped, as `PlainDatagrams` drops it.
    """

    io = "recvmmsg"

    def __init__(
        self, sock: socket.socket, run: int, max_size: int, calls: tuple[Any, Any]
    ) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.run = run
        self.max_size = max_size
        self.recvmmsg, self.sendmmsg = calls
        self.family = sock.family
        self.slot = slot = max_size + 1
        name = _SOCKADDR_SIZE[sock.family]
        self.name_size = name
        self.host_bytes = _HOST_BYTES[sock.family]
        self.hosts: dict[bytes, str] = {}

        self.in_data = (ctypes.c_char * (run * slot))()
        self.in_names = (ctypes.c_char * (run * name))()
        self.in_iov = (_IoVec * run)()
        self.in_headers = (_MMsgHdr * run)()
        self.out_data = (ctypes.c_char * (run * slot))()
        self.out_iov = (_IoVec * run)()
        self.out_headers = (_MMsgHdr * run)()
        for i in range(run):
            self.in_iov[i] = _IoVec(ctypes.addressof(self.in_data) + i * slot, slot)
            self.in_headers[i].hdr = _MsgHdr(
                name=ctypes.addressof(self.in_names) + i * name,
                namelen=name,
                iov=ctypes.addressof(self.in_iov) + i * ctypes.sizeof(_IoVec),
                iovlen=1,
            )
            self.out_iov[i] = _IoVec(ctypes.addressof(self.out_data) + i * slot, 0)
            self.out_headers[i].hdr = _MsgHdr(
                namelen=name,
                iov=ctypes.addressof(self.out_iov) + i * ctypes.sizeof(_IoVec),
                iovlen=1,
            )
        self.in_headers_addr = ctypes.addressof(self.in_headers)
        self.out_headers_addr = ctypes.addressof(self.out_headers)
        self.in_names_addr = ctypes.addressof(self.in_names)
        self.header_size = header = ctypes.sizeof(_MMsgHdr)
        # the kernel writes each header's namelen and len back: reset from this copy per run
        self.pristine = bytes(self.in_headers)
        self.in_headers_view = memoryview(self.in_headers).cast("B")
        self.in_view = memoryview(self.in_data).cast("B")
        self.names_view = memoryview(self.in_names).cast("B")
        self.out_view = memoryview(self.out_data).cast("B")
        # each received header's msg_len, each send header's msg_name and its iovec's iov_len,
        # as strided views: one index per datagram instead of a ctypes attribute lookup
        self.lengths = self.in_headers_view.cast("I")[_MMsgHdr.len.offset // 4 :: header // 4]
        out_words = memoryview(self.out_headers).cast("B").cast("Q")
        self.out_names = out_words[_MsgHdr.name.offset // 8 :: header // 8]
        iov_words = memoryview(self.out_iov).cast("B").cast("Q")
        self.out_lengths = iov_words[_IoVec.len.offset // 8 :: ctypes.sizeof(_IoVec) // 8]

    @override
    def receive(self) -> Received:
        self.in_headers_view[:] = self.pristine
        n = self.recvmmsg(self.fd, self.in_headers_addr, self.run, MSG_DONTWAIT, None)
        if n <= 0:
            return []  # EAGAIN: nothing waiting (or an error queued on the socket)
        lengths, data, names, hosts = self.lengths, self.in_view, self.names_view, self.hosts
        slot, name, max_size = self.slot, self.name_size, self.max_size
        first, last = self.host_bytes
        received: Received = []
        for i in range(n):
            size = lengths[i]
            if size > max_size:
                continue
            key = names[i * name + first : i * name + last].tobytes()
            host = hosts.get(key)
            if host is None:
                host = self._host(key)
            received.append((i, data[i * slot : i * slot + size].tobytes(), host))
        return received

    def _host(self, key: bytes) -> str:
        """A sender's address as `recvfrom` gives it (IPv6 link-local with its `%scope`)."""
        if len(self.hosts) >= MAX_HOSTS:
            self.hosts.clear()
        if self.family == socket.AF_INET:
            host = socket.inet_ntop(socket.AF_INET, key)
        else:
            host = socket.inet_ntop(socket.AF_INET6, key[:16])
            scope = int.from_bytes(key[16:], sys.byteorder)
            if scope:
                host = socket.getnameinfo((host, 0, 0, scope), socket.NI_NUMERICHOST)[0]
        self.hosts[key] = host
        return host

    @override
    def address(self, slot: int) -> tuple[Any, ...]:
        raw = self.names_view[slot * self.name_size : (slot + 1) * self.name_size].tobytes()
        first, last = self.host_bytes
        host = self.hosts.get(raw[first:last]) or self._host(raw[first:last])
        port = int.from_bytes(raw[2:4], "big")
        if self.family == socket.AF_INET:
            return (host, port)
        return (
            host,
            port,
            int.from_bytes(raw[4:8], "big"),
            int.from_bytes(raw[24:28], sys.byteorder),
        )

    @override
    def send(self, replies: Replies) -> int:
        out, names, lengths = self.out_view, self.out_names, self.out_lengths
        slot, name, names_addr = self.slot, self.name_size, self.in_names_addr
        refused = count = 0
        for i, reply in replies:
            size = len(reply)
            if size > slot:  # longer than any query: not worth a slot's memory each
                try:
                    self.sock.sendto(reply, self.address(i))
                except OSError:
                    refused += 1
                continue
            out[count * slot : count * slot + size] = reply
            names[count] = names_addr + i * name
            lengths[count] = size
            count += 1
        sent = 0
        while sent < count:  # a refused message stops the call: skip it, send the rest
            done = self.sendmmsg(
                self.fd, self.out_headers_addr + sent * self.header_size, count - sent, MSG_DONTWAIT
            )
            if done > 0:
                sent += done
            else:
                refused += 1
                sent += 1
        return refused
