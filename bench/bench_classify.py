"""Benchmark the category index: build, restart readiness, memory and classify latency.

Data sets: (1) every UT1 category in ../shared/blocklists/ut1 (skipped when absent) and
(2) 5,000,000 synthetic distinct domains (fixed seed) plus 2,000 URL rules.
Peer in the same run, interleaved: a plain Python `set[str]` with a label-suffix walk.

    .venv/bin/python bench/bench_classify.py [--domains N] [--rounds R]

`measure_latency(fn, items)` is the reusable part: per-call `perf_counter_ns` percentiles.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
UT1 = REPO.parent / "shared/blocklists/ut1"
sys.path.insert(0, str(REPO))

from agent.index import load_index  # noqa: E402  (after the path tweak)
from agent.lists import ListFormat, ListSource, parse_list  # noqa: E402

SEED = 20261123
TLDS = {"com": 45, "net": 8, "org": 6, "de": 5, "ru": 4, "xyz": 3, "info": 3, "top": 3,
        "co.uk": 3, "com.br": 2, "fr": 2, "pl": 2, "io": 2, "nl": 2, "it": 2, "online": 2,
        "site": 2, "jp": 1, "shop": 1, "es": 1, "cn": 1, "in": 1, "com.au": 1, "casino": 1}  # fmt: skip
SUBS = ["www", "m", "cdn", "api", "mail", "shop", "static", "img"]


# --- reusable measurement helpers ------------------------------------------------------------


def measure_latency(
    fn: Callable[[str], object], items: Sequence[str], warmup: int = 2000
) -> dict[str, float]:
    """Call `fn(item)` once per item, timing each call; return p50/p90/p99/p99.9/max/mean in us."""
    return percentiles(sample_latency(fn, items, warmup))


def sample_latency(
    fn: Callable[[str], object], items: Sequence[str], warmup: int = 2000
) -> list[int]:
    """Nanoseconds per call of `fn(item)`, in item order (after `warmup` untimed calls)."""
    for item in items[:warmup]:
        fn(item)
    clock = time.perf_counter_ns
    times = [0] * len(items)
    for i, item in enumerate(items):
        t0 = clock()
        fn(item)
        times[i] = clock() - t0
    return times


def percentiles(samples: Iterable[int]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max/mean in us of nanosecond samples."""
    times = sorted(samples)
    n = len(times)
    pct = {f"p{p}": times[min(n - 1, int(n * p / 100))] / 1000 for p in (50, 90, 99, 99.9)}
    return pct | {"max": times[-1] / 1000, "mean": sum(times) / n / 1000}


def rss_kib() -> dict[str, int]:
    """VmRSS, RssAnon and RssFile of this process, in KiB (/proc/self/status)."""
    out = {}
    with Path("/proc/self/status").open() as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in {"VmRSS", "RssAnon", "RssFile"}:
                out[key] = int(value.split()[0])
    return out


def timer_overhead_ns() -> float:
    """Median cost of one empty perf_counter_ns pair (subtract mentally from tiny latencies)."""
    clock = time.perf_counter_ns
    samples = []
    for _ in range(20000):
        t0 = clock()
        samples.append(clock() - t0)
    return statistics.median(samples)


# --- the child process: a "restart" that loads and measures --------------------------------

