"""Where a client finds the forwarder, its token and how to trust it.

In order: arguments to `Client(url=..., token=..., ca_file=...)`; the environment (`TASKFABRIC_URL`,
`TASKFABRIC_TOKEN`, `TASKFABRIC_CA_FILE`); the file written by `taskfabric login` or
`taskfabric dev up` (`$TASKFABRIC_HOME/client.json`, mode 0600). A saved `ca_file` applies only to
the saved URL. Plain http:// to a host that is not loopback is refused unless
`allow_insecure=True` or `TASKFABRIC_ALLOW_INSECURE=1` (`ClientConfig.check_secure`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import ssl
from pathlib import Path

from taskfabric.errors import ConfigError
from taskfabric.paths import taskfabric_home
from taskfabric.private_files import write_private
from taskfabric.tls import INSECURE_ENV, client_ssl_context, require_secure_url

__all__ = ["ClientConfig", "client_config_path"]

URL_ENV = "TASKFABRIC_URL"
TOKEN_ENV = "TASKFABRIC_TOKEN"
CA_FILE_ENV = "TASKFABRIC_CA_FILE"


def client_config_path() -> Path:
    return taskfabric_home() / "client.json"


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    """The forwarder's URL, the bearer token to use, and the CA that signed the forwarder's
    certificate (None: the system's trust store)."""

    url: str
    token: str
    ca_file: str | None = None

    @classmethod
    def resolve(cls, url: str | None = None, token: str | None = None, *, ca_file: str | None = None) -> ClientConfig:
        """Arguments, then environment, then the saved file; a `ConfigError` says what is missing."""
        saved = cls._saved()
        url = url or os.environ.get(URL_ENV) or (saved.url if saved else None)
        token = token or os.environ.get(TOKEN_ENV) or (saved.token if saved else None)
        saved_ca = saved.ca_file if saved and url and saved.url == url.rstrip("/") else None
        ca_file = ca_file or os.environ.get(CA_FILE_ENV) or saved_ca
        if not url:
            raise ConfigError(
                f"no forwarder URL: pass Client(url=...), set {URL_ENV}, or run `taskfabric login` "
                "(or `taskfabric dev up` for a local fabric)"
            )
        if not token:
            raise ConfigError(f"no token: pass Client(token=...), set {TOKEN_ENV}, or run `taskfabric login`")
        return cls(url=url.rstrip("/"), token=token, ca_file=ca_file)

    def check_secure(self, *, allow_insecure: bool | None = None) -> None:
        """Refuse (`ConfigError`, before any network I/O) plain http:// to a host that is not
        loopback, unless `allow_insecure` (default: `TASKFABRIC_ALLOW_INSECURE=1`)."""
        if allow_insecure is None:
            allow_insecure = os.environ.get(INSECURE_ENV, "").strip().lower() in ("1", "true", "yes")
        require_secure_url(self.url, allow_insecure=allow_insecure)

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
            return cls(url=str(data["url"]), token=str(data["token"]), ca_file=str(ca_file) if ca_file else None)
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"not a valid client config ({exc}); run `taskfabric login` again", source=str(path)
            ) from None

    def save(self) -> Path:
        """Write the file `taskfabric login` writes (readable by this user only: 0600, also when
        an older file had looser permissions, in a 0700 folder when the folder is made here)."""
        path = client_config_path()
        write_private(path, json.dumps({"url": self.url, "token": self.token, "ca_file": self.ca_file}, indent=2))
        return path
