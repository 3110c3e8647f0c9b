"""End to end in network namespaces: client -> gateway (aupguard run, transparent) -> origin.

The gateway namespace runs the real `aupguard run` (DNS filter on the client-side addresses,
port 53; mitmproxy in transparent mode) and the nftables ruleset documented in
docs/operations.md, loaded as written there. The origin namespace serves HTTP, HTTPS (a
certificate from a test CA the proxy trusts through `proxy.upstream_ca_file`), UDP/443,
TCP/853 and the upstream DNS. Every request comes from the client namespace with curl, dig or
a socket, over IPv4 and IPv6. Business hours are set with libfaketime (`FAKETIME` in the
gateway's environment). Needs root: skipped with the reason otherwise. See docs/e2e.md.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from tests import pki
from tests.integration import netns
from tests.integration.conftest import jsonl

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LIBFAKETIME = next(iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))), None)
# The gateway's faked clock: today (UTC), so that it stays within a day of the real clock and
# inside the validity of certificates made now (ours, and mitmproxy's leaves: both start two
# days back). The test schedule covers every day of the week.
TODAY = dt.datetime.now(dt.UTC).date().isoformat()
BUSINESS = f"@{TODAY} 10:00:00"  # inside the test schedule
AFTER_HOURS = f"@{TODAY} 21:00:00"
BIG = 2_000_000  # bytes: over the throttle threshold
RATE = 400_000  # bytes/s per client while throttled: BIG takes ~5 s paced

POLICY = """\
layer: e2e
policy:
  timezone: UTC
  default_action: allow
  schedules:
    business-hours: {{days: [mon, tue, wed, thu, fri, sat, sun], start: "08:00", end: "17:00", skip_holidays: false}}
  categories:
    gambling: {{clause: "Gambling on state systems is prohibited.", lists: [gambling.txt]}}
  groups:
    clients: {{networks: [10.99.1.0/24, "fd99:1::/64"]}}
  rules:
    - {{id: no-gambling, categories: [gambling], action: block}}
dns:
  listen: ["{t.lan4}:53", "[{t.lan6}]:53"]
  upstreams: ["{t.origin4}:53"]
  allow_clients: [10.99.1.0/24, "fd99:1::/64"]
  block_mode: blockpage
  blockpage_ipv4: {t.lan4}
  blockpage_ipv6: {t.lan6}
proxy:
  listen: "[::]:8080"
  mode: transparent
  ca_dir: {d}/ca
  upstream_ca_file: {d}/origin-ca.pem
  record_allowed: true
  no_decrypt_hosts: [bank.test]
  token_secret_file: {d}/continue.key
  throttle_schedule: business-hours
  throttle_threshold: 1000000
  throttle_client_rate: {rate}
  throttle_aggregate_rate: {rate}
records:
  file: {d}/records.jsonl
  notice: {{text: "NOTICE OF ELECTRONIC MONITORING. End-to-end test notice."}}
lists:
  cache_dir: {d}/cache
metrics:
  listen: "127.0.0.1:9108"
