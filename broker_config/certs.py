"""A private certificate authority and the server certificates it signs (PEM files).

Used by `taskfabric broker up --tls` for the private node's TLS listener, and by tests for the
forwarder's HTTPS. Not a PKI: one CA key on disk (mode 0600), certificates for named hosts::

    ca = make_ca(Path("/tmp/tls"))
    server = make_server_certificate(ca, Path("/tmp/tls"), hostnames=["localhost", "127.0.0.1"])
    server.cert_file, server.key_file, ca.cert_file
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertificateFiles", "certificate_serial", "make_ca", "make_client_certificate", "make_server_certificate"]

_DEFAULT_VALID_DAYS = 825
_CLOCK_SKEW = datetime.timedelta(minutes=5)


@dataclasses.dataclass(frozen=True, slots=True)
class CertificateFiles:
    """A certificate and its private key, as PEM files."""

    cert_file: Path
    key_file: Path


def make_ca(directory: Path, *, name: str = "taskfabric private CA", valid_days: int = 3650) -> CertificateFiles:
    """A self-signed CA certificate `ca.pem` and its key `ca.key` in `directory`."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _write(directory, "ca", certificate, key)


def make_server_certificate(
    ca: CertificateFiles,
    directory: Path,
    *,
    hostnames: Sequence[str],
    stem: str = "server",
    valid_days: int = _DEFAULT_VALID_DAYS,
) -> CertificateFiles:
    """A server certificate for `hostnames` (DNS names or IP addresses) signed by `ca`, written
    as `<stem>.pem` and `<stem>.key` in `directory` (replacing files of those names)."""
    if not hostnames:
        raise ValueError("a server certificate needs at least one host name")
    names = x509.SubjectAlternativeName([_general_name(host) for host in hostnames])
    return _issue(ca, directory, stem, hostnames[0], ExtendedKeyUsageOID.SERVER_AUTH, valid_days, names)


def make_client_certificate(
    ca: CertificateFiles, directory: Path, *, name: str, stem: str = "client", valid_days: int = _DEFAULT_VALID_DAYS
) -> CertificateFiles:
    """A client certificate for `name` signed by `ca` (for a forwarder with `tls.client_ca_file`),
    written as `<stem>.pem` and `<stem>.key` in `directory`."""
    return _issue(ca, directory, stem, name, ExtendedKeyUsageOID.CLIENT_AUTH, valid_days, None)


def _issue(
    ca: CertificateFiles,
    directory: Path,
    stem: str,
    common_name: str,
    usage: x509.ObjectIdentifier,
    valid_days: int,
    names: x509.SubjectAlternativeName | None,
) -> CertificateFiles:
    ca_cert = x509.load_pem_x509_certificate(ca.cert_file.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.key_file.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca.key_file} is not a key made by make_ca")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if names is not None:
        builder = builder.add_extension(names, critical=False)
    return _write(directory, stem, builder.sign(ca_key, hashes.SHA256()), key)


def certificate_serial(pem_or_der: bytes) -> int:
    """The serial number of a certificate given as PEM or DER bytes."""
    if pem_or_der.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(pem_or_der).serial_number
    return x509.load_der_x509_certificate(pem_or_der).serial_number


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write(
    directory: Path, stem: str, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> CertificateFiles:
    directory.mkdir(parents=True, exist_ok=True)
    files = CertificateFiles(cert_file=directory / f"{stem}.pem", key_file=directory / f"{stem}.key")
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # write-then-rename: a server reloading on SIGHUP never reads half a file
    _replace(files.key_file, key_pem, mode=0o600)
    _replace(files.cert_file, certificate.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return files


def _replace(path: Path, data: bytes, *, mode: int) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)
