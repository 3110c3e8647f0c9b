"""dns_wire: the fast-path question reader, prepared-answer patching and ECH stripping."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from dnslib import EDNS0, QTYPE, RR, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import dns_wire
from agent.config import BlockMode, DnsSection

HEADER = bytes.fromhex("abcd01000001000000000000")


def query(name: str, qtype: str = "A", *, edns: bool = False, do: bool = False) -> bytes:
    rec = DNSRecord.question(name, qtype)
    if edns or do:
        rec.add_ar(EDNS0(udp_len=4096, flags="do" if do else ""))
    return bytes(rec.pack())


@pytest.mark.parametrize(
    ("packet", "expect"),
    [
        pytest.param(
            query("WWW.Example.com"), (b"\x03www\x07example\x03com\x00", 1, None), id="plain"
        ),
        pytest.param(
            query("example.com", "AAAA", edns=True),
            (b"\x07example\x03com\x00", 28, 4096),
            id="edns",
        ),
        pytest.param(query("."), (b"\x00", 1, None), id="root"),
    ],
)
def test_parse_query_reads_plain_queries(
    packet: bytes, expect: tuple[bytes, int, int | None]
) -> None:
    """Plain queries give the lower-cased wire name, type and EDNS size."""
    q = dns_wire.parse_query(packet)
    assert q is not None
    assert (q.name, q.qtype, q.edns) == expect
    assert q.id == int.from_bytes(packet[:2])


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(b"", id="empty"),
        pytest.param(HEADER[:7], id="short-header"),
        pytest.param(HEADER + b"\xc0\x0c\x00\x01\x00\x01", id="pointer-loop"),
        pytest.param(HEADER + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01", id="label-64"),
        pytest.param(
            HEADER + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01", id="name-over-255"
        ),
        pytest.param(
            bytes.fromhex("abcd01000000000000000000") + b"\x00\x00\x01\x00\x01", id="qdcount-0"
        ),
        pytest.param(
            bytes.fromhex("abcd01000002000000000000") + b"\x00\x00\x01\x00\x01" * 2, id="qdcount-2"
        ),
        pytest.param(
            bytes.fromhex("abcd81000001000000000000") + b"\x00\x00\x01\x00\x01", id="response"
        ),
        pytest.param(query("a.com") + b"x", id="trailing-bytes"),
        pytest.param(query("a.com")[:-1], id="truncated-question"),
    ],
)
def test_parse_query_rejects_unusual_packets(packet: bytes) -> None:
    """Anything but one plain question goes to the slow path (None)."""
    assert dns_wire.parse_query(packet) is None


_edns1 = DNSRecord.question("a.test")
_edns1.add_ar(EDNS0(version=1, udp_len=1232))
EDNS1 = bytes(_edns1.pack())


@pytest.mark.parametrize(
    ("packet", "rcode"),
    [
        pytest.param(
            HEADER + b"\xc0\x0c\x00\x01\x00\x01", dns_wire.RCODE_FORMERR, id="pointer-loop"
        ),
        pytest.param(
            HEADER + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01",
            dns_wire.RCODE_FORMERR,
            id="label-64",
        ),
        pytest.param(
            bytes.fromhex("abcd01000000000000000000"), dns_wire.RCODE_FORMERR, id="qdcount-0"
        ),
        pytest.param(
            bytes.fromhex("abcd29000001000000000000") + b"\x00\x00\x01\x00\x01",
            dns_wire.RCODE_NOTIMP,
            id="update-opcode",
        ),
        pytest.param(EDNS1, dns_wire.RCODE_BADVERS, id="edns-version-1-badvers"),
    ],
)
def test_normalise_answers_bad_queries_with_an_error(packet: bytes, rcode: int) -> None:
    """The slow path answers malformed queries with FORMERR (NOTIMP for other opcodes, BADVERS
    for EDNS versions beyond 0, its upper bits in an OPT record of version 0)."""
    reply, q = dns_wire.Answers(DnsSection()).normalise(packet)
    assert q is None
    assert reply is not None
    assert reply[:2] == packet[:2]
    opts = [rr for rr in DNSRecord.parse(reply).ar if rr.rtype == QTYPE.OPT]
    assert [(rr.ttl >> 16) & 0xFF for rr in opts] == [0] * len(opts)  # version 0
    upper = opts[0].ttl >> 24 if opts else 0
    assert upper << 4 | reply[3] & 0x0F == rcode


def test_normalise_accepts_compressed_question_with_additional_records() -> None:
    """A legal but unusual query (an extra additional record) is cleaned for the fast path."""
    rec = DNSRecord.question("Example.com", "A")
    rec.add_ar(*DNSRecord.question("x.com").reply().rr)  # no records: still a valid layout
    reply, q = dns_wire.Answers(DnsSection()).normalise(bytes(rec.pack()))
    assert q is not None
    assert reply is not None
    assert q.name == b"\x07example\x03com\x00"


def test_drop_responses_and_garbage() -> None:
    """Responses and sub-header garbage are dropped (no reflection)."""
    answers = dns_wire.Answers(DnsSection())
    assert answers.normalise(b"\x00\x01") == (None, None)
    assert answers.normalise(bytes.fromhex("abcd81000001000000000000")) == (None, None)


def test_patch_copies_id_rd_and_question_case() -> None:
    """A prepared answer gets the client's id, RD bit and 0x20 question case."""
    packet = query("WwW.ExAmple.COM")
    q = dns_wire.parse_query(packet)
    assert q is not None
    template = dns_wire.Answers(DnsSection()).prepared(q, "block")
    reply = DNSRecord.parse(dns_wire.patch(template, packet, q))
    assert reply.header.id == q.id
    assert reply.header.rd == 1
    assert str(reply.q.qname) == "WwW.ExAmple.COM."
    assert reply.header.rcode == dns_wire.RCODE_NXDOMAIN


