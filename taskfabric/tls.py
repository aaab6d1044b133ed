"""TLS for every link that leaves loopback: SSL contexts, and the rule that refuses plaintext.

Clients (the researcher's HTTP and results stream, the agent's and the forwarder's broker links)
verify the peer's certificate against the system's trust store, or against a private CA when a
`ca_file` (or its PEM text) is given. Servers (the forwarder) load a certificate chain and key,
and can load them again (`reload_certificate`) without dropping the context their listener uses.
Plaintext is refused to any host that is not loopback unless explicitly allowed
(`require_secure_url`). Certificates are made by `taskfabric.broker_config.certs`.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import urllib.parse
from pathlib import Path

from taskfabric.errors import ConfigError

__all__ = [
    "INSECURE_ENV",
    "client_ssl_context",
    "is_loopback_host",
    "reload_certificate",
    "require_secure_url",
    "server_ssl_context",
]

log = logging.getLogger(__name__)

#: set to 1 to let a client use http:// or ws:// to a host that is not loopback
INSECURE_ENV = "TASKFABRIC_ALLOW_INSECURE"
_PLAINTEXT_SCHEMES = ("http", "ws", "amqp")


def is_loopback_host(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1); false for anything else,
    including the wildcard addresses 0.0.0.0 and :: (they listen on every interface)."""
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def require_secure_url(url: str, *, allow_insecure: bool, what: str = "the forwarder") -> None:
    """Raise `ConfigError` if `url` is plaintext (http://, ws://) to a host that is not loopback
    and `allow_insecure` is false. Looks only at the URL: no network I/O."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in _PLAINTEXT_SCHEMES or allow_insecure:
        return
    host = parts.hostname or ""
    if is_loopback_host(host):
        return
    secure = {"http": "https", "ws": "wss", "amqp": "amqps"}[parts.scheme]
    raise ConfigError(
        f"refusing to talk to {what} at {url} over plaintext {parts.scheme}://: {host!r} is not a loopback "
        f"address, so tokens and task data would cross the network unencrypted. Use {secure}:// "
        f"(with a private CA: pass ca_file= or set TASKFABRIC_CA_FILE), or, on a network you trust, pass "
        f"allow_insecure=True or set {INSECURE_ENV}=1"
    )


def client_ssl_context(
    ca_file: str | Path | None = None, *, ca_pem: str | None = None, key: str = "ca_file"
) -> ssl.SSLContext:
    """A client context that verifies the server's certificate and host name: against `ca_file`
    (a PEM file) or `ca_pem` (PEM text) when given, else the system's trust store. A file that is
    missing or holds no certificate raises `ConfigError` naming `key`."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ca_file is None and ca_pem is None:
        return context
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies peers and host names
    try:
        if ca_file is not None:
            context.load_verify_locations(cafile=str(ca_file))
        if ca_pem is not None:
            context.load_verify_locations(cadata=ca_pem)
    except FileNotFoundError:
        raise ConfigError(f"the CA file {ca_file} does not exist", key=key) from None
    except (ssl.SSLError, ValueError, OSError) as exc:
        raise ConfigError(f"not a PEM CA certificate ({exc})", key=key) from None
    return context


def server_ssl_context(
    cert_file: Path, key_file: Path, *, client_ca_file: Path | None = None, key_prefix: str = "tls."
) -> ssl.SSLContext:
    """A server context with the certificate chain `cert_file` and its private key `key_file`;
    with `client_ca_file`, clients must present a certificate signed by that CA. A file that is
    missing or does not load raises `ConfigError` naming the key (`tls.cert_file`, ...)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, cert_file, key_file, key_prefix=key_prefix)
    if client_ca_file is not None:
        _require_file(client_ca_file, f"{key_prefix}client_ca_file")
        try:
            context.load_verify_locations(cafile=str(client_ca_file))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"not a PEM CA certificate ({exc})", key=f"{key_prefix}client_ca_file") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def reload_certificate(context: ssl.SSLContext, cert_file: Path, key_file: Path) -> None:
    """Load `cert_file` and `key_file` again into the live `context` (new connections get the new
    certificate). They are first loaded into a scratch context, so a bad pair raises `ConfigError`
    and leaves the live context serving the old certificate."""
    _load_chain(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert_file, key_file, key_prefix="tls.")
    context.load_cert_chain(str(cert_file), str(key_file))


def _load_chain(context: ssl.SSLContext, cert_file: Path, key_file: Path, *, key_prefix: str) -> None:
    _require_pem(cert_file, "CERTIFICATE-----", "a PEM certificate", f"{key_prefix}cert_file")
    _require_pem(key_file, "PRIVATE KEY-----", "a PEM private key", f"{key_prefix}key_file")
    try:
        context.load_cert_chain(str(cert_file), str(key_file))
    except ssl.SSLError as exc:
        # both files hold PEM of the right kind: what is left is a key that is not the certificate's
        raise ConfigError(
            f"{key_file} does not load as the private key of {cert_file} ({exc.reason or exc})",
            key=f"{key_prefix}key_file",
        ) from None


def _require_pem(path: Path, marker: str, what: str, key: str) -> None:
    _require_file(path, key)
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", key=key) from None
    if marker not in text:
        raise ConfigError(f"{path} is not {what}", key=key)


def _require_file(path: Path, key: str) -> None:
    if not Path(path).is_file():
        raise ConfigError(f"{path} does not exist (or is not a file)", key=key)