CHILD = r"""
import gc, json, sys, time
t_start = time.perf_counter()
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from agent.classifier import Classifier, split_url
from agent.index import load_index
from agent.lists import ListFormat, ListSource
import bench_classify as b
args = json.loads(sys.argv[2])
urls = Path(args["urls"]).read_text().splitlines()
kinds = Path(args["urls"] + ".kinds").read_text().splitlines()
gc.collect()
base = b.rss_kib()
out = {}
t0 = time.perf_counter()
if args["mode"] == "index":
    sources = [ListSource(c, Path(p), ListFormat(f), l) for c, p, f, l in args["sources"]]
    index = load_index(sources, Path(args["cache"]))
    clf = Classifier(index)
    clf.classify(*split_url("https://www.example.com/"))
    full = lambda u: clf.classify(*split_url(u))
    only = lambda hp: clf.classify(*hp)
elif args["mode"] == "decide":  # the whole Engine.evaluate(): parse, identify, classify, decide
    from agent.pipeline import Engine
    engine = Engine.load(Path(args["config"]))
    now = 1795957692.0  # a Monday 10:00 in New York: business-hours rules are in force
    full = lambda u: engine.evaluate("10.20.1.5", u, now=now)
    full("https://www.example.com/")
    clf = engine.classifier
    only = lambda hp: clf.classify(*hp)
else:
    names = set()
    for path in args["files"]:
        with open(path) as f:
            names.update(line.strip() for line in f)
    def walk(host):
        h = host
        while h not in names:
            i = h.find(".")
            if i < 0:
                return None
            h = h[i + 1:]
        return h
    walk(split_url("https://www.example.com/")[0])
    full = lambda u: walk(split_url(u)[0])
    only = lambda hp: walk(hp[0])
out["ready_s"] = time.perf_counter() - t0
out["start_to_ready_s"] = time.perf_counter() - t_start
gc.collect()
ready = b.rss_kib()
split = [split_url(u) for u in urls]
gc.collect(); gc.freeze()  # as the services do after loading
out["full_cold"] = b.measure_latency(full, urls)  # first pass: pages of the index fault in
times = b.sample_latency(full, urls)
out["full"] = b.percentiles(times)
for kind in sorted(set(kinds)):
    out["full_" + kind] = b.percentiles(t for t, k in zip(times, kinds) if k == kind)
out["lookup_only"] = b.measure_latency(only, split)
out["split_only"] = b.measure_latency(split_url, urls)
del split
gc.collect()
after = b.rss_kib()
out["rss_ready"] = {k: ready[k] - base[k] for k in base}
out["rss_after"] = {k: after[k] - base[k] for k in base}
print(json.dumps(out))
"""


def run_child(mode: str, urls: Path, **kw: object) -> dict:
    arg = json.dumps({"mode": mode, "urls": str(urls), **kw})
    env_path = str(REPO / "bench")
    cmd = [
        sys.executable,
        "-c",
        f"import sys; sys.path.insert(0, {env_path!r})\n{CHILD}",
        str(REPO),
        arg,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO)
    if done.returncode:
        raise RuntimeError(done.stderr)
    return json.loads(done.stdout)


# --- data sets -----------------------------------------------------------------------------


def synthetic_domains(n: int, rnd: random.Random) -> list[str]:
    """`n` distinct domains with realistic label lengths, hyphens, digits, subdomains and TLDs."""
    tlds = rnd.choices(list(TLDS), weights=list(TLDS.values()), k=n * 2)
    table = bytes(
        b"abcdefghijklmnopqrstuvwxyzaeiouaeiousntrl0123456789"[i % 51] for i in range(256)
    )
    pool = rnd.randbytes(n * 40).translate(table).decode()
    lengths = [4 + (b % 13) for b in rnd.randbytes(n * 2)]
    out: set[str] = set()
    pos = 0
    i = 0
    while len(out) < n:
        k = lengths[i % len(lengths)]
        label = pool[pos : pos + k]
        pos = (pos + k) % (len(pool) - 20)
        r = lengths[(i * 7) % len(lengths)]
        if r == 5:
            label = label[:3] + "-" + label[3:]
        name = f"{label}.{tlds[i % len(tlds)]}"
        if r in (6, 7, 8, 9):
            name = f"{SUBS[i % len(SUBS)]}.{name}"
        out.add(name)
        i += 1
    domains = sorted(out)
    rnd.shuffle(domains)
    return domains


def mixed_urls(listed: list[str], url_rules: list[tuple[str, str]], unlisted: list[str], n: int,
               rnd: random.Random) -> list[tuple[str, str]]:  # fmt: skip
    """(url, kind): 45 % listed hosts/subdomains, 50 % unlisted, 5 % odd (URL rules, case...)."""
    urls = []
    for i in range(n):
        kind = i % 20
        if kind < 9:
            host = rnd.choice(listed)
            if i % 2 and not is_ip(host):
                host = f"{rnd.choice(SUBS)}.{host}"
            urls.append((f"https://{url_host(host)}/p/{i}?q=1", "listed"))
        elif kind < 19:
            urls.append((f"https://{rnd.choice(unlisted)}/index.html", "unlisted"))
        else:
            urls.append((odd_url(i, listed, url_rules, rnd), "odd"))
    rnd.shuffle(urls)
    return urls