@pytest.mark.parametrize(
    ("mode", "qtype", "expect"),
    [
        pytest.param(BlockMode.NULL, "A", ["0.0.0.0"], id="null-a"),
        pytest.param(BlockMode.NULL, "AAAA", ["::"], id="null-aaaa"),
        pytest.param(BlockMode.NULL, "ANY", ["0.0.0.0", "::"], id="null-any"),
        pytest.param(BlockMode.NULL, "HTTPS", [], id="null-https-nodata"),
        pytest.param(BlockMode.BLOCKPAGE, "A", ["192.0.2.80"], id="blockpage-a"),
        pytest.param(BlockMode.BLOCKPAGE, "AAAA", [], id="blockpage-no-v6"),
    ],
)
def test_block_modes(mode: BlockMode, qtype: str, expect: list[str]) -> None:
    """Null and block-page modes answer addresses for A/AAAA/ANY and NODATA otherwise."""
    section = DnsSection(block_mode=mode, blockpage_ipv4="192.0.2.80")
    q = dns_wire.parse_query(query("x.com", qtype))
    assert q is not None
    reply = DNSRecord.parse(dns_wire.Answers(section).prepared(q, "block"))
    assert [str(rr.rdata) for rr in reply.rr] == expect
    assert all(rr.ttl == section.block_ttl for rr in reply.rr)


def test_blockpage_mode_needs_an_address() -> None:
    """Block-page mode without an address is a configuration error."""
    with pytest.raises(ValueError, match="blockpage"):
        dns_wire.Answers(DnsSection(block_mode=BlockMode.BLOCKPAGE))


def _svcb(params: list[tuple[int, bytes]]) -> bytes:
    return b"\x00\x01\x00" + b"".join(struct.pack("!HH", k, len(v)) + v for k, v in params)


@pytest.mark.parametrize(
    ("rdata", "expect"),
    [
        pytest.param(
            _svcb([(1, b"\x02h2"), (5, b"ECH!"), (4, b"\xc0\x00\x02\x07")]),
            _svcb([(1, b"\x02h2"), (4, b"\xc0\x00\x02\x07")]),
            id="ech-removed",
        ),
        pytest.param(
            _svcb([(0, b"\x00\x01\x00\x05"), (1, b"\x02h2"), (5, b"ECH!")]),
            _svcb([(0, b"\x00\x01"), (1, b"\x02h2")]),
            id="ech-leaves-the-mandatory-list",
        ),
        pytest.param(
            _svcb([(0, b"\x00\x05"), (1, b"\x02h2"), (5, b"ECH!")]),
            _svcb([(1, b"\x02h2")]),
            id="a-mandatory-list-of-ech-alone-goes",
        ),
        pytest.param(
            _svcb([(0, b"\x00\x01"), (1, b"\x02h2")]),
            _svcb([(0, b"\x00\x01"), (1, b"\x02h2")]),
            id="no-ech-mandatory-untouched",
        ),
        pytest.param(_svcb([(1, b"\x02h2")]), _svcb([(1, b"\x02h2")]), id="no-ech"),
        pytest.param(_svcb([(5, b"x")])[:-1], _svcb([(5, b"x")])[:-1], id="malformed-unchanged"),
    ],
)
def test_strip_ech(rdata: bytes, expect: bytes) -> None:
    """Only the ech SvcParam goes, from `mandatory` too; malformed RDATA is left as it is."""
    assert dns_wire.strip_ech(rdata) == expect


