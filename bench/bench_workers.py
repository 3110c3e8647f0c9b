"""Requests per proxy CPU-second with 1 and 2 workers (`aupguard run --workers N`).

    .venv/bin/python bench/bench_workers.py [--rounds 3] [--seconds 8] [--conns 48]

Two supervisors run side by side on loopback (one with 1 worker, one with 2, different
ports); rounds alternate between them (interleaved, same run). Each round counts the requests
completed and the CPU time the measured proxy workers used (utime + stime from
/proc/<pid>/stat), so the figure does not depend on how many cores the load generator and the
origin leave free. Efficiency = (2-worker requests per CPU-second) / (1-worker ...); target
>= 0.85. The 16-core line extrapolates: 15 workers (one core left for DNS, the supervisor
and the kernel) x the 1-worker rate per CPU-second x efficiency.
Load: bench_proxy's asyncio keep-alive generator (bounded by time and a request cap) against
its asyncio origin (1 KiB bodies).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_proxy

ROOT = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")
CORES = 16
POLICY = """\
layer: bench-workers
policy:
  timezone: UTC
  default_action: allow
  categories:
    gambling: {{clause: "No gambling.", lists: [{d}/gambling.txt]}}
  rules:
    - {{id: no-gambling, categories: [gambling], action: block}}
proxy:
  listen: 127.0.0.1:{port}
  token_secret_file: {d}/continue.key
dns: {{enabled: false}}
metrics: {{listen: null}}
records:
  notice: {{text: "NOTICE OF ELECTRONIC MONITORING. Bench."}}
lists:
  cache_dir: {d}/cache
"""


@dataclass
class Gateway:
    """One `aupguard run` and its proxy worker pids."""

    workers: int
    port: int
    proc: subprocess.Popen[bytes]
    pids: list[int]


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of `pids` in seconds (fields 14 and 15 of /proc/<pid>/stat)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def start(workers: int, d: Path, records: Path) -> Gateway:
    """`aupguard run --workers N` on a free port; wait (bounded) until every worker listens."""
    port = bench_proxy.free_port()
    sub = d / f"w{workers}"
    sub.mkdir()
    (sub / "gambling.txt").write_text("casino.test\n")
    policy = sub / "policy.yaml"
    policy.write_text(POLICY.format(d=sub, port=port))
    env = {**os.environ, "RUNTIME_DIRECTORY": str(sub / "run"), "PYTHONWARNINGS": "ignore"}
    argv = [sys.executable, "-m", "agent", "run", "--config", str(policy)]
    with (sub / "run.log").open("wb") as log:
        proc = subprocess.Popen(
            [*argv, "--workers", str(workers), "--records", str(records)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"aupguard run exited: {(sub / 'run.log').read_text()}")
        pids = _listening_workers(sub / "run" / "state.json", port)
        if len(pids) == workers:
            return Gateway(workers, port, proc, pids)
        time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"{workers} workers did not listen within 60 s")


def _listening_workers(state: Path, port: int) -> list[int]:
    """Pids of the state file's proxy children that hold a listening socket on `port`."""
    try:
        children = json.loads(state.read_text())["children"]
    except (OSError, ValueError, KeyError):
        return []
    pids = [c["pid"] for n, c in children.items() if n.startswith("proxy") and c["pid"]]
    inodes = _listen_inodes(port)
    return [p for p in pids if _socket_inodes(p) & inodes]


def _listen_inodes(port: int) -> set[str]:
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return {
        r.split()[9] for r in rows if r.split()[1].endswith(f":{port:04X}") and r.split()[3] == "0A"
    }


def _socket_inodes(pid: int) -> set[str]:
    out: set[str] = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = str(fd.readlink())
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(link[8:-1])
    return out


def stop(gw: Gateway) -> None:
    gw.proc.send_signal(signal.SIGTERM)
    try:
        gw.proc.wait(20)
    except subprocess.TimeoutExpired:
        gw.proc.kill()
        gw.proc.wait(5)


def measure(gw: Gateway, origin: int, seconds: float, conns: int) -> tuple[float, float, float]:
    """(requests/s, p99 ms, requests per proxy CPU-second) for one round."""
    before = cpu_seconds(gw.pids)
    t = time.monotonic()
    rps, p99 = asyncio.run(bench_proxy.load(gw.port, origin, seconds, conns))
    took = time.monotonic() - t
    cpu = cpu_seconds(gw.pids) - before
    return rps, p99, rps * took / cpu if cpu > 0 else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--conns", type=int, default=48)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="aupbench-workers-") as tmp:
        d = Path(tmp)
        origin_port = bench_proxy.free_port()
        origin = subprocess.Popen(
            [sys.executable, bench_proxy.__file__, "--origin", str(origin_port)]
        )
        gws = [start(1, d, d / "records-1.jsonl"), start(2, d, d / "records-2.jsonl")]
        try:
            return _report(gws, origin_port, args)
        finally:
            for gw in gws:
                stop(gw)
            origin.terminate()
            origin.wait(10)


def _report(gws: list[Gateway], origin: int, args: argparse.Namespace) -> int:
    for gw in gws:  # warm-up: connections, caches, first-request imports
        measure(gw, origin, 2.0, args.conns)
    per_cpu: dict[int, list[float]] = {1: [], 2: []}
    for n in range(args.rounds):
        for gw in gws if n % 2 == 0 else reversed(gws):
            rps, p99, rpc = measure(gw, origin, args.seconds, args.conns)
            per_cpu[gw.workers].append(rpc)
            print(
                f"round {n + 1} workers={gw.workers}: {rps:7.0f} rps  p99 {p99:6.1f} ms  "
                f"{rpc:7.0f} req/CPU-s"
            )
    one, two = statistics.median(per_cpu[1]), statistics.median(per_cpu[2])
    eff = two / one
    print(f"median req/CPU-s: 1 worker {one:.0f}, 2 workers {two:.0f}")
    print(
        f"efficiency (2 vs 1 per CPU-second): {eff:.3f}  target >= 0.85: "
        f"{'PASS' if eff >= 0.85 else 'FAIL'}"
    )
    print(
        f"{CORES}-core extrapolation: {CORES - 1} workers x {one:.0f} x {eff:.2f} = "
        f"{(CORES - 1) * one * eff:,.0f} rps (CPU-bound, HTTP 1 KiB, keep-alive)"
    )
    return 0 if eff >= 0.85 else 1


if __name__ == "__main__":
    sys.exit(main())
