"""Test PKI: CAs and the certificates they sign (EC P-256), as PEM bytes or files."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Key = ec.EllipticCurvePrivateKey


def new_key() -> Key:
    return ec.generate_private_key(ec.SECP256R1())


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def cert(
    subject: str,
    key: Key,
    issuer: x509.Name,
    issuer_key: Key,
    *,
    ca: bool,
    sans: Iterable[x509.GeneralName] = (),
) -> x509.Certificate:
    """A CA (`ca=True`) or a server certificate for `sans`, signed by `issuer_key`."""
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=2))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if ca:
        usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
        b = b.add_extension(usage, critical=True).add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    else:
        b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        b = b.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    return b.sign(issuer_key, hashes.SHA256())


def self_signed_ca(cn: str) -> tuple[x509.Certificate, Key]:
    key = new_key()
    return cert(cn, key, name(cn), key, ca=True), key


def pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def key_pem(key: Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_key(path: Path, key: Key) -> Path:
    path.write_bytes(key_pem(key))
    path.chmod(0o600)
    return path


def ca_and_server(
    d: Path, subject: str, sans: Iterable[x509.GeneralName]
) -> tuple[Path, Path, Path]:
    """A new test CA and a server certificate it signs: (ca.pem, cert.pem, key.pem) in `d`."""
    ca, ca_key = self_signed_ca("aupguard test CA")
    key = new_key()
    leaf = cert(subject, key, ca.subject, ca_key, ca=False, sans=sans)
    (d / "ca.pem").write_bytes(pem(ca))
    (d / "cert.pem").write_bytes(pem(leaf))
    (d / "key.pem").write_bytes(key_pem(key))
    return d / "ca.pem", d / "cert.pem", d / "key.pem"