V6 = bytes.fromhex("20010db8000000000000000000000001")


@pytest.mark.parametrize(
    ("rdata", "expect"),
    [
        pytest.param(
            _svcb([(1, b"\x02h2"), (4, b"\xc0\x00\x02\x07\xc0\x00\x02\x08"), (6, V6)]),
            ["192.0.2.7", "192.0.2.8", "2001:db8::1"],
            id="v4-and-v6-hints",
        ),
        pytest.param(_svcb([(1, b"\x02h2")]), [], id="no-hints"),
        pytest.param(b"\x00\x00\x05alias\x04test\x00", [], id="alias-mode-has-none"),
        pytest.param(_svcb([(4, b"\xc0\x00\x02")]), [], id="hint-of-odd-length-ignored"),
        pytest.param(_svcb([(4, b"\xc0\x00\x02\x07")])[:-1], [], id="malformed"),
        pytest.param(b"\x00", [], id="too-short"),
    ],
)
def test_address_hints(rdata: bytes, expect: list[str]) -> None:
    """ipv4hint/ipv6hint of ServiceMode RDATA; nothing from AliasMode or malformed RDATA."""
    assert dns_wire.address_hints(rdata) == expect


@pytest.mark.parametrize(
    ("edns", "do", "opt_flags"),
    [
        pytest.param(False, False, None, id="no-edns-no-opt"),
        pytest.param(True, False, 0, id="edns-opt"),
        pytest.param(True, True, 0x8000, id="do-echoed"),
    ],
)
@pytest.mark.parametrize("kind", ["truncated", "refused"])
def test_short_replies_keep_question_and_opt(
    kind: str, *, edns: bool, do: bool, opt_flags: int | None
) -> None:
    """A truncated or REFUSED reply has the question, no records, and an OPT record (DO bit
    echoed) exactly when the query had one."""
    packet = query("big.com", edns=edns, do=do)
    q = dns_wire.parse_query(packet)
    assert q is not None
    if kind == "truncated":
        wire = dns_wire.truncated(dns_wire.make_reply(q, 0, []), q)
    else:
        wire = dns_wire.refused_reply(packet, q)
    reply = DNSRecord.parse(wire)
    assert (reply.header.tc, reply.header.rcode) == ((1, 0) if kind == "truncated" else (0, 5))
    assert str(reply.q.qname) == "big.com."
    assert not reply.rr
    opts = [rr for rr in reply.ar if rr.rtype == QTYPE.OPT]
    assert [rr.ttl & 0xFFFF for rr in opts] == ([] if opt_flags is None else [opt_flags])


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        pytest.param("www.Example.com.", b"\x03www\x07example\x03com\x00", id="fqdn"),
        pytest.param("", b"\x00", id="root"),
    ],
)
def test_to_wire_and_back(text: str, wire: bytes) -> None:
    """Names convert both ways; suffixes stop at label boundaries."""
    assert dns_wire.to_wire(text) == wire
    assert dns_wire.to_text(wire) == text.rstrip(".").lower()


