"""Benchmark monitoring records: hot-path cost, records/s to file and to syslog, report time.

    .venv/bin/python bench/bench_records.py [--records 1000000] [--syslog-records 200000]

Loopback only; every loop is bounded by --records. The syslog part starts a private rsyslogd
on 127.0.0.1 (skipped when rsyslogd is missing).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.chain import ChainSink
from agent.model import Action, Classification, Client, Decision, Match, MatchKind, Request, Source
from agent.records import Notice, build_record
from agent.report import Filters, aggregate, read_lines
from agent.rotation import RotatingFileSink, rotated_files
from agent.shipping import Spool, SyslogSink
from agent.writer import RecordWriter

NOTICE = Notice.from_text("We monitor.")
KEY = bytes(range(32))
USERS = [f"user{i:04d}" for i in range(2000)]
HOSTS = ["mail.yahoo.com", "www.indeed.com", "www.nasa.gov", "poker.example", "news.example.org"]
CATS = ["webmail", "jobsearch", None, "gambling", "news"]


def decision(i: int) -> tuple[Request, Client, Decision]:
    k = i % len(HOSTS)
    host, cat = HOSTS[k], CATS[k]
    action = [Action.BLOCK, Action.WARN, Action.ALLOW, Action.BLOCK, Action.LOG][k]
    match = (
        (Match(cat, host, f"blocklists/{cat}.txt:12", MatchKind.HOST, (1, 2, 3)),) if cat else ()
    )
    d = Decision(
        action=action,
        category=cat,
        categories=(cat,) if cat else (),
        rule="personal-use",
        layer="statewide",
        schedule="business-hours",
        reason=f"{action.label}: category={cat}",
        reason_label=action.label,
        classification=Classification(host, "/", match),
    )
    req = Request(host, "/inbox?x=1", f"https://{host}/inbox?x=1", Source.HTTP)
    return (
        req,
        Client(f"10.{i % 250}.{(i // 250) % 250}.5", USERS[i % len(USERS)], frozenset({"staff"})),
        d,
    )


def write_all(writer: RecordWriter, n: int, t0: float) -> tuple[float, int]:
    """Build and write n records; the hot-path seconds (build+write) and records dropped."""
    inputs = [decision(i) for i in range(64)]
    hot = 0.0
    retries = 0
    for i in range(n):
        req, client, d = inputs[i % 64]
        t = time.perf_counter()
        rec = build_record(
            request=req,
            client=client,
            decision=d,
            now=t0 + i * 0.01,
            policy_rev="sha256:abc",
            notice=NOTICE,
        )
        ok = writer.write(rec)
        hot += time.perf_counter() - t
        retries += not ok
        if i % 50_000 == 49_999:  # sustained rate: never let the queue overflow
            writer.flush()
    return hot, retries


def bench_file(n: int, tmp: Path) -> Path:
    path = tmp / "records.jsonl"
    sink = ChainSink(KEY, [RotatingFileSink(path, max_bytes=1 << 30, max_seconds=0)])
    writer = RecordWriter([sink], queue_size=100_000)
    start = time.perf_counter()
    hot, retries = write_all(writer, n, time.time())
    writer.close()
    total = time.perf_counter() - start
    print(
        f"file+chain: {n} records in {total:.2f} s = {n / total:,.0f} records/s sustained "
        f"(hot path build_record+write: {hot / n * 1e6:.2f} us/decision; dropped (queue full) {retries})"
    )
    return path


def bench_hot_only(n: int) -> None:
    class Null:
        def write_lines(self, lines: list[str]) -> None: ...
        def flush(self) -> None: ...
        def close(self) -> None: ...

    writer = RecordWriter([Null()], queue_size=n + 1)
    hot, _ = write_all(writer, n, time.time())
    writer.close()
    print(f"hot path alone (null sink, no queue waits): {hot / n * 1e6:.2f} us/decision")


def bench_writer_only(n: int, tmp: Path) -> None:
    """Writer thread capacity: records built once, then encode + chain + file per record."""
    inputs = [decision(i) for i in range(64)]
    recs = [
        build_record(
            request=r, client=c, decision=d, now=time.time(), policy_rev="x", notice=NOTICE
        )
        for r, c, d in inputs
    ]
    sink = ChainSink(KEY, [RotatingFileSink(tmp / "w.jsonl", max_bytes=1 << 30, max_seconds=0)])
    writer = RecordWriter([sink], queue_size=100_000)
    start = time.perf_counter()
    for i in range(n):
        writer.write(recs[i % 64])
        if i % 50_000 == 49_999:
            writer.flush()
    writer.close()
    took = time.perf_counter() - start
    print(f"file+chain writer capacity (records pre-built): {n / took:,.0f} records/s")


def bench_build_only(n: int) -> None:
    inputs = [decision(i) for i in range(64)]
    start = time.perf_counter()
    for i in range(n):
        r, c, d = inputs[i % 64]
        build_record(request=r, client=c, decision=d, now=1.8e9 + i, policy_rev="x", notice=NOTICE)
    print(
        f"build_record alone (no writer thread): {(time.perf_counter() - start) / n * 1e6:.2f} us/decision"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_syslog(n: int, tmp: Path) -> None:
    rsyslogd = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
    if not Path(rsyslogd).exists():
        print("syslog: SKIPPED (rsyslogd not installed)")
        return
    port, out = free_port(), tmp / "received.log"
    (tmp / "work").mkdir()
    conf = tmp / "rsyslog.conf"
    conf.write_text(
        f'global(workDirectory="{tmp / "work"}" maxMessageSize="64k")\n'
        'module(load="imtcp")\ntemplate(name="m" type="string" string="%msg%\\n")\n'
        f'ruleset(name="r") {{ action(type="omfile" file="{out}" template="m") }}\n'
        f'input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="r")\n'
    )
    proc = subprocess.Popen([rsyslogd, "-n", "-f", str(conf), "-i", str(tmp / "pid")])
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        sink = SyslogSink("127.0.0.1", port, spool=Spool(tmp / "spool", 1 << 30))
        writer = RecordWriter([sink], queue_size=100_000)
        start = time.perf_counter()
        write_all(writer, n, time.time())
        writer.close()
        sent = time.perf_counter() - start
        deadline = time.monotonic() + 120
        got = 0
        while time.monotonic() < deadline:
            got = sum(1 for _ in out.open()) if out.exists() else 0
            if got >= n:
                break
            time.sleep(0.2)
        total = time.perf_counter() - start
        print(
            f"syslog tcp: {n} records sent in {sent:.2f} s = {n / sent:,.0f} records/s; "
            f"received {got} by rsyslog in {total:.2f} s = {got / total:,.0f} records/s "
            f"(spooled {sink.spooled}, dropped {sink.dropped})"
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def bench_report(files: list[Path], n: int) -> None:
    for label, filters in (("all users", Filters()), ("one user", Filters(user=USERS[7]))):
        start = time.perf_counter()
        usage = aggregate(read_lines([str(p) for p in files], filters.needle()), filters)
        took = time.perf_counter() - start
        print(
            f"report ({label}): {n} records scanned in {took:.2f} s = {n / took:,.0f} records/s "
            f"({usage.records} matched; 10M extrapolated: {took * 10_000_000 / n:.0f} s)"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--syslog-records", type=int, default=200_000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="aupguard-bench-") as d:
        tmp = Path(d)
        bench_build_only(min(args.records, 200_000))
        bench_hot_only(min(args.records, 200_000))
        bench_writer_only(args.records, tmp)
        path = bench_file(args.records, tmp)
        files = rotated_files(path)
        print(
            f"  file size: {sum(f.stat().st_size for f in files) / args.records:.0f} bytes/record"
        )
        bench_report(files, args.records)
        (tmp / "syslog").mkdir()
        bench_syslog(min(args.records, args.syslog_records), tmp / "syslog")


if __name__ == "__main__":
    main()
