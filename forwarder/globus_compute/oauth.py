"""The OAuth2 surface the SDK's client-credentials flow touches (`ClientApp`, when
`GLOBUS_COMPUTE_CLIENT_ID` and `GLOBUS_COMPUTE_CLIENT_SECRET` are set and
`GLOBUS_SDK_SERVICE_URL_AUTH` points here).

`POST /v2/oauth2/token` with HTTP Basic `client_id:client_secret` and
`grant_type=client_credentials`: the client id is a taskfabric user id and the secret is one of
that user's taskfabric tokens. The answer carries exactly one token, for the resource server
`funcx_service`: the same taskfabric token, so that revoking it (`taskfabric admin revoke-token`)
revokes the SDK's access too, and the Compute routes authenticate it like any other bearer token.
Errors follow RFC 6749 §5.2 (`{"error": "invalid_client", "error_description": ...}`); a store or
identity provider outage is 503 `temporarily_unavailable`, never `invalid_client`.
"""

from __future__ import annotations

import base64
import binascii
import urllib.parse
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from taskfabric.errors import ServiceError
from taskfabric.forwarder.limits import peer_of
from taskfabric.forwarder.service import Forwarder
from taskfabric.protocol.globus_compute import token_body

__all__ = ["oauth_router"]

oauth_router = APIRouter(prefix="/v2/oauth2", tags=["globus-compute"])
_MAX_FORM_BYTES = 16 * 1024


class _OAuthError(Exception):
    """An RFC 6749 §5.2 error answer."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.error, "error_description": str(self)}, status_code=self.status)


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, secret = decoded.partition(":")
    return (urllib.parse.unquote(client_id), urllib.parse.unquote(secret)) if sep else None


@oauth_router.post("/token")
async def token(request: Request) -> JSONResponse:
    """Client credentials -> one token for `funcx_service` (see the module docstring)."""
    forwarder: Forwarder = request.app.state.forwarder
    try:
        client_id, secret = _client_credentials(await request.body(), request.headers.get("authorization"))
        try:
            identity = await forwarder.authenticate(secret, peer=peer_of(request.scope))
        except ServiceError as exc:
            if exc.status in (401, 403):
                raise _OAuthError(401, "invalid_client", f"the client secret was refused: {exc}") from None
            # the store or the identity provider failed: not the client's fault, so not invalid_client
            # (the SDK would take its secret for a wrong one)
            raise _OAuthError(503, "temporarily_unavailable", f"the secret could not be checked: {exc}") from None
        if identity.user_id != client_id:
            raise _OAuthError(401, "invalid_client", "the client secret is not a token of that client_id's user")
    except _OAuthError as refused:
        return refused.response()
    lifetime_s = forwarder.settings.globus_compute.token_lifetime_s
    return JSONResponse(token_body(secret, lifetime_s=lifetime_s), headers={"Cache-Control": "no-store"})


def _client_credentials(raw: bytes, authorization: str | None) -> tuple[uuid.UUID, str]:
    """(client id, secret) of a client-credentials grant (HTTP Basic, or form fields)."""
    if len(raw) > _MAX_FORM_BYTES:
        raise _OAuthError(400, "invalid_request", f"the form is larger than {_MAX_FORM_BYTES} bytes")
    try:
        form = urllib.parse.parse_qs(raw.decode(), strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise _OAuthError(400, "invalid_request", "the body is not a form") from None
    if (form.get("grant_type") or [""])[0] != "client_credentials":
        raise _OAuthError(400, "unsupported_grant_type", "only grant_type=client_credentials is supported")
    credentials = _basic_credentials(authorization)
    if credentials is None:
        credentials = (form.get("client_id") or [""])[0], (form.get("client_secret") or [""])[0]
    client_id, secret = credentials
    if not client_id or not secret:
        raise _OAuthError(401, "invalid_client", "client_id and client_secret (HTTP Basic) are required")
    try:
        return uuid.UUID(client_id), secret
    except ValueError:
        raise _OAuthError(
            401, "invalid_client", "client_id must be a taskfabric user id (see `taskfabric whoami`)"
        ) from None
