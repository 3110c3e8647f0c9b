"""`aupguard dns`: the DNS filter, an asyncio UDP+TCP resolver deciding names through the engine.

Per query, in this order (each stage says why it is there):
1. read the question straight from the wire (`dns_wire`; dnslib only for unusual packets);
2. REFUSED outside `allow_clients`: never an open resolver;
3. per-client rate limit: a flood must not starve other clients or the record writer;
4. bypass names (Firefox canary, iCloud Private Relay, DDR): keep clients on this resolver;
5. the engine's decision (memoised per engine, minute and client groups): enforce host-level,
   user-independent blocks only; everything else is left to the proxy, which sees the user;
6. the answer cache, then the upstreams; answers CNAME-ing into a blocked name are blocked
   (cloaking) and `ech` is stripped from HTTPS/SVCB so the proxy keeps a readable SNI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import signal
import socket
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dnslib import QTYPE, RCODE

from agent import dns_wire
from agent.cli import command
from agent.config import (
    DnsRecords,
    DnsSection,
    IPNetwork,
    parse_addr,
    parse_network,
    parse_upstream,
)
from agent.datagrams import Replies, open_datagrams
from agent.dns_cache import CacheKey, DnsCache, Entry, Replay, Verdicts
from agent.dns_records import Recorder
from agent.dns_wire import Answers, Question
from agent.logs import configure_logging, get_logger
from agent.metrics import (
    BYPASS_ATTEMPTS,
    DECISIONS,
    DNS_QUERIES,
    DNS_REPLIES_UNSENT,
    Cell,
    Tally,
    bump,
)
from agent.model import Client, Decision, Request
from agent.recent_answers import AnswerRecorder
from agent.runtime import Runtime, settle_gc
from agent.shipping import open_writer
from agent.throttle import ClientRateLimiter
from agent.upstream import UpstreamError, UpstreamPool, system_resolvers
from agent.writer import RecordWriter

GC_YOUNG = 50_000  # young-generation threshold: records are short-lived (runtime.settle_gc)
MAX_INFLIGHT = 2048  # distinct questions waiting for upstreams (each holds a socket)
MAX_REPLAYS = 32_768  # remembered answers (client, question); emptied when full
MAX_REPLAY_SIZE = 512  # larger answers are not remembered: replays stay under ~40 MiB
Counts = tuple[Cell, ...]  # the metrics an answer counts (Tally cells)
_TASKS: set[asyncio.Task[Any]] = set()
_log = get_logger("aupguard.dns")


def spawn(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """Run `coro` as a task whose reference is kept until it finishes."""
    task = asyncio.get_running_loop().create_task(coro)
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)
    return task


@dataclass(frozen=True, slots=True)
class Settings:
    """The DNS section with the command-line overrides applied and addresses parsed."""

    section: DnsSection
    listen: tuple[tuple[str, int], ...]
    upstreams: tuple[tuple[str, int], ...]
    records_file: Path | None


def make_settings(
    section: DnsSection, args: argparse.Namespace, resolv_conf: Path = Path("/etc/resolv.conf")
) -> Settings:
    """Apply `--listen/--upstream/--allow-clients/--records`; ValueError names the bad value."""
    if args.allow_clients:
        nets = tuple(parse_network(c) for c in args.allow_clients.split(",") if c.strip())
        section = replace(section, allow_clients=nets)
    listen = tuple(parse_addr(a) for a in (args.listen or section.listen))
    upstreams = tuple(parse_upstream(a) for a in (args.upstream or section.upstreams))
    if not upstreams:  # the embedded default: forward to whatever the host itself uses
        upstreams = system_resolvers(resolv_conf, exclude=listen)
    if not upstreams:
        raise ValueError(
            "no upstream resolvers: set dns.upstreams, pass --upstream ADDR:PORT, "
            "or give the host a nameserver in /etc/resolv.conf"
        )
    return Settings(section, listen, upstreams, args.records)


@dataclass(slots=True)
class Lookup:
    """A query that needs the upstreams: what was asked, by whom, and when."""

    query: bytes
    q: Question
    client: Client
    verdict: tuple[Request, Decision] | None
    started: float
    udp: bool
    counts: Counts = ()  # the decision's metrics, counted when the lookup's outcome is known
    cloaked_by: str = ""  # the blocked CNAME target that decided the answer


class DnsFilter:
    """The transport-independent core: `answer()` now, or a `Lookup` for `lookup()`."""

    def __init__(self, settings: Settings, runtime: Runtime, recorder: Recorder) -> None:
        section = settings.section
        self.allow_clients: tuple[IPNetwork, ...] = section.allow_clients
        self.verdicts = Verdicts(runtime)
        self.answers = Answers(section)
        self.recorder = recorder
        self.cache = DnsCache(
            section.cache_size, section.cache_min_ttl, section.cache_max_ttl, section.negative_ttl
        )
        self.pool = UpstreamPool(list(settings.upstreams), section.upstream_timeout)
        self.limiter = ClientRateLimiter(section.rate_limit) if section.rate_limit > 0 else None
        self.tally = Tally()
        self.runtime = runtime
        # client ip -> query bytes after the id -> Replay. Per client, so that a lookup
        # compares one cold key (the query bytes) instead of a tuple of two: ~0.3 µs a query.
        self._replays: dict[str, dict[bytes, Replay]] = {}
        self._replays_kept = 0  # answers in `_replays` (bounded by MAX_REPLAYS)
        # the writer's fail-closed flag, read on every query: the Event itself, not a property
        self._halt = recorder.writer.halt if recorder.writer is not None else None
        self._allowed: dict[str, bool] = {}
        self._inflight: dict[CacheKey, asyncio.Future[tuple[bytes, tuple[bytes, ...], str]]] = {}
        self.recent = AnswerRecorder.from_config(runtime.engine.config)  # for the proxy

    def answer(self, data: bytes, ip: str, now: float, *, udp: bool) -> bytes | Lookup | None:
        """The reply to `data` from `ip` (None: drop), or a Lookup that needs the upstreams."""
        return self.answer_udp(data, ip, now) if udp else self._decide(data, ip, now, udp=False)

    def answer_udp(self, data: bytes, ip: str, now: float) -> bytes | Lookup | None:
        """`answer` for a datagram: the hot path, so a replay is sent again from here.

        A remembered answer is counted, recorded from its template and sent with the
        client's id patched in; its TTLs count down each second. One call and one keyword
        less per datagram than going through `answer` and a `_replay` (bench_dns).
        """
        replays = self._replays.get(ip)
        if replays is not None:
            replay = replays.get(data[2:])
            if (
                replay is not None
                and replay.engine is self.runtime.engine
                and (now < replay.until or self._renew(replay, now))
            ):
                halt, limiter = self._halt, self.limiter
                if (halt is not None and halt.is_set()) or (
                    limiter is not None and not limiter.allow(ip, now)
                ):  # (a refused token is not taken: the full path asks the limiter again)
                    return self._forget(replays, data, ip, now)
                for cell in replay.counts:  # `bump`, inlined
                    cell[0] += 1
                if replay.template is not None:
                    self.recorder.stamp(replay.template, now, data[0] << 8 | data[1])
                if now >= replay.refresh_at:  # a cached answer: its TTLs counted down a second
                    replay.refresh(data, now)
                return data[:2] + replay.tail
        return self._decide(data, ip, now, udp=True)

    def _renew(self, replay: Replay, now: float) -> bool:
        """Carry a replay into a new minute if its decision and cached answer still hold."""
        return replay.generation == self.verdicts.generation_at(now) and replay.extend(now)

    def _decide(self, data: bytes, ip: str, now: float, *, udp: bool) -> bytes | Lookup | None:
        """`answer()` for a query that has no replay: parse, admit, decide, answer."""
        q = dns_wire.parse_query(data)
        if q is None:
            clean, q = self.answers.normalise(data)
            if clean is None or q is None:
                return clean
            data = clean
        if self._halt is not None and self._halt.is_set():  # records.spool_full: fail_closed
            self.tally.add(DNS_QUERIES, "fail-closed")
            return dns_wire.patch(self.answers.servfail(q), data, q)
        client = self.verdicts.client(ip, now)
        refusal = self._admit(data, q, client, now)
        if refusal is not None:
            return refusal
        verdict = self.verdicts.decide(client, q.name, now)
        job = Lookup(data, q, client, verdict, now, udp)
        kind, counts = self._prepared_kind(q, verdict)
        if kind is None:
            entry = self.cache.get(q.key, now)
            if entry is None:
                job.counts = counts
                return job if len(self._inflight) < MAX_INFLIGHT else self._shed(job)
            cloak = self.verdicts.cloaked(client, entry.aliases, now)
            if cloak is None:
                return self._settle(job, "cached", counts, entry=entry)
            job, counts = self._cloaked(job, cloak)
            kind = "block"
        return self._settle(job, kind, counts)

    def _cloaked(self, job: Lookup, cloak: tuple[Request, Decision]) -> tuple[Lookup, Counts]:
        """The job blocked by its CNAME target's decision, and that decision's metrics.

        The record keeps the name asked (`dns.question.name`) and carries the target's
        category, rule and matched entry, with the target in `aupguard.dns.cloaked_by`.
        """
        request = job.verdict[0] if job.verdict is not None else cloak[0]
        job = replace(job, verdict=(request, cloak[1]), cloaked_by=cloak[0].host)
        return job, self._decision_counts(cloak[1])

    def _decision_counts(self, decision: Decision) -> Counts:
        """The `aupguard_decisions_total` cell a DNS decision counts in."""
        label, category = decision.action.label, decision.category or "none"
        return (self.tally.cell(DECISIONS, "dns", label, category),)

    def _prepared_kind(
        self, q: Question, verdict: tuple[Request, Decision] | None
    ) -> tuple[str | None, Counts]:
        """The prepared answer the query needs (bypass name or block), if any, and its counts."""
        counts = self._decision_counts(verdict[1]) if verdict is not None else ()
        kind = self.answers.special(q.name)
        if kind is not None:
            return kind, (*counts, self.tally.cell(BYPASS_ATTEMPTS, "dns-bypass-name"))
        if verdict is not None and Verdicts.enforced(verdict[1]):
            return "block", counts
        return None, counts

    def _settle(
        self,
        job: Lookup,
        kind: str,
        counts: Counts,
        *,
        entry: Entry | None = None,
        now: float | None = None,
    ) -> bytes:
        """Count, record and return a cached or prepared answer; remember it for replays.

        A cached answer (`entry`) is recorded when the decision wants a record; a prepared
        one (block, bypass) whenever records are kept. `now` is when the answer was ready
        (after an upstream lookup); such answers are not remembered, since their records
        carry the lookup's duration.
        """
        q = job.q
        remember = now is None
        now = job.started if now is None else now
        if entry is None:
            reply = dns_wire.patch(self.answers.prepared(q, kind), job.query, q)
        else:
            reply = dns_wire.patch(entry.render(now), job.query, q)
        counts = (*counts, self.tally.cell(DNS_QUERIES, kind))
        bump(counts)
        fitted = self._fit(reply, q, udp=job.udp)
        replayable = remember and job.udp and fitted is reply and len(reply) <= MAX_REPLAY_SIZE
        template = None
        verdict = job.verdict
        if verdict is not None and (
            self.recorder.writer is not None if entry is None else self.recorder.wants(verdict[1])
        ):
            extra = self._extra(job, reply[3] & 0x0F, now, "cache" if entry else "")
            if kind != "cached":
                extra["aupguard.dns.outcome"] = kind
            if replayable:
                template = self.recorder.template(job.client, verdict, extra)
                replayable = template is not None  # a replay must record, from its template
            if template is None:
                self.recorder.emit(job.client, verdict, now, extra)
            else:
                self.recorder.stamp(template, now, q.id)
        if replayable:
            if self._replays_kept >= MAX_REPLAYS:
                self._replays.clear()
                self._replays_kept = 0
            replay = Replay(
                self.runtime.engine, self.verdicts.generation, reply[2:], q, counts, template, entry
            )
            replay.extend(now)
            replay.rendered(now)
            kept = self._replays.setdefault(job.client.ip, {})
            before = len(kept)
            kept[job.query[2:]] = replay  # a new question, or one whose replay ran out
            self._replays_kept += len(kept) - before
        return fitted

    def _forget(
        self, replays: dict[bytes, Replay], data: bytes, ip: str, now: float
    ) -> bytes | Lookup | None:
        """Drop the client's replay of `data` and answer it the full way.

        For a gateway failing closed, or a client over its rate limit: the full path says so.
        """
        del replays[data[2:]]
        if not replays:  # an empty table per client would outlive the bound on replays
            del self._replays[ip]
        self._replays_kept -= 1
        return self._decide(data, ip, now, udp=True)

    def _admit(self, data: bytes, q: Question, client: Client, now: float) -> bytes | None:
        """REFUSED for clients outside allow_clients or over the rate limit, else None."""
        if not self._is_allowed(client.ip):
            return self._refuse("refused", data, q, client, now)
        if self.limiter is not None and not self.limiter.allow(client.ip, now):
            return self._refuse("rate-limited", data, q, client, now)
        return None

    def _refuse(self, kind: str, data: bytes, q: Question, client: Client, now: float) -> bytes:
        self.recorder.trip(kind, client, dns_wire.to_text(q.name), q.qtype, now)
        self.tally.add(DNS_QUERIES, kind)
        return dns_wire.refused_reply(data, q)

    async def lookup(self, job: Lookup) -> bytes:
        """Resolve through the cache-filling upstream path; SERVFAIL when every upstream fails."""
        q = job.q
        key = q.key
        try:
            template, aliases, upstream = await self._shared(key, q)
        except (UpstreamError, ValueError) as e:
            bump(job.counts)
            self._record_failure(job, str(e))
            self.tally.add(DNS_QUERIES, "servfail")
            return self._servfail(job)
        except Exception as e:  # noqa: BLE001  (a bug costs this query a SERVFAIL, not an answer)
            bump(job.counts)
            _log.error("dns_lookup_failed", name=dns_wire.to_text(q.name), error=repr(e))
            self._record_failure(job, f"internal error: {e!r}")
            self.tally.add(DNS_QUERIES, "servfail")
            return self._servfail(job)
        now = time.time()
        cloak = self.verdicts.cloaked(job.client, aliases, now)
        if cloak is not None:  # counted as a block only
            job, counts = self._cloaked(job, cloak)
            return self._settle(job, "block", counts, now=now)
        self.recent.record(q.name, template, now)  # queued: never waits; only what was given
        self.tally.add(DNS_QUERIES, "forwarded")
        bump(job.counts)
        if job.verdict is not None and self.recorder.wants(job.verdict[1]):
            self.recorder.emit(
                job.client, job.verdict, now, self._extra(job, template[3] & 0x0F, now, upstream)
            )
        return self._fit(dns_wire.patch(template, job.query, q), q, udp=job.udp)

    async def _shared(self, key: CacheKey, q: Question) -> tuple[bytes, tuple[bytes, ...], str]:
        """One upstream query per question in flight; concurrent askers share its result."""
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[tuple[bytes, tuple[bytes, ...], str]]
        future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            reply, upstream = await self.pool.resolve(
                q.name, q.qtype, q.qclass, dnssec_ok=q.dnssec_ok
            )
            template, aliases = self.answers.from_upstream(reply, q)
            now = time.time()
            template = self.cache.put(key, template, q.qend, now, aliases) or template
            result = (template, aliases, upstream.label)
            future.set_result(result)
        except (UpstreamError, ValueError) as e:
            future.set_exception(e)
            future.exception()  # mark retrieved: sharers re-raise it themselves
            raise
        except asyncio.CancelledError:
            future.cancel()  # shutting down: sharers stop waiting too
            raise
        finally:
            del self._inflight[key]
        return result

    def _shed(self, job: Lookup) -> bytes:
        """SERVFAIL at once, counted and recorded: too many lookups are under way."""
        bump(job.counts)
        self._record_failure(job, f"over {MAX_INFLIGHT} lookups under way")
        self.tally.add(DNS_QUERIES, "servfail")
        return self._servfail(job)

    def _servfail(self, job: Lookup) -> bytes:
        """SERVFAIL for the job's question (all upstreams failed, or too many lookups)."""
        return dns_wire.patch(self.answers.servfail(job.q), job.query, job.q)

    def _record_failure(self, job: Lookup, error: str) -> None:
        if job.verdict is None or self.recorder.writer is None:
            return
        now = time.time()
        extra = self._extra(job, dns_wire.RCODE_SERVFAIL, now)
        extra.update(
            {"aupguard.dns.outcome": "servfail", "error.message": error, "event.outcome": "failure"}
        )
        self.recorder.emit(job.client, job.verdict, now, extra)

    @staticmethod
    def _extra(job: Lookup, rcode: int, now: float, upstream: str = "") -> dict[str, Any]:
        """The DNS fields of a record (ECS `dns.*`, transport, duration)."""
        extra: dict[str, Any] = {
            "dns.id": job.q.id,
            "dns.type": "answer",
            "dns.question.type": str(QTYPE.get(job.q.qtype, job.q.qtype)),
            "dns.response_code": str(RCODE.get(rcode, rcode)),
            "network.transport": "udp" if job.udp else "tcp",
            "event.duration": int((now - job.started) * 1e9),
        }
        if upstream:
            extra["aupguard.dns.upstream"] = upstream
        if job.cloaked_by:
            extra["aupguard.dns.cloaked_by"] = job.cloaked_by
        return extra

    @staticmethod
    def _fit(reply: bytes, q: Question, *, udp: bool) -> bytes:
        """Over UDP, truncate (TC) what exceeds the client's EDNS size, or 512."""
        if udp and len(reply) > (q.edns or 512):
            return dns_wire.truncated(reply, q)
        return reply

    def _is_allowed(self, ip: str) -> bool:
        allowed = self._allowed.get(ip)
        if allowed is None:
            if len(self._allowed) >= 65_536:
                self._allowed.clear()
            try:
                addr = ipaddress.ip_address(ip.partition("%")[0])
            except ValueError:
                return False
            allowed = any(addr in net for net in self.allow_clients)
            self._allowed[ip] = allowed
        return allowed


