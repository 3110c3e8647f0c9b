"""Throughput and p99 through mitmdump + the enforce addon (full UT1 lists, records on) vs plain.

    .venv/bin/python bench/bench_proxy.py [--rounds 5] [--seconds 5] [--conns 50]

Both proxies run side by side on loopback; rounds alternate plain/addon (interleaved, same run)
and the median of the per-round ratios is printed. Load: an asyncio HTTP/1.1 keep-alive
generator (bounded by time and a request cap) against an asyncio origin serving 1 KiB.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UT1 = ROOT.parent / "shared" / "blocklists" / "ut1"
MITMDUMP = Path(sys.executable).parent / "mitmdump"
BODY = b"x" * 1024
MAX_REQUESTS = 200_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- origin (run in its own process) ---------------------------------------------------


async def _origin_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 1024\r\ncontent-type: text/plain\r\n\r\n" + BODY
    chunk = b"x" * 262_144
    try:
        while req := await reader.readuntil(b"\r\n\r\n"):
            if b"/big?n=" not in req:
                writer.write(head)
                continue
            size = int(req.split(b"/big?n=")[1].split(b" ")[0])
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
            for off in range(0, size, len(chunk)):
                writer.write(chunk[: min(len(chunk), size - off)])
                await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    writer.close()


async def _origin(port: int) -> None:
    server = await asyncio.start_server(_origin_conn, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


# --- load generator ---------------------------------------------------------------------


async def _worker(proxy: int, origin: int, until: float, lat: list[float], cap: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy)
    req = (
        f"GET http://127.0.0.1:{origin}/bench HTTP/1.1\r\nHost: 127.0.0.1:{origin}\r\n"
        "Accept: */*\r\n\r\n"
    ).encode()
    try:
        while time.monotonic() < until and cap[0] > 0:
            cap[0] -= 1
            t = time.perf_counter()
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            lat.append(time.perf_counter() - t)
    finally:
        writer.close()


async def load(proxy: int, origin: int, seconds: float, conns: int) -> tuple[float, float]:
    """(requests/s, p99 ms) for `seconds` of keep-alive load over `conns` connections."""
    lat: list[float] = []
    cap = [MAX_REQUESTS]
    start = time.monotonic()
    until = start + seconds
    await asyncio.wait_for(
        asyncio.gather(*(_worker(proxy, origin, until, lat, cap) for _ in range(conns))),
        timeout=seconds + 30,
    )
    took = time.monotonic() - start
    lat.sort()
    p99 = lat[int(len(lat) * 0.99) - 1] * 1000 if lat else float("nan")
    return len(lat) / took, p99


async def download(
    proxy: int, origin: int, size: int, pid: int | None = None
) -> tuple[float, float]:
    """(seconds, peak RSS MiB of `pid` while downloading) for one `size`-byte body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy)
    writer.write(
        f"GET http://127.0.0.1:{origin}/big?n={size} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{origin}\r\n\r\n".encode()
    )
    start, got, peak, last = time.monotonic(), 0, 0.0, 0.0
    await reader.readuntil(b"\r\n\r\n")
    while got < size and time.monotonic() - start < 120:
        got += len(await reader.read(1 << 20))
        if pid is not None and time.monotonic() - last > 0.05:
            peak, last = max(peak, rss_mib(pid)), time.monotonic()
    took = time.monotonic() - start
    writer.close()
    return took, peak