def test_suffixes() -> None:
    """Every listed-suffix candidate of a name, longest first."""
    assert dns_wire.suffixes(b"\x01a\x01b\x01c\x00") == [
        b"\x01a\x01b\x01c\x00",
        b"\x01b\x01c\x00",
        b"\x01c\x00",
    ]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_parsers_never_raise(packet: bytes) -> None:
    """Random bytes never crash the fast or the slow parser (they answer or drop)."""
    q = dns_wire.parse_query(packet)
    if q is not None:
        assert len(q.name) <= dns_wire.MAX_NAME
        assert q.qend <= len(packet)
    reply, cleaned = dns_wire.Answers(DnsSection()).normalise(packet)
    if cleaned is not None:
        assert reply is not None
        assert dns_wire.parse_query(reply) == cleaned
    dns_wire.rr_ttl_offsets(packet, min(len(packet), 12)) if len(packet) >= 12 else None
    dns_wire.strip_ech(packet)
    dns_wire.address_hints(packet)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.text(alphabet="abcXYZ019-_", min_size=1, max_size=20), min_size=1, max_size=6),
    st.sampled_from(["A", "AAAA", "HTTPS", "TXT"]),
)
def test_fuzz_valid_names_round_trip(labels: list[str], qtype: str) -> None:
    """Any valid name dnslib packs is read back identically (lower-cased) by the fast path."""
    name = ".".join(labels)
    q = dns_wire.parse_query(query(name, qtype))
    assert q is not None
    assert q.name == dns_wire.to_wire(name)
    assert q.qtype == getattr(QTYPE, qtype)


@pytest.mark.parametrize(
    ("packet", "dnssec_ok"),
    [
        pytest.param(query("example.com"), False, id="no-edns"),
        pytest.param(query("example.com", edns=True), False, id="edns-without-do"),
        pytest.param(query("example.com", do=True), True, id="do"),
    ],
)
def test_dnssec_ok_is_read_echoed_and_keyed(packet: bytes, *, dnssec_ok: bool) -> None:
    """The DO bit is read, echoed in prepared answers (RFC 3225) and part of the answer key."""
    q = dns_wire.parse_query(packet)
    assert q is not None
    assert q.dnssec_ok is dnssec_ok
    assert q.key[-1] is dnssec_ok
    reply = DNSRecord.parse(dns_wire.Answers(DnsSection()).prepared(q, "block"))
    opts = [rr for rr in reply.ar if rr.rtype == QTYPE.OPT]
    assert bool(opts and opts[0].ttl & 0x8000) is dnssec_ok


def test_normalise_keeps_the_do_bit() -> None:
    """An unusual query rewritten for the fast path still asks for DNSSEC records."""
    rec = DNSRecord.question("Example.com", "A")
    rec.add_ar(*DNSRecord.question("x.com").reply().rr)
    rec.add_ar(EDNS0(udp_len=1232, flags="do"))
    _, q = dns_wire.Answers(DnsSection()).normalise(bytes(rec.pack()))
    assert q is not None
    assert q.dnssec_ok


# --- upstream replies: rewritten on the wire, or rebuilt with dnslib ---------------------


def upstream_reply(
    name: str, qtype: str, zone: list[str], *, rcode: int = 0, auth: int = 0, opt: bool = True
) -> bytes:
    """A reply to `name`/`qtype`; the last `auth` zone lines go to the authority section."""
    rec = DNSRecord.question(name, qtype).reply()
    rec.header.rcode = rcode
    rrs = [rr for line in zone for rr in RR.fromZone(line)]
    rec.add_answer(*rrs[: len(rrs) - auth])
    rec.add_auth(*rrs[len(rrs) - auth :])
    if opt:
        rec.add_ar(EDNS0(udp_len=1232))
    return bytes(rec.pack())


SOA_LINE = "example.com. 300 IN SOA ns.example.com. h.example.com. 1 2 3 4 60"
REPLIES = [
    pytest.param("a.example.com", "A", ["a.example.com. 300 IN A 192.0.2.1"], {}, id="a"),
    pytest.param(
        "www.example.com",
        "A",
        [
            "www.example.com. 60 IN CNAME edge.CDN.example.net.",
            "edge.cdn.example.net. 30 IN CNAME e1.cdn.example.net.",
            "e1.cdn.example.net. 20 IN A 192.0.2.9",
        ],
        {},
        id="cname-chain",
    ),
    pytest.param("nx.example.com", "A", [SOA_LINE], {"rcode": 3, "auth": 1}, id="nxdomain"),
    pytest.param("a.example.com", "AAAA", [SOA_LINE], {"auth": 1}, id="nodata"),
    pytest.param(
        "example.com",
        "MX",
        ["example.com. 300 IN MX 10 mx1.example.com.", "example.com. 300 IN MX 20 mx2.example."],
        {"opt": False},
        id="mx-no-opt",
    ),
    pytest.param("example.com", "TXT", ['example.com. 300 IN TXT "v=spf1 -all"'], {}, id="txt"),
]


