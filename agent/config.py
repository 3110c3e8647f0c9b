"""YAML config -> frozen config objects, with every error reported at once as file:line.

One file is the statewide baseline; it may name agency `overlays`. Each file is a *layer*.
Sections: `policy` (categories, groups, schedules, rules, exceptions), `dns`, `proxy`,
`records`, `lists`, `metrics`. Sections other than `policy` belong to the baseline only.
Field shapes live in the dataclasses below (see `agent.schema` for how they decode); the
cross-reference checks live in `_validate`.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import ipaddress
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from agent.errors import ConfigError
from agent.lists import ListFormat, ListSource
from agent.model import Action
from agent.schedule import parse_clock, parse_date, parse_weekday, parse_zone
from agent.schema import Decoder, Problem, compose_file, is_missing, mapping_get

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "config" / "policy.yaml"


def parse_network(text: str) -> IPNetwork:
    """An address or network in CIDR form, e.g. 10.20.0.0/16 or 2001:db8::/32."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError("expected an address or CIDR network such as 10.0.0.0/8") from None


def parse_addr(text: str, default_port: int = 53) -> tuple[str, int]:
    """`1.2.3.4`, `1.2.3.4:53`, `[::1]:5353` or `::1` -> (host, port); ValueError if bad.

    Port 0 (listen on any free port) is accepted; the ready line says which one.
    """
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad address {text!r}: expected [IPv6]:PORT")
        port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    if port and not port.isdigit():
        raise ValueError(f"bad address {text!r}: the port {port!r} is not a number")
    number = int(port) if port else default_port
    if not host or not 0 <= number < 65536:
        raise ValueError(f"bad address {text!r}: expected ADDR:PORT")
    return host, number


def parse_upstream(text: str) -> tuple[str, int]:
    """`parse_addr` for an upstream, which must be an IP address: the filter cannot look it up."""
    host, port = parse_addr(text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"bad upstream {text!r}: expected an IP address, not a name") from None
    return host, port


def dns_address(text: str) -> str:
    """An address with an optional port, such as 127.0.0.1:5353 or [::1]:5353."""
    try:
        parse_addr(text)
    except ValueError:
        raise ValueError("expected ADDR:PORT, IPv6 as [ADDR]:PORT") from None
    return text.strip()


def resolver_address(text: str) -> str:
    """A resolver's IP address with an optional port, such as 192.0.2.53 or [2001:db8::53]:53."""
    try:
        parse_upstream(text)
    except ValueError:
        raise ValueError("expected an IP address (not a name) with an optional :PORT") from None
    return text.strip()


def parse_seconds(text: str) -> int:
    """A whole number of seconds, 0 or more."""
    try:
        seconds = int(text.strip())
    except ValueError:
        seconds = -1
    if seconds < 0:
        raise ValueError("expected a whole number of seconds, 0 or more")
    return seconds


def _where() -> Any:
    return field(default="", metadata={"where": True}, compare=False)


# --- policy ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScheduleConfig:
    """A weekly window, e.g. Mon-Fri 08:00-17:00, optionally not on holidays."""

    days: tuple[int, ...] = field(metadata={"parse": parse_weekday})
    start: int = field(metadata={"parse": parse_clock})
    end: int = field(metadata={"parse": parse_clock})
    skip_holidays: bool = True
    where: str = _where()


@dataclass(frozen=True, slots=True)
class HolidayConfig:
    """A public holiday on which `skip_holidays` schedules are inactive."""

    date: dt.date = field(metadata={"parse": parse_date})
    name: str = ""


@dataclass(frozen=True, slots=True)
class ListRef:
    """A category list source: a path (relative to the config file) and its format."""

    path: Path
    format: ListFormat = ListFormat.AUTO
    where: str = _where()

    @classmethod
    def from_scalar(cls, text: str, where: str) -> ListRef:
        """`lists: [blocklists/webmail.txt]` shorthand; resolved against the file's folder later."""
        return cls(path=Path(text), where=where)


@dataclass(frozen=True, slots=True)
class CategoryConfig:
    """A category (UT1 name), its list sources and the policy clause shown to users."""

    clause: str
    lists: tuple[ListRef, ...] = ()
    description: str = ""
    where: str = _where()


@dataclass(frozen=True, slots=True)
class GroupConfig:
    """Clients by address and users by name or directory group."""

    networks: tuple[IPNetwork, ...] = field(default=(), metadata={"parse": parse_network})
    users: tuple[str, ...] = ()
    user_groups: tuple[str, ...] = ()
    description: str = ""
    where: str = _where()

    @property
    def user_based(self) -> bool:
        """True when membership depends on who is signed in, not on the address."""
        return bool(self.users or self.user_groups)


