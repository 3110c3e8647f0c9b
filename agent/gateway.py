"""`aupguard run`: supervise the DNS filter and the proxy as child processes.

Each service is its own process (`aupguard dns ...`, `aupguard proxy ...`), started through
its CLI contract. The supervisor forwards SIGHUP (reload) to every child, shuts them all down
on SIGTERM/SIGINT (exit 0), restarts a crashed child with exponential backoff, writes a state
file (`status`, `lists update` read it) and talks sd_notify when systemd asks for it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from agent.cli import COMMANDS, command
from agent.config import load_config
from agent.errors import AupguardError
from agent.logs import configure_logging, get_logger

if TYPE_CHECKING:
    from collections.abc import Callable
    from http.server import ThreadingHTTPServer
    from types import FrameType

    from agent.config import Config

log = get_logger("aupguard.gateway")

STATE_FILE = "state.json"
BACKOFF_FIRST = 0.5  # seconds before the first restart of a crashed child
BACKOFF_MAX = 30.0
STABLE_AFTER = 60.0  # a child up this long has its backoff reset
STOP_TIMEOUT = 10.0  # SIGTERM -> SIGKILL grace per child
FRESH = 2.0  # a child younger than this loaded the config just now: no SIGHUP needed
USAGE_ERROR = 2  # `aupguard` exit code for bad command-line input: restarting cannot help
TICK = 0.2
_PKG_ROOT = Path(__file__).resolve().parent.parent  # children import `agent` from here


def runtime_dir() -> Path:
    """Where `run` keeps its state file: systemd's RuntimeDirectory, else a per-user dir."""
    if env := os.environ.get("RUNTIME_DIRECTORY"):
        return Path(env.split(":")[0])
    if env := os.environ.get("XDG_RUNTIME_DIR"):
        return Path(env) / "aupguard"
    return Path("/tmp") / f"aupguard-{os.getuid()}"  # noqa: S108  (per-user, created 0700)