@pytest.mark.parametrize(("name", "qtype", "zone", "kw"), REPLIES)
@pytest.mark.parametrize(
    ("edns", "do"), [(False, False), (True, False), (True, True)], ids=["plain", "edns", "do"]
)
def test_rewrite_reply_is_what_dnslib_rebuilds(
    name: str, qtype: str, zone: list[str], kw: dict[str, Any], *, edns: bool, do: bool
) -> None:
    """The wire rewrite gives the same answer and CNAME targets as the dnslib rebuild."""
    q = dns_wire.parse_query(query(name.upper(), qtype, edns=edns, do=do))
    assert q is not None
    reply = upstream_reply(name, qtype, zone, **kw)
    fast = dns_wire.rewrite_reply(reply, q)
    assert fast is not None
    slow = dns_wire.rebuild_reply(reply, q)
    assert str(DNSRecord.parse(fast[0])) == str(DNSRecord.parse(slow[0]))
    assert fast[1] == slow[1]
    assert fast[0][12 : q.qend] == q.name + fast[0][q.qend - 4 : q.qend]  # our lower-case question


def _set_opt_first(reply: bytes) -> bytes:
    rec = DNSRecord.parse(reply)
    rec.ar = [*rec.ar, *RR.fromZone("ns.example.com. 60 IN A 192.0.2.2")]  # after the OPT
    return bytes(rec.pack())


A_REPLY = upstream_reply("a.example.com", "A", ["a.example.com. 300 IN A 192.0.2.1"])


@pytest.mark.parametrize(
    ("qtype", "reply"),
    [
        pytest.param(
            "HTTPS",
            upstream_reply("a.example.com", "HTTPS", ["a.example.com. 60 IN HTTPS 1 . alpn=h2"]),
            id="https-ech-to-strip",
        ),
        pytest.param("A", _set_opt_first(upstream_reply("a.example.com", "A", [])), id="opt-first"),
        pytest.param("A", A_REPLY + b"\0", id="trailing-byte"),
        pytest.param("A", A_REPLY[:-12], id="truncated-record"),
    ],
)
def test_rewrite_reply_leaves_the_unusual_to_dnslib(qtype: str, reply: bytes) -> None:
    """SVCB/HTTPS, an OPT record that is not last and malformed replies are not rewritten."""
    q = dns_wire.parse_query(query("a.example.com", qtype))
    assert q is not None
    assert dns_wire.rewrite_reply(reply, q) is None


@pytest.mark.parametrize(
    ("body", "off", "expect"),
    [
        pytest.param(b"\x01A\x02Bc\x00", 0, b"\x01a\x02bc\x00", id="plain-lowered"),
        pytest.param(b"\x01a\x00\x01b\xc0\x0c", 3, b"\x01b\x01a\x00", id="pointer-back"),
        pytest.param(b"\xc0\x0e\x01a\x00", 0, None, id="pointer-forward"),
        pytest.param(b"\x01a\xc0\x0e", 2, None, id="pointer-to-itself"),
        pytest.param(b"\x01a\xc0\x02", 2, None, id="pointer-into-the-header"),
        pytest.param(b"\x01a", 0, None, id="unterminated"),
        pytest.param(b"\x40" + b"a" * 64 + b"\x00", 0, None, id="label-over-63"),
    ],
)
def test_expand_name(body: bytes, off: int, expect: bytes | None) -> None:
    """Names are expanded through backward pointers past the header only, so every one ends."""
    assert dns_wire.expand_name(bytes(12) + body, 12 + off) == expect


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_rewrite_reply_never_raises(tail: bytes) -> None:
    """Random counts and records after a matching question: rewritten or left, never a crash."""
    asked = query("a.example.com")
    q = dns_wire.parse_query(asked)
    assert q is not None
    reply = b"\0\0\x81\x80\0\x01" + tail[:6].ljust(6, b"\0") + asked[12 : q.qend] + tail[6:]
    out = dns_wire.rewrite_reply(reply, q)
    if out is not None:
        assert out[0][12 : q.qend] == asked[12 : q.qend]


