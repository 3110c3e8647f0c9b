"""Prometheus metrics every service imports, and the endpoint that serves them.

Under `aupguard run` each service is its own process: the supervisor sets
PROMETHEUS_MULTIPROC_DIR before starting them, each child writes its values there, and the
supervisor's endpoint serves their sum (prometheus_client multiprocess mode). A service run
on its own serves its in-process registry with `serve()`.
List age and size are computed at scrape time by `ListCollector` (no process has to keep
them current). Labels are low-cardinality: `reason_label`-style values, never hosts or users.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

DECISIONS = Counter(
    "aupguard_decisions",
    "Decisions by enforcement point, action and category.",
    ["source", "action", "category"],
)
DNS_QUERIES = Counter("aupguard_dns_queries", "DNS queries answered, by result.", ["result"])
DNS_REPLIES_UNSENT = Counter(
    "aupguard_dns_replies_unsent", "UDP replies the kernel would not take (send buffer full)."
)
HTTP_REQUESTS = Counter("aupguard_http_requests", "Proxy requests seen, by scheme.", ["scheme"])
UPSTREAM_LATENCY = Histogram(
    "aupguard_upstream_latency_seconds",
    "Time to the upstream's answer (DNS resolver or origin server).",
    ["source"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
THROTTLED_BYTES = Counter("aupguard_throttled_bytes", "Bytes delivered under a throttle.")
BYPASS_ATTEMPTS = Counter(
    "aupguard_bypass_attempts", "Refused bypass attempts (QUIC, DoT, DoH).", ["kind"]
)
SPOOL_DEPTH = Gauge(
    "aupguard_records_spool_depth", "Records waiting to be shipped.", multiprocess_mode="livesum"
)
RELOADS = Counter("aupguard_reloads", "Config/list reloads by result.", ["result"])
RECORDS_DROPPED = Counter(
    "aupguard_records_dropped",
    "Decision records lost, by stage: the writer's queue (full, unserialisable, after close)"
    " or the syslog spool (full: the records files still hold them).",
    ["stage"],
)
RECORDS_UNCONFIRMED = Counter(
    "aupguard_records_unconfirmed",
    "Records sent on a collector connection that then died, which the full syslog spool could"
    " not take back to send again: most likely delivered, and still in the records files.",
)
RECORD_SINK_ERRORS = Counter(
    "aupguard_record_sink_errors", "Failed calls to a records sink, by sink.", ["sink"]
)


Cell = list[int]  # one count, bumped in place: `cell[0] += 1`


class Tally:
    """Counts kept on the hot path as plain dict adds, pushed into the counters by `flush()`.

    A prometheus_client increment costs about a microsecond (more in multiprocess mode, which
    writes an mmap'd file); a dict add costs a tenth of that. Paths that count the same thing
    again and again (DNS replays) hold a `cell` and bump it, without hashing the labels.
    Services flush once a second. Single-threaded use (one event loop), like its owners.
    """

    __slots__ = ("cells",)

    def __init__(self) -> None:
        self.cells: dict[tuple[Counter, tuple[str, ...]], Cell] = {}

    def add(self, counter: Counter, *labels: str) -> None:
        """Count one event for `counter` with these label values."""
        self.cell(counter, *labels)[0] += 1

    def cell(self, counter: Counter, *labels: str) -> Cell:
        """The cell counting `counter` with these label values (the same one every time)."""
        key = (counter, labels)
        found = self.cells.get(key)
        if found is None:
            found = self.cells[key] = [0]
        return found

    def flush(self) -> None:
        """Add everything counted since the last flush to the Prometheus counters."""
        for (counter, labels), cell in self.cells.items():
            if cell[0]:
                (counter.labels(*labels) if labels else counter).inc(cell[0])
                cell[0] = 0


def bump(cells: tuple[Cell, ...]) -> None:
    """Count one event in each of `cells` (Tally.cell)."""
    for cell in cells:
        cell[0] += 1


class ListCollector(Collector):
    """`aupguard_list_age_seconds` and `aupguard_list_entries` per category, read at scrape."""

    def __init__(self, sources: Callable[[], Iterable[tuple[str, Path]]]) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        """Newest file age and summed non-comment lines of each category's list files."""
        age = GaugeMetricFamily(
            "aupguard_list_age_seconds",
            "Seconds since the category's newest list file changed.",
            labels=["category"],
        )
        size = GaugeMetricFamily(
            "aupguard_list_entries", "Entries in the category's list files.", labels=["category"]
        )
        ages: dict[str, float] = {}
        sizes: dict[str, int] = {}
        from agent.status import count_entries  # noqa: PLC0415  (status imports the CLI)

        for category, path in self.sources():
            try:
                mtime = path.stat().st_mtime
                entries = count_entries(path)
            except OSError:
                continue
            ages[category] = min(ages.get(category, float("inf")), time.time() - mtime)
            sizes[category] = sizes.get(category, 0) + entries
        for category in sorted(ages):
            age.add_metric([category], ages[category])
            size.add_metric([category], sizes[category])
        yield age
        yield size


def split_listen(listen: str) -> tuple[str, int]:
    """`127.0.0.1:9108` or `[::1]:9108` -> (host, port); ValueError when malformed."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{listen!r}: expected ADDRESS:PORT, e.g. 127.0.0.1:9108")
    return host.strip("[]"), int(port)


def serve(listen: str, registry: CollectorRegistry = REGISTRY) -> int:
    """Serve `registry` at http://listen/metrics in a daemon thread; the bound port."""
    host, port = split_listen(listen)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_address[1])


def serve_multiprocess(listen: str, directory: Path, *extra: Collector) -> int:
    """Empty `directory`, point children at it (env) and serve their sum plus `extra`."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(mode=0o700, parents=True)
    os.environ[MULTIPROC_ENV] = str(directory)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    for collector in extra:
        registry.register(collector)
    return serve(listen, registry)


def mark_dead(pid: int) -> None:
    """Drop a dead child's live gauges (call when the supervisor reaps it)."""
    from prometheus_client import multiprocess  # noqa: PLC0415

    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