def read_state(directory: Path | None = None) -> dict[str, object] | None:
    """The state `run` wrote, or None when no supervisor is running there."""
    path = (directory or runtime_dir()) / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict):
        return None
    pid = state.get("pid")
    if not isinstance(pid, int) or not _alive(pid):
        return None
    return {str(k): v for k, v in state.items()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(slots=True)
class Child:
    """One supervised service process and its restart bookkeeping."""

    name: str
    argv: list[str]
    listen: tuple[str, ...]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: int = 0
    backoff: float = BACKOFF_FIRST
    next_start: float = 0.0
    exits: list[int] = field(default_factory=list)
    failed: bool = False  # gave up: exited with a usage error


class Supervisor:
    """Start, watch, signal and stop children; all timing through an injected clock."""

    def __init__(self, children: list[Child], clock: Callable[[], float] = time.monotonic) -> None:
        self.children = children
        self.clock = clock
        self.started_at = time.time()
        self.last_reload: float | None = None

    def start(self, child: Child) -> None:
        """Spawn one child (it inherits stdout/stderr: one journal stream)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PKG_ROOT), env.get("PYTHONPATH")]))
        child.proc = subprocess.Popen(child.argv, env=env)  # noqa: S603  (our own argv)
        child.started = self.clock()
        log.info("child_started", service=child.name, pid=child.proc.pid, argv=child.argv)

    def start_all(self) -> None:
        """Spawn every child."""
        for child in self.children:
            self.start(child)

    def poll(self) -> None:
        """Reap exited children and restart them once their backoff has passed."""
        now = self.clock()
        for child in self.children:
            if child.proc is not None:
                code = child.proc.poll()
                if code is None:
                    if now - child.started >= STABLE_AFTER:
                        child.backoff = BACKOFF_FIRST
                    continue
                child.exits.append(code)
                _forget_metrics(child.proc.pid)
                child.proc = None
                if code == USAGE_ERROR:
                    child.failed = True
                    log.error("child_failed", service=child.name, code=code, restart=False)
                    continue
                child.next_start = now + child.backoff
                log.error("child_exited", service=child.name, code=code, restart_in=child.backoff)
                child.backoff = min(child.backoff * 2, BACKOFF_MAX)
            elif not child.failed and now >= child.next_start:
                child.restarts += 1
                self.start(child)

    def signal_all(self, sig: int, min_age: float = 0.0) -> None:
        """Send `sig` to every running child started at least `min_age` seconds ago."""
        now = self.clock()
        for child in self.children:
            running = child.proc is not None and child.proc.poll() is None
            if running and child.proc is not None and now - child.started >= min_age:
                child.proc.send_signal(sig)

    def all_failed(self) -> bool:
        """True when there were children and every one has been given up on."""
        return bool(self.children) and all(c.failed for c in self.children)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM every child, wait up to `timeout`, then SIGKILL what is left."""
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.children:
            _wait_stopped(child, deadline)

    def restart(self, name: str, argv: list[str], listen: tuple[str, ...]) -> None:
        """Stop the child `name` and start it again as `argv` (its settings changed).

        Not counted as a restart after a crash. One waiting to be restarted after a crash
        just gets the new argv.
        """
        child = next(c for c in self.children if c.name == name)
        if child.proc is not None:
            child.proc.send_signal(signal.SIGTERM)
            _wait_stopped(child, time.monotonic() + STOP_TIMEOUT)
            _forget_metrics(child.proc.pid)
            child.proc = None
        child.argv, child.listen = argv, listen
        if not child.failed:
            self.start(child)

    def pids(self) -> dict[str, int | None]:
        """Child name -> pid (None while waiting to restart)."""
        return {c.name: (c.proc.pid if c.proc else None) for c in self.children}


def _wait_stopped(child: Child, deadline: float) -> None:
    """Wait until `deadline` for a signalled child to exit, then SIGKILL it."""
    if child.proc is None:
        return
    try:
        child.proc.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        log.warning("child_killed", service=child.name, pid=child.proc.pid)
        child.proc.kill()
        child.proc.wait()
    log.info("child_stopped", service=child.name, code=child.proc.returncode)


# --- sd_notify ----------------------------------------------------------------------------


def sd_notify(message: str) -> bool:
    """Send `message` to systemd's NOTIFY_SOCKET; False when not run under Type=notify."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message.encode())
    return True


def watchdog_interval() -> float | None:
    """Half of systemd's WATCHDOG_USEC in seconds, when the watchdog is on for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 2_000_000


# --- building the children ----------------------------------------------------------------


def plan_children(config: Config, args: argparse.Namespace, available: set[str]) -> list[Child]:
    """One child per enabled service whose subcommand exists; N proxy workers."""
    base = [sys.executable, "-m", "agent"]
    common = ["--config", str(config.files[0])]
    if args.records is not None:
        common += ["--records", str(args.records)]
    children: list[Child] = []
    if config.dns.enabled and "dns" in available:
        listen = [a for addr in config.dns.listen for a in ("--listen", addr)]
        children.append(Child("dns", [*base, "dns", *common, *listen], config.dns.listen))
    if config.proxy.enabled and "proxy" in available:
        workers = max(1, args.workers)
        for n in range(1, workers + 1):
            name = "proxy" if workers == 1 else f"proxy-{n}"
            argv = [*base, "proxy", *common, "--listen", config.proxy.listen]
            if workers > 1:  # SO_REUSEPORT, a host-wide throttle pool, a chain per writer
                argv += ["--workers", str(workers), "--writer", name]
            children.append(Child(name, argv, (config.proxy.listen,)))
    return children


def describe(config: Config, children: list[Child], missing: list[str]) -> list[str]:
    """Where each service listens and how to try it."""
    lines = [f"aupguard: policy {config.revision} from {config.files[0]}"]
    names = {c.name for c in children}
    if "dns" in names:
        host, _, port = config.dns.listen[0].rpartition(":")
        lines.append(f"  DNS filter on {', '.join(config.dns.listen)} (udp)")
        lines.append(f"    try: dig @{host.strip('[]')} -p {port} mail.yahoo.com")
    if any(n.startswith("proxy") for n in names):
        lines.append(f"  web proxy on {config.proxy.listen} ({config.proxy.mode})")
        lines.append(f"    try: curl -x http://{config.proxy.listen} http://mail.yahoo.com/")
        lines.append(f"    browser: set the HTTP and HTTPS proxy to {config.proxy.listen}")
    if config.proxy.pac_listen:
        lines.append(f"  PAC file on http://{config.proxy.pac_listen}/proxy.pac (and /wpad.dat)")
    if config.metrics.listen:
        lines.append(f"  metrics on http://{config.metrics.listen}/metrics")
    lines.extend(
        f"  {name}: not available in this build (no `aupguard {name}` command); not started"
        for name in missing
    )
    return lines


# --- the command --------------------------------------------------------------------------


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, help="baseline policy file")
    p.add_argument("--workers", type=int, default=1, help="proxy worker processes (default 1)")
    p.add_argument("--records", type=Path, default=None, help="monitoring records file")


@command("run", "run the DNS filter and the proxy under one supervisor", _run_args)
def cmd_run(args: argparse.Namespace) -> int:
    """Start every available service, forward SIGHUP, stop cleanly on SIGTERM (exit 0)."""
    configure_logging()
    config = load_config(args.config)
    available = set(COMMANDS)
    wanted = [n for n, on in (("dns", config.dns.enabled), ("proxy", config.proxy.enabled)) if on]
    missing = [n for n in wanted if n not in available]
    rundir = runtime_dir()
    rundir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _prepare_metrics(config, rundir)
    pac = _serve_pac(config)
    children = plan_children(config, args, available)
    sup = Supervisor(children)
    flags = _install_handlers()
    sup.start_all()
    sys.stdout.write("\n".join(describe(config, children, missing)) + "\n")
    sys.stdout.flush()
    state = rundir / STATE_FILE
    _write_state(state, config, sup)
    sd_notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=running {len(children)} services")
    try:
        code = _loop(sup, flags, state, config, lambda old: _reload(sup, old, args, available))
    finally:
        sd_notify("STOPPING=1")
        sup.stop()
        if pac is not None:
            pac.shutdown()
        state.unlink(missing_ok=True)
    log.info("stopped", code=code)
    return code