"""


# --- PKI -----------------------------------------------------------------------------------


def make_pki(d: Path, t: netns.Topology) -> None:
    """The origin's test CA + leaf (all test names), and the gateway's agency CA in ca/."""
    ca, ca_key = pki.self_signed_ca("e2e origin CA")
    names = ("allowed.test", "casino.test", "big.test", "bank.test", "*.test")
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in (t.origin4, t.origin6)]
    leaf_key = pki.new_key()
    leaf = pki.cert("origin.test", leaf_key, ca.subject, ca_key, ca=False, sans=sans)
    (d / "origin-ca.pem").write_bytes(pki.pem(ca))
    (d / "origin.pem").write_bytes(pki.pem(leaf) + pki.pem(ca))
    (d / "origin.key").write_bytes(pki.key_pem(leaf_key))
    agency, agency_key = pki.self_signed_ca("e2e agency CA")
    (d / "ca").mkdir(mode=0o700)
    (d / "ca" / "mitmproxy-ca.pem").write_bytes(pki.key_pem(agency_key) + pki.pem(agency))
    (d / "ca" / "mitmproxy-ca-cert.pem").write_bytes(pki.pem(agency))


def documented_ruleset() -> str:
    """The nftables ruleset from docs/operations.md, exactly as documented."""
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```nft\n(.*?)```", text, flags=re.DOTALL)
    assert blocks, "docs/operations.md has no ```nft block"
    return blocks[0]


# --- the gateway -----------------------------------------------------------------------------


class Gateway:
    """`aupguard run` in the gateway namespace, optionally under libfaketime."""

    def __init__(self, t: netns.Topology, d: Path, faketime: str | None, name: str) -> None:
        self.t, self.d, self.log = t, d, d / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env |= {"TZ": "UTC", "XDG_RUNTIME_DIR": str(d / f"run-{name}"), "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = str(ROOT)
        if faketime is not None:
            # (FAKETIME_DONT_FAKE_MONOTONIC=1 breaks Python's time.sleep with EINVAL in
            # libfaketime 0.9.10: clock_nanosleep(TIMER_ABSTIME) gets a mixed-up deadline)
            env |= {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": faketime}
        argv = [sys.executable, "-m", "agent", "run", "--config", str(d / "policy.yaml")]
        self.proc = t.start(t.gateway, argv, log=str(self.log), env=env)
        netns.wait_for(self.ready, timeout=30, what=f"aupguard run ({self.log})")

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"aupguard run exited {self.proc.returncode}:\n{self.text()}")
        socks = self.t.run(self.t.gateway, ["ss", "-Hlnptu"]).stdout
        return ":8080" in socks and f"{self.t.lan4}:53" in socks and f"[{self.t.lan6}]:53" in socks

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        code = self.t.stop(self.proc, timeout=15)
        assert code == 0, f"aupguard run exited {code} on SIGTERM:\n{self.text()[-3000:]}"


# --- the client ------------------------------------------------------------------------------


class Client:
    def __init__(self, t: netns.Topology, d: Path) -> None:
        self.t, self.d = t, d
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(d)}

    def curl(self, url: str, resolve: str, *extra: str) -> tuple[int, str, dict[str, str], float]:
        """GET `url` with the name pinned to `resolve`: (status, body, headers, seconds)."""
        host = url.split("/")[2]
        port = 443 if url.startswith("https") else 80
        addr = f"[{resolve}]" if ":" in resolve else resolve
        argv = [
            "curl", "-sS", "--max-time", "20", "--noproxy", "*",
            "--resolve", f"{host}:{port}:{addr}",
            "--cacert", str(self.d / "ca" / "mitmproxy-ca-cert.pem"),
            "-H", "Accept: text/html", "-H", "Sec-Fetch-Dest: document",
            "-D", "-", "-o", str(self.d / "body"), "-w", "\n%{http_code}",
            *extra, url,
        ]  # fmt: skip
        start = time.monotonic()
        out = self.t.run(self.t.client, argv, timeout=30, env=self.env)
        took = time.monotonic() - start
        assert out.returncode == 0, f"curl {url} via {resolve}: {out.stderr}"
        head, _, code = out.stdout.rpartition("\n")
        headers = {}
        for line in head.splitlines()[1:]:
            k, sep, v = line.partition(":")
            if sep:
                headers[k.strip().lower()] = v.strip()
        body = (self.d / "body").read_bytes()
        text = body.decode(errors="replace") if len(body) < 100_000 else f"<{len(body)} bytes>"
        return int(code), text, headers, took

    def issuer(self, url: str, resolve: str) -> str:
        """The certificate issuer curl is shown for `url` pinned to `resolve` (not verified)."""
        host = url.split("/")[2]
        addr = f"[{resolve}]" if ":" in resolve else resolve
        argv = [
            "curl", "-sSvk", "--max-time", "20", "--noproxy", "*",
            "--resolve", f"{host}:443:{addr}", "-o", "/dev/null", url,
        ]  # fmt: skip
        out = self.t.run(self.t.client, argv, timeout=30, env=self.env)
        found = re.search(r"issuer: (.*)", out.stderr)
        return found.group(1).strip() if found else f"no certificate: {out.stderr[-300:]}"

    def dig(self, server: str, name: str, qtype: str) -> list[str]:
        out = self.t.run(
            self.t.client,
            ["dig", "+short", "+time=2", "+tries=2", f"@{server}", name, qtype],
            timeout=15,
        )
        assert out.returncode == 0, f"dig @{server} {name} {qtype}: {out.stdout}{out.stderr}"
        return out.stdout.split()

    def probe(self, family: str, addr: str, port: int, proto: str) -> str:
        """One UDP datagram or TCP connect from the client: 'refused', 'answered' or 'silent'."""
        code = f"""
