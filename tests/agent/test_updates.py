"""`aupguard lists update` against a local HTTPS server: conditional GET, pins, archives, checks."""

from __future__ import annotations

import argparse
import hashlib
import http.server
import io
import ipaddress
import ssl
import tarfile
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from agent import updates
from agent.config import load_config
from tests import pki

# --- a local HTTPS (and HTTP) server --------------------------------------------------------


class Site:
    """Paths -> bodies; answers If-None-Match with 304 and remembers request headers."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[dict[str, str]] = []

    def handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.requests.append(dict(self.headers))
                body = site.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
                if self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("ETag", etag)
                self.send_header("Last-Modified", "Mon, 23 Nov 2026 10:00:00 GMT")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        return Handler


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, str, str, Path]]:
    """(site, https base URL, http base URL, CA file) on 127.0.0.1 ports chosen by the kernel."""
    site = Site()
    ca, cert, key = pki.ca_and_server(
        tmp_path_factory.mktemp("tls"),
        "127.0.0.1",
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    https = http.server.ThreadingHTTPServer(("127.0.0.1", 0), site.handler())
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    https.socket = ctx.wrap_socket(https.socket, server_side=True)
    plain = http.server.ThreadingHTTPServer(("127.0.0.1", 0), site.handler())
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (https, plain)]
    for t in threads:
        t.start()
    yield (
        site,
        f"https://127.0.0.1:{https.server_address[1]}",
        f"http://127.0.0.1:{plain.server_address[1]}",
        ca,
    )
    for s in (https, plain):
        s.shutdown()
        s.server_close()


# --- helpers ------------------------------------------------------------------------------


def domains(n: int, prefix: str = "site") -> bytes:
    return "".join(f"{prefix}{i}.example\n" for i in range(n)).encode()


def archive(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def config_with(tmp_path: Path, sources: str) -> Path:
    (tmp_path / "seed.txt").write_text("seed.example\n")
    path = tmp_path / "policy.yaml"
    path.write_text(
        textwrap.dedent("""\
        layer: test
        policy:
          timezone: America/New_York
          never_block: [office365.com, agency.example]
          categories:
            jobsearch: {clause: "No job search.", lists: [seed.txt]}
          rules:
            - {id: r, categories: [jobsearch], action: block}
        records:
          notice: {text: "We monitor."}
        lists:
          dir: lists
          sources:
        """)
        + textwrap.indent(textwrap.dedent(sources), "    ")
    )
    return path


def run(tmp_path: Path, ca: Path, sources: str) -> list[updates.Outcome]:
    config = load_config(config_with(tmp_path, sources))
    return updates.update_lists(config, ssl.create_default_context(cafile=str(ca)))


# --- tests --------------------------------------------------------------------------------


def test_etag_gives_304_and_keeps_the_release(tmp_path: Path, servers) -> None:
    """A second update sends If-None-Match, gets 304 and leaves `current` as it was."""
    site, https, _, ca = servers
    site.files["/jobs.txt"] = domains(10)
    src = f"- {{url: '{https}/jobs.txt', category: jobsearch, format: domains}}"
    assert [o.result for o in run(tmp_path, ca, src)] == ["updated"]
    current = (tmp_path / "lists/current").resolve()
    assert (current / "jobsearch.txt").read_bytes() == domains(10)
    assert [o.result for o in run(tmp_path, ca, src)] == ["unchanged"]
    assert site.requests[-1].get("If-None-Match", "").startswith('"')
    assert "If-Modified-Since" in site.requests[-1]
    assert (tmp_path / "lists/current").resolve() == current


@pytest.mark.parametrize(
    ("pin", "result", "why"),
    [
        pytest.param(None, "refused", "needs a `sha256` pin", id="http-unpinned"),
        pytest.param("0" * 64, "refused", "does not match", id="http-wrong-pin"),
        pytest.param("good", "updated", "", id="http-pinned"),
    ],
)
def test_plain_http_needs_a_matching_pin(
    tmp_path: Path, servers, pin: str | None, result: str, why: str
) -> None:
    """Plain HTTP is accepted only with a sha256 pin that matches the body."""
    site, _, http_base, ca = servers
    site.files["/plain.txt"] = domains(5)
    digest = hashlib.sha256(domains(5)).hexdigest() if pin == "good" else pin
    pin_yaml = f", sha256: '{digest}'" if digest else ""
    out = run(tmp_path, ca, f"- {{url: '{http_base}/plain.txt', category: jobsearch{pin_yaml}}}")
    assert out[0].result == result
    assert why in out[0].detail


@pytest.mark.parametrize(
    ("second", "why"),
    [
        pytest.param(domains(60_740, "spam"), "grew from 428 to 60740", id="ut1-jobsearch-growth"),
        pytest.param(domains(100), "shrank from 428 to 100", id="shrink"),
        pytest.param(
            domains(428) + b"office365.com\n", "never-block office365.com", id="never-block"
        ),
        pytest.param(
            domains(428) + b"login.agency.example\n",
            "never-block agency.example",
            id="below-never-block",
        ),
        pytest.param(domains(428) + b"irs.gov\n", "never-block gov", id="dot-gov"),
        pytest.param(
            b"".join(b"bad..name %d\n" % i for i in range(500)), "bad lines", id="unparseable"
        ),
    ],
)
def test_refused_update_keeps_last_good(tmp_path: Path, servers, second: bytes, why: str) -> None:
    """A refused list leaves the previous copy in force and says why."""
    site, https, _, ca = servers
    path = f"/{hashlib.sha256(why.encode()).hexdigest()[:8]}.txt"
    src = f"- {{url: '{https}{path}', category: jobsearch}}"
    site.files[path] = domains(428)
    assert run(tmp_path, ca, src)[0].result == "updated"
    site.files[path] = second
    out = run(tmp_path, ca, src)
    assert out[0].result == "refused"
    assert why in out[0].detail
    assert (tmp_path / "lists/current/jobsearch.txt").read_bytes() == domains(428)


@pytest.mark.parametrize(
    ("members", "result", "why"),
    [
        pytest.param(
            {
                "blacklists/jobsearch/domains": domains(3),
                "blacklists/jobsearch/urls": b"indeed.com/jobs\n",
                "blacklists/adult/domains": domains(9),
            },
            "updated",
            "4 entries",
            id="ut1-category",
        ),
        pytest.param(
            {"blacklists/jobsearch/domains": domains(3), "../evil": b"x"},
            "refused",
            "escapes",
            id="dotdot",
        ),
        pytest.param(
            {"/etc/passwd": b"x", "blacklists/jobsearch/domains": domains(3)},
            "refused",
            "escapes",
            id="absolute",
        ),
        pytest.param(
            {"blacklists/adult/domains": domains(3)},
            "refused",
            "no jobsearch/domains",
            id="missing",
        ),
    ],
)
def test_ut1_archive_is_unpacked_safely(
    tmp_path: Path, servers, members: dict[str, bytes], result: str, why: str
) -> None:
    """Only the category's files are taken; `..` or absolute members refuse the archive."""
    site, https, _, ca = servers
    path = f"/{hashlib.sha256(repr(members).encode()).hexdigest()[:8]}.tar.gz"
    site.files[path] = archive(members)
    out = run(tmp_path, ca, f"- {{url: '{https}{path}', category: jobsearch, format: ut1}}")
    assert (out[0].result, why in out[0].detail) == (result, True), out[0].detail
    assert not (tmp_path / "evil").exists()
    if result == "updated":
        assert sorted(p.name for p in (tmp_path / "lists/current/ut1/jobsearch").iterdir()) == [
            "domains",
            "urls",
        ]