# --- transports -----------------------------------------------------------------------------


class UdpServer:
    """UDP straight from a non-blocking socket, read and answered in bounded runs.

    Not asyncio's datagram transport: answering from the socket directly spares uvloop's
    per-datagram address conversion and transport bookkeeping, 0.2 µs of a 4.2 µs query
    (bench_dns, records off), and `datagrams` reads and sends a whole run with one system
    call each way on Linux. A run stops after `RUN` datagrams, so that TCP, lookups and
    timers get their turn during a flood. A reply the kernel will not take (send buffer
    full, say) is dropped and counted in `aupguard_dns_replies_unsent_total`: the client asks
    again, as it does after any lost datagram.
    """

    RUN = 64
    MAX_QUERY = 4096  # as over TCP: a longer datagram is no query this filter answers

    def __init__(self, core: DnsFilter, sock: socket.socket) -> None:
        self.core = core
        self.sock = sock
        self.unsent = core.tally.cell(DNS_REPLIES_UNSENT)
        sock.setblocking(False)  # noqa: FBT003  (the stdlib signature)
        self.datagrams = open_datagrams(sock, self.RUN, self.MAX_QUERY)

    def start(self) -> None:
        """Answer datagrams from now on (on the running loop)."""
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self.readable)

    def close(self) -> None:
        """Stop reading and close the socket (lookups under way send nothing more)."""
        if self.sock.fileno() >= 0:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()

    def readable(self) -> None:
        """Answer the datagrams waiting, up to `RUN`; never raises (a bad packet is dropped).

        A run takes well under a millisecond, so its datagrams share the time it began: one
        clock read per run instead of per datagram, and the record writer formats each time
        once (`render_stamps`). Its replies go out together at its end.
        """
        datagrams, answer = self.datagrams, self.core.answer_udp
        now = time.time()
        replies: Replies = []
        for slot, data, ip in datagrams.receive():
            try:
                result = answer(data, ip, now)
            except (ValueError, IndexError, UnicodeError) as e:  # a packet we failed to read
                _log.warning("dns_bad_packet", client=ip, error=repr(e))
                continue
            if type(result) is bytes:
                replies.append((slot, result))
            elif isinstance(result, Lookup):
                spawn(self._later(result, datagrams.address(slot)))
        if replies:
            self.unsent[0] += datagrams.send(replies)

    def send(self, reply: bytes, addr: tuple[Any, ...]) -> None:
        """Send without waiting; a reply the kernel refuses is counted, not queued."""
        try:
            self.sock.sendto(reply, addr)
        except OSError:  # EAGAIN (buffer full), or the socket closed under a late lookup
            self.unsent[0] += 1

    async def _later(self, job: Lookup, addr: tuple[Any, ...]) -> None:
        reply = await self.core.lookup(job)
        if self.sock.fileno() >= 0:
            self.send(reply, addr)


