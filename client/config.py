"""Where a client finds the forwarder, its token and how to trust it.

In order: arguments to `Client(url=..., token=..., ca_file=...)`; the environment (`TASKFABRIC_URL`,
`TASKFABRIC_TOKEN`, `TASKFABRIC_CA_FILE`); the file written by `taskfabric login` or
`taskfabric dev up` (`$TASKFABRIC_HOME/client.json`, mode 0600). A saved `ca_file` applies only to
the saved URL(s). Plain http:// to a host that is not loopback is refused unless
`allow_insecure=True` or `TASKFABRIC_ALLOW_INSECURE=1` (`ClientConfig.check_secure`).

Several forwarder replicas: `url` may be a list (`Client(url=[a, b])`) or a comma-separated string
(`TASKFABRIC_URL=https://a,https://b`, `taskfabric login --url https://a,https://b`); the client
uses the first and fails over to the next on connection errors (client/http.py, client/stream.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import ssl
from collections.abc import Sequence
from pathlib import Path

from taskfabric.errors import ConfigError
from taskfabric.paths import taskfabric_home
from taskfabric.private_files import write_private
from taskfabric.tls import INSECURE_ENV, client_ssl_context, require_secure_url

__all__ = ["ClientConfig", "client_config_path", "parse_urls"]

URL_ENV = "TASKFABRIC_URL"
TOKEN_ENV = "TASKFABRIC_TOKEN"
CA_FILE_ENV = "TASKFABRIC_CA_FILE"


def client_config_path() -> Path:
    return taskfabric_home() / "client.json"


def parse_urls(url: str | Sequence[str], *, source: str = "url") -> tuple[str, ...]:
    """Forwarder URLs from a list or a comma-separated string, without trailing slashes; a
    `ConfigError` names an empty or non-http(s) entry."""
    entries = url.split(",") if isinstance(url, str) else list(url)
    urls: list[str] = []
    for entry in entries:
        if not isinstance(entry, str) or not entry.strip():
            raise ConfigError(f"an empty forwarder URL in {url!r}", source=source)
        cleaned = entry.strip().rstrip("/")
        if not cleaned.startswith(("http://", "https://")):
            raise ConfigError(f"a forwarder URL must start with http:// or https://, got {cleaned!r}", source=source)
        if cleaned not in urls:
            urls.append(cleaned)
    if not urls:
        raise ConfigError("no forwarder URL given", source=source)
    return tuple(urls)


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    """The forwarder's URL (`url`: the first of `urls`, the replicas to fail over between), the
    bearer token to use, and the CA that signed the forwarder's certificate (None: the system's
    trust store)."""

    url: str
    token: str
    ca_file: str | None = None
    #: every forwarder URL, `url` first (empty: just `url`)
    urls: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.urls:
            object.__setattr__(self, "urls", (self.url,))

    @classmethod
    def resolve(
        cls, url: str | Sequence[str] | None = None, token: str | None = None, *, ca_file: str | None = None
    ) -> ClientConfig:
        """Arguments, then environment, then the saved file; a `ConfigError` says what is missing."""
        saved = cls._saved()
        if url:
            urls: tuple[str, ...] | None = parse_urls(url)
        elif os.environ.get(URL_ENV):
            urls = parse_urls(os.environ[URL_ENV], source=URL_ENV)
        else:
            urls = saved.urls if saved else None
        token = token or os.environ.get(TOKEN_ENV) or (saved.token if saved else None)
        saved_ca = saved.ca_file if saved and urls and saved.urls == urls else None
        ca_file = ca_file or os.environ.get(CA_FILE_ENV) or saved_ca
        if not urls:
            raise ConfigError(
                f"no forwarder URL: pass Client(url=...), set {URL_ENV}, or run `taskfabric login` "
                "(or `taskfabric dev up` for a local fabric)"
            )
        if not token:
            raise ConfigError(f"no token: pass Client(token=...), set {TOKEN_ENV}, or run `taskfabric login`")
        return cls(url=urls[0], token=token, ca_file=ca_file, urls=urls)

    def check_secure(self, *, allow_insecure: bool | None = None) -> None:
        """Refuse (`ConfigError`, before any network I/O) plain http:// to a host that is not
        loopback, unless `allow_insecure` (default: `TASKFABRIC_ALLOW_INSECURE=1`)."""
        if allow_insecure is None:
            allow_insecure = os.environ.get(INSECURE_ENV, "").strip().lower() in ("1", "true", "yes")
        for url in self.urls:
            require_secure_url(url, allow_insecure=allow_insecure)

    def ssl_context(self) -> ssl.SSLContext:
        """Verifies the forwarder's certificate: against `ca_file` when set (a missing or bad file is
        a `ConfigError` naming it), else the system's trust store."""
        return client_ssl_context(self.ca_file, key="ca_file")

    @classmethod
    def _saved(cls) -> ClientConfig | None:
        path = client_config_path()
        try:
            data = json.loads(path.read_text())
            ca_file = data.get("ca_file")
            urls = parse_urls(data.get("urls") or data["url"], source=str(path))
            return cls(url=urls[0], token=str(data["token"]), ca_file=str(ca_file) if ca_file else None, urls=urls)
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, ConfigError) as exc:
            raise ConfigError(
                f"not a valid client config ({exc}); run `taskfabric login` again", source=str(path)
            ) from None

    def save(self) -> Path:
        """Write the file `taskfabric login` writes (readable by this user only: 0600, also when
        an older file had looser permissions, in a 0700 folder when the folder is made here)."""
        path = client_config_path()
        document = {"url": self.url, "urls": list(self.urls), "token": self.token, "ca_file": self.ca_file}
        write_private(path, json.dumps(document, indent=2))
        return path