@dataclass(frozen=True, slots=True)
class RuleConfig:
    """Categories -> action, for some groups (default: everyone), optionally in a schedule."""

    id: str
    categories: tuple[str, ...]
    action: Action = field(metadata={"parse": Action.parse})
    groups: tuple[str, ...] = ()
    schedule: str | None = None
    outside_schedule: bool = False
    where: str = _where()


@dataclass(frozen=True, slots=True)
class ExceptionConfig:
    """A CIO-approved allowance of hosts/URLs for groups, valid through `expires` (inclusive)."""

    id: str
    groups: tuple[str, ...]
    approved_by: str
    reference: str
    expires: dt.date = field(metadata={"parse": parse_date})
    hosts: tuple[str, ...] = ()
    urls: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    where: str = _where()


@dataclass(frozen=True, slots=True)
class NeverBlock:
    """An agency work service that no list may categorise (a host suffix or host/path)."""

    entry: str
    where: str = ""

    @classmethod
    def from_scalar(cls, text: str, where: str) -> NeverBlock:
        """`never_block: [office365.com]` shorthand."""
        return cls(entry=text.strip(), where=where)


@dataclass(frozen=True, slots=True)
class PolicySection:
    """The `policy` section of one layer."""

    timezone: ZoneInfo | None = field(default=None, metadata={"parse": parse_zone})
    default_action: Action | None = field(default=None, metadata={"parse": Action.parse})
    schedules: dict[str, ScheduleConfig] = field(default_factory=dict)
    holidays: tuple[HolidayConfig, ...] = ()
    categories: dict[str, CategoryConfig] = field(default_factory=dict)
    groups: dict[str, GroupConfig] = field(default_factory=dict)
    never_block: tuple[NeverBlock, ...] = ()
    rules: tuple[RuleConfig, ...] = ()
    exceptions: tuple[ExceptionConfig, ...] = ()


# --- other sections (filled in by the DNS, proxy, records and operations features) -------


class BlockMode(enum.StrEnum):
    """How the DNS filter answers a blocked name."""

    NXDOMAIN = "nxdomain"
    NULL = "null"
    BLOCKPAGE = "blockpage"


class DnsRecords(enum.StrEnum):
    """Which DNS queries become records: blocked/warned/logged/refused/failed, all, or none."""

    DEFAULT = "default"
    ALL = "all"
    OFF = "off"


class NoSni(enum.StrEnum):
    """A TLS ClientHello without SNI: intercepted (decided per request) or refused."""

    INTERCEPT = "intercept"
    REFUSE = "refuse"


class ProxyMode(enum.StrEnum):
    """Explicit (clients configured with the proxy) or transparent (nftables redirect)."""

    REGULAR = "regular"
    TRANSPARENT = "transparent"