def _serve_pac(config: Config) -> ThreadingHTTPServer | None:
    """The PAC file for explicit-proxy clients, when `proxy.pac_listen` is set."""
    p = config.proxy
    if not p.pac_listen:
        return None
    from agent.metrics import split_listen  # noqa: PLC0415
    from agent.pac import pac_script, serve_pac  # noqa: PLC0415

    host, port = split_listen(p.pac_listen)
    script = pac_script(p.pac_proxy or p.listen, p.pac_direct_domains, p.pac_direct_networks)
    return serve_pac(host, port, script)


def _install_handlers() -> dict[str, bool]:
    flags = {"stop": False, "reload": False}

    def on_stop(_sig: int, _frame: FrameType | None) -> None:
        flags["stop"] = True

    def on_hup(_sig: int, _frame: FrameType | None) -> None:
        flags["reload"] = True

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    return flags


def _loop(
    sup: Supervisor,
    flags: dict[str, bool],
    state: Path,
    config: Config,
    reload: Callable[[Config], Config],
) -> int:
    """Poll children every TICK until asked to stop (0) or all failed (1); apply reloads."""
    ping = watchdog_interval()
    last_ping = 0.0
    while not flags["stop"]:
        if flags["reload"]:
            flags["reload"] = False
            sd_notify("RELOADING=1")
            config = reload(config)
            sup.last_reload = time.time()
            _write_state(state, config, sup)
            sd_notify("READY=1")
        before = sup.pids()
        sup.poll()
        if sup.pids() != before:
            _write_state(state, config, sup)
        if sup.all_failed():
            log.error("all_services_failed", services=[c.name for c in sup.children])
            return 1
        if ping is not None and time.monotonic() - last_ping >= ping:
            sd_notify("WATCHDOG=1")
            last_ping = time.monotonic()
        time.sleep(TICK)
    return 0


def _reload(
    sup: Supervisor, config: Config, args: argparse.Namespace, available: set[str]
) -> Config:
    """Apply a SIGHUP: restart the DNS filter if its settings changed, signal the others.

    The DNS filter builds its listeners, upstreams, cache and answers at start, so a changed
    `dns:` section restarts it (a gap of about a second; clients ask again) instead of
    waiting for the next restart of everything; a child started just now is not signalled.
    The config read here is what the state file then shows. One that does not load is left
    to the children, which keep their policy and say why.
    """
    try:
        fresh = load_config(config.files[0])
    except (AupguardError, OSError, ValueError):
        fresh = config
    planned = {c.name: c for c in plan_children(fresh, args, available)}
    running = {c.name for c in sup.children}
    if fresh.dns != config.dns and "dns" in planned and "dns" in running:
        log.info("child_restarting", service="dns", reason="the dns section changed")
        sup.restart("dns", planned["dns"].argv, planned["dns"].listen)
    elif fresh.dns.enabled != config.dns.enabled:
        log.warning("reload_needs_restart", sections=["dns.enabled"],
                    detail="restart aupguard run to start or stop the DNS filter")  # fmt: skip
    log.info("reload_forwarded", children=sup.pids())
    sup.signal_all(signal.SIGHUP, min_age=FRESH)
    return fresh


def _write_state(path: Path, config: Config, sup: Supervisor) -> None:
    """Atomically write what runs: our pid, children, listen addresses, policy revision."""
    state = {
        "pid": os.getpid(),
        "started": sup.started_at,
        "last_reload": sup.last_reload,
        "config": str(config.files[0]),
        "revision": config.revision,
        "metrics": config.metrics.listen,
        "children": {
            c.name: {
                "pid": c.proc.pid if c.proc else None,
                "listen": list(c.listen),
                "restarts": c.restarts,
            }
            for c in sup.children
        },
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2), encoding="utf-8")
    tmp.replace(path)


def _prepare_metrics(config: Config, rundir: Path) -> None:
    """Children write metrics to a shared dir; the supervisor serves their sum."""
    if not config.metrics.listen:
        return
    from agent.metrics import ListCollector, serve_multiprocess  # noqa: PLC0415  (only `run`)

    def sources() -> list[tuple[str, Path]]:
        return [(s.category, s.path) for s in config.list_sources()]

    serve_multiprocess(config.metrics.listen, rundir / "metrics", ListCollector(sources))


def _forget_metrics(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from agent.metrics import mark_dead  # noqa: PLC0415

        mark_dead(pid)


def forward_reload(directory: Path | None = None) -> int | None:
    """SIGHUP the running supervisor (it forwards to its services); its pid, or None."""
    state = read_state(directory)
    if state is None:
        return None
    pid = state["pid"]
    assert isinstance(pid, int)  # noqa: S101  (read_state checked it)
    os.kill(pid, signal.SIGHUP)
    return pid