@pytest.mark.parametrize(
    ("edns", "do"), [(False, False), (True, False), (True, True)], ids=["plain", "edns", "do"]
)
def test_servfail_on_the_wire_is_what_dnslib_builds(*, edns: bool, do: bool) -> None:
    """The SERVFAIL template equals dnslib's: flags, question and the OPT record with DO."""
    q = dns_wire.parse_query(query("A.example.com", "AAAA", edns=edns, do=do))
    assert q is not None
    built = dns_wire.Answers(DnsSection()).servfail(q)
    assert built == dns_wire.make_reply(q, dns_wire.RCODE_SERVFAIL)


ASKED = query("a.example.com")
QEND = len(ASKED)  # no OPT: the question ends the query
_ANSWER_A = struct.pack("!HHIH", 1, 1, 300, 4) + bytes([192, 0, 2, 1])


def raw_reply(answers: list[bytes], additional: list[bytes] = ()) -> bytes:  # type: ignore[assignment]
    """A reply to ASKED with hand-made records (each: owner name + fixed part + RDATA)."""
    counts = struct.pack("!HHHH", 1, len(answers), 0, len(additional))
    return ASKED[:2] + b"\x81\x80" + counts + ASKED[12:QEND] + b"".join([*answers, *additional])


def _rr(owner: bytes, rtype: int, rdata: bytes) -> bytes:
    return owner + struct.pack("!HHIH", rtype, 1, 300, len(rdata)) + rdata


MALFORMED = [
    pytest.param(
        raw_reply(
            [struct.pack("!H", 0xC000 | (QEND + 16)) + _ANSWER_A],
            [ASKED[12 : QEND - 4] + _ANSWER_A],
        ),
        id="owner-points-forward",
    ),
    pytest.param(raw_reply([b"\xc0\x02" + _ANSWER_A]), id="owner-points-into-the-header"),
    pytest.param(raw_reply([b"\xc0\xff" + _ANSWER_A]), id="owner-points-past-the-end"),
    pytest.param(raw_reply([_rr(b"\xc0\x0c", 1, bytes(5))]), id="a-with-5-bytes"),
    pytest.param(raw_reply([_rr(b"\xc0\x0c", 28, bytes(4))]), id="aaaa-with-4-bytes"),
    pytest.param(raw_reply([_rr(b"\xc0\x0c", 15, b"\x00\x0a\xc0\xf0")]), id="mx-points-forward"),
    pytest.param(raw_reply([_rr(b"\xc0\x0c", 5, b"\x03www")]), id="cname-unterminated"),
    pytest.param(
        raw_reply([_rr(b"\xc0\x0c", 6, b"\x45bad\x00\x00" + bytes(20))]), id="soa-label-over-63"
    ),
    pytest.param(raw_reply([_rr(b"\xc0\x0c", 16, b"\x05abc")]), id="txt-string-overruns"),
]


@pytest.mark.parametrize("reply", MALFORMED)
def test_malformed_replies_are_never_passed_on(reply: bytes) -> None:
    """A reply the wire rewrite cannot vouch for goes to dnslib, which refuses it or rebuilds it
    into a message that parses: a client never gets, nor the cache keeps, unreadable bytes."""
    q = dns_wire.parse_query(ASKED)
    assert q is not None
    assert dns_wire.rewrite_reply(reply, q) is None
    try:
        template, _ = dns_wire.Answers(DnsSection()).from_upstream(reply, q)
    except ValueError:
        return
    DNSRecord.parse(template)


@pytest.mark.parametrize(
    "rdata",
    [
        pytest.param((15, b"\x00\x0a\xc0\x0c"), id="mx"),
        pytest.param((33, b"\x00\x01\x00\x02\x01\xbb\x03srv\xc0\x0c"), id="srv"),
        pytest.param((16, b"\x03abc\x00\x02de"), id="txt-strings"),
        pytest.param((6, b"\x02ns\xc0\x0c\x02hm\xc0\x0c" + bytes(20)), id="soa"),
        pytest.param((12, b"\x03ptr\x00"), id="ptr"),
    ],
)
def test_well_formed_rdata_is_rewritten(rdata: tuple[int, bytes]) -> None:
    """The types read on the wire pass when well formed (no needless trip through dnslib)."""
    q = dns_wire.parse_query(ASKED)
    assert q is not None
    assert dns_wire.rewrite_reply(raw_reply([_rr(b"\xc0\x0c", *rdata)]), q) is not None