import socket
s = socket.socket(socket.AF_INET{"6" if family == "6" else ""}, socket.SOCK_{proto})
s.settimeout(2)
try:
    s.connect(({addr!r}, {port}))
    if s.type == socket.SOCK_DGRAM:
        s.send(b"quic-initial")
    print("answered" if s.recv(64) else "silent")
except ConnectionRefusedError:
    print("refused")
except TimeoutError:
    print("silent")
"""
        out = self.t.run(self.t.client, [sys.executable, "-c", code], timeout=15, env=self.env)
        return out.stdout.strip() or out.stderr.strip()


def read_records(path: Path) -> list[dict]:
    """Every writer's records: `records.jsonl` is written as records.dns.jsonl, records.proxy.jsonl."""
    return [
        rec for f in sorted(path.parent.glob(f"{path.stem}.*{path.suffix}")) for rec in jsonl(f)
    ]


def find(records: list[dict], **want: str) -> list[dict]:
    """Records whose dotted fields equal `want` (keys use __ for dots)."""

    def get(r: dict, dotted: str) -> object:
        for part in dotted.split("__"):
            r = r.get(part, {}) if isinstance(r, dict) else {}
        return r

    return [r for r in records if all(get(r, k) == v for k, v in want.items())]


# --- the test --------------------------------------------------------------------------------


