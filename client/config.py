"""Where a client finds the forwarder and its token.

In order: arguments to `Client(url=..., token=...)`; the environment (`TASKFABRIC_URL`,
`TASKFABRIC_TOKEN`); the file written by `taskfabric login` or `taskfabric dev up`
(`$TASKFABRIC_HOME/client.json`, mode 0600).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from taskfabric.errors import ConfigError
from taskfabric.paths import taskfabric_home

__all__ = ["ClientConfig", "client_config_path"]

URL_ENV = "TASKFABRIC_URL"
TOKEN_ENV = "TASKFABRIC_TOKEN"


def client_config_path() -> Path:
    return taskfabric_home() / "client.json"


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    """The forwarder's URL and the bearer token to use."""

    url: str
    token: str

    @classmethod
    def resolve(cls, url: str | None = None, token: str | None = None) -> ClientConfig:
        """Arguments, then environment, then the saved file; a `ConfigError` says what is missing."""
        saved = cls._saved()
        url = url or os.environ.get(URL_ENV) or (saved.url if saved else None)
        token = token or os.environ.get(TOKEN_ENV) or (saved.token if saved else None)
        if not url:
            raise ConfigError(
                f"no forwarder URL: pass Client(url=...), set {URL_ENV}, or run `taskfabric login` "
                "(or `taskfabric dev up` for a local fabric)"
            )
        if not token:
            raise ConfigError(f"no token: pass Client(token=...), set {TOKEN_ENV}, or run `taskfabric login`")
        return cls(url=url.rstrip("/"), token=token)

    @classmethod
    def _saved(cls) -> ClientConfig | None:
        path = client_config_path()
        try:
            data = json.loads(path.read_text())
            return cls(url=str(data["url"]), token=str(data["token"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"not a valid client config ({exc}); run `taskfabric login` again", source=str(path)
            ) from None

    def save(self) -> Path:
        """Write the file `taskfabric login` writes (readable by this user only)."""
        path = client_config_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"url": self.url, "token": self.token}, handle, indent=2)
        return path