@dataclass(frozen=True, slots=True)
class DnsSection:
    """The DNS filter."""

    enabled: bool = True
    listen: tuple[str, ...] = field(default=("127.0.0.1:5353",), metadata={"parse": dns_address})
    upstreams: tuple[str, ...] = field(default=(), metadata={"parse": resolver_address})
    allow_clients: tuple[IPNetwork, ...] = field(
        default=(ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")),
        metadata={"parse": parse_network},
    )
    block_mode: BlockMode = BlockMode.NXDOMAIN
    block_ttl: int = 60
    records: DnsRecords = DnsRecords.DEFAULT
    blockpage_ipv4: str | None = None  # the block-page server (block_mode: blockpage)
    blockpage_ipv6: str | None = None
    upstream_timeout: float = 1.5  # seconds per upstream attempt
    rate_limit: int = 1000  # queries per second per client address; 0 turns it off
    cache_size: int = 100_000  # cached answers
    cache_min_ttl: int = 0
    cache_max_ttl: int = 86_400
    negative_ttl: int = 300  # cap on caching NXDOMAIN/NODATA (RFC 2308)
    tcp_idle_timeout: float = 10.0  # seconds a TCP client may stay silent
    tcp_max_connections: int = 256
    # upstream answers recorded for the proxy's transparent no-decrypt check (recent_answers)
    recent_answers: bool = True
    recent_answers_min_ttl: int = field(default=600, metadata={"parse": parse_seconds})


@dataclass(frozen=True, slots=True)
class AcknowledgeConfig:
    """Acknowledgment of the monitoring notice (agent.acknowledge)."""

    enabled: bool = False
    period_days: int = 30  # how long one acknowledgment lasts (a new notice version: at once)


@dataclass(frozen=True, slots=True)
class ProxySection:
    """The mitmproxy enforcement point."""

    enabled: bool = True
    listen: str = "127.0.0.1:8080"
    mode: ProxyMode = ProxyMode.REGULAR
    ca_dir: Path | None = None
    upstream_ca_file: Path | None = None  # PEM CAs for origins (default: certifi's bundle)
    no_decrypt_categories: tuple[str, ...] = ()
    no_decrypt_hosts: tuple[str, ...] = ()
    no_sni: NoSni = NoSni.INTERCEPT  # a ClientHello without SNI (agent.tls_policy)
    # explicit-proxy sites: `aupguard run` serves a PAC file (agent.pac) at /proxy.pac, /wpad.dat
    pac_listen: str | None = None
    pac_proxy: str | None = None  # what clients are told to use (default: listen)
    pac_direct_domains: tuple[str, ...] = ()  # the agency's own domains: no proxy
    pac_direct_networks: tuple[IPNetwork, ...] = field(
        default=(), metadata={"parse": parse_network}
    )
    record_allowed: bool = False  # also record plain allow decisions (volume!)
    warn_minutes: int = 30  # how long "Continue" on a warn page allows that category
    token_secret_file: Path | None = None  # shared by every worker; created 0600 if missing
    user_map_file: Path | None = None  # "address user" lines (transparent mode), reloaded on change
    page_lang: str = "en"
    page_contact: str = "your IT service desk"
    page_exception_howto: str = ""  # empty: the built-in text (CIO approval)
    page_template: Path | None = None  # string.Template HTML; values arrive escaped
    throttle_schedule: str | None = None  # e.g. business-hours; None: never throttle
    throttle_threshold: int = 50_000_000  # bytes (Content-Length or per-client window)
    throttle_client_rate: int = 1_000_000  # bytes/s per client
    throttle_aggregate_rate: int = 10_000_000  # bytes/s for all throttled transfers
    throttle_window: int = 300  # seconds over which a client's bytes add up
    throttle_exempt_groups: tuple[str, ...] = ()
    throttle_exempt_hosts: tuple[str, ...] = ()
    # host suffix -> headers added to every request to it (tenant restrictions, docs/proxy.md)
    tenant_headers: dict[str, dict[str, str]] = field(default_factory=dict)
    # grants shared by every worker (Continue, acknowledgments); default: next to the secret
    state_file: Path | None = None
    acknowledge: AcknowledgeConfig = field(default_factory=AcknowledgeConfig)


@dataclass(frozen=True, slots=True)
class NoticeConfig:
    """The electronic-monitoring notice employees received; its hash is its version."""

    text: str = ""
    file: Path | None = None


@dataclass(frozen=True, slots=True)
class RecordsSection:
    """Monitoring records: the notice in force and where records go."""

    notice: NoticeConfig = field(default_factory=NoticeConfig)
    file: Path | None = None
    queue_size: int = 10_000
    # rotation and retention (agent.rotation); 0 disables a limit
    rotate_bytes: int = 100_000_000
    rotate_seconds: int = 86_400
    retention_days: int = 0
    group: str | None = None
    # tamper evidence (agent.chain): hex key file kept off the record directory
    chain_key_file: Path | None = None
    chain_head_interval: float = 60.0
    # shipping (agent.shipping): "host:port" of the collector; tls needs syslog_ca_file
    syslog: str | None = None
    syslog_tls: bool = False
    syslog_ca_file: Path | None = None
    spool_dir: Path | None = None
    spool_max_bytes: int = 1_000_000_000
    spool_full: str = "drop"  # drop | fail_closed


@dataclass(frozen=True, slots=True)
class ListUpdateSource:
    """A list `aupguard lists update` fetches: HTTPS, or plain HTTP with a sha256 pin.

    `format: ut1` means `url` is UT1's tar.gz archive and `category` its folder inside it.
    """

    url: str
    category: str
    format: ListFormat = ListFormat.AUTO
    sha256: str | None = None
    where: str = _where()


@dataclass(frozen=True, slots=True)
class ListsSection:
    """Category list handling: index cache, parse error budget and downloaded sources."""

    cache_dir: Path | None = None
    max_bad_share: float = 0.10
    sources: tuple[ListUpdateSource, ...] = ()
    dir: Path | None = None  # where updates are written (default: $STATE_DIRECTORY/lists)
    max_shrink: float = 0.5  # refuse an update that loses more than this share of entries
    max_growth: float = 5.0  # refuse one that grows by more than this factor ...
    growth_slack: int = 1000  # ... and by more than this many entries
    protected_suffixes: tuple[str, ...] = ("gov",)  # no downloaded entry may cover these
    max_download_bytes: int = 200_000_000
    max_archive_members: int = 50_000


@dataclass(frozen=True, slots=True)
class MetricsSection:
    """Prometheus metrics endpoint (loopback by default)."""

    listen: str | None = "127.0.0.1:9108"


@dataclass(frozen=True, slots=True)
class FileSection:
    """One YAML file as written: its layer name, overlays and sections."""

    layer: str
    overlays: tuple[Path, ...] = ()
    policy: PolicySection = field(default_factory=PolicySection)
    dns: DnsSection = field(default_factory=DnsSection)
    proxy: ProxySection = field(default_factory=ProxySection)
    records: RecordsSection = field(default_factory=RecordsSection)
    lists: ListsSection = field(default_factory=ListsSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)


# --- the merged, validated result ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Layer:
    """A layer's name, file and the rules/exceptions it contributes (baseline first)."""

    name: str
    file: str
    rules: tuple[RuleConfig, ...]
    exceptions: tuple[ExceptionConfig, ...]


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration after layering and validation."""

    files: tuple[Path, ...]
    revision: str
    timezone: ZoneInfo
    default_action: Action
    schedules: dict[str, ScheduleConfig]
    holidays: tuple[HolidayConfig, ...]
    categories: dict[str, CategoryConfig]
    groups: dict[str, GroupConfig]
    never_block: tuple[NeverBlock, ...]
    layers: tuple[Layer, ...]
    dns: DnsSection
    proxy: ProxySection
    records: RecordsSection
    lists: ListsSection
    metrics: MetricsSection
    warnings: tuple[str, ...] = ()

    def list_sources(self) -> tuple[ListSource, ...]:
        """Every category list source, in category order."""
        return tuple(
            ListSource(cat, ref.path, ref.format, label=display_path(ref.path))
            for cat, spec in sorted(self.categories.items())
            for ref in spec.lists
        )

    def notice_text(self) -> str:
        """The monitoring notice text (inline or from its file); '' when none is configured."""
        notice = self.records.notice
        if notice.file is not None:
            return notice.file.read_text(encoding="utf-8")
        return notice.text

    def index_dir(self) -> Path:
        """Where the compiled list index is cached."""
        if self.lists.cache_dir is not None:
            return self.lists.cache_dir
        if os.environ.get("STATE_DIRECTORY"):  # systemd StateDirectory=aupguard
            return self.state_dir() / "index"
        cache = os.environ.get("XDG_CACHE_HOME")
        return (Path(cache) if cache else Path.home() / ".cache") / "aupguard" / "index"

    @staticmethod
    def state_dir() -> Path:
        """Where services keep state (token secret, shared worker state): never the config dir."""
        state = os.environ.get("STATE_DIRECTORY")
        if state:
            return Path(state.split(":")[0])
        xdg = os.environ.get("XDG_STATE_HOME")
        return (Path(xdg) if xdg else Path.home() / ".local" / "state") / "aupguard"


def display_path(path: Path) -> str:
    """A path as messages show it: relative to the working directory when below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def load_config(path: Path | None = None) -> Config:
    """Load and validate the baseline at `path` (default: the shipped policy) and its overlays.

    Raises ConfigError listing every problem in file/line order.
    """
    from agent.config_check import validate  # noqa: PLC0415  (the checks import these types)

    path = (path or DEFAULT_CONFIG).resolve()
    problems: list[Problem] = []
    base = _load_file(path, problems)
    sections: list[tuple[Path, FileSection]] = []
    if base is not None:
        sections.append((path, base))
        for overlay in base.overlays:
            sub = _load_file(overlay, problems)
            if sub is not None:
                sections.append((overlay, sub))
    config = validate(sections, problems) if sections else None
    if problems or config is None:
        problems.sort(key=lambda p: (p.file, p.line))
        raise ConfigError([str(p) for p in problems])
    return config


def _load_file(path: Path, problems: list[Problem]) -> FileSection | None:
    label = display_path(path)
    node, syntax = compose_file(path, label)
    problems.extend(syntax)
    if syntax:
        return None
    decoder = Decoder(label, path.parent, problems)
    if node is None:
        decoder.error(None, "", "the file is empty: expected at least `layer:`")
        return None
    section = decoder.dataclass(node, FileSection, "")
    if is_missing(section):
        return None
    return _resolve_list_paths(section, path.parent) if mapping_get(node, "policy") else section


def _resolve_list_paths(section: FileSection, base: Path) -> FileSection:
    """List paths in shorthand form are relative to the config file's directory."""
    cats = {
        name: replace(
            spec,
            lists=tuple(replace(ref, path=(base / ref.path).resolve()) for ref in spec.lists),
        )
        for name, spec in section.policy.categories.items()
    }
    return replace(section, policy=replace(section.policy, categories=cats))


def config_revision(paths: list[Path]) -> str:
    """The policy version stamped on records: a hash of every config file's bytes."""
    digest = hashlib.sha256()
    for p in paths:
        digest.update(p.read_bytes())
    return "sha256:" + digest.hexdigest()[:16]