@dataclass
class Lab:
    t: netns.Topology
    d: Path
    client: Client


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Namespaces, the documented nftables ruleset on the gateway, PKI, policy, origin."""
    reason = netns.unavailable()
    if reason is None and LIBFAKETIME is None:
        reason = "libfaketime missing (Debian: faketime)"
    if reason is not None:
        pytest.skip(f"END-TO-END NETNS TEST SKIPPED: {reason}")
    d = tmp_path_factory.mktemp("e2e")
    d.chmod(0o755)
    with netns.Topology() as t:
        (d / "gambling.txt").write_text("casino.test\n")
        (d / "policy.yaml").write_text(POLICY.format(t=t, d=d, rate=RATE))
        make_pki(d, t)
        load = t.run(t.gateway, ["nft", "-f", "-"], input_text=documented_ruleset())
        assert load.returncode == 0, f"documented ruleset does not load: {load.stderr}"
        origin = t.start(
            t.origin,
            [sys.executable, str(Path(netns.__file__)), "origin", "--cert", str(d / "origin.pem"),
             "--key", str(d / "origin.key"), "--v4", t.origin4, "--v6", t.origin6],
            log=str(d / "origin.log"),
        )  # fmt: skip
        netns.wait_for(
            lambda: "origin ready" in (d / "origin.log").read_text() or origin.poll() is not None,
            timeout=10,
            what="origin services",
        )
        assert origin.poll() is None, (d / "origin.log").read_text()
        yield Lab(t, d, Client(t, d))


def test_gateway_end_to_end(lab: Lab) -> None:
    """DNS, block page, allowed site, v4/v6, QUIC/DoT refusal, throttling, records."""
    t, d, c = lab.t, lab.d, lab.client
    gw = Gateway(t, d, BUSINESS, "business")
    failures: list[str] = []
    started = time.monotonic()

    def step(name: str, ok: bool, detail: object = "") -> None:
        """Record one step; all steps run, the test fails at the end listing every failure."""
        shown = str(detail)[-120:] if ok else ""
        print(f"{time.monotonic() - started:5.1f}s {'PASS' if ok else 'FAIL'} {name} {shown}")
        if not ok:
            failures.append(f"{name}: {str(detail)[-400:]}")

    # 1. DNS: a blocked name gets the configured answer (blockpage = the gateway), v4 and v6
    for server, name, qtype, want in (
        (t.lan4, "casino.test", "A", t.lan4),
        (t.lan6, "casino.test", "AAAA", t.lan6),  # over IPv6 too
        (t.lan4, "allowed.test", "A", t.origin4),
        (t.lan6, "allowed.test", "AAAA", t.origin6),
    ):
        got = c.dig(server, name, qtype)
        step(f"dns {name} {qtype} @{server}", got == [want], got)
    # ... and a client that asks the origin's resolver directly is redirected to ours
    direct = c.dig(t.origin4, "casino.test", "A")
    step("dns bypass redirected (v4)", direct == [t.lan4], direct)
    direct6 = c.dig(t.origin6, "casino.test", "AAAA")
    step("dns bypass redirected (v6)", direct6 == [t.lan6], direct6)

    # 2. web: blocked category gets the block page, allowed site loads; v4 and v6, http and https
    references: dict[str, str] = {}  # X-Aupguard-Reference of each block page -> its record
    for addr in (t.origin4, t.origin6):
        for scheme in ("http", "https"):
            try:
                code, body, headers, _ = c.curl(f"{scheme}://casino.test/play", addr)
                references[f"{scheme} {addr}"] = headers.get("x-aupguard-reference", "?")
                step(f"block page {scheme} via {addr}",
                     code == 403 and "casino.test" in body and "x-aupguard-reference" in headers,
                     (code, body[:200]))  # fmt: skip
            except AssertionError as e:
                step(f"block page {scheme} via {addr}", ok=False, detail=e)
            try:
                code, body, _, _ = c.curl(f"{scheme}://allowed.test/page", addr)
                step(f"allowed {scheme} via {addr}",
                     code == 200 and body == "origin:allowed.test/page", (code, body[:200]))  # fmt: skip
            except AssertionError as e:
                step(f"allowed {scheme} via {addr}", ok=False, detail=e)
    # the DNS block answer leads a browser to the block page too
    try:
        code, body, _, _ = c.curl("http://casino.test/", t.lan4)
        step(
            "block page via the DNS blockpage address", code == 403 and "casino.test" in body, code
        )
    except AssertionError as e:
        step("block page via the DNS blockpage address", ok=False, detail=e)

    # 2b. a no-decrypt host passes untouched only to an address our DNS answered for it
    before = c.issuer("https://bank.test/", t.origin4)
    step("no-decrypt intercepted before any DNS answer", "agency" in before, before)
    answered = c.dig(t.lan4, "bank.test", "A")
    step("dns bank.test A", answered == [t.origin4], answered)
    seen = [""]

    def passed() -> bool:
        seen[0] = c.issuer("https://bank.test/", t.origin4)
        return "origin CA" in seen[0]

    with contextlib.suppress(AssertionError):
        netns.wait_for(passed, timeout=3, what="pass-through after the DNS answer")
    step("no-decrypt passed through to the answered address", "origin CA" in seen[0], seen[0])
    other = c.issuer("https://bank.test/", t.origin6)  # AAAA never asked: not answered
    step("no-decrypt intercepted to an address not answered", "agency" in other, other)

    # 3. QUIC (UDP/443) and DoT (853) are refused at the gateway; UDP elsewhere passes
    for fam, addr in (("4", t.origin4), ("6", t.origin6)):
        step(f"udp control v{fam}", c.probe(fam, addr, 4443, "DGRAM") == "answered")
        quic = c.probe(fam, addr, 443, "DGRAM")
        step(f"quic refused v{fam}", quic == "refused", quic)
        dot = c.probe(fam, addr, 853, "STREAM")
        step(f"dot refused v{fam}", dot == "refused", dot)
    counters = t.run(t.gateway, ["nft", "list", "counters", "table", "inet", "aupguard"]).stdout
    packets = {m[0]: int(m[1]) for m in re.findall(r"counter (\w+) \{\s*packets (\d+)", counters)}
    step("quic counter", packets.get("quic_refused", 0) >= 2, counters)
    step("dot counter", packets.get("dot_refused", 0) >= 2, counters)

    # 4. a large download in business hours is paced
    try:
        code, body, _, paced = c.curl(f"http://big.test/big?n={BIG}", t.origin4)
        step(
            "paced download completes", code == 200 and body == f"<{BIG} bytes>", (code, body[:80])
        )
        step("paced in business hours", paced >= 0.6 * BIG / RATE, f"{paced:.2f}s for {BIG} B")
    except AssertionError as e:
        step("paced download", ok=False, detail=e)
        paced = 0.0
    with contextlib.suppress(AssertionError):
        netns.wait_for(lambda: "throttled_transfer" in gw.text(), timeout=3, what="the log line")
    step("throttled_transfer logged", "throttled_transfer" in gw.text(), gw.text()[-1500:])

    # 5. every step has its record (DNS and proxy write to the same file)
    recs: list[dict] = []

    def enough() -> bool:
        recs[:] = read_records(d / "records.jsonl")
        return len(find(recs, url__domain="allowed.test")) >= 4

    with contextlib.suppress(AssertionError):
        netns.wait_for(enough, timeout=5, what="records")
    by_id = {r["event"]["id"]: r for r in recs}
    for ip, addr in ((t.client4, t.origin4), (t.client6, t.origin6)):
        dns = find(recs, dns__question__name="casino.test", source__ip=ip, event__action="block")
        step(f"dns block record from {ip}", bool(dns), len(recs))
        for scheme in ("http", "https"):
            rec = by_id.get(references.get(f"{scheme} {addr}", ""), {})
            step(f"block record {scheme} from {ip} (= the page's reference)",
                 find([rec], url__domain="casino.test", source__ip=ip, url__scheme=scheme,
                      event__action="block") != [], rec or references)  # fmt: skip
            ok = find(recs, url__domain="allowed.test", source__ip=ip, url__scheme=scheme,
                      event__action="allow")  # fmt: skip
            step(f"allow record {scheme} from {ip}", bool(ok))
    bank = find(recs, tls__client__server_name="bank.test")
    passes = find(bank, aupguard__passthrough=True, destination__address=t.origin4)
    step("pass-through record", len(passes) == 1, [r["aupguard"] for r in bank])
    why = "destination_not_answered"
    refused = [r["destination"]["address"]
               for r in find(bank, aupguard__passthrough=False, aupguard__passthrough_refused_reason=why)]  # fmt: skip
    step("intercepted no-decrypt records say why", refused == [t.origin4, t.origin6], refused)
    throttled = find(recs, url__domain="big.test", event__action="throttle", source__ip=t.client4)
    step("throttle record", bool(throttled) and throttled[0]["aupguard"].get("throttled_bytes") == BIG,
         [r["event"] for r in find(recs, url__domain="big.test")])  # fmt: skip
    step("records carry the gateway's (faked) business-hours time",
         all(r["@timestamp"].startswith(f"{TODAY}T10:") for r in recs), {r["@timestamp"] for r in recs})  # fmt: skip
    gw.stop()

    # 6. the same download after hours is not paced
    gw = Gateway(t, d, AFTER_HOURS, "after-hours")
    try:
        code, body, _, free = c.curl(f"http://big.test/big?n={BIG}", t.origin4)
        step("after-hours download", code == 200 and free < 0.4 * BIG / RATE, f"{free:.2f}s")
        step("after-hours faster than paced", free * 3 < paced, f"{free:.2f}s vs {paced:.2f}s")
    except AssertionError as e:
        step("after-hours download", ok=False, detail=e)
    step(
        "no throttled_transfer after hours", "throttled_transfer" not in gw.text(), gw.text()[-800:]
    )
    gw.stop()
    late = [
        r for r in read_records(d / "records.jsonl") if r["@timestamp"].startswith(f"{TODAY}T21:")
    ]
    step("after-hours download recorded, not throttled",
         [r["event"]["action"] for r in late] == ["allow"], [r["event"] for r in late])  # fmt: skip

    print(f"end-to-end steps took {time.monotonic() - started:.1f}s")
    assert not failures, "end-to-end steps failed:\n" + "\n".join(failures)


def test_gateway_metrics_count_decisions(lab: Lab) -> None:
    """docs/operations.md: blocked names and pages "show in aupguard_decisions_total"."""
    t, d, c = lab.t, lab.d, lab.client
    gw = Gateway(t, d, BUSINESS, "metrics")
    try:
        c.dig(t.lan4, "casino.test", "A")
        c.curl("http://casino.test/", t.origin4)
        text = ""

        def counted() -> bool:
            nonlocal text
            out = t.run(
                t.gateway, ["curl", "-sS", "--max-time", "5", "http://127.0.0.1:9108/metrics"]
            )
            text = out.stdout
            return all(  # services flush their counts once a second
                re.search(rf"^aupguard_{name}_total\{{[^}}]*\}} [1-9]", text, flags=re.MULTILINE)
                for name in ("decisions", "dns_queries", "http_requests")
            )

        with contextlib.suppress(AssertionError):
            netns.wait_for(counted, timeout=5, what="aupguard_decisions_total")
        families = sorted(
            set(re.findall(r"^(aupguard_\w+?)(?:_total)?\{", text, flags=re.MULTILINE))
        )
        for name in ("decisions", "dns_queries", "http_requests"):
            assert re.search(
                rf"^aupguard_{name}_total\{{[^}}]*\}} [1-9]", text, flags=re.MULTILINE
            ), (
                f"aupguard_{name}_total is not counted after a blocked lookup and a blocked page; "
                f"the endpoint has only {families}"
            )
    finally:
        gw.stop()