def odd_url(i: int, listed: list[str], url_rules: list[tuple[str, str]], rnd: random.Random) -> str:
    """URL-rule hits, upper case, ports, userinfo, IDN and percent-encoded hosts."""
    host = url_host(rnd.choice(listed))
    match i % 6:
        case 0 | 1 if url_rules:
            rh, rp = rnd.choice(url_rules)
            return f"http://{url_host(rh) if is_ip(rh) else 'www.' + rh}{rp}extra"
        case 2:
            return f"https://{host.upper()}/A"
        case 3:
            return f"https://{host}:8443/x"
        case 4:
            return f"https://user:pw@{host}/x"
        case _:
            return f"https://bücher-{i}.de/x"


def is_ip(host: str) -> bool:
    return host[-1].isdigit() or ":" in host


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def unlisted_domains(n: int, listed: set[str], rnd: random.Random) -> list[str]:
    out = []
    for d in synthetic_domains(n * 2, random.Random(rnd.random())):
        parts = d.split(".")
        if not any(".".join(parts[k:]) in listed for k in range(len(parts))):
            out.append(d)
        if len(out) == n:
            break
    return out


# --- report --------------------------------------------------------------------------------


def bench_dataset(name: str, sources: list[ListSource], *, files: list[str], work: Path,
                  listed: list[str], url_rules: list[tuple[str, str]], rounds: int) -> None:  # fmt: skip
    print(f"\n== {name}")
    rnd = random.Random(SEED)
    listed_set = set(listed)
    urls = mixed_urls(listed, url_rules, unlisted_domains(20000, listed_set, rnd), 100_000, rnd)
    del listed_set
    url_file = work / "urls.txt"
    url_file.write_text("\n".join(u for u, _ in urls))
    Path(f"{url_file}.kinds").write_text("\n".join(k for _, k in urls))
    cache = work / "cache"
    t0 = time.perf_counter()
    stats = load_index(sources, cache).stats  # builds the cache the restarts reuse
    build_s = time.perf_counter() - t0
    src = [[s.category, str(s.path), str(s.format), s.label] for s in sources]
    size = sum(p.stat().st_size for p in cache.glob("index-*.aupidx"))
    config = decide_config(work, sources, cache)
    run_child("decide", url_file, config=str(config))  # builds its index: rounds then restart
    results: dict[str, list[dict]] = {"index": [], "decide": [], "set": []}
    for _ in range(rounds):  # interleaved rounds: index, decide, set, index, decide, set ...
        results["index"].append(run_child("index", url_file, sources=src, cache=str(cache)))
        results["decide"].append(run_child("decide", url_file, config=str(config)))
        results["set"].append(run_child("set", url_file, files=files))
    n = stats.domains
    print(f"lists: {sum(stats.entries.values()):,} entries, {n:,} distinct domains, "
          f"{stats.url_rules:,} URL rules, {sum(stats.bad_lines.values())} bad lines")  # fmt: skip
    print(f"index build: {build_s:.2f} s ({build_s / max(n, 1) * 1e6:.2f} us/domain); "
          f"file {size / 2**20:.1f} MiB = {size / max(n, 1):.1f} B/domain")  # fmt: skip
    for kind in ("index", "decide", "set"):
        show(kind, results[kind], n)