async def small_p95(proxy: int, origin: int, n: int = 100) -> float:
    """p95 ms of `n` concurrent small requests from 127.0.0.2 (another client than downloads)."""

    async def one() -> float:
        r, w = await asyncio.open_connection("127.0.0.1", proxy, local_addr=("127.0.0.2", 0))
        t = time.perf_counter()
        w.write(f"GET http://127.0.0.1:{origin}/s HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await r.readuntil(b"\r\n\r\n")
        await r.readexactly(1024)
        w.close()
        return time.perf_counter() - t

    lat = sorted(await asyncio.wait_for(asyncio.gather(*(one() for _ in range(n))), 60))
    return lat[int(n * 0.95) - 1] * 1000


async def throttle_run(proxy: int, origin: int, size: int) -> tuple[float, list[float]]:
    """Download `size` bytes while sampling small-request p95 every 0.5 s."""
    task = asyncio.ensure_future(download(proxy, origin, size))
    p95s = []
    while not task.done():
        p95s.append(await small_p95(proxy, origin))
        await asyncio.sleep(0.5)
    took, _ = await task
    return took, p95s


# --- setup --------------------------------------------------------------------------------


THROTTLE_RATE = 10_000_000


def write_policy(
    d: Path, name: str = "policy.yaml", *, throttled: bool = False, record_allowed: bool = False
) -> Path:
    cats, names = [], []
    for sub in sorted(UT1.iterdir()):
        if (sub / "domains").is_file() and sub.name not in {"redirector", "strong_redirector"}:
            name = sub.name.replace("-", "_")
            names.append(name)
            cats.append(f'    {name}: {{clause: "bench", lists: ["{sub / "domains"}"]}}')
    throttle = (
        f"  throttle_schedule: always\n  throttle_threshold: 1000000\n"
        f"  throttle_client_rate: {THROTTLE_RATE}\n  throttle_aggregate_rate: {THROTTLE_RATE * 4}\n"
        if throttled
        else ""
    )
    sched = (
        "  schedules:\n    always: {days: [mon, tue, wed, thu, fri, sat, sun], "
        'start: "00:00", end: "23:59", skip_holidays: false}\n'
    )
    policy = d / name
    policy.write_text(
        "layer: bench\npolicy:\n  timezone: UTC\n  default_action: allow\n"
        + sched
        + "  categories:\n"
        + "\n".join(cats)
        + f"\n  rules:\n    - {{id: all, categories: [{', '.join(names)}], action: block}}\n"
        f"proxy:\n  record_allowed: {str(record_allowed).lower()}\n{throttle}"
        'records:\n  notice: {text: "NOTICE OF ELECTRONIC MONITORING. Bench."}\n'
        f"lists:\n  cache_dir: {d / 'cache'}\n  max_bad_share: 0.5\n"
    )
    return policy


def start(port: int, d: Path, extra: list[str]) -> subprocess.Popen[bytes]:
    cmd = [
        str(MITMDUMP),
        "-q",
        "--listen-host",
        "127.0.0.1",
        "--listen-port",
        str(port),
        "--set",
        f"confdir={d / 'confdir'}",
        "--set",
        "connection_strategy=lazy",
        *extra,
    ]
    with (d / f"mitmdump-{port}.log").open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"mitmdump exited: {(d / f'mitmdump-{port}.log').read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            time.sleep(0.2)
        else:
            return proc
    proc.kill()
    raise SystemExit("mitmdump did not start")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--throttle-mib", type=int, default=50, help="throttled download size")
    ap.add_argument("--skip-rps", action="store_true")
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument(
        "--record-allowed",
        action="store_true",
        help="record every request (worst case; default: only non-allow decisions)",
    )
    ap.add_argument("--origin", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.origin:
        asyncio.run(_origin(args.origin))
        return 0
    with tempfile.TemporaryDirectory(prefix="aupbench-") as tmp:
        d = Path(tmp)
        policy = write_policy(d, record_allowed=args.record_allowed)
        origin_port, plain_port, addon_port = free_port(), free_port(), free_port()
        origin = subprocess.Popen([sys.executable, __file__, "--origin", str(origin_port)])
        t = time.monotonic()
        addon = start(
            addon_port,
            d,
            [
                "-s",
                str(ROOT / "addons" / "enforce.py"),
                "--set",
                f"aup_policy={policy}",
                "--set",
                f"aup_records={d / 'records.jsonl'}",
            ],
        )
        print(
            f"addon proxy ready in {time.monotonic() - t:.1f} s, RSS {rss_mib(addon.pid):.0f} MiB"
        )
        plain = start(plain_port, d, [])
        tpolicy = write_policy(d, "throttled.yaml", throttled=True)
        throttled_port = free_port()
        throttled = start(
            throttled_port,
            d,
            ["-s", str(ROOT / "addons" / "enforce.py"), "--set", f"aup_policy={tpolicy}"],
        )
        try:
            if not args.skip_rps:
                _rounds(args, origin_port, plain_port, addon_port, d)
            if not args.skip_large:
                _large(args, origin_port, addon_port, addon.pid, throttled_port)
            return 0
        finally:
            for p in (addon, plain, origin, throttled):
                p.terminate()
                p.wait(10)


def _check_blocks(addon_port: int) -> None:
    """Prove the lists are loaded: a UT1 gambling domain gets the 403."""
    with socket.create_connection(("127.0.0.1", addon_port), timeout=10) as s:
        s.sendall(b"GET http://0-casino.info/ HTTP/1.1\r\nHost: 0-casino.info\r\n\r\n")
        status = s.recv(64).split(b" ")[1]
    if status != b"403":
        raise SystemExit(f"addon proxy did not block a listed domain: {status!r}")
    print("lists loaded: 0-casino.info -> 403")


def _large(args, origin_port: int, addon_port: int, addon_pid: int, throttled_port: int) -> None:
    idle = rss_mib(addon_pid)
    took, peak = asyncio.run(download(addon_port, origin_port, 100 << 20, addon_pid))
    print(
        f"100 MiB via addon proxy: {took:.2f} s, RSS idle {idle:.0f} MiB, peak {peak:.0f} MiB, "
        f"growth {peak - idle:.0f} MiB (target <= 32)"
    )
    base = [asyncio.run(small_p95(throttled_port, origin_port)) for _ in range(3)]
    size = args.throttle_mib << 20
    alone, _ = asyncio.run(download(throttled_port, origin_port, size))
    print(
        f"throttled {args.throttle_mib} MiB alone: {size / alone:.0f} B/s "
        f"({(size / alone / THROTTLE_RATE - 1) * 100:+.1f} %)"
    )
    took, during = asyncio.run(throttle_run(throttled_port, origin_port, size))
    rate = size / took
    print(
        f"throttled {args.throttle_mib} MiB at {THROTTLE_RATE} B/s target: {rate:.0f} B/s "
        f"({(rate / THROTTLE_RATE - 1) * 100:+.1f} %, target +-5 %)"
    )
    b, dur = statistics.median(base), statistics.median(during) if during else float("nan")
    print(
        f"p95 of 100 concurrent small requests: {b:.1f} ms idle, {dur:.1f} ms during "
        f"(ratio {dur / b:.2f}, target <= 1.2)"
    )


def _rounds(args, origin_port: int, plain_port: int, addon_port: int, d: Path) -> int:
    _check_blocks(addon_port)
    asyncio.run(load(plain_port, origin_port, 1.0, 10))  # warm-up
    asyncio.run(load(addon_port, origin_port, 1.0, 10))
    ratios, p99s, rows = [], [], []
    for i in range(args.rounds):
        order = [("plain", plain_port), ("addon", addon_port)]
        if i % 2:
            order.reverse()
        res = {
            name: asyncio.run(load(port, origin_port, args.seconds, args.conns))
            for name, port in order
        }
        ratios.append(res["addon"][0] / res["plain"][0])
        p99s.append(res["addon"][1] / res["plain"][1])
        rows.append(res)
        print(
            f"round {i + 1}: plain {res['plain'][0]:7.0f} rps p99 {res['plain'][1]:6.1f} ms | "
            f"addon {res['addon'][0]:7.0f} rps p99 {res['addon'][1]:6.1f} ms | "
            f"ratio {ratios[-1]:.3f}"
        )
    records = d / "records.jsonl"
    n = sum(1 for _ in records.open()) if records.exists() else 0
    print(f"median rps ratio addon/plain: {statistics.median(ratios):.3f} (target >= 0.95)")
    print(f"median p99 ratio addon/plain: {statistics.median(p99s):.3f} (target <= 1.10)")
    print(f"records written: {n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
