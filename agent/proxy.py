"""`aupguard proxy` (mitmproxy embedded with the enforce addon) and `aupguard ca show`.

One `DumpMaster` per process, created inside the running loop; SIGTERM/SIGINT shut it down
cleanly. Deployment configs name the agency CA directory (`proxy.ca_dir`): the proxy refuses
to start when the CA is missing there instead of silently generating a new one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from agent.cli import command
from agent.config import Config, ProxyMode, load_config
from agent.errors import AupguardError
from agent.logs import configure_logging
from agent.shared_state import WORKERS_ENV

CA_KEY_FILE = "mitmproxy-ca.pem"  # key + certificate (mode 0600)
CA_CERT_FILE = "mitmproxy-ca-cert.pem"  # the certificate clients trust


def parse_listen(text: str) -> tuple[str, int]:
    """`ADDR:PORT` or `[v6]:PORT` -> (host, port); ValueError otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: expected ADDR:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]"), int(port)


def ca_dir(config: Config) -> Path | None:
    """The configured CA directory, or None (mitmproxy's default ~/.mitmproxy, for trials)."""
    return config.proxy.ca_dir


def _proxy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, help="baseline policy file")
    p.add_argument("--listen", default=None, help="ADDR:PORT (default: proxy.listen)")
    p.add_argument(
        "--mode",
        choices=[m.value for m in ProxyMode],
        default=None,
        help="regular (explicit proxy) or transparent (default: proxy.mode)",
    )
    p.add_argument("--records", type=Path, default=None,
                   help="also write records to this file (JSON lines)")  # fmt: skip
    p.add_argument("--writer", default="proxy",
                   help="record writer name: the configured records file, chain and spool are "
                   "per writer (set by `aupguard run`)")  # fmt: skip
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="this process is one of N workers sharing the listen port (SO_REUSEPORT); "
        "set by `aupguard run --workers N`",
    )


class ReusePortLoop(asyncio.SelectorEventLoop):
    """An event loop whose TCP servers bind with SO_REUSEPORT: workers share one port.

    mitmproxy 12 binds with `asyncio.start_server(handler, host, port)`, which has no
    reuse-port option of its own but passes through `loop.create_server`; the kernel then
    spreads new connections over every worker's socket (same user only).
    """

    async def create_server(self, *args: Any, **kwargs: Any) -> asyncio.Server:
        """`loop.create_server` with `reuse_port=True` unless the caller chose."""
        kwargs.setdefault("reuse_port", True)
        return await super().create_server(*args, **kwargs)


def run_workers(workers: int, serve: Coroutine[Any, Any, int]) -> int:
    """Run `serve`; as one of `workers` > 1 processes, share the port and the throttle pool."""
    if workers <= 1:
        return asyncio.run(serve)
    os.environ[WORKERS_ENV] = str(workers)  # the addon takes 1/N of the aggregate pool
    with asyncio.Runner(loop_factory=ReusePortLoop) as runner:
        return runner.run(serve)


@command("proxy", "run the web enforcement point (mitmproxy + the enforce addon)", _proxy_args)
def cmd_proxy(args: argparse.Namespace) -> int:
    """Run mitmproxy with the enforce addon until SIGTERM."""
    configure_logging(stdlib=False)  # JSON lines for journald; mitmproxy logs its own way
    try:
        config = load_config(args.config)
        host, port = parse_listen(args.listen or config.proxy.listen)
    except (AupguardError, ValueError) as e:
        print(f"aupguard proxy: {e}", file=sys.stderr)  # noqa: T201  (a CLI prints)
        return 1 if isinstance(e, AupguardError) else 2
    confdir = ca_dir(config)
    if confdir is not None and not (confdir / CA_KEY_FILE).is_file():
        print(  # noqa: T201  (a CLI prints)
            f"aupguard proxy: proxy.ca_dir: {confdir / CA_KEY_FILE} is missing: create the "
            "agency CA first (docs/proxy.md); refusing to generate a new one",
            file=sys.stderr,
        )
        return 1
    mode = args.mode or config.proxy.mode.value
    records = args.records  # the configured records: sinks come from the policy's records:
    upstream_ca = config.proxy.upstream_ca_file
    return run_workers(
        args.workers,
        _serve(
            args.config,
            host,
            port,
            mode=mode,
            confdir=confdir,
            records=records,
            writer=args.writer,
            upstream_ca=upstream_ca,
        ),
    )


async def _serve(  # noqa: PLR0913  (the resolved command line)
    policy: Path | None,
    host: str,
    port: int,
    *,
    mode: str,
    confdir: Path | None,
    records: Path | None,
    writer: str = "proxy",
    upstream_ca: Path | None = None,
) -> int:
    """Embed DumpMaster in this loop with the enforce addon; return its exit status."""
    from mitmproxy import exceptions  # noqa: PLC0415  (heavy imports only for this command)
    from mitmproxy.options import Options  # noqa: PLC0415
    from mitmproxy.tools.dump import DumpMaster  # noqa: PLC0415

    from addons.enforce import Enforce  # noqa: PLC0415

    # asyncio sets IPV6_V6ONLY on a "::" socket: "[::]:PORT" would refuse IPv4 clients.
    # mitmproxy's "" binds 0.0.0.0 and :: (the documented dual-stack "[::]:8080").
    opts = Options(listen_host="" if host == "::" else host, listen_port=port, mode=[mode])
    master = DumpMaster(opts, with_termlog=True, with_dumper=False)
    master.addons.add(Enforce())  # type: ignore[no-untyped-call]
    settings: dict[str, object] = {
        "connection_strategy": "lazy",
        "stream_large_bodies": "1m",
        "aup_policy": str(policy) if policy else "",
        "aup_writer": writer,
    }
    if confdir is not None:
        settings["confdir"] = str(confdir)
    if records is not None:
        settings["aup_records"] = str(records)
    if upstream_ca is not None:  # an agency CA for internal origins (mitmproxy option)
        settings["ssl_verify_upstream_trusted_ca"] = str(upstream_ca)
    try:
        master.options.update(**settings)  # type: ignore[no-untyped-call]
    except exceptions.OptionsError as e:
        print(f"aupguard proxy: {e}", file=sys.stderr)  # noqa: T201  (a CLI prints)
        return 1
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, master.shutdown)
    await master.run()
    return 0


def _ca_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["show"], help="show: print the CA certificate (PEM)")
    p.add_argument("--config", type=Path, default=None, help="baseline policy file")


@command("ca", "print the proxy CA certificate that clients must trust", _ca_args)
def cmd_ca(args: argparse.Namespace) -> int:
    """Print the PEM certificate of the agency CA the proxy signs with."""
    try:
        config = load_config(args.config)
    except AupguardError as e:
        print(f"aupguard ca: {e}", file=sys.stderr)  # noqa: T201  (a CLI prints)
        return 1
    confdir = ca_dir(config) or Path.home() / ".mitmproxy"
    cert = confdir / CA_CERT_FILE
    if not cert.is_file():
        print(f"aupguard ca: {cert}: missing: create the CA first (docs/proxy.md)", file=sys.stderr)  # noqa: T201  (a CLI prints)
        return 1
    sys.stdout.write(cert.read_text(encoding="ascii"))
    return 0