def decide_config(work: Path, sources: list[ListSource], cache: Path) -> Path:
    """A policy over these lists: every category blocked, with a schedule, groups, never-block."""
    cats = sorted({s.category for s in sources})
    joined = ", ".join(cats)
    lines = [
        "layer: bench",
        "policy:",
        "  timezone: America/New_York",
        "  schedules:",
        "    business-hours: {days: [mon, tue, wed, thu, fri], start: '08:00', end: '17:00'}",
        "  groups:",
        "    staff: {networks: [10.0.0.0/8]}",
        "    hr: {user_groups: [hr]}",
        "  never_block: [office365.com, aws.amazon.com, gov]",
        "  categories:",
    ]
    for cat in cats:
        refs = ", ".join(
            f"{{path: '{s.path}', format: {s.format}}}" for s in sources if s.category == cat
        )
        lines.append(f"    {cat}: {{clause: 'x', lists: [{refs}]}}")
    lines += [
        "  rules:",
        f"    - {{id: all-day, categories: [{joined}], action: log}}",
        (
            f"    - {{id: work-hours, categories: [{joined}], action: block,"
            " schedule: business-hours, groups: [staff]}"
        ),
        "  exceptions:",
        (
            "    - {id: hr, groups: [hr], hosts: [indeed.com], approved_by: CIO,"
            " reference: R-1, expires: 2099-01-01}"
        ),
        f"lists: {{cache_dir: '{cache}'}}",
        "records: {notice: {text: 'We monitor.'}}",
    ]
    path = work / "policy.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def show(kind: str, rounds: list[dict], n: int) -> None:
    def med(path: Callable[[dict], float]) -> float:
        return statistics.median(path(r) for r in rounds)

    label = {"index": "marisa index", "decide": "full decide ", "set": "Python set  "}[kind]
    ready = med(lambda r: r["ready_s"]) * 1000
    start = med(lambda r: r["start_to_ready_s"]) * 1000
    rss = med(lambda r: r["rss_ready"]["VmRSS"])
    anon = med(lambda r: r["rss_ready"]["RssAnon"])
    after = med(lambda r: r["rss_after"]["VmRSS"])
    print(f"{label} ready after restart: {ready:8.1f} ms (load + first lookup; process start->ready "
          f"{start:.0f} ms)")  # fmt: skip
    print(f"{label} RSS growth: {rss / 1024:7.1f} MiB ready ({anon / 1024:.1f} MiB private, "
          f"{rss * 1024 / max(n, 1):.1f} B/domain), {after / 1024:.1f} MiB after 400k lookups")  # fmt: skip
    for what in ("full_cold", "full", "full_listed", "full_unlisted", "full_odd", "lookup_only",
                 "split_only"):  # fmt: skip
        p50, p99 = med(lambda r, w=what: r[w]["p50"]), med(lambda r, w=what: r[w]["p99"])
        mean, p999 = med(lambda r, w=what: r[w]["mean"]), med(lambda r, w=what: r[w]["p99.9"])
        print(f"{label} {what:<13} p50 {p50:6.2f} us  p99 {p99:6.2f} us  p99.9 {p999:6.2f} us  "
              f"mean {mean:6.2f} us")  # fmt: skip


def ut1_dataset(work: Path, rounds: int) -> None:
    if not UT1.is_dir():
        print(f"\n== UT1: skipped, {UT1} not present")
        return
    dirs = [d for d in sorted(UT1.iterdir()) if d.is_dir() and not d.name.startswith("_")]
    sources = [ListSource(d.name, d, ListFormat.UT1, f"ut1/{d.name}") for d in dirs]
    listed, rules = [], []
    for s in sources:
        parsed = parse_list(s)
        listed += [h for h, _ in parsed.hosts]
        rules += [(h, p) for h, p, _ in parsed.urls]
    files = [str(d / "domains") for d in dirs if (d / "domains").exists()]
    bench_dataset("UT1, all categories", sources, files=files, work=work, listed=sorted(set(listed)),
                  url_rules=rules, rounds=rounds)  # fmt: skip


def synthetic_dataset(work: Path, n: int, rounds: int) -> None:
    rnd = random.Random(SEED)
    t0 = time.perf_counter()
    domains = synthetic_domains(n, rnd)
    path = work / "synthetic.txt"
    path.write_text("\n".join(domains) + "\n")
    rules = [(d, f"/section{i}/") for i, d in enumerate(rnd.sample(domains, 2000))]
    (work / "rules.txt").write_text("".join(f"{h}{p}\n" for h, p in rules))
    print(f"\n(generated {n:,} synthetic domains in {time.perf_counter() - t0:.1f} s)")
    sources = [
        ListSource("synthetic", path, ListFormat.DOMAINS, "synthetic.txt"),
        ListSource("synthetic-urls", work / "rules.txt", ListFormat.AUTO, "rules.txt"),
    ]
    bench_dataset(f"synthetic, {n:,} domains", sources, files=[str(path)], work=work,
                  listed=domains, url_rules=rules, rounds=rounds)  # fmt: skip


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--domains", type=int, default=5_000_000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(list(argv) if argv is not None else None)
    t0 = time.perf_counter()
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"load average {load} on {os.cpu_count()} CPUs (other work on the machine inflates tails)"
    )
    print(f"python {sys.version.split()[0]}; timer overhead {timer_overhead_ns():.0f} ns per sample "
          "(included in latencies); 100k mixed URLs per measurement; medians over "
          f"{args.rounds} interleaved rounds")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="aupguard-bench-") as tmp:
        (Path(tmp) / "ut1").mkdir()
        ut1_dataset(Path(tmp) / "ut1", args.rounds)
        (Path(tmp) / "syn").mkdir()
        synthetic_dataset(Path(tmp) / "syn", args.domains, args.rounds)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\ntotal {time.perf_counter() - t0:.0f} s; load average now {load} on {os.cpu_count()} CPUs"
    )
    gc.collect()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