class TcpServer:
    """Length-prefixed DNS over TCP: idle timeout, connection caps, bounded message size.

    One address may hold an eighth of `tcp_max_connections`, so that a client keeping
    connections open (slowly, or by the hundred) cannot take TCP from everyone else, the
    clients falling back from truncated UDP answers included.
    """

    MAX_QUERY = 4096
    MAX_PIPELINE = 32  # lookups under way on one connection; the next read waits for one

    def __init__(self, core: DnsFilter, section: DnsSection) -> None:
        self.core = core
        self.idle = section.tcp_idle_timeout
        self.max_connections = section.tcp_max_connections
        self.max_per_client = max(1, section.tcp_max_connections // 8)
        self.connections = 0
        self.per_client: dict[str, int] = {}

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer queries on one connection until EOF, timeout or a bad message.

        Pipelined queries are answered concurrently (RFC 7766 section 6.2.1.1): one waiting
        for an upstream does not hold up the next, and answers go out as they are ready.
        At EOF or a bad message the answers still under way are sent before closing.
        """
        ip = str(writer.get_extra_info("peername")[0])
        held = self.per_client.get(ip, 0)
        if self.connections >= self.max_connections or held >= self.max_per_client:
            writer.close()
            return
        self.connections += 1
        self.per_client[ip] = held + 1
        lookups: set[asyncio.Task[None]] = set()
        try:
            while await self._one(reader, writer, ip, lookups):
                pass
            if lookups:
                await asyncio.wait(lookups)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass  # slow, vanished or misbehaving client: close
        finally:
            for task in lookups:
                task.cancel()
            self.connections -= 1
            if self.per_client[ip] > 1:
                self.per_client[ip] -= 1
            else:
                del self.per_client[ip]
            writer.close()

    async def _one(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        ip: str,
        lookups: set[asyncio.Task[None]],
    ) -> bool:
        """Read and answer one query (a lookup goes on in `lookups`); False to stop reading."""
        async with asyncio.timeout(self.idle):
            try:
                size = int.from_bytes(await reader.readexactly(2))
            except asyncio.IncompleteReadError as e:
                if e.partial:
                    raise
                return False  # EOF between messages: the client has asked everything
            if not dns_wire.HEADER <= size <= self.MAX_QUERY:
                return False
            data = await reader.readexactly(size)
        try:
            result = self.core.answer(data, ip, time.time(), udp=False)
        except (ValueError, IndexError, UnicodeError) as e:
            _log.warning("dns_bad_packet", client=ip, error=repr(e))
            return False
        if isinstance(result, Lookup):
            if len(lookups) >= self.MAX_PIPELINE:
                await asyncio.wait(lookups, return_when=asyncio.FIRST_COMPLETED)
            task = asyncio.get_running_loop().create_task(self._later(result, writer))
            lookups.add(task)
            task.add_done_callback(lookups.discard)
            return True
        if result is None:
            return False
        await self._send(writer, result)
        return True

    async def _later(self, job: Lookup, writer: asyncio.StreamWriter) -> None:
        """Send a pipelined lookup's answer when it is ready (the client may be gone)."""
        reply = await self.core.lookup(job)
        with contextlib.suppress(TimeoutError, ConnectionError):
            await self._send(writer, reply)

    async def _send(self, writer: asyncio.StreamWriter, reply: bytes) -> None:
        """One length-prefixed message, written whole (answers never interleave)."""
        writer.write(len(reply).to_bytes(2) + reply)
        async with asyncio.timeout(self.idle):
            await writer.drain()


# --- service --------------------------------------------------------------------------------


def make_writer(settings: Settings, runtime: Runtime) -> RecordWriter | None:
    """The configured record sinks (file per writer, chain, syslog) plus `--records FILE`."""
    if settings.section.records is DnsRecords.OFF:
        return None
    return open_writer(runtime.engine.config.records, writer="dns", also=settings.records_file)


async def serve(settings: Settings, runtime: Runtime) -> None:
    """Listen on every address (UDP and TCP) until SIGTERM/SIGINT; SIGHUP reloads."""
    loop = asyncio.get_running_loop()
    writer = make_writer(settings, runtime)
    recorder = Recorder(settings.section.records, writer, runtime)
    core = DnsFilter(settings, runtime, recorder)
    tcp = TcpServer(core, settings.section)
    closers: list[Any] = []
    bound, udp_io = [], set()
    for host, port in settings.listen:
        udp, server, actual = await _bind(core, tcp, host, port)
        closers += [udp, server]
        udp_io.add(udp.datagrams.io)
        bound.append(f"[{host}]:{actual}" if ":" in host else f"{host}:{actual}")
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runtime.install_sighup(loop)
    runtime.on_reload(lambda _engine: settle_gc(young=GC_YOUNG))
    settle_gc(young=GC_YOUNG)
    sweeper = spawn(_sweep(recorder, core.tally, stop))
    _log.info(
        "dns_ready",
        listen=bound,
        upstreams=[u.label for u in core.pool.upstreams],
        policy_version=runtime.engine.revision,
        lists_version=runtime.engine.lists_version,
        records=str(settings.section.records),
        block_mode=str(settings.section.block_mode),
        udp_io=sorted(udp_io),
    )
    await stop.wait()
    for closer in closers:
        closer.close()
    await sweeper
    if writer is not None:
        writer.close(timeout=5.0)
    core.recent.close()
    _log.info("dns_stopped", cache_hits=core.cache.hits, cache_misses=core.cache.misses)


async def _bind(
    core: DnsFilter, tcp: TcpServer, host: str, port: int
) -> tuple[UdpServer, asyncio.Server, int]:
    """UDP and TCP listeners on one port; port 0 retries until both get the same free port."""
    for attempt in range(20):
        udp = UdpServer(core, udp_socket(host, port))
        udp.start()
        actual = int(udp.sock.getsockname()[1])
        try:
            server = await asyncio.start_server(tcp.serve, host, actual, reuse_address=True)
        except OSError:
            udp.close()
            if port != 0 or attempt == 19:
                raise
            continue
        return udp, server, actual
    raise OSError(f"no free port on {host}")  # unreachable: the loop raises first


def udp_socket(host: str, port: int) -> socket.socket:
    """A bound UDP socket with 4 MiB buffers (bursts queue in the kernel, not lost).

    IPv6 sockets are IPv6-only, as asyncio makes TCP ones: `0.0.0.0:53` and `[::]:53` can
    both be listened on.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, 4 << 20)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


async def _sweep(recorder: Recorder, tally: Tally, stop: asyncio.Event) -> None:
    """Flush metrics and record due rate-limit/refusal counts every second; all at the end."""
    while not stop.is_set():
        try:
            async with asyncio.timeout(1.0):
                await stop.wait()
        except TimeoutError:
            pass
        tally.flush()
        recorder.sweep(time.time(), final=stop.is_set())


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, help="baseline policy file")
    p.add_argument(
        "--listen",
        action="append",
        default=[],
        metavar="ADDR:PORT",
        help="listen address (repeatable; IPv6 as [::1]:5353); overrides dns.listen",
    )
    p.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="ADDR:PORT",
        help="upstream resolver (repeatable); overrides dns.upstreams",
    )
    p.add_argument(
        "--allow-clients",
        default=None,
        metavar="CIDR[,CIDR...]",
        help="client networks to answer; overrides dns.allow_clients",
    )
    p.add_argument(
        "--records",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write decision records as JSON lines to FILE",
    )


@command("dns", "run the DNS filter", _args)
def cmd_dns(args: argparse.Namespace) -> int:
    """Run the DNS filter (UDP and TCP) until SIGTERM; SIGHUP reloads policy and lists."""
    configure_logging()  # JSON lines for journald, as `aupguard run`'s own
    runtime = Runtime(args.config)
    try:
        Answers(runtime.engine.config.dns)  # validates the block mode's addresses before listening
    except ValueError as e:
        sys.stderr.write(f"aupguard dns: {args.config or 'built-in config'}: {e}\n")
        return 1
    try:
        settings = make_settings(runtime.engine.config.dns, args)
    except ValueError as e:
        sys.stderr.write(f"aupguard dns: {e}\n")
        return 2
    try:
        import uvloop  # noqa: PLC0415  (optional: ~1.4x the queries per core, FACTS.md)

        run: Any = uvloop.run
    except ImportError:
        run = asyncio.run
    try:
        run(serve(settings, runtime))
    except OSError as e:  # a listen address in use or not ours, or a records file or spool
        sys.stderr.write(f"aupguard dns: cannot start: {e}\n")  # (the error names the path)
        return 1
    return 0