def test_member_count_cap(tmp_path: Path, servers) -> None:
    """An archive with more members than lists.max_archive_members is refused."""
    site, https, _, ca = servers
    site.files["/many.tar.gz"] = archive({f"x/{i}": b"" for i in range(30)})
    path = config_with(
        tmp_path, f"- {{url: '{https}/many.tar.gz', category: jobsearch, format: ut1}}"
    )
    path.write_text(
        path.read_text().replace("  dir: lists\n", "  dir: lists\n  max_archive_members: 10\n")
    )
    out = updates.update_lists(load_config(path), ssl.create_default_context(cafile=str(ca)))
    assert out[0].result == "refused"
    assert "more than 10 members" in out[0].detail


def test_cli_exit_codes(tmp_path: Path, servers, capsys: pytest.CaptureFixture[str]) -> None:
    """`lists update` exits 0 when all sources are fine and 1 when one is refused."""
    site, https, _, ca = servers
    site.files["/ok.txt"] = domains(3)
    good = f"- {{url: '{https}/ok.txt', category: jobsearch}}"
    args = argparse.Namespace(action="update", config=config_with(tmp_path, good), ca_file=ca)
    assert updates.cmd_lists_update(args) == 0
    assert "updated" in capsys.readouterr().out
    args.config = config_with(
        tmp_path, good + f"\n- {{url: '{https}/missing.txt', category: jobsearch}}"
    )
    assert updates.cmd_lists_update(args) == 1
    assert "HTTP 404" in capsys.readouterr().out
