"""DNS wire format fast path: read the question straight from the bytes, patch prepared answers.

Parsing every packet with dnslib costs ~17 us (FACTS.md); the common query (one question,
no answers, at most an OPT record) is read here in a few slices instead. Anything unusual
returns None and goes to the dnslib slow path. Names are kept in *wire form*, lower-cased,
so that a suffix is a slice at a label boundary.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Any

from dnslib import AAAA as RD_AAAA
from dnslib import (
    EDNS0,
    QTYPE,
    RD,
    RR,
    SOA,
    DNSBuffer,
    DNSError,
    DNSHeader,
    DNSLabel,
    DNSQuestion,
    DNSRecord,
)
from dnslib import A as RD_A

from agent.config import BlockMode, DnsSection

MAX_NAME = 255
MAX_LABEL = 63
HEADER = 12
T_A, T_NS, T_CNAME, T_SOA, T_PTR, T_MX, T_TXT = 1, 2, 5, 6, 12, 15, 16
T_AAAA, T_SRV, T_DNAME = 28, 33, 39
SOA_MIN_RDATA = 22  # two root names and five 32-bit fields, the last of them MINIMUM
T_OPT = 41
T_SVCB = 64
T_HTTPS = 65
SVC_MANDATORY, SVC_ECH = 0, 5
_ECH_KEY = SVC_ECH.to_bytes(2)
_HINT_SIZES = {4: 4, 6: 16}  # SvcParam ipv4hint / ipv6hint: address size
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4
RCODE_REFUSED = 5
RCODE_BADVERS = 16  # extended: its upper bits travel in the OPT record
EDNS_SIZE = 1232

# Bypass names answered here whatever the policy (docs/dns.md): Firefox's DoH canary and
# iCloud Private Relay get NXDOMAIN, DDR discovery (RFC 9462) gets NODATA.
SPECIAL: dict[bytes, str] = {
    b"\x13use-application-dns\x03net\x00": "nxdomain",
    b"\x04mask\x06icloud\x03com\x00": "nxdomain",
    b"\x07mask-h2\x06icloud\x03com\x00": "nxdomain",
    b"\x04_dns\x08resolver\x04arpa\x00": "nodata",
}

_LOWER = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")
_HHHH = struct.Struct("!HHHH")
_HH = struct.Struct("!HH")
_HHH = struct.Struct("!HHH")


@dataclass(frozen=True, slots=True)
class Question:
    """The one question of a plain query.

    `name` is the lower-cased wire name; `qend` is the offset just past QTYPE/QCLASS;
    `edns` is the client's UDP payload size (None without OPT); `flags` the header flags;
    `dnssec_ok` the OPT record's DO bit (RFC 3225: the client wants DNSSEC records).
    """

    id: int
    flags: int
    name: bytes
    qtype: int
    qclass: int
    qend: int
    edns: int | None
    dnssec_ok: bool = False

    @property
    def key(self) -> tuple[bytes, int, int, bool, bool]:
        """What an answer to this question depends on: name, type, class, EDNS and DO."""
        return (self.name, self.qtype, self.qclass, self.edns is not None, self.dnssec_ok)


def read_name(data: bytes, offset: int) -> tuple[bytes, int] | None:
    """An uncompressed wire name at `offset` and the offset after it; None if invalid.

    Compression pointers are not followed (a question has no earlier name to point to).
    """
    start = offset
    size = len(data)
    while offset < size:
        n = data[offset]
        if n == 0:
            offset += 1
            if offset - start > MAX_NAME:
                return None
            return data[start:offset], offset
        if n > MAX_LABEL:
            return None
        offset += n + 1
    return None


def parse_query(data: bytes) -> Question | None:
    """The question of a standard query with QDCOUNT 1, or None for anything else."""
    if len(data) < HEADER + 5:
        return None
    ident, flags = _HH.unpack_from(data, 0)
    qd, an, ns, ar = _HHHH.unpack_from(data, 4)
    if flags & 0xF800 or qd != 1 or an or ns or ar > 1:
        return None  # a response, a non-QUERY opcode or an unusual layout
    read = read_name(data, HEADER)
    if read is None or read[1] + 4 > len(data):
        return None
    name, off = read
    qtype, qclass = _HH.unpack_from(data, off)
    qend = off + 4
    edns, dnssec_ok = None, False
    if ar:
        opt = _read_opt(data, qend)
        if opt is None:
            return None
        edns, dnssec_ok = opt
    elif qend != len(data):
        return None
    return Question(ident, flags, name.translate(_LOWER), qtype, qclass, qend, edns, dnssec_ok)


def _read_opt(data: bytes, offset: int) -> tuple[int, bool] | None:
    """(payload size, DO bit) of an OPT record that ends the message exactly; else None."""
    if len(data) < offset + 11 or data[offset] != 0:
        return None
    rtype, size = _HH.unpack_from(data, offset + 1)
    rdlen = int.from_bytes(data[offset + 9 : offset + 11])
    if rtype != T_OPT or offset + 11 + rdlen != len(data) or data[offset + 6]:
        return None  # not one OPT record ending the message, or an EDNS version beyond 0
    return max(int(size), 512), bool(data[offset + 7] & 0x80)  # TTL: rcode, version, DO|Z


def suffixes(name: bytes) -> list[bytes]:
    """Every suffix of a wire name at a label boundary, longest first, root excluded."""
    out = []
    i = 0
    while name[i]:
        out.append(name[i:])
        i += name[i] + 1
    return out


def to_text(name: bytes) -> str:
    r"""`\x03www\x07example\x03com\x00` -> `www.example.com` (no trailing dot)."""
    labels = []
    i = 0
    while name[i]:
        labels.append(name[i + 1 : i + 1 + name[i]].decode("ascii", "replace"))
        i += name[i] + 1
    return ".".join(labels)


def to_wire(text: str) -> bytes:
    """`www.example.com` -> wire form (lower case); ValueError for an invalid name."""
    out = bytearray()
    for label in text.strip(".").lower().split(".") if text.strip(".") else []:
        raw = label.encode("ascii")
        if not raw or len(raw) > MAX_LABEL:
            raise ValueError(f"invalid label in {text!r}")
        out += bytes([len(raw)]) + raw
    out += b"\x00"
    if len(out) > MAX_NAME:
        raise ValueError(f"name too long: {text!r}")
    return bytes(out)


def patch(template: bytes, query: bytes, q: Question) -> bytes:
    """A prepared response for `q`: the client's id, RD/CD bits and question (its 0x20 case).

    The template's question must be at offset 12 with the same name length, which is how
    every prepared response is built.
    """
    b2 = (template[2] & 0xFE) | (query[2] & 0x01)
    b3 = (template[3] & 0xEF) | (query[3] & 0x10)
    return (
        query[:2]
        + bytes((b2, b3))
        + template[4:HEADER]
        + query[HEADER : q.qend - 4]
        + template[q.qend - 4 :]
    )


def error_reply(query: bytes, rcode: int) -> bytes | None:
    """A header-only reply (FORMERR, REFUSED...) echoing the id; None for a non-query."""
    if len(query) < HEADER or query[2] & 0x80:
        return None  # too short to answer, or a response: never answer those (loops)
    flags = 0x8000 | (query[2] & 0x79) << 8 | (query[3] & 0x10) | rcode
    return query[:2] + _HH.pack(flags, 0) + b"\x00" * 6


def badvers_reply(query: bytes, question: bytes) -> bytes | None:
    """BADVERS for an EDNS version beyond 0, echoing the `question` (wire); None for a non-query.

    RFC 6891 section 6.1.3: an OPT record of version 0 carries the upper bits of rcode 16.
    """
    head = error_reply(query, 0)
    if head is None:
        return None
    opt = struct.pack("!HHIH", T_OPT, EDNS_SIZE, (RCODE_BADVERS >> 4) << 24, 0)
    return head[:4] + _HHHH.pack(1, 0, 0, 1) + question + b"\x00" + opt


def refused_reply(query: bytes, q: Question) -> bytes:
    """REFUSED with the question echoed (what dig expects), with OPT if the query had it."""
    flags = 0x8000 | (q.flags & 0x7900) | (q.flags & 0x10) | RCODE_REFUSED
    head = query[:2] + _HHHH.pack(flags, 1, 0, 0) + b"\x00" + _arcount(q)
    return head + query[HEADER : q.qend] + _opt_for(q)


def truncated(response: bytes, q: Question) -> bytes:
    """The header and question of `response` with TC set and no records (OPT kept, DO echoed)."""
    b2 = response[2] | 0x02
    head = response[:2] + bytes((b2, response[3])) + response[4:6] + b"\x00\x00\x00\x00"
    return head + b"\x00" + _arcount(q) + response[HEADER : q.qend] + _opt_for(q)


def _arcount(q: Question) -> bytes:
    """The low byte of ARCOUNT for a reply carrying only `_opt_for(q)`."""
    return b"\x00" if q.edns is None else b"\x01"


def _opt_for(q: Question) -> bytes:
    """The OPT record a reply to `q` carries: none without EDNS; the DO bit echoed (RFC 3225)."""
    if q.edns is None:
        return b""
    return _OPT_DO if q.dnssec_ok else _OPT


def svc_params(rdata: bytes) -> tuple[int, list[tuple[int, int, int]]] | None:
    """SVCB/HTTPS RDATA (RFC 9460) as (end of TargetName, [(key, start, end) per SvcParam]).

    `start` is the param's key, `end` one past its value. None if malformed.
    """
    read = read_name(rdata, 2)
    if read is None:
        return None
    off = start = read[1]
    params: list[tuple[int, int, int]] = []
    while off + 4 <= len(rdata):
        key, length = _HH.unpack_from(rdata, off)
        end = off + 4 + length
        if end > len(rdata):
            return None
        params.append((key, off, end))
        off = end
    return (start, params) if off == len(rdata) else None


def strip_ech(rdata: bytes) -> bytes:
    """SVCB/HTTPS RDATA without the `ech` SvcParam (RFC 9460 key 5); unchanged if malformed.

    A `mandatory` list naming `ech` loses that key too (or goes, if `ech` was all it named):
    a client rejects a record whose mandatory key is missing (RFC 9460 section 8).
    """
    parsed = svc_params(rdata)
    if parsed is None or all(key != SVC_ECH for key, _, _ in parsed[1]):
        return rdata
    start, params = parsed
    kept = [rdata[:start]]
    for key, s, e in params:
        if key == SVC_MANDATORY:
            keys = rdata[s + 4 : e]
            rest = b"".join(
                keys[i : i + 2] for i in range(0, len(keys), 2) if keys[i : i + 2] != _ECH_KEY
            )
            if rest:
                kept.append(_HH.pack(SVC_MANDATORY, len(rest)) + rest)
        elif key != SVC_ECH:
            kept.append(rdata[s:e])
    return b"".join(kept)


def address_hints(rdata: bytes) -> list[str]:
    """The `ipv4hint` and `ipv6hint` addresses of ServiceMode SVCB/HTTPS RDATA.

    Empty for AliasMode (priority 0), which carries none, and for malformed RDATA.
    """
    parsed = svc_params(rdata)
    if parsed is None or rdata[:2] == b"\x00\x00":
        return []
    hints: list[str] = []
    for key, start, end in parsed[1]:
        size = _HINT_SIZES.get(key)
        value = rdata[start + 4 : end]
        if size and value and len(value) % size == 0:
            hints += [
                str(ipaddress.ip_address(value[i : i + size])) for i in range(0, len(value), size)
            ]
    return hints


def rr_ttl_offsets(data: bytes, qend: int) -> list[tuple[int, int]] | None:
    """(offset, ttl) of every record's TTL after the question, OPT excluded; None if malformed.

    An SOA's TTL is the lesser of its TTL and its MINIMUM field: how long the negative answer
    it comes with may be cached (RFC 2308 section 5).
    """
    counts = _HHH.unpack_from(data, 6)
    off = qend
    out: list[tuple[int, int]] = []
    for _ in range(sum(counts)):
        off = skip_name(data, off)
        if off < 0 or off + 10 > len(data):
            return None
        rtype = int.from_bytes(data[off : off + 2])
        ttl = int.from_bytes(data[off + 4 : off + 8])
        end = off + 10 + int.from_bytes(data[off + 8 : off + 10])
        if rtype == T_SOA and off + 10 + SOA_MIN_RDATA <= end <= len(data):
            ttl = min(ttl, int.from_bytes(data[end - 4 : end]))
        if rtype != T_OPT:
            out.append((off + 4, ttl))
        off = end
    return out if off == len(data) else None


def skip_name(data: bytes, off: int) -> int:
    """The offset after a (possibly compressed) name at `off`; -1 when malformed."""
    while off < len(data):
        n = data[off]
        if n == 0:
            return off + 1
        if n & 0xC0 == 0xC0:
            return off + 2
        if n > MAX_LABEL:
            return -1
        off += n + 1
    return -1


def expand_name(data: bytes, off: int) -> bytes | None:
    """The lower-cased wire name at `off`, compression pointers followed; None if invalid.

    A pointer must point before itself (RFC 1035 4.1.4: a prior occurrence) and past the
    header, so every name ends.
    """
    out = bytearray()
    while off < len(data):
        n = data[off]
        if n & 0xC0 == 0xC0:
            if off + 1 >= len(data):
                return None
            target = (n & 0x3F) << 8 | data[off + 1]
            if not HEADER <= target < off:
                return None
            off = target
            continue
        if n > MAX_LABEL:
            return None
        out += data[off : off + n + 1]
        if len(out) > MAX_NAME:
            return None
        if n == 0:
            return bytes(out).translate(_LOWER)
        off += n + 1
    return None


def name_end(data: bytes, off: int) -> int:
    """The offset after the name at `off`, whose pointers must lead to a valid name; else -1."""
    end = skip_name(data, off)
    return end if end > 0 and expand_name(data, off) is not None else -1


_FIXED_RDATA = {T_A: 4, T_AAAA: 16}
_NAME_RDATA = {T_CNAME: 0, T_NS: 0, T_PTR: 0, T_DNAME: 0, T_MX: 2, T_SRV: 6}  # bytes before it


def rdata_valid(data: bytes, rtype: int, start: int, end: int) -> bool:
    """Whether `data[start:end]` is well-formed RDATA of a type read here; False for others."""
    size = _FIXED_RDATA.get(rtype)
    if size is not None:
        return end - start == size
    skip = _NAME_RDATA.get(rtype)
    if skip is not None:
        return start + skip < end and name_end(data, start + skip) == end
    if rtype == T_SOA:
        off = name_end(data, start)
        off = name_end(data, off) if 0 < off < end else -1
        return off > 0 and off + 20 == end
    if rtype == T_TXT:
        off = start
        while off < end:
            off += data[off] + 1
        return off == end > start
    return False


def rewrite_reply(reply: bytes, q: Question) -> tuple[bytes, tuple[bytes, ...]] | None:
    """`Answers.from_upstream` read from the wire for the common reply; None: dnslib's turn.

    `reply` matched the query (`upstream.matches`): its question is `q`'s, so the records
    after it are kept byte for byte and their compression pointers stay valid. The
    upstream's OPT record, if it ends the message, is replaced by the one the client gets.
    Every name and RDATA is checked first (`rdata_valid`): a client must never get, nor the
    cache keep, a reply it cannot read. Other types (SVCB/HTTPS with ECH to strip, DNSSEC
    records...) and anything irregular return None.
    """
    counts = _HHH.unpack_from(reply, 6)
    total = sum(counts)
    off = q.qend
    aliases: list[bytes] = []
    cut = len(reply)
    for i in range(total):
        start = off
        off = name_end(reply, off)
        if off < 0 or off + 10 > len(reply):
            return None
        rtype = int.from_bytes(reply[off : off + 2])
        end = off + 10 + int.from_bytes(reply[off + 8 : off + 10])
        if end > len(reply) or (rtype != T_OPT and not rdata_valid(reply, rtype, off + 10, end)):
            return None
        if rtype == T_CNAME and i < counts[0]:
            target = expand_name(reply, off + 10)
            if target is None:
                return None
            aliases.append(target)
        elif rtype == T_OPT:
            if i != total - 1 or i < counts[0] + counts[1]:
                return None  # an OPT record that is not the last additional one
            cut = start
        off = end
    if off != len(reply):
        return None
    extra = counts[2] - (cut < len(reply)) + (q.edns is not None)
    head = _HHHH.pack(0x8180 | (reply[3] & 0x0F), 1, counts[0], counts[1]) + extra.to_bytes(2)
    body = q.name + reply[q.qend - 4 : cut] + _opt_for(q)
    return b"\x00\x00" + head + body, tuple(aliases)


def set_ttls(data: bytes, offsets: list[tuple[int, int]], elapsed: int) -> bytes:
    """`data` with every listed TTL lowered by `elapsed` seconds (not below 0)."""
    buf = bytearray(data)
    for off, ttl in offsets:
        struct.pack_into("!I", buf, off, max(ttl - elapsed, 0))
    return bytes(buf)


def opt_record(size: int = EDNS_SIZE, *, dnssec_ok: bool = False) -> bytes:
    """An EDNS0 OPT record (root owner, no options) offering `size`, with the DO bit if asked."""
    flags = 0x8000 if dnssec_ok else 0  # the TTL field: extended rcode, version, DO|Z
    return b"\x00" + struct.pack("!HHIH", T_OPT, size, flags, 0)


_OPT = opt_record()
_OPT_DO = opt_record(dnssec_ok=True)


# --- dnslib: building prepared answers and reading unusual packets ------------------------


def _label(name: bytes) -> DNSLabel:
    labels = []
    i = 0
    while name[i]:
        labels.append(name[i + 1 : i + 1 + name[i]])
        i += name[i] + 1
    return DNSLabel(labels)


def label_wire(label: DNSLabel) -> bytes:
    """A dnslib label as a lower-cased wire name."""
    return (b"".join(bytes([len(p)]) + p for p in label.label) + b"\x00").translate(_LOWER)


def make_reply(q: Question, rcode: int, *sections: list[Any]) -> bytes:
    """A response template (id 0, question at offset 12) with answer/authority/additional."""
    rr, auth, ar = (list(s) for s in (*sections, [], [], [])[:3])
    rec = DNSRecord(
        DNSHeader(id=0, qr=1, rd=1, ra=1, rcode=rcode),
        q=DNSQuestion(_label(q.name), q.qtype, q.qclass),
        rr=rr,
        auth=auth,
        ar=ar,
    )
    if q.edns is not None:  # the DO bit is echoed (RFC 3225)
        rec.add_ar(EDNS0(udp_len=EDNS_SIZE, flags="do" if q.dnssec_ok else ""))
    return bytes(rec.pack())


def _plain_name(labels: tuple[bytes, ...]) -> bool:
    """Labels of 1 to 63 bytes, 255 bytes in all on the wire."""
    wire_size = sum(len(p) + 1 for p in labels) + 1
    return all(0 < len(p) <= MAX_LABEL for p in labels) and wire_size <= MAX_NAME


class Answers:
    """Prepared answers (blocked names, bypass names, SERVFAIL) and upstream reply rewriting."""

    def __init__(self, section: DnsSection, max_entries: int = 50_000) -> None:
        self.mode = section.block_mode
        self.ttl = section.block_ttl
        self.addrs: dict[int, str] = {}
        if self.mode is BlockMode.NULL:
            self.addrs = {QTYPE.A: "0.0.0.0", QTYPE.AAAA: "::"}
        elif self.mode is BlockMode.BLOCKPAGE:
            given = ((QTYPE.A, section.blockpage_ipv4), (QTYPE.AAAA, section.blockpage_ipv6))
            for qtype, text in given:
                if text:
                    self.addrs[qtype] = str(ipaddress.ip_address(text))
            if not self.addrs:
                raise ValueError("dns.block_mode blockpage needs dns.blockpage_ipv4 or _ipv6")
        self.max_entries = max_entries
        self._prepared: dict[tuple[bytes, int, int, bool, bool, str], bytes] = {}

    def special(self, name: bytes) -> str | None:
        """`nxdomain`/`nodata` for a bypass name, else None."""
        return SPECIAL.get(name)

    def prepared(self, q: Question, kind: str) -> bytes:
        """The template for `kind` (block, nxdomain, nodata) answering `q`, built once."""
        key = (*q.key, kind)
        wire = self._prepared.get(key)
        if wire is None:
            if len(self._prepared) >= self.max_entries:
                self._prepared.clear()
            wire = self._prepared[key] = self._build(q, kind)
        return wire

    def servfail(self, q: Question) -> bytes:
        """SERVFAIL for `q`, built on the wire: an upstream outage makes every query one."""
        head = _HHHH.pack(0, 0x8180 | RCODE_SERVFAIL, 1, 0) + b"\x00\x00\x00" + _arcount(q)
        return head + q.name + _HH.pack(q.qtype, q.qclass) + _opt_for(q)

    def _build(self, q: Question, kind: str) -> bytes:
        label = _label(q.name)
        soa = RR(
            label,
            QTYPE.SOA,
            ttl=self.ttl,
            rdata=SOA(
                "aupguard.invalid.", "hostmaster.aupguard.invalid.", (1, 3600, 600, 86400, self.ttl)
            ),
        )
        if kind == "nxdomain" or (kind == "block" and self.mode is BlockMode.NXDOMAIN):
            return make_reply(q, RCODE_NXDOMAIN, [], [soa])
        answers = []
        if kind == "block":
            for qtype, rdata in ((QTYPE.A, RD_A), (QTYPE.AAAA, RD_AAAA)):
                if q.qtype in (qtype, QTYPE.ANY) and qtype in self.addrs:
                    answers.append(RR(label, qtype, ttl=self.ttl, rdata=rdata(self.addrs[qtype])))
        return make_reply(q, 0, answers, [] if answers else [soa])

    def from_upstream(self, reply: bytes, q: Question) -> tuple[bytes, tuple[bytes, ...]]:
        """(template, CNAME targets) from an upstream reply: ECH stripped; ValueError if bad.

        Read from the wire when it can be (`rewrite_reply`), else rebuilt with dnslib.
        """
        return rewrite_reply(reply, q) or rebuild_reply(reply, q)

    def normalise(self, data: bytes) -> tuple[bytes | None, Question | None]:
        """An unusual packet via dnslib: (clean query, question) or (error reply or None, None)."""
        if len(data) < HEADER or data[2] & 0x80:
            return None, None  # garbage or a response: drop, never answer (reflection loops)
        try:
            rec = DNSRecord.parse(data)
        except (DNSError, ValueError, IndexError, UnicodeError, RecursionError):
            return error_reply(data, RCODE_FORMERR), None
        if rec.header.opcode != 0:
            return error_reply(data, RCODE_NOTIMP), None
        if len(rec.questions) != 1 or not _plain_name(rec.questions[0].qname.label):
            return error_reply(data, RCODE_FORMERR), None
        question = rec.questions[0]
        asked = label_wire(question.qname) + struct.pack("!HH", question.qtype, question.qclass)
        opt = [rr for rr in rec.ar if rr.rtype == T_OPT]
        if opt and (opt[0].ttl >> 16) & 0xFF:  # an EDNS version beyond 0
            return badvers_reply(data, asked), None
        clean = data[:4] + b"\x00\x01\x00\x00\x00\x00" + (b"\x00\x01" if opt else b"\x00\x00")
        clean += asked
        if opt:  # keep the size and the DO bit only
            clean += opt_record(max(opt[0].rclass, 512), dnssec_ok=bool(opt[0].ttl & 0x8000))
        q = parse_query(clean)
        return (clean, q) if q is not None else (error_reply(data, RCODE_FORMERR), None)


def rebuild_reply(reply: bytes, q: Question) -> tuple[bytes, tuple[bytes, ...]]:
    """`Answers.from_upstream` with dnslib: any reply it can parse; ValueError if it cannot.

    The aliases are the CNAME targets and the HTTPS/SVCB TargetNames other than "." (the
    owner itself): a client may connect to a target's address hints without asking for it.
    """
    try:
        rec = DNSRecord.parse(reply)
    except DNSError as e:
        raise ValueError(f"unparsable upstream reply: {e}") from e
    aliases = []
    for rr in rec.rr:
        if rr.rtype == QTYPE.CNAME:
            aliases.append(label_wire(rr.rdata.label))
        elif rr.rtype in (T_SVCB, T_HTTPS):
            buf = DNSBuffer()
            rr.rdata.pack(buf)
            rdata = bytes(buf.data)
            target = read_name(rdata, 2)
            if target is not None and target[0] != b"\x00":
                aliases.append(target[0].translate(_LOWER))
            rr.rdata = RD(strip_ech(rdata))
    extra = [rr for rr in rec.ar if rr.rtype != T_OPT]
    return make_reply(q, rec.header.rcode, rec.rr, rec.auth, extra), tuple(aliases)
