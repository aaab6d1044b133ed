"""`taskfabric globus-compute env | proxy`: run unmodified Globus Compute SDK scripts against a
taskfabric service (docs/globus-compute.md).

- `env` prints the `export` lines that point the SDK at the logged-in user's service: the SDK's
  `local` environment, the auth URL (the service's OAuth2 token route), and client credentials
  (client id = the user's id, client secret = their taskfabric token).
- `proxy` listens on localhost (port 5000 by default: `GLOBUS_SDK_ENVIRONMENT=local` pins the SDK's
  web service to http://localhost:5000) and relays each connection to the configured service,
  over TLS when its URL is https (verified with the client's CA settings).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shlex
import ssl
import urllib.parse

import click

from taskfabric.client.client import Client
from taskfabric.client.config import ClientConfig
from taskfabric.errors import ConfigError

__all__ = ["compute_env", "globus_compute", "serve_proxy"]

log = logging.getLogger(__name__)

DEFAULT_PROXY_PORT = 5000
_CHUNK_BYTES = 64 * 1024


def compute_env(config: ClientConfig) -> dict[str, str]:
    """The SDK's environment variables for the user of `config` (asks the service who that is)."""
    with Client(url=config.url, token=config.token, ca_file=config.ca_file) as client:
        user_id = client.whoami()["user_id"]
    return {
        "GLOBUS_SDK_ENVIRONMENT": "local",
        "GLOBUS_SDK_SERVICE_URL_AUTH": config.url.rstrip("/") + "/",
        "GLOBUS_COMPUTE_CLIENT_ID": str(user_id),
        "GLOBUS_COMPUTE_CLIENT_SECRET": config.token,
    }


def _target(url: str, ca_file: str | None) -> tuple[str, int, ssl.SSLContext | None]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"the service URL {url!r} is not an http(s) URL with a host", key="url")
    secure = parts.scheme == "https"
    context = None
    if secure:
        context = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
    return parts.hostname, parts.port or (443 if secure else 80), context


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(_CHUNK_BYTES):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError, ssl.SSLError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def serve_proxy(
    url: str, *, port: int, ca_file: str | None = None, ready: asyncio.Event | None = None, host: str = "127.0.0.1"
) -> None:
    """Relay connections on `host:port` to the service at `url` until cancelled."""
    target_host, target_port, context = _target(url, ca_file)

    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                target_host, target_port, ssl=context, server_hostname=target_host if context else None
            )
        except (OSError, ssl.SSLError) as exc:
            log.warning("could not reach %s:%d: %s", target_host, target_port, exc)
            client_writer.close()
            return
        await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))

    try:
        server = await asyncio.start_server(relay, host, port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", key="port") from None
    if ready is not None:
        ready.set()
    async with server:
        await server.serve_forever()


@click.group("globus-compute")
def globus_compute() -> None:
    """Run Globus Compute SDK scripts against this taskfabric service."""


@globus_compute.command("env")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of export lines.")
def env(as_json: bool) -> None:
    """Print the export lines for the Globus Compute SDK (eval "$(taskfabric globus-compute env)")."""
    variables = compute_env(ClientConfig.resolve())
    if as_json:
        click.echo(json.dumps(variables))
        return
    for name, value in variables.items():
        click.echo(f"export {name}={shlex.quote(value)}")


@globus_compute.command("proxy")
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PROXY_PORT, show_default=True)
def proxy(port: int) -> None:
    """Relay localhost:PORT to the configured service (what the SDK's `local` environment calls)."""
    config = ClientConfig.resolve()
    click.echo(f"relaying 127.0.0.1:{port} to {config.url} (Ctrl-C stops)")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_proxy(config.url, port=port, ca_file=config.ca_file))
